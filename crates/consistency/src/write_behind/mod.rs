//! Write-behind: the cache tiers now, the source later, through a durable local journal.
//!
//! [`WriteBehind::set`] writes the cache (L1 and every tier, like [`Cache::set`]), appends the
//! write to the [journal](crate::journal) and returns once the journal holds it durably (per
//! [`SyncPolicy`](crate::SyncPolicy)). A background flusher — one task on the caller's
//! runtime, stopped by [`WriteBehind::shutdown`] or when the last handle is dropped — takes
//! acknowledged writes in order, coalesces them per key (the last write of a batch wins),
//! writes them with [`Writer::write_many`] / [`Writer::delete`], retries failures with
//! exponential backoff and jitter, and then records a checkpoint so the journal can drop the
//! segments the source has confirmed.
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
//! **Encryption at rest**: give [`WriteBehindConfigBuilder::codecs`] the cache's codecs (the same
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
//! [`WriteBehindConfigBuilder::replay_plaintext`] allows replaying it once.
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
//!
//! ## Files
//! - `mod.rs`: [`WriteBehind`] — open (replay), `set`/`delete` (cache, journal, acknowledgement),
//!   `flush`, `shutdown`, counters.
//! - `config.rs`: [`WriteBehindConfig`] and its checking [`WriteBehindConfigBuilder`].
//! - `flusher.rs`: the state shared with the background flusher, and the flusher itself —
//!   batches, lanes, retries, splitting, probing, checkpoints.
//! - `dead_letter.rs`: the dead-letter file (`dead-letter.jsonl`): appending and reading back.
//! - `observer.rs`: [`WriteBehindObserver`] and [`WriteBehindEvent`] (backlog and flushes).

mod config;
pub mod dead_letter;
mod flusher;
mod observer;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata_cache_core::{Cache, CacheKey, CodecPipeline, Writer};
use tokio::sync::{Notify, Semaphore, watch};

pub use self::config::{WriteBehindConfig, WriteBehindConfigBuilder};
pub use self::dead_letter::{DEAD_LETTER_FILE, DeadLetter};
use self::flusher::{Op, Pending, Shared, flusher};
pub use self::observer::{WriteBehindEvent, WriteBehindObserver};
use crate::error::ConsistencyError;
use crate::journal::{Data, Journal, MAX_PAYLOAD_LEN, RECORD_HEADER_LEN, ReplayReport, Sealer};
use crate::stripes::Stripes;

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
             its remote tiers protect; pass the cache's codecs to WriteBehindConfigBuilder::codecs"
        )));
    }
    if cache.hashes_key_ids() && !codecs.codecs().iter().any(|c| c.required_on_decode()) {
        return Err(refuse(
            "the cache hashes key ids for its remote tiers but the journal has no encrypting codec (one required \
             on decode): keys would be stored in plaintext; pass the cache's codecs to WriteBehindConfigBuilder::codecs"
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
    /// Opens the journal in [`WriteBehindConfig::dir`] (creating it), replays what the source
    /// has not confirmed, and starts the flusher on the current tokio runtime.
    ///
    /// Errors: [`ConsistencyError::JournalUnprotected`] when the journal would
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

    /// Journal commits so far (each one `write` and, under
    /// [`SyncPolicy::Always`](crate::SyncPolicy::Always), one sync; concurrent writers share
    /// commits, checkpoints take commits too).
    pub fn journal_commits(&self) -> u64 {
        self.shared.journal.commits()
    }

    /// Journal segment files currently kept.
    pub fn journal_segments(&self) -> usize {
        self.shared.journal.segment_count()
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
