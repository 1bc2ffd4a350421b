//! Write-behind: the cache tiers now, the source later, through a durable local journal.
//!
//! [`WriteBehind::set`] writes the cache (L1 and every tier, like [`Cache::set`]), appends the
//! write to the [journal](crate::journal) and returns once the journal holds it durably (per
//! [`SyncPolicy`]). A background flusher — one task on the caller's runtime, stopped by
//! [`WriteBehind::shutdown`] or when the last handle is dropped — takes acknowledged writes in
//! order, coalesces them per key (the last write of a batch wins), writes them with
//! [`Writer::write_many`] / [`Writer::delete`], retries failures with exponential backoff and
//! jitter, and then records a checkpoint so the journal can drop the segments the source has
//! confirmed.
//!
//! **Poison entries**: when a part of a batch fails `max_attempts_before_split` times in a row
//! (an error or a panic of the writer), it is split in halves that are retried separately, down
//! to single entries, so that one entry the source always rejects (a constraint violation, an
//! oversized row) cannot block the others. A single entry that still fails after its attempts
//! is appended to `dead-letter.jsonl` in the journal directory (one JSON object per line, key
//! and value as hex postcard bytes), counted in [`WriteBehind::dead_lettered`], logged (without
//! key, value or error text) and treated as confirmed — **but only once the source is known to
//! be up**: some other write succeeded after this entry started failing (so the source rejects
//! this entry, not everything), or it has failed for `dead_letter_after` (default 5 minutes).
//! A source outage therefore never dead-letters good writes before `dead_letter_after`: the
//! flusher keeps retrying with backoff and `set` applies backpressure. If the dead-letter file
//! cannot be written, the entry keeps being retried.
//!
//! **Encryption at rest**: give [`WriteBehindConfig::codecs`] the cache's codecs (the same
//! [`CodecPipeline`] as its remote tiers, e.g. AES-256-GCM). Journal records then hold only a
//! sequence number and a sealed body (key and value together, bound to that sequence number),
//! and dead-letter lines hold a sealed body instead of hex postcard bytes; no key id and no
//! value is stored in plaintext, whether or not the cache hashes key ids. Opening refuses
//! ([`ConsistencyError::JournalUnprotected`]) a cache whose codecs are not all in the
//! journal's, or that hashes key ids (a PII cache) while the journal has no codec required on
//! decode (encryption). Replay with a wrong key, a missing codec or an altered record fails
//! with [`ConsistencyError::JournalUnreadable`], naming how many records cannot be replayed;
//! nothing is dropped or deleted. A journal written without codecs (an older version) is
//! refused by an encrypting policy ([`ConsistencyError::JournalPlaintext`]) unless
//! [`WriteBehindConfig::replay_plaintext`] allows replaying it once.
//!
//! Keys and values are stored in the journal as [postcard](https://docs.rs/postcard) bytes, so
//! `K` and `V` need serde's `Serialize + DeserializeOwned`. Changing their serde shape while
//! records are still journaled makes [`WriteBehind::open`] fail with
//! [`ConsistencyError::JournalDecode`]: flush before deploying such a change.
//!
//! **Backpressure**: at most `max_backlog` writes may wait for the source. When the backlog is
//! full, `set` waits up to `enqueue_timeout` and then fails with
//! [`ConsistencyError::Overloaded`]; nothing is dropped.
//!
//! **Restart**: [`WriteBehind::open`] replays the journal: writes acknowledged but not yet
//! confirmed by the source are queued again (delivery is at least once). Replayed writes are
//! not re-applied to the cache (the tiers received them before the crash); call
//! [`WriteBehind::flush`] before serving if the tiers may have lost them.
//!
//! One process per journal directory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::join_all;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata_cache_core::{BoxError, Cache, CacheEvent, CacheKey, CacheObserver, CodecPipeline, ConfigError, Writer};
use tokio::sync::{Notify, Semaphore, watch};

use crate::dead_letter;
pub use crate::dead_letter::{DEAD_LETTER_FILE, DeadLetter};
use crate::error::ConsistencyError;
use crate::journal::{Data, Journal, MAX_PAYLOAD_LEN, RECORD_HEADER_LEN, ReplayReport, Sealer, SyncPolicy};
use crate::stripes::Stripes;

/// Settings of a [`WriteBehind`] policy.
#[derive(Clone)]
#[must_use]
pub struct WriteBehindConfig {
    /// The journal directory (created if missing; one process per directory).
    pub dir: PathBuf,
    /// When the journal syncs (default [`SyncPolicy::Always`], with group commit).
    pub sync: SyncPolicy,
    /// A journal segment is rolled past this size (default 16 MiB).
    pub segment_bytes: u64,
    /// Writes that may wait for the source at once (default 100,000).
    pub max_backlog: usize,
    /// How long `set` waits for room in a full backlog before [`ConsistencyError::Overloaded`]
    /// (default 1 s).
    pub enqueue_timeout: Duration,
    /// The most writes per source batch (default 1,000).
    pub max_batch: usize,
    /// How many parts of one batch are written to the source at once (default 1). Parts hold
    /// disjoint keys, so per-key order is kept; raise it for sources that take concurrent
    /// writes well (a PostgreSQL pool), keep 1 for SQLite.
    pub flush_concurrency: usize,
    /// How long the flusher waits to gather a batch once a write is ready (default 5 ms;
    /// [`WriteBehind::flush`] cuts it short).
    pub batch_delay: Duration,
    /// The first retry delay after a failed source write (default 50 ms); doubled per attempt,
    /// with jitter.
    pub retry_base: Duration,
    /// The longest retry delay (default 10 s).
    pub retry_max: Duration,
    /// Consecutive failed attempts of a part of a batch before it is split in halves, or, for a
    /// single entry, moved to the dead-letter file (default 5).
    pub max_attempts_before_split: u32,
    /// How long a single entry may keep failing, with no other write succeeding meanwhile,
    /// before it is dead-lettered anyway (default 5 minutes).
    pub dead_letter_after: Duration,
    /// Receives [`CacheEvent::WriteBehindBacklog`] and [`CacheEvent::WriteBehindFlush`].
    pub observer: Option<Arc<dyn CacheObserver>>,
    /// Codecs that seal journal records and dead-letter lines (default none: plaintext). Give
    /// it the cache's codecs; an encrypting cache is refused without them.
    pub codecs: CodecPipeline,
    /// Whether an encrypting journal replays plaintext records found in it (default `false`:
    /// [`ConsistencyError::JournalPlaintext`]). Set it once to migrate a journal written
    /// without encryption.
    pub replay_plaintext: bool,
}

impl std::fmt::Debug for WriteBehindConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehindConfig")
            .field("dir", &self.dir)
            .field("sync", &self.sync)
            .field("segment_bytes", &self.segment_bytes)
            .field("max_backlog", &self.max_backlog)
            .field("enqueue_timeout", &self.enqueue_timeout)
            .field("max_batch", &self.max_batch)
            .field("flush_concurrency", &self.flush_concurrency)
            .field("batch_delay", &self.batch_delay)
            .field("retry_base", &self.retry_base)
            .field("retry_max", &self.retry_max)
            .field("max_attempts_before_split", &self.max_attempts_before_split)
            .field("dead_letter_after", &self.dead_letter_after)
            .field("observer", &self.observer.is_some())
            .field("codecs", &self.codecs)
            .field("replay_plaintext", &self.replay_plaintext)
            .finish()
    }
}

impl WriteBehindConfig {
    /// Defaults with the journal in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            sync: SyncPolicy::Always,
            segment_bytes: 16 * 1024 * 1024,
            max_backlog: 100_000,
            enqueue_timeout: Duration::from_secs(1),
            max_batch: 1_000,
            flush_concurrency: 1,
            batch_delay: Duration::from_millis(5),
            retry_base: Duration::from_millis(50),
            retry_max: Duration::from_secs(10),
            max_attempts_before_split: 5,
            dead_letter_after: Duration::from_secs(300),
            observer: None,
            codecs: CodecPipeline::new(),
            replay_plaintext: false,
        }
    }

    /// Seals journal records and dead-letter lines with `codecs` (pass the cache's codecs, e.g.
    /// its AES-256-GCM codec; see the [module documentation](crate::write_behind)).
    pub fn codecs(mut self, codecs: CodecPipeline) -> Self {
        self.codecs = codecs;
        self
    }

    /// Lets an encrypting journal replay plaintext records (to migrate a journal written
    /// without encryption; new records are sealed).
    pub fn replay_plaintext(mut self, allow: bool) -> Self {
        self.replay_plaintext = allow;
        self
    }

    /// Sets the sync policy.
    pub fn sync(mut self, sync: SyncPolicy) -> Self {
        self.sync = sync;
        self
    }

    /// Sets the segment size.
    pub fn segment_bytes(mut self, n: u64) -> Self {
        self.segment_bytes = n;
        self
    }

    /// Sets the backlog bound.
    pub fn max_backlog(mut self, n: usize) -> Self {
        self.max_backlog = n;
        self
    }

    /// Sets the enqueue deadline.
    pub fn enqueue_timeout(mut self, d: Duration) -> Self {
        self.enqueue_timeout = d;
        self
    }

    /// Sets the batch size.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// Sets how many parts of a batch are written at once.
    pub fn flush_concurrency(mut self, n: usize) -> Self {
        self.flush_concurrency = n;
        self
    }

    /// Sets the batch delay.
    pub fn batch_delay(mut self, d: Duration) -> Self {
        self.batch_delay = d;
        self
    }

    /// Sets the retry backoff bounds.
    pub fn retry(mut self, base: Duration, max: Duration) -> Self {
        self.retry_base = base;
        self.retry_max = max;
        self
    }

    /// Sets how many consecutive failures of a batch part lead to a split (or, for a single
    /// entry, to the dead-letter file).
    pub fn max_attempts_before_split(mut self, n: u32) -> Self {
        self.max_attempts_before_split = n;
        self
    }

    /// Sets how long a lone failing entry is retried, with no other write succeeding, before it
    /// is dead-lettered anyway.
    pub fn dead_letter_after(mut self, d: Duration) -> Self {
        self.dead_letter_after = d;
        self
    }

    /// Sets the observer.
    pub fn observer(mut self, o: Arc<dyn CacheObserver>) -> Self {
        self.observer = Some(o);
        self
    }

    /// Checks the settings, naming the one that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_backlog == 0 || self.max_backlog > Semaphore::MAX_PERMITS {
            return Err(ConfigError::new("write_behind.max_backlog", "must be between 1 and 2^61"));
        }
        if self.max_batch == 0 {
            return Err(ConfigError::new("write_behind.max_batch", "must be at least 1"));
        }
        if self.flush_concurrency == 0 || self.flush_concurrency > 256 {
            return Err(ConfigError::new("write_behind.flush_concurrency", "must be between 1 and 256"));
        }
        if self.segment_bytes < 4096 {
            return Err(ConfigError::new("write_behind.segment_bytes", "must be at least 4096"));
        }
        if self.retry_base.is_zero() || self.retry_max < self.retry_base {
            return Err(ConfigError::new("write_behind.retry", "need 0 < retry_base <= retry_max"));
        }
        if self.max_attempts_before_split == 0 {
            return Err(ConfigError::new("write_behind.max_attempts_before_split", "must be at least 1"));
        }
        if let SyncPolicy::Batched { max_delay } = self.sync
            && max_delay > Duration::from_secs(10)
        {
            return Err(ConfigError::new("write_behind.sync", "Batched max_delay must be at most 10 s"));
        }
        Ok(())
    }
}

enum Op<K, V> {
    Put(K, V),
    Delete(K),
}

/// One flush lane's share of a batch: puts and deletes.
type Lane<K, V> = (Vec<(K, V)>, Vec<K>);

struct Pending<K, V> {
    seq: u64,
    op: Op<K, V>,
    /// Whether this entry holds a backlog permit (replayed entries do not).
    held: bool,
}

struct Shared<K, V> {
    name: Arc<str>,
    sealer: Arc<Sealer>,
    cache: Cache<K, V>,
    writer: Arc<dyn Writer<K, V>>,
    journal: Journal,
    cfg: WriteBehindConfig,
    pending: Mutex<VecDeque<Pending<K, V>>>,
    wake: Notify,
    urgent: Notify,
    urgent_waiters: AtomicUsize,
    permits: Semaphore,
    backlog: AtomicUsize,
    flushed: AtomicU64,
    retries: AtomicU64,
    batches: AtomicU64,
    dead_lettered: AtomicU64,
    /// Successful source writes (evidence that the source is up when one entry keeps failing).
    successes: AtomicU64,
    /// One probe at a time (`probe_with_a_waiting_entry`): two lanes probing at once could pick
    /// two waiting entries of one key (the first is out of `pending` while it is written) and
    /// write them concurrently, out of order.
    probe: tokio::sync::Mutex<()>,
    confirmed: watch::Sender<u64>,
    closing: AtomicBool,
    stripes: Stripes,
}

struct TaskGuard(Mutex<Option<tokio::task::JoinHandle<()>>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if let Some(h) = self.0.lock().take() {
            h.abort();
        }
    }
}

/// A write-behind policy over one [`Cache`] and one [`Writer`]. Cheap to clone; clones share
/// the journal and the flusher. Dropping the last clone stops the flusher without flushing
/// (what was acknowledged stays in the journal and is replayed by the next
/// [`WriteBehind::open`]); call [`WriteBehind::shutdown`] to flush first.
///
/// See the [module documentation](crate::write_behind).
pub struct WriteBehind<K, V> {
    shared: Arc<Shared<K, V>>,
    task: Arc<TaskGuard>,
}

impl<K, V> Clone for WriteBehind<K, V> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone(), task: self.task.clone() }
    }
}

impl<K, V> std::fmt::Debug for WriteBehind<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehind")
            .field("cache", &self.shared.name)
            .field("journal", &self.shared.journal.dir())
            .field("backlog", &self.shared.backlog.load(Ordering::Relaxed))
            .finish()
    }
}

fn encode<T: Serialize>(what: &'static str, t: &T) -> Result<Vec<u8>, ConsistencyError> {
    postcard::to_allocvec(t).map_err(|e| ConsistencyError::Encode { what, message: e.to_string() })
}

/// Refuses a journal that would keep in plaintext what the cache protects.
fn check_protected<K, V>(cache: &Cache<K, V>, codecs: &CodecPipeline) -> Result<(), ConsistencyError>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    let journal: Vec<&'static str> = codecs.codecs().iter().map(|c| c.name()).collect();
    let missing: Vec<&'static str> = cache.codec_names().into_iter().filter(|n| !journal.contains(n)).collect();
    let refuse = |reason: String| ConsistencyError::JournalUnprotected { cache: Arc::from(cache.name()), reason };
    if !missing.is_empty() {
        return Err(refuse(format!(
            "the cache's codecs {missing:?} are not among the journal's {journal:?}: the journal would store what \
             its remote tiers protect; pass the cache's codecs to WriteBehindConfig::codecs"
        )));
    }
    if cache.hashes_key_ids() && !codecs.codecs().iter().any(|c| c.required_on_decode()) {
        return Err(refuse(
            "the cache hashes key ids for its remote tiers but the journal has no encrypting codec (one required \
             on decode): keys would be stored in plaintext; pass the cache's codecs to WriteBehindConfig::codecs"
                .to_owned(),
        ));
    }
    Ok(())
}

impl<K, V> WriteBehind<K, V>
where
    K: CacheKey + Serialize + DeserializeOwned,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Opens the journal in `config.dir` (creating it), replays what the source has not
    /// confirmed, and starts the flusher on the current tokio runtime.
    ///
    /// Errors: invalid config, [`ConsistencyError::JournalUnprotected`] when the journal would
    /// store in plaintext what the cache protects, journal I/O,
    /// [`ConsistencyError::JournalCorrupt`] for damage in the middle of the journal,
    /// [`ConsistencyError::JournalUnreadable`] for sealed records the configured codecs cannot
    /// open (wrong key, altered record), [`ConsistencyError::JournalPlaintext`] for plaintext
    /// records in an encrypting journal, [`ConsistencyError::JournalDecode`] for records that do
    /// not decode as `K`/`V`. A torn tail is cut off and reported in
    /// [`ReplayReport::torn_tail`].
    pub async fn open(
        cache: Cache<K, V>,
        writer: Arc<dyn Writer<K, V>>,
        config: WriteBehindConfig,
    ) -> Result<(Self, ReplayReport), ConsistencyError> {
        config.validate()?;
        check_protected(&cache, &config.codecs)?;
        let sealer = Arc::new(Sealer::new(config.codecs.clone(), cache.name(), cache.namespace().clone())?);
        let (dir, sync, seg, plain) = (config.dir.clone(), config.sync, config.segment_bytes, config.replay_plaintext);
        let s2 = sealer.clone();
        let (journal, replayed, report) =
            tokio::task::spawn_blocking(move || Journal::open_blocking(&dir, sync, seg, s2, plain))
                .await
                .map_err(|e| ConsistencyError::JournalFailed(Arc::from(format!("journal open task failed: {e}"))))??;
        let mut pending = VecDeque::with_capacity(replayed.len());
        let mut confirmed = report.checkpoint;
        for r in replayed {
            let bad = |m: postcard::Error| ConsistencyError::JournalDecode {
                segment: r.segment.clone(),
                seq: r.seq,
                message: m.to_string(),
            };
            let key: K = postcard::from_bytes(&r.key).map_err(bad)?;
            let op = match &r.value {
                Some(v) => Op::Put(key, postcard::from_bytes(v).map_err(bad)?),
                None => Op::Delete(key),
            };
            pending.push_back(Pending { seq: r.seq, op, held: false });
        }
        if pending.is_empty() {
            // Nothing to redo: everything up to the durable point is confirmed.
            confirmed = confirmed.max(journal.durable_seq());
        }
        let backlog = pending.len();
        let shared = Arc::new(Shared {
            name: Arc::from(cache.name()),
            sealer,
            cache,
            writer,
            journal,
            permits: Semaphore::new(config.max_backlog),
            cfg: config,
            pending: Mutex::new(pending),
            wake: Notify::new(),
            urgent: Notify::new(),
            urgent_waiters: AtomicUsize::new(0),
            backlog: AtomicUsize::new(backlog),
            flushed: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            probe: tokio::sync::Mutex::new(()),
            confirmed: watch::Sender::new(confirmed),
            closing: AtomicBool::new(false),
            stripes: Stripes::new(),
        });
        if report.requeued > 0 {
            tracing::info!(cache = %shared.name, requeued = report.requeued, "write-behind: replaying journal");
        }
        shared.emit_backlog();
        let task = tokio::spawn(flusher(shared.clone()));
        Ok((Self { shared, task: Arc::new(TaskGuard(Mutex::new(Some(task)))) }, report))
    }

    /// The cache.
    pub fn cache(&self) -> &Cache<K, V> {
        &self.shared.cache
    }

    /// Writes `value` to the cache now and to the source later. Returns once the write is
    /// durable in the journal (the acknowledgement).
    ///
    /// Errors: [`ConsistencyError::Overloaded`] when the backlog stays full past
    /// `enqueue_timeout` (nothing written); a cache error (nothing written); a journal error
    /// (the key is invalidated in the cache, since the source may never get the value);
    /// [`ConsistencyError::Closed`] after [`WriteBehind::shutdown`].
    pub async fn set(&self, key: K, value: V) -> Result<Arc<V>, ConsistencyError> {
        let kb = encode("key", &key)?;
        let vb = encode("value", &value)?;
        let size = RECORD_HEADER_LEN + 13 + kb.len() + vb.len();
        if size > MAX_PAYLOAD_LEN {
            return Err(ConsistencyError::TooLarge { size, limit: MAX_PAYLOAD_LEN });
        }
        let s = self.shared.clone();
        let ack_key = key.clone();
        // The cache write and the journal append run as one task, so that a caller that stops
        // waiting cannot leave a value in the cache that never reaches the journal.
        let (stored, seq) = spawn_critical(async move {
            s.check_open()?;
            let permit = s.acquire().await?;
            let _g = s.stripes.lock(&key).await;
            let stored = s.cache.set(key.clone(), value.clone()).await?;
            let k2 = key.clone();
            let appended = s.journal.append_data(Data::Put { key: &kb, value: &vb }, |seq| {
                s.push(Pending { seq, op: Op::Put(k2, value), held: true });
            });
            match appended {
                Ok(seq) => {
                    permit.forget();
                    Ok((stored, seq))
                }
                Err(e) => {
                    let _ = s.cache.invalidate(&key).await;
                    Err(e)
                }
            }
        })
        .await?;
        if let Err(e) = self.acknowledge(seq).await {
            // The journal failed before the write was durable: the source may never get the
            // value, so the cache must not keep it either.
            let _ = self.shared.cache.invalidate(&ack_key).await;
            return Err(e);
        }
        Ok(stored)
    }

    /// Removes `key` from the cache now and from the source later (same acknowledgement and
    /// errors as [`WriteBehind::set`]).
    pub async fn delete(&self, key: K) -> Result<(), ConsistencyError> {
        let kb = encode("key", &key)?;
        let s = self.shared.clone();
        let seq = spawn_critical(async move {
            s.check_open()?;
            let permit = s.acquire().await?;
            let _g = s.stripes.lock(&key).await;
            s.cache.invalidate(&key).await?;
            let seq = s.journal.append_data(Data::Delete { key: &kb }, |seq| {
                s.push(Pending { seq, op: Op::Delete(key), held: true })
            })?;
            permit.forget();
            Ok(seq)
        })
        .await?;
        self.acknowledge(seq).await
    }

    async fn acknowledge(&self, seq: u64) -> Result<(), ConsistencyError> {
        self.shared.emit_backlog();
        self.shared.journal.wait_seq(seq).await?;
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Waits until every write acknowledged before this call is in the source.
    pub async fn flush(&self) -> Result<(), ConsistencyError> {
        let s = &self.shared;
        let target = s.journal.durable_seq();
        let mut rx = s.confirmed.subscribe();
        if *rx.borrow_and_update() >= target {
            return Ok(());
        }
        s.urgent_waiters.fetch_add(1, Ordering::AcqRel);
        s.urgent.notify_one();
        s.wake.notify_one();
        let r = rx.wait_for(|c| *c >= target).await.map(|_| ());
        s.urgent_waiters.fetch_sub(1, Ordering::AcqRel);
        r.map_err(|_| ConsistencyError::Closed(s.name.clone()))
    }

    /// Stops accepting writes, flushes everything acknowledged, records a final checkpoint and
    /// stops the flusher. Waits as long as the source needs (wrap it in a timeout to bound it;
    /// what is not flushed stays in the journal).
    pub async fn shutdown(&self) -> Result<(), ConsistencyError> {
        let s = &self.shared;
        s.closing.store(true, Ordering::Release);
        self.flush().await?;
        s.wake.notify_one();
        let handle = self.task.0.lock().take();
        if let Some(h) = handle {
            let _ = h.await;
        }
        Ok(())
    }

    /// Writes acknowledged but not yet confirmed by the source.
    pub fn backlog(&self) -> usize {
        self.shared.backlog.load(Ordering::Acquire)
    }

    /// Writes confirmed by the source (before coalescing: N writes to one key count N; writes
    /// whose entry was dead-lettered count too).
    pub fn flushed(&self) -> u64 {
        self.shared.flushed.load(Ordering::Relaxed)
    }

    /// Failed source batches that were retried.
    pub fn retries(&self) -> u64 {
        self.shared.retries.load(Ordering::Relaxed)
    }

    /// Entries the source kept rejecting (or the writer panicked on) even when written alone;
    /// they were appended to `dead-letter.jsonl` in the journal directory and treated as
    /// confirmed.
    pub fn dead_lettered(&self) -> u64 {
        self.shared.dead_lettered.load(Ordering::Relaxed)
    }

    /// Reads the entries of the dead-letter file back (opening sealed lines with the journal's
    /// codecs; plaintext lines written without codecs are read as they are). Errors: the file cannot be read, or a line is not a dead-letter entry or cannot
    /// be opened ([`ConsistencyError::DeadLetterUnreadable`]).
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter<K, V>>, ConsistencyError> {
        let path = self.shared.journal.dir().join(DEAD_LETTER_FILE);
        let sealer = self.shared.sealer.clone();
        tokio::task::spawn_blocking(move || dead_letter::read(&path, &sealer))
            .await
            .map_err(|e| ConsistencyError::JournalFailed(Arc::from(format!("dead-letter read task failed: {e}"))))?
    }

    /// Source batches written successfully.
    pub fn batches(&self) -> u64 {
        self.shared.batches.load(Ordering::Relaxed)
    }

    /// Journal commits so far (each one `write` and, under [`SyncPolicy::Always`], one sync;
    /// concurrent writers share commits, checkpoints take commits too).
    pub fn journal_commits(&self) -> u64 {
        self.shared.journal.commits()
    }

    /// Journal segment files currently kept.
    pub fn journal_segments(&self) -> usize {
        self.shared.journal.segment_count()
    }
}

/// Splits a lane part in two non-empty halves (it holds at least two entries).
fn split_lane<K, V>((mut puts, mut deletes): Lane<K, V>) -> (Lane<K, V>, Lane<K, V>) {
    if !puts.is_empty() && !deletes.is_empty() {
        return ((puts, Vec::new()), (Vec::new(), deletes));
    }
    if deletes.is_empty() {
        let rest = puts.split_off(puts.len() / 2);
        ((puts, Vec::new()), (rest, Vec::new()))
    } else {
        let rest = deletes.split_off(deletes.len() / 2);
        ((Vec::new(), deletes), (Vec::new(), rest))
    }
}

/// Runs `fut` as its own task and waits for it (the task finishes even if the caller stops
/// waiting).
async fn spawn_critical<T: Send + 'static>(
    fut: impl Future<Output = Result<T, ConsistencyError>> + Send + 'static,
) -> Result<T, ConsistencyError> {
    match tokio::spawn(fut).await {
        Ok(r) => r,
        Err(e) => Err(ConsistencyError::JournalFailed(Arc::from(format!("write task failed: {e}")))),
    }
}

impl<K, V> Shared<K, V>
where
    K: CacheKey + Serialize,
    V: Serialize + Send + Sync + 'static,
{
    fn check_open(&self) -> Result<(), ConsistencyError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(ConsistencyError::Closed(self.name.clone()));
        }
        Ok(())
    }

    async fn acquire(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ConsistencyError> {
        if let Ok(p) = self.permits.try_acquire() {
            return Ok(p);
        }
        let started = Instant::now();
        match tokio::time::timeout(self.cfg.enqueue_timeout, self.permits.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(ConsistencyError::Closed(self.name.clone())),
            Err(_) => Err(ConsistencyError::Overloaded {
                cache: self.name.clone(),
                backlog: self.backlog.load(Ordering::Acquire),
                waited: started.elapsed(),
            }),
        }
    }

    /// Queues an entry (called under the journal's append lock, in sequence order).
    fn push(&self, p: Pending<K, V>) {
        self.backlog.fetch_add(1, Ordering::AcqRel);
        self.pending.lock().push_back(p);
    }

    fn emit_backlog(&self) {
        if let Some(o) = &self.cfg.observer {
            o.on_event(&CacheEvent::WriteBehindBacklog {
                cache: &self.name,
                backlog: self.backlog.load(Ordering::Acquire),
            });
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.cfg.retry_base.as_secs_f64() * 2f64.powi(attempt.min(30) as i32);
        let capped = base.min(self.cfg.retry_max.as_secs_f64());
        // "Equal jitter": half fixed, half random, so retries of many instances spread out.
        Duration::from_secs_f64(capped / 2.0 + fastrand::f64() * capped / 2.0)
    }

    /// Takes the next batch: acknowledged entries in sequence order, at most `max_batch`.
    fn take_batch(&self, durable: u64) -> Vec<Pending<K, V>> {
        let mut p = self.pending.lock();
        let mut out = Vec::new();
        while out.len() < self.cfg.max_batch && p.front().is_some_and(|e| e.seq <= durable) {
            if let Some(e) = p.pop_front() {
                out.push(e);
            }
        }
        out
    }

    /// Drops entries that can never become durable (the journal failed); they were never
    /// acknowledged.
    fn drop_unacknowledged(&self, durable: u64) {
        let mut p = self.pending.lock();
        let before = p.len();
        let mut held = 0;
        p.retain(|e| {
            let keep = e.seq <= durable;
            if !keep && e.held {
                held += 1;
            }
            keep
        });
        let dropped = before - p.len();
        drop(p);
        if dropped > 0 {
            self.backlog.fetch_sub(dropped, Ordering::AcqRel);
            self.permits.add_permits(held);
        }
    }

    async fn write_to_source(&self, puts: &[(K, V)], deletes: &[K]) -> Result<(), BoxError> {
        if !puts.is_empty() {
            self.writer.write_many(puts).await?;
        }
        for k in deletes {
            self.writer.delete(k).await?;
        }
        Ok(())
    }

    /// Writes, ahead of its batch, the oldest acknowledged entry waiting behind the current
    /// batch whose key the batch does not hold (so per-key order is kept: nothing older for that
    /// key is unconfirmed), and puts it back in its place. Its success is evidence that the
    /// source is up while one entry of the batch keeps failing alone. Returns whether the source
    /// took it.
    async fn probe_with_a_waiting_entry(&self, batch_keys: &HashSet<K>) -> bool {
        let _one_at_a_time = self.probe.lock().await;
        let durable = self.journal.durable_seq();
        let entry = {
            let mut p = self.pending.lock();
            let at = p.iter().take_while(|e| e.seq <= durable).position(|e| match &e.op {
                Op::Put(k, _) | Op::Delete(k) => !batch_keys.contains(k),
            });
            at.and_then(|i| p.remove(i))
        };
        let Some(Pending { seq, op, held }) = entry else { return false };
        let (ok, op) = match op {
            Op::Put(k, v) => {
                let items = [(k, v)];
                let r = AssertUnwindSafe(self.writer.write_many(&items)).catch_unwind().await;
                let [(k, v)] = items;
                (matches!(r, Ok(Ok(()))), Op::Put(k, v))
            }
            Op::Delete(k) => {
                let r = AssertUnwindSafe(self.writer.delete(&k)).catch_unwind().await;
                (matches!(r, Ok(Ok(()))), Op::Delete(k))
            }
        };
        let entry = Pending { seq, op, held };
        // Back in sequence order: its own batch writes it again (idempotent), then anything
        // newer for its key.
        let mut p = self.pending.lock();
        let at = p.iter().position(|e| e.seq > entry.seq).unwrap_or(p.len());
        p.insert(at, entry);
        drop(p);
        if ok {
            self.successes.fetch_add(1, Ordering::AcqRel);
        }
        ok
    }

    /// Writes one lane of a batch: retries with backoff; a part that fails
    /// `max_attempts_before_split` times in a row is split in halves, and a single entry that
    /// still fails is dead-lettered once another write succeeded meanwhile (a waiting entry is
    /// tried for that, see [`Self::probe_with_a_waiting_entry`]) or after `dead_letter_after`.
    /// Returns the number of dead-lettered entries.
    async fn write_lane(&self, puts: Vec<(K, V)>, deletes: Vec<K>, batch_keys: &HashSet<K>) -> usize {
        let budget = self.cfg.max_attempts_before_split.max(1);
        let mut dead = 0;
        // Parts to write (last = next) with the backoff step they carry: backoff keeps growing
        // across splits, so that an outage is not mistaken for poison entries too quickly.
        // Each part carries when it started failing and the success count then (evidence).
        type Part<K, V> = (Lane<K, V>, u32, Option<(Instant, u64)>);
        let mut work: Vec<Part<K, V>> = vec![((puts, deletes), 0, None)];
        while let Some(((puts, deletes), mut step, mut failing_since)) = work.pop() {
            let entries = puts.len() + deletes.len();
            if entries == 0 {
                continue;
            }
            let mut failures = 0u32;
            loop {
                let started = Instant::now();
                let r = AssertUnwindSafe(self.write_to_source(&puts, &deletes)).catch_unwind().await;
                let duration = started.elapsed();
                // Only the kind of failure is logged: writer errors and panic messages may
                // contain keys or values.
                let failure = match &r {
                    Ok(Ok(())) => None,
                    Ok(Err(_)) => Some("error"),
                    Err(_) => Some("panic"),
                };
                if let Some(o) = &self.cfg.observer {
                    o.on_event(&CacheEvent::WriteBehindFlush {
                        cache: &self.name,
                        entries,
                        duration,
                        ok: failure.is_none(),
                    });
                }
                let Some(failure) = failure else {
                    self.successes.fetch_add(1, Ordering::AcqRel);
                    break;
                };
                drop(r);
                let (since, successes_then) =
                    *failing_since.get_or_insert_with(|| (Instant::now(), self.successes.load(Ordering::Acquire)));
                self.retries.fetch_add(1, Ordering::Relaxed);
                failures = failures.saturating_add(1);
                if failures >= budget {
                    if entries > 1 {
                        tracing::warn!(
                            cache = %self.name, entries, failures, failure,
                            "write-behind: batch part keeps failing; splitting it to isolate the failing entry"
                        );
                        let (a, b) = split_lane((puts, deletes));
                        // The halves have been failing since the whole part did: a half that
                        // succeeds is evidence against the other, whichever is written first.
                        work.push((b, step, failing_since));
                        work.push((a, step, failing_since));
                        break;
                    }
                    let mut source_is_up = self.successes.load(Ordering::Acquire) > successes_then;
                    if !source_is_up && work.is_empty() && entries == 1 {
                        // Alone: the writes queued behind the batch tell an outage from a
                        // poison entry (without them it would hold the pipeline until
                        // dead_letter_after).
                        source_is_up = self.probe_with_a_waiting_entry(batch_keys).await;
                    }
                    if !source_is_up && since.elapsed() < self.cfg.dead_letter_after {
                        if !work.is_empty() {
                            // Let the other parts go first: their success (or failure) tells an
                            // outage from a poison entry.
                            work.insert(0, ((puts, deletes), step, failing_since));
                            break;
                        }
                        // Maybe an outage, not a poison entry: keep retrying (backoff below).
                        failures = budget - 1;
                    } else {
                        match self.dead_letter(&puts, &deletes) {
                            Ok(()) => {
                                dead += 1;
                                let total = self.dead_lettered.fetch_add(1, Ordering::Relaxed) + 1;
                                tracing::error!(
                                    cache = %self.name, failures, failure, dead_lettered_total = total,
                                    "write-behind: source keeps rejecting one entry; moved it to the dead-letter file"
                                );
                                break;
                            }
                            Err(error) => {
                                // The I/O error names the file, not the entry.
                                tracing::error!(
                                    cache = %self.name, %error,
                                    "write-behind: dead-letter file not written; retrying the entry"
                                );
                            }
                        }
                    }
                }
                let delay = self.backoff(step);
                tracing::warn!(
                    cache = %self.name, entries, attempt = failures, failure, retry_in_ms = delay.as_millis() as u64,
                    "write-behind: source write failed; retrying"
                );
                step = step.saturating_add(1);
                tokio::time::sleep(delay).await;
            }
        }
        dead
    }

    /// Appends one entry to `dead-letter.jsonl` in the journal directory, synced (sealed when
    /// the journal has codecs).
    fn dead_letter(&self, puts: &[(K, V)], deletes: &[K]) -> std::io::Result<()> {
        dead_letter::append(self.journal.dir(), &self.name, &self.sealer, puts, deletes)
    }

    async fn flush_batch(&self, batch: Vec<Pending<K, V>>) {
        let Some(last) = batch.last().map(|p| p.seq) else { return };
        let n = batch.len();
        let held = batch.iter().filter(|p| p.held).count();
        // Coalesce: the last operation per key wins.
        let mut latest: HashMap<K, Op<K, V>> = HashMap::with_capacity(n);
        for p in batch {
            let k = match &p.op {
                Op::Put(k, _) | Op::Delete(k) => k.clone(),
            };
            latest.insert(k, p.op);
        }
        // Split into lanes by key: lanes hold disjoint keys, so they may be written
        // concurrently; the next batch starts only when every lane is in the source.
        let batch_keys: HashSet<K> = latest.keys().cloned().collect();
        let lanes = self.cfg.flush_concurrency.min(latest.len()).max(1);
        let mut parts: Vec<Lane<K, V>> = (0..lanes).map(|_| (Vec::new(), Vec::new())).collect();
        for (i, (_, op)) in latest.into_iter().enumerate() {
            let part = &mut parts[i % lanes];
            match op {
                Op::Put(k, v) => part.0.push((k, v)),
                Op::Delete(k) => part.1.push(k),
            }
        }
        join_all(parts.into_iter().map(|(puts, deletes)| self.write_lane(puts, deletes, &batch_keys))).await;
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.flushed.fetch_add(n as u64, Ordering::Relaxed);
        self.backlog.fetch_sub(n, Ordering::AcqRel);
        self.permits.add_permits(held);
        self.confirmed.send_modify(|c| *c = (*c).max(last));
        self.emit_backlog();
        self.checkpoint(last).await;
    }

    /// Records that everything up to `confirmed` is in the source and drops journal segments
    /// that hold nothing newer.
    async fn checkpoint(&self, confirmed: u64) {
        let lsn = match self.journal.append_checkpoint(confirmed) {
            Ok(lsn) => lsn,
            Err(error) => {
                tracing::warn!(cache = %self.name, %error, "write-behind: checkpoint not recorded");
                return;
            }
        };
        if !self.journal.has_removable(confirmed) {
            return;
        }
        if let Err(error) = self.journal.wait_lsn(lsn).await {
            tracing::warn!(cache = %self.name, %error, "write-behind: checkpoint not durable");
            return;
        }
        let j = self.journal.clone();
        match tokio::task::spawn_blocking(move || j.remove_confirmed_blocking(confirmed)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(cache = %self.name, %error, "write-behind: old segments not removed"),
            Err(error) => tracing::warn!(cache = %self.name, %error, "write-behind: segment cleanup task failed"),
        }
    }
}

async fn flusher<K, V>(s: Arc<Shared<K, V>>)
where
    K: CacheKey + Serialize,
    V: Serialize + Send + Sync + 'static,
{
    let mut durable_rx = s.journal.durable_changes();
    loop {
        durable_rx.borrow_and_update();
        let durable = s.journal.durable_seq();
        let (ready, empty) = {
            let p = s.pending.lock();
            (p.front().is_some_and(|e| e.seq <= durable), p.is_empty())
        };
        if !ready {
            if s.journal.failure().is_some() {
                s.drop_unacknowledged(durable);
            }
            if empty && s.closing.load(Ordering::Acquire) {
                break;
            }
            tokio::select! {
                _ = s.wake.notified() => {}
                r = durable_rx.changed() => if r.is_err() { break },
            }
            continue;
        }
        let full = s.pending.lock().len() >= s.cfg.max_batch;
        if !full && !s.cfg.batch_delay.is_zero() && s.urgent_waiters.load(Ordering::Acquire) == 0 {
            tokio::select! {
                _ = tokio::time::sleep(s.cfg.batch_delay) => {}
                _ = s.urgent.notified() => {}
            }
        }
        let batch = s.take_batch(s.journal.durable_seq());
        s.flush_batch(batch).await;
    }
    // Final checkpoint, synced, so that the next open replays nothing.
    let confirmed = *s.confirmed.borrow();
    if let Ok(lsn) = s.journal.append_checkpoint(confirmed) {
        let _ = s.journal.wait_lsn(lsn).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_the_field() {
        let c = WriteBehindConfig::new("/tmp/x").max_backlog(0);
        assert_eq!(c.validate().unwrap_err().field, "write_behind.max_backlog");
        let c = WriteBehindConfig::new("/tmp/x").retry(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(c.validate().unwrap_err().field, "write_behind.retry");
        let c = WriteBehindConfig::new("/tmp/x").max_attempts_before_split(0);
        assert_eq!(c.validate().unwrap_err().field, "write_behind.max_attempts_before_split");
        assert!(WriteBehindConfig::new("/tmp/x").validate().is_ok());
    }
}
