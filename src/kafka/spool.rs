//! The review sink's disk spool (`kafka.spool_dir`): review records the producer could not
//! deliver wait here, across broker outages and process restarts, until they are replayed.
//!
//! # Shape
//!
//! - [`segment`]: the file format (length-prefixed, CRC-32-checked frames; pure).
//! - this file: the spool directory, its size limit, and the writer thread. Appends come from
//!   the request path and librdkafka's threads through a bounded channel and never wait: a full
//!   channel or a spool at `kafka.spool_max_bytes` skips the record and counts
//!   `reviews_skipped_total{reason="spool_full"}`; a failed write counts `spool_error`.
//! - [`replay`]: the thread that sends spooled records again, oldest segment first, while the
//!   broker answers, and deletes each segment once every record in it is delivered (or spooled
//!   anew).
//!
//! The writer appends to one active segment and starts a new one after [`SEGMENT_BYTES`] or
//! when the replayer asks for everything written so far ([`Spool::seal`]). Writes go to the OS
//! at once (a killed process loses nothing it wrote); `fsync` runs every
//! `kafka.spool_fsync_interval`, so a power loss costs at most that much of the newest spooled
//! records (0 syncs after every record). A record cut short by a crash is caught by its
//! checksum on replay and counted as `spool_corrupt`.

pub(super) mod replay;
pub(super) mod segment;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread;
use std::time::{Duration, Instant};

use self::segment::{Entry, MAGIC};
use crate::metrics::{Metrics, SkipReason};

/// A segment is closed once it holds this many bytes (or when the replayer takes it), so a
/// delivered part of the spool is deleted without waiting for the rest.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Appends (and the replayer's commands) waiting for the writer, at most; past it records are
/// skipped as `spool_full` rather than making a request wait on the disk.
const CHANNEL_CAPACITY: usize = 16 * 1024;
/// The file whose lock keeps a second process out of the same spool directory.
const LOCK_FILE: &str = "spool.lock";

/// How the spool is set up (from `[kafka]`).
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub fsync_interval: Duration,
    pub segment_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot use the spool directory {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
    #[error("the spool directory {0} is in use by another reviewloop process")]
    Locked(PathBuf),
}

enum Command {
    Append(Entry, u64),
    /// Close the active segment; answers the first sequence number not yet closed.
    Seal(SyncSender<u64>),
    /// Delete a closed segment (its records are delivered or spooled again).
    Delete(u64),
    /// fsync whatever was written; answers when done.
    Sync(SyncSender<()>),
    /// Close the active segment and end (the handle is dropped).
    Stop,
}

struct Shared {
    /// Bytes on disk plus bytes of appends waiting in the channel.
    used: AtomicU64,
    max_bytes: u64,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(bytes))
            });
        self.metrics
            .spool_bytes
            .set(self.used.load(Ordering::Relaxed) as i64);
    }
}

/// The handle to a spool directory. Dropping it waits for the writer to write and sync every
/// queued append and release the directory's lock.
pub struct Spool {
    dir: PathBuf,
    commands: SyncSender<Command>,
    shared: Arc<Shared>,
    writer: Option<thread::JoinHandle<()>>,
}

impl Spool {
    /// Opens (creating) the directory, takes its lock, counts what a previous process left, and
    /// starts the writer. What was left is replayed like anything spooled since.
    pub fn open(settings: SpoolSettings, metrics: Arc<Metrics>) -> Result<Spool, SpoolError> {
        let dir = settings.dir.clone();
        let io_error = |source| SpoolError::Io {
            dir: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io_error)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(io_error)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(dir)),
            Err(fs::TryLockError::Error(e)) => return Err(io_error(e)),
        }
        let mut sizes = BTreeMap::new();
        for (seq, path) in segments(&dir).map_err(io_error)? {
            let len = fs::metadata(&path).map_err(io_error)?.len();
            sizes.insert(seq, len);
        }
        let used: u64 = sizes.values().sum();
        metrics.spool_bytes.set(used as i64);
        if !sizes.is_empty() {
            tracing::info!(
                dir = %dir.display(),
                segments = sizes.len(),
                bytes = used,
                "review records left in the spool by an earlier run; they are sent once Kafka \
                 answers"
            );
        }
        let shared = Arc::new(Shared {
            used: AtomicU64::new(used),
            max_bytes: settings.max_bytes,
            metrics,
        });
        let (commands, receiver) = sync_channel(CHANNEL_CAPACITY);
        let writer = Writer {
            dir: dir.clone(),
            next_seq: sizes.keys().next_back().map_or(0, |last| last + 1),
            sizes,
            active: None,
            dirty: false,
            last_sync: Instant::now(),
            settings,
            shared: shared.clone(),
            buffer: Vec::new(),
            _lock: lock,
        };
        let writer = thread::Builder::new()
            .name("review-spool-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(io_error)?;
        Ok(Spool {
            dir,
            commands,
            shared,
            writer: Some(writer),
        })
    }

    /// Queues `entry` for the disk without waiting. A spool at its limit (or a writer that
    /// cannot keep up) skips it, counted as `spool_full`; returns whether it was taken.
    pub fn append(&self, entry: Entry) -> bool {
        let len = entry.frame_len() as u64;
        let used = self.shared.used.fetch_add(len, Ordering::Relaxed);
        if used + len > self.shared.max_bytes {
            self.shared.release(len);
            self.shared.metrics.review_skipped(SkipReason::SpoolFull);
            return false;
        }
        match self.commands.try_send(Command::Append(entry, len)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.shared.release(len);
                self.shared.metrics.review_skipped(SkipReason::SpoolFull);
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.shared.release(len);
                self.shared.metrics.review_skipped(SkipReason::SpoolError);
                false
            }
        }
    }

    /// Bytes the spool holds (and has accepted but not yet written).
    pub fn used_bytes(&self) -> u64 {
        self.shared.used.load(Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Closes the active segment and returns the closed segments, oldest first (a blocking
    /// call: for the replayer's thread).
    pub fn seal(&self) -> Vec<(u64, PathBuf)> {
        let (answer, answered) = sync_channel(1);
        if self.commands.send(Command::Seal(answer)).is_err() {
            return Vec::new();
        }
        let Ok(open_from) = answered.recv() else {
            return Vec::new();
        };
        match segments(&self.dir) {
            Ok(found) => found
                .into_iter()
                .filter(|(seq, _)| *seq < open_from)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.dir.display(), "cannot list the spool");
                Vec::new()
            }
        }
    }

    /// Deletes a closed segment after syncing what was written since (records of it that were
    /// spooled again must be on disk first). Blocking: for the replayer's thread.
    pub fn delete(&self, seq: u64) {
        let _ = self.commands.send(Command::Delete(seq));
    }

    /// Waits until every append queued so far is written and synced (on shutdown).
    pub fn sync(&self) {
        let (answer, answered) = sync_channel(1);
        if self.commands.send(Command::Sync(answer)).is_ok() {
            let _ = answered.recv();
        }
    }
}

impl Drop for Spool {
    /// Waits for the writer to write what was queued, so the directory is free when this returns.
    fn drop(&mut self) {
        if self.commands.send(Command::Stop).is_ok()
            && let Some(writer) = self.writer.take()
        {
            let _ = writer.join();
        }
    }
}

/// The segment files in `dir`, oldest first.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for item in fs::read_dir(dir)? {
        let item = item?;
        if let Some(seq) = item.file_name().to_str().and_then(segment::parse_file_name) {
            found.push((seq, item.path()));
        }
    }
    found.sort();
    Ok(found)
}

struct Active {
    seq: u64,
    file: File,
    len: u64,
}

/// Owns the files: the only thread that writes, syncs or deletes them.
struct Writer {
    dir: PathBuf,
    settings: SpoolSettings,
    shared: Arc<Shared>,
    /// Bytes counted in `used` for each segment on disk.
    sizes: BTreeMap<u64, u64>,
    active: Option<Active>,
    next_seq: u64,
    /// Written since the last fsync.
    dirty: bool,
    last_sync: Instant,
    buffer: Vec<u8>,
    /// Held until the last queued record is written, so the next owner sees all of them.
    _lock: File,
}

impl Writer {
    fn run(mut self, commands: Receiver<Command>) {
        loop {
            let wait = if self.dirty {
                self.settings
                    .fsync_interval
                    .saturating_sub(self.last_sync.elapsed())
            } else {
                Duration::from_secs(3600)
            };
            match commands.recv_timeout(wait) {
                Ok(Command::Append(entry, len)) => self.append(&entry, len),
                Ok(Command::Seal(answer)) => {
                    self.close_active();
                    let _ = answer.send(self.next_seq);
                }
                Ok(Command::Delete(seq)) => self.delete(seq),
                Ok(Command::Sync(answer)) => {
                    self.sync();
                    let _ = answer.send(());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    self.close_active();
                    return;
                }
            }
            if self.dirty && self.last_sync.elapsed() >= self.settings.fsync_interval {
                self.sync();
            }
        }
    }

    fn append(&mut self, entry: &Entry, len: u64) {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        segment::encode(entry, &mut buffer);
        let written = self.open_active().and_then(|active| {
            active.file.write_all(&buffer)?;
            active.len += len;
            Ok(active.seq)
        });
        self.buffer = buffer;
        match written {
            Ok(seq) => {
                *self.sizes.entry(seq).or_default() += len;
                self.dirty = true;
                self.shared.metrics.spool_written.inc();
                self.shared
                    .metrics
                    .spool_bytes
                    .set(self.shared.used.load(Ordering::Relaxed) as i64);
                if self
                    .active
                    .as_ref()
                    .is_some_and(|a| a.len >= self.settings.segment_bytes)
                {
                    self.close_active();
                }
            }
            Err(e) => {
                self.shared.release(len);
                self.shared.metrics.review_skipped(SkipReason::SpoolError);
                tracing::error!(
                    error = %e,
                    dir = %self.dir.display(),
                    "cannot write a review record to the spool; it is skipped"
                );
                // A partly written frame ends this segment; the next record starts a new one.
                self.active = None;
            }
        }
    }

    fn open_active(&mut self) -> io::Result<&mut Active> {
        if self.active.is_none() {
            let seq = self.next_seq;
            // Taken even when the creation fails, so a bad name is never tried twice.
            self.next_seq += 1;
            let path = self.dir.join(segment::file_name(seq));
            let mut file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            file.write_all(MAGIC)?;
            // The new name must survive a power loss too.
            if let Ok(dir) = File::open(&self.dir) {
                let _ = dir.sync_all();
            }
            let magic = MAGIC.len() as u64;
            self.shared.used.fetch_add(magic, Ordering::Relaxed);
            self.sizes.insert(seq, magic);
            self.active = Some(Active {
                seq,
                file,
                len: magic,
            });
        }
        Ok(self.active.as_mut().expect("opened above"))
    }

    fn sync(&mut self) {
        if let Some(active) = &self.active
            && let Err(e) = active.file.sync_data()
        {
            tracing::error!(error = %e, dir = %self.dir.display(), "cannot fsync the spool");
        }
        self.dirty = false;
        self.last_sync = Instant::now();
    }

    fn close_active(&mut self) {
        self.sync();
        self.active = None;
    }

    fn delete(&mut self, seq: u64) {
        if self.active.as_ref().is_some_and(|a| a.seq == seq) {
            return;
        }
        self.sync();
        let path = self.dir.join(segment::file_name(seq));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "cannot delete a replayed spool segment");
                return;
            }
        }
        if let Some(bytes) = self.sizes.remove(&seq) {
            self.shared.release(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, max_bytes: u64, segment_bytes: u64) -> SpoolSettings {
        SpoolSettings {
            dir: dir.to_owned(),
            max_bytes,
            fsync_interval: Duration::from_millis(10),
            segment_bytes,
        }
    }

    fn entry(i: usize) -> Entry {
        Entry {
            id: format!("r-{i:04}"),
            time: "2026-12-02T12:00:00.000Z".into(),
            ce_id: format!("ce-{i}"),
            traceparent: None,
            value: format!("{{\"id\":\"r-{i:04}\"}}").into_bytes(),
        }
    }

    fn read_all(spool: &Spool) -> Vec<Entry> {
        spool
            .seal()
            .iter()
            .flat_map(|(_, path)| segment::decode(&fs::read(path).unwrap()).entries)
            .collect()
    }

    #[test]
    fn records_survive_a_reopen_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let spool = Spool::open(settings(dir.path(), 1 << 20, 200), metrics.clone()).unwrap();
        for i in 0..20 {
            assert!(spool.append(entry(i)));
        }
        spool.sync();
        let used = spool.used_bytes();
        assert_eq!(metrics.spool_bytes.get() as u64, used);
        drop(spool);
        let spool = Spool::open(settings(dir.path(), 1 << 20, 200), metrics).unwrap();
        assert_eq!(spool.used_bytes(), used);
        let sealed = spool.seal();
        assert!(sealed.len() > 1, "200-byte segments rotate");
        assert_eq!(read_all(&spool), (0..20).map(entry).collect::<Vec<_>>());
    }

    #[test]
    fn a_second_process_cannot_share_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let _first = Spool::open(settings(dir.path(), 1 << 20, 1 << 20), metrics.clone()).unwrap();
        assert!(matches!(
            Spool::open(settings(dir.path(), 1 << 20, 1 << 20), metrics),
            Err(SpoolError::Locked(_))
        ));
    }

    #[test]
    fn a_full_spool_skips_and_counts_and_deleting_frees_room() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let max = 10 * entry(0).frame_len() as u64;
        let spool = Spool::open(settings(dir.path(), max, 1 << 20), metrics.clone()).unwrap();
        let taken = (0..20).filter(|&i| spool.append(entry(i))).count();
        spool.sync();
        assert!((9..=10).contains(&taken), "took {taken}");
        assert_eq!(
            metrics.reviews_skipped(SkipReason::SpoolFull),
            20 - taken as u64
        );
        assert!(spool.used_bytes() <= max + MAGIC.len() as u64);
        for (seq, _) in spool.seal() {
            spool.delete(seq);
        }
        spool.sync();
        assert_eq!(spool.used_bytes(), 0);
        assert_eq!(metrics.spool_bytes.get(), 0);
        assert!(spool.append(entry(99)));
    }

    #[test]
    fn a_write_failure_is_counted_not_raised() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let spool = Spool::open(settings(dir.path(), 1 << 20, 1 << 20), metrics.clone()).unwrap();
        // A directory where the next segment file should be makes its creation fail.
        fs::create_dir(dir.path().join(segment::file_name(0))).unwrap();
        assert!(spool.append(entry(0)));
        spool.sync();
        assert_eq!(metrics.reviews_skipped(SkipReason::SpoolError), 1);
        assert_eq!(spool.used_bytes(), 0);
        // The next record goes to a new segment.
        assert!(spool.append(entry(1)));
        spool.sync();
        assert_eq!(metrics.spool_written.get(), 1);
    }
}
