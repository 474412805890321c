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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    use super::super::{Spool, SpoolSettings};
    use super::*;

    /// A producer that delivers at once, but refuses the first record with a full queue.
    struct FakeProducer {
        spool: Spool,
        metrics: Arc<Metrics>,
        allowed: AtomicBool,
        refused_once: AtomicBool,
        sent: Mutex<Vec<String>>,
    }

    impl Resend for FakeProducer {
        fn spool(&self) -> &Spool {
            &self.spool
        }
        fn metrics(&self) -> &Metrics {
            &self.metrics
        }
        fn replay_allowed(&self) -> bool {
            self.allowed.load(Ordering::Relaxed)
        }
        fn resend(&self, entry: Entry, batch: &Arc<Batch>) -> Resent {
            if !self.refused_once.swap(true, Ordering::Relaxed) {
                return Resent::QueueFull(entry);
            }
            self.sent.lock().unwrap().push(entry.id);
            batch.done();
            Resent::Sent
        }
    }

    fn sink(dir: &std::path::Path, allowed: bool) -> Arc<FakeProducer> {
        let metrics = Arc::new(Metrics::new());
        let settings = SpoolSettings {
            dir: dir.to_owned(),
            max_bytes: 1 << 20,
            fsync_interval: Duration::from_millis(10),
            segment_bytes: 300,
        };
        let sink = Arc::new(FakeProducer {
            spool: Spool::open(settings, metrics.clone()).unwrap(),
            metrics,
            allowed: AtomicBool::new(allowed),
            refused_once: AtomicBool::new(false),
            sent: Mutex::new(Vec::new()),
        });
        for i in 0..30 {
            assert!(sink.spool.append(Entry {
                id: format!("r-{i:02}"),
                time: "t".into(),
                ce_id: "c".into(),
                traceparent: None,
                value: vec![b'x'; 40],
            }));
        }
        sink.spool.sync();
        sink
    }

    fn wait(deadline: Duration, done: impl Fn() -> bool) -> bool {
        let end = Instant::now() + deadline;
        while Instant::now() < end && !done() {
            thread::sleep(Duration::from_millis(10));
        }
        done()
    }

    #[test]
    fn every_segment_is_sent_oldest_first_then_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path(), true);
        spawn(Arc::downgrade(&sink));
        assert!(wait(Duration::from_secs(10), || sink.spool.used_bytes() == 0));
        let expected: Vec<String> = (0..30).map(|i| format!("r-{i:02}")).collect();
        assert_eq!(*sink.sent.lock().unwrap(), expected);
        assert_eq!(sink.metrics.spool_bytes.get(), 0);
    }

    #[test]
    fn nothing_is_sent_or_deleted_while_replay_is_not_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path(), false);
        let used = sink.spool.used_bytes();
        spawn(Arc::downgrade(&sink));
        thread::sleep(IDLE * 2);
        assert!(sink.sent.lock().unwrap().is_empty());
        assert_eq!(sink.spool.used_bytes(), used);
        sink.allowed.store(true, Ordering::Relaxed);
        assert!(wait(Duration::from_secs(10), || sink.sent.lock().unwrap().len() == 30));
    }
}
