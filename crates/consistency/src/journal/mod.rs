//! The write-behind journal: a directory of append-only segment files with group commit.
//!
//! - **Append**: a record is encoded into a shared buffer and gets a sequence number. The first
//!   appender that finds no commit running spawns one (a short task on the caller's runtime):
//!   it writes everything buffered with one `write` and one `fdatasync`, then publishes the
//!   highest durable sequence number. Appenders that arrive meanwhile share the next commit
//!   (group commit). [`SyncPolicy`] chooses between syncing each commit, waiting a little to
//!   gather more, or never syncing (a process crash loses nothing, a power loss may).
//! - **Segments**: when the active segment passes `segment_bytes`, it is synced and a new one
//!   starts (its first record repeats the latest checkpoint). A segment is removed once every
//!   data record in it is confirmed by a durable checkpoint; the active one never is.
//! - **Open/replay**: every segment is scanned in order. The highest checkpoint wins; data
//!   records after it are handed back to be written to the source again. Damage at the end of
//!   the last segment with no valid record after it is a torn tail from a crash: it is cut off
//!   and reported. Damage anywhere else, and a record whose checksums match but whose content is
//!   malformed (even at the end), is [`ConsistencyError::JournalCorrupt`].
//!
//! - **Sealing**: given a codec pipeline (the cache's encryption), data records are written as
//!   [`Record::Sealed`]: key and value pass through the pipeline, bound to the record's
//!   sequence number (see [`seal`]), in segments marked as format 2 ([`SEALED_SEGMENT_MAGIC`]).
//!   Replay opens them; a wrong key, a missing codec or a tampered record is
//!   [`ConsistencyError::JournalUnreadable`], and a plaintext record to replay in a journal that
//!   requires encryption is [`ConsistencyError::JournalPlaintext`] unless plaintext replay was
//!   allowed (migrating a journal written without encryption). Checkpoints and sequence numbers
//!   stay plaintext: they hold no key or value.
//!
//! Delivery to the source is at least once: after a crash, records after the last durable
//! checkpoint are written again (in order, so the source ends with each key's last value).

mod record;
pub mod seal;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

pub use record::{
    MAX_PAYLOAD_LEN, RECORD_HEADER_LEN, Record, RecordError, SEALED_SEGMENT_MAGIC, SEGMENT_MAGIC, ScanEnd, SegmentScan,
    decode_record, scan_segment,
};
pub(crate) use seal::{Domain, Sealer, decode_op, encode_op};
use seal::{Found, FoundRecord, open_records};

use crate::error::ConsistencyError;

/// When the journal calls `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every commit is synced before the writes in it are acknowledged. Concurrent writers share
    /// one sync (group commit).
    Always,
    /// A commit waits up to `max_delay` to gather more writes, then syncs once: fewer syncs,
    /// `max_delay` more latency per write.
    Batched {
        /// How long a commit waits for company.
        max_delay: Duration,
    },
    /// Writes reach the OS but are never synced (segment rolls excepted): survives a process
    /// crash, not a power loss.
    Never,
}

/// Sequence numbers and checkpoints at or past this are refused as corrupt (see `open`).
const SEQ_LIMIT: u64 = 1 << 63;

/// Where a torn tail was cut off during replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub segment: PathBuf,
    /// Where the damaged record started (the file was truncated here).
    pub offset: u64,
    /// Bytes discarded.
    pub discarded_bytes: u64,
}

/// What opening a journal found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Segment files found.
    pub segments: usize,
    /// Valid data records found (puts and deletes).
    pub records: usize,
    /// The highest checkpoint found (0 when none).
    pub checkpoint: u64,
    /// Records after the checkpoint, handed back to be written to the source.
    pub requeued: usize,
    /// A torn tail that was cut off, if any.
    pub torn_tail: Option<TornTail>,
}

/// A data write to append: the journal seals it when it has an active codec pipeline.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Data<'a> {
    /// A write of `value` (postcard bytes) to `key` (postcard bytes).
    Put {
        /// The encoded key.
        key: &'a [u8],
        /// The encoded value.
        value: &'a [u8],
    },
    /// A delete of `key`.
    Delete {
        /// The encoded key.
        key: &'a [u8],
    },
}

/// A data record to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replayed {
    pub(crate) seq: u64,
    pub(crate) key: Vec<u8>,
    /// `None` for a delete.
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) segment: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Durable {
    /// Every data record with `seq <= seq` is durable.
    seq: u64,
    /// Every record (checkpoints included) with `lsn <= lsn` is durable.
    lsn: u64,
    failed: Option<Arc<str>>,
}

#[derive(Default)]
struct AppendState {
    buf: Vec<u8>,
    next_seq: u64,
    next_lsn: u64,
    buf_max_seq: u64,
    buf_max_lsn: u64,
    committing: bool,
    failed: Option<Arc<str>>,
}

struct Files {
    active: File,
    active_id: u64,
    active_len: u64,
    /// Segment id → highest data seq in it (0 when none).
    segments: BTreeMap<u64, u64>,
}

struct Inner {
    dir: PathBuf,
    sealer: Arc<Sealer>,
    sealed: bool,
    sync: SyncPolicy,
    segment_bytes: u64,
    state: Mutex<AppendState>,
    files: Mutex<Files>,
    latest_checkpoint: AtomicU64,
    durable: watch::Sender<Durable>,
    commits: AtomicU64,
}

/// A handle on an open journal directory. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Journal {
    inner: Arc<Inner>,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<(), ConsistencyError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| ConsistencyError::journal_io("sync directory", dir, e))
}

fn create_segment(dir: &Path, id: u64, checkpoint: u64, sealed: bool) -> Result<(File, u64), ConsistencyError> {
    let path = segment_path(dir, id);
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .map_err(|e| ConsistencyError::journal_io("create segment", &path, e))?;
    let mut head = if sealed { SEALED_SEGMENT_MAGIC.to_vec() } else { SEGMENT_MAGIC.to_vec() };
    Record::Checkpoint { confirmed: checkpoint }
        .encode_into(&mut head)
        .map_err(|reason| ConsistencyError::JournalCorrupt { segment: path.clone(), offset: 0, reason })?;
    f.write_all(&head).and_then(|()| f.sync_all()).map_err(|e| ConsistencyError::journal_io("write", &path, e))?;
    sync_dir(dir)?;
    Ok((f, head.len() as u64))
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, cuts off a torn tail, and returns the
    /// data records after the last checkpoint, in sequence order, opened with `sealer`. New
    /// data records are sealed when `sealer` has codecs. Plaintext records to replay are
    /// refused when the sealer requires encryption, unless `replay_plaintext`. Apart from cutting
    /// off a torn tail, nothing is created or removed before every record to replay has been
    /// opened. Blocking: call it from
    /// `spawn_blocking`.
    pub(crate) fn open_blocking(
        dir: &Path,
        sync: SyncPolicy,
        segment_bytes: u64,
        sealer: Arc<Sealer>,
        replay_plaintext: bool,
    ) -> Result<(Journal, Vec<Replayed>, ReplayReport), ConsistencyError> {
        std::fs::create_dir_all(dir).map_err(|e| ConsistencyError::journal_io("create directory", dir, e))?;
        let mut ids = Vec::new();
        let listing = std::fs::read_dir(dir).map_err(|e| ConsistencyError::journal_io("list", dir, e))?;
        for entry in listing {
            let entry = entry.map_err(|e| ConsistencyError::journal_io("list", dir, e))?;
            if let Some(id) = entry.file_name().to_str().and_then(parse_segment_name) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut report = ReplayReport { segments: ids.len(), ..ReplayReport::default() };
        let mut segments = BTreeMap::new();
        let mut data: Vec<FoundRecord> = Vec::new();
        let mut max_seq = 0u64;
        for (i, &id) in ids.iter().enumerate() {
            let path = segment_path(dir, id);
            let bytes = std::fs::read(&path).map_err(|e| ConsistencyError::journal_io("read", &path, e))?;
            let scan = scan_segment(&bytes);
            let last = i + 1 == ids.len();
            let mut seg_max = 0u64;
            for (_, r) in &scan.records {
                match *r {
                    Record::Put { seq, key, value } => {
                        let body = Found::Plain { key: key.to_vec(), value: Some(value.to_vec()) };
                        data.push(FoundRecord { seq, body, segment: path.clone() });
                        seg_max = seg_max.max(seq);
                    }
                    Record::Delete { seq, key } => {
                        let body = Found::Plain { key: key.to_vec(), value: None };
                        data.push(FoundRecord { seq, body, segment: path.clone() });
                        seg_max = seg_max.max(seq);
                    }
                    Record::Sealed { seq, body } => {
                        data.push(FoundRecord { seq, body: Found::Sealed(body.to_vec()), segment: path.clone() });
                        seg_max = seg_max.max(seq);
                    }
                    Record::Checkpoint { confirmed } => report.checkpoint = report.checkpoint.max(confirmed),
                }
            }
            max_seq = max_seq.max(seg_max);
            match scan.end {
                ScanEnd::Clean => {
                    segments.insert(id, seg_max);
                }
                // A record whose checksums match but whose content is not a record (an unknown
                // kind, a bad length inside) was written whole: that is not a torn write, and
                // cutting it off could drop an acknowledged write. Only damage a crash can cause
                // (a short or checksum-failing record) at the very end is a torn tail.
                ScanEnd::Damaged { offset, valid_after: false, error }
                    if last && !matches!(error, RecordError::Malformed(_)) =>
                {
                    let discarded = (bytes.len() - offset) as u64;
                    if offset < SEGMENT_MAGIC.len() {
                        std::fs::remove_file(&path).map_err(|e| ConsistencyError::journal_io("remove", &path, e))?;
                    } else {
                        let f = OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(|e| ConsistencyError::journal_io("open", &path, e))?;
                        f.set_len(offset as u64)
                            .and_then(|()| f.sync_all())
                            .map_err(|e| ConsistencyError::journal_io("truncate", &path, e))?;
                        segments.insert(id, seg_max);
                    }
                    tracing::warn!(
                        segment = %path.display(),
                        offset,
                        discarded,
                        "journal: torn tail record cut off (an unacknowledged write interrupted by a crash)"
                    );
                    report.torn_tail =
                        Some(TornTail { segment: path, offset: offset as u64, discarded_bytes: discarded });
                }
                ScanEnd::Damaged { offset, error, .. } => {
                    return Err(ConsistencyError::JournalCorrupt {
                        segment: path,
                        offset: offset as u64,
                        reason: error,
                    });
                }
            }
        }
        report.records = data.len();
        let checkpoint = report.checkpoint;
        data.retain(|r| r.seq > checkpoint);
        data.sort_by_key(|r| r.seq);
        let data = open_records(data, &sealer, replay_plaintext)?;
        report.requeued = data.len();

        let sealed = sealer.is_active();
        let active_id = ids.last().map_or(1, |id| id + 1);
        let (active, active_len) = create_segment(dir, active_id, checkpoint, sealed)?;
        segments.insert(active_id, 0);
        // Sequence numbers count writes from 1: nothing real comes near 2^63. A record or a
        // checkpoint past it is forged or damaged (the CRC has no key), and trusting it would
        // wrap the counter (new writes numbered below the checkpoint, never replayed).
        if max_seq.max(checkpoint) >= SEQ_LIMIT {
            return Err(ConsistencyError::JournalCorrupt {
                segment: dir.to_path_buf(),
                offset: 0,
                reason: RecordError::Malformed("a sequence number or checkpoint at or past 2^63"),
            });
        }
        let next_seq = max_seq.max(checkpoint) + 1;
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            sealer,
            sealed,
            sync,
            segment_bytes,
            state: Mutex::new(AppendState { next_seq, next_lsn: 1, ..AppendState::default() }),
            files: Mutex::new(Files { active, active_id, active_len, segments }),
            latest_checkpoint: AtomicU64::new(checkpoint),
            commits: AtomicU64::new(0),
            durable: watch::Sender::new(Durable { seq: next_seq - 1, lsn: 0, failed: None }),
        });
        let journal = Journal { inner };
        // The new segment starts with the checkpoint (synced): older fully confirmed segments
        // can go.
        journal.remove_confirmed_blocking(checkpoint)?;
        Ok((journal, data, report))
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Appends a data record (sealed when the journal has codecs); `then(seq)` runs while the
    /// append lock is held, so calls to `then` happen in sequence order. Returns the sequence
    /// number; wait for [`Journal::wait_seq`] before acknowledging.
    ///
    /// Sealing binds the record to its sequence number, so it runs under the append lock (one
    /// pass of the codecs over the value, like a write to an encrypted remote tier).
    pub(crate) fn append_data(&self, data: Data<'_>, then: impl FnOnce(u64)) -> Result<u64, ConsistencyError> {
        let spawn = {
            let mut st = self.inner.state.lock();
            if let Some(f) = &st.failed {
                return Err(ConsistencyError::JournalFailed(f.clone()));
            }
            let seq = st.next_seq;
            let before = st.buf.len();
            let encoded = if self.inner.sealed {
                let plain = match data {
                    Data::Put { key, value } => encode_op(key, Some(value)),
                    Data::Delete { key } => encode_op(key, None),
                };
                let body = plain
                    .and_then(|p| self.inner.sealer.seal(Domain::Journal, seq, &p))
                    .map_err(|e| ConsistencyError::Encode { what: "record", message: e.to_string() })?;
                Record::Sealed { seq, body: &body }.encode_into(&mut st.buf)
            } else {
                match data {
                    Data::Put { key, value } => Record::Put { seq, key, value },
                    Data::Delete { key } => Record::Delete { seq, key },
                }
                .encode_into(&mut st.buf)
            };
            if let Err(e) = encoded {
                st.buf.truncate(before);
                return Err(match e {
                    RecordError::TooLarge { len } => ConsistencyError::TooLarge { size: len, limit: MAX_PAYLOAD_LEN },
                    other => ConsistencyError::Encode { what: "record", message: other.to_string() },
                });
            }
            st.next_seq += 1;
            st.buf_max_seq = seq;
            st.buf_max_lsn = st.next_lsn;
            st.next_lsn += 1;
            then(seq);
            let spawn = !st.committing;
            st.committing = true;
            (spawn, seq)
        };
        if spawn.0 {
            self.spawn_commit();
        }
        Ok(spawn.1)
    }

    /// Appends a checkpoint; returns its log position for [`Journal::wait_lsn`].
    pub(crate) fn append_checkpoint(&self, confirmed: u64) -> Result<u64, ConsistencyError> {
        self.inner.latest_checkpoint.fetch_max(confirmed, Ordering::AcqRel);
        let (spawn, lsn) = {
            let mut st = self.inner.state.lock();
            if let Some(f) = &st.failed {
                return Err(ConsistencyError::JournalFailed(f.clone()));
            }
            let lsn = st.next_lsn;
            Record::Checkpoint { confirmed }
                .encode_into(&mut st.buf)
                .map_err(|e| ConsistencyError::Encode { what: "checkpoint", message: e.to_string() })?;
            st.next_lsn += 1;
            st.buf_max_lsn = lsn;
            let spawn = !st.committing;
            st.committing = true;
            (spawn, lsn)
        };
        if spawn {
            self.spawn_commit();
        }
        Ok(lsn)
    }

    fn spawn_commit(&self) {
        let inner = self.inner.clone();
        tokio::spawn(commit_loop(inner));
    }

    /// Waits until data record `seq` is durable (per the sync policy).
    pub(crate) async fn wait_seq(&self, seq: u64) -> Result<(), ConsistencyError> {
        self.wait(|d| d.seq >= seq).await
    }

    /// Waits until the record at log position `lsn` is durable.
    pub(crate) async fn wait_lsn(&self, lsn: u64) -> Result<(), ConsistencyError> {
        self.wait(|d| d.lsn >= lsn).await
    }

    async fn wait(&self, done: impl Fn(&Durable) -> bool) -> Result<(), ConsistencyError> {
        let mut rx = self.inner.durable.subscribe();
        let d = rx
            .wait_for(|d| done(d) || d.failed.is_some())
            .await
            .map_err(|_| ConsistencyError::JournalFailed(Arc::from("journal closed")))?;
        if done(&d) {
            return Ok(());
        }
        Err(ConsistencyError::JournalFailed(d.failed.clone().unwrap_or_else(|| Arc::from("journal failed"))))
    }

    /// The highest data seq known durable.
    pub(crate) fn durable_seq(&self) -> u64 {
        self.inner.durable.borrow().seq
    }

    /// The failure that stopped the journal, if any.
    pub(crate) fn failure(&self) -> Option<Arc<str>> {
        self.inner.durable.borrow().failed.clone()
    }

    /// A receiver that changes whenever durability advances or fails.
    pub(crate) fn durable_changes(&self) -> watch::Receiver<Durable> {
        self.inner.durable.subscribe()
    }

    /// Whether some non-active segment holds only records `<= confirmed`.
    pub(crate) fn has_removable(&self, confirmed: u64) -> bool {
        let files = self.inner.files.lock();
        files.segments.iter().any(|(&id, &max)| id != files.active_id && max <= confirmed)
    }

    /// Removes non-active segments whose records are all `<= confirmed` (which a durable
    /// checkpoint must already cover). Blocking.
    pub(crate) fn remove_confirmed_blocking(&self, confirmed: u64) -> Result<usize, ConsistencyError> {
        let mut files = self.inner.files.lock();
        let active = files.active_id;
        let gone: Vec<u64> =
            files.segments.iter().filter(|&(&id, &max)| id != active && max <= confirmed).map(|(&id, _)| id).collect();
        for id in &gone {
            let path = segment_path(&self.inner.dir, *id);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ConsistencyError::journal_io("remove", &path, e)),
            }
            files.segments.remove(id);
        }
        if !gone.is_empty() {
            sync_dir(&self.inner.dir)?;
        }
        Ok(gone.len())
    }

    /// Commits (one `write` + one sync each under [`SyncPolicy::Always`]) so far.
    pub(crate) fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// Segment files currently kept (active included).
    pub(crate) fn segment_count(&self) -> usize {
        self.inner.files.lock().segments.len()
    }
}

async fn commit_loop(inner: Arc<Inner>) {
    loop {
        if let SyncPolicy::Batched { max_delay } = inner.sync {
            tokio::time::sleep(max_delay).await;
        }
        let (buf, max_seq, max_lsn) = {
            let mut st = inner.state.lock();
            if st.buf.is_empty() {
                st.committing = false;
                return;
            }
            let max_seq = std::mem::take(&mut st.buf_max_seq);
            (std::mem::take(&mut st.buf), max_seq, st.buf_max_lsn)
        };
        let worker = inner.clone();
        let result = tokio::task::spawn_blocking(move || worker.write_batch(&buf, max_seq)).await;
        let error = match result {
            Ok(Ok(())) => {
                inner.durable.send_modify(|d| {
                    d.seq = d.seq.max(max_seq);
                    d.lsn = d.lsn.max(max_lsn);
                });
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("journal commit task failed: {e}"),
        };
        tracing::error!(error = %error, "journal commit failed; write-behind stops accepting writes");
        let msg: Arc<str> = Arc::from(error);
        {
            let mut st = inner.state.lock();
            st.failed = Some(msg.clone());
            st.buf.clear();
            st.committing = false;
        }
        inner.durable.send_modify(|d| d.failed = Some(msg));
        return;
    }
}

impl Inner {
    /// Writes one commit's bytes to the active segment, syncs per policy, and rolls the segment
    /// when it is full. Blocking.
    fn write_batch(&self, buf: &[u8], max_seq: u64) -> Result<(), ConsistencyError> {
        let mut files = self.files.lock();
        let path = segment_path(&self.dir, files.active_id);
        files.active.write_all(buf).map_err(|e| ConsistencyError::journal_io("write", &path, e))?;
        if self.sync != SyncPolicy::Never {
            files.active.sync_data().map_err(|e| ConsistencyError::journal_io("sync", &path, e))?;
        }
        files.active_len += buf.len() as u64;
        self.commits.fetch_add(1, Ordering::Relaxed);
        let id = files.active_id;
        if let Some(m) = files.segments.get_mut(&id) {
            *m = (*m).max(max_seq);
        }
        if files.active_len >= self.segment_bytes {
            if self.sync == SyncPolicy::Never {
                files.active.sync_data().map_err(|e| ConsistencyError::journal_io("sync", &path, e))?;
            }
            let next = id + 1;
            let (f, len) =
                create_segment(&self.dir, next, self.latest_checkpoint.load(Ordering::Acquire), self.sealed)?;
            files.active = f;
            files.active_id = next;
            files.active_len = len;
            files.segments.insert(next, 0);
        }
        Ok(())
    }
}
