//! Sends spooled records again, oldest segment first, whenever the broker answers.
//!
//! While the broker answers and the spool holds anything, the replayer closes the active
//! segment, reads the closed ones in order and hands their records to the producer next to the
//! new ones (at most [`WINDOW`] of its own in flight, so new records keep their room in the
//! producer's queue). A segment is deleted once every record of it has its delivery report:
//! delivered, or failed and spooled again. A torn or corrupt tail is counted
//! (`reviews_skipped_total{reason="spool_corrupt"}`, once per damaged segment) and skipped.
//! A crash between a delivery and the deletion replays the segment again after the restart:
//! the spool is at-least-once, like the review topic itself.

use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::Duration;

use super::Spool;
use super::segment::{self, Entry};
use crate::metrics::{Metrics, SkipReason};

/// Replayed records in flight at most.
pub const WINDOW: usize = 1_000;
/// Pause between looks at the broker and the spool while there is nothing to do.
const IDLE: Duration = Duration::from_millis(500);
/// Pause before trying a record again when the producer's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(20);

/// The delivery reports a segment's records still wait for.
#[derive(Debug, Default)]
pub struct Batch {
    outstanding: AtomicUsize,
}

impl Batch {
    /// One record of the batch has its final delivery report (delivered or spooled again).
    pub fn done(&self) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
    }

    fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }
}

/// What became of one record handed back to the producer.
pub enum Resent {
    /// Enqueued; its delivery report calls [`Batch::done`].
    Sent,
    /// The producer's queue is full: try again shortly.
    QueueFull(Entry),
    /// Refused for good; the sink counted (or spooled) it.
    Refused,
}

/// The producer side the replayer drives (the review sink).
pub trait Resend: Send + Sync + 'static {
    fn spool(&self) -> &Spool;
    fn metrics(&self) -> &Metrics;
    /// The broker answers and the sink is not shutting down.
    fn replay_allowed(&self) -> bool;
    fn resend(&self, entry: Entry, batch: &Arc<Batch>) -> Resent;
}

/// Starts the replayer; it ends when the sink is dropped.
pub fn spawn<S: Resend>(sink: Weak<S>) {
    let spawned = thread::Builder::new()
        .name("review-spool-replay".into())
        .spawn(move || {
            loop {
                let Some(strong) = sink.upgrade() else { return };
                let busy = strong.replay_allowed()
                    && strong.spool().used_bytes() > 0
                    && replay_closed_segments(&*strong);
                drop(strong);
                if !busy {
                    thread::sleep(IDLE);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the spool replayer");
    }
}

/// Replays every closed segment; returns whether any was replayed whole.
fn replay_closed_segments<S: Resend>(sink: &S) -> bool {
    let mut replayed_any = false;
    for (seq, path) in sink.spool().seal() {
        if !sink.replay_allowed() {
            break;
        }
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "cannot read a spool segment");
                continue;
            }
        };
        let decoded = segment::decode(&bytes);
        if decoded.corrupt_bytes > 0 {
            sink.metrics().review_skipped(SkipReason::SpoolCorrupt);
            tracing::warn!(
                path = %path.display(),
                records = decoded.entries.len(),
                corrupt_bytes = decoded.corrupt_bytes,
                "a spool segment ends in a torn or corrupt record (a crash mid-write?); \
                 the records before it are replayed, the rest is skipped"
            );
        }
        let count = decoded.entries.len();
        if !replay_segment(sink, decoded.entries) {
            // Stopped half way (shutdown or the broker went away): the segment stays and is
            // replayed whole next time; what was sent of it may arrive twice.
            break;
        }
        sink.spool().delete(seq);
        tracing::info!(records = count, path = %path.display(), "spool segment replayed");
        replayed_any = true;
    }
    replayed_any
}

/// Sends one segment's records and waits for all their reports; false when it had to stop.
fn replay_segment<S: Resend>(sink: &S, entries: Vec<Entry>) -> bool {
    let batch = Arc::new(Batch::default());
    for mut entry in entries {
        loop {
            if !sink.replay_allowed() {
                return false;
            }
            if batch.outstanding() >= WINDOW {
                thread::sleep(Duration::from_millis(2));
                continue;
            }
            batch.outstanding.fetch_add(1, Ordering::AcqRel);
            match sink.resend(entry, &batch) {
                Resent::Sent => break,
                Resent::Refused => {
                    batch.done();
                    break;
                }
                Resent::QueueFull(back) => {
                    batch.done();
                    entry = back;
                    thread::sleep(QUEUE_FULL_PAUSE);
                }
            }
        }
    }
    // Every report comes within message.timeout.ms; failed ones are spooled again.
    while batch.outstanding() > 0 {
        thread::sleep(Duration::from_millis(5));
    }
    true
}
