//! The flusher and the state it shares with [`WriteBehind`](super::WriteBehind): it takes
//! acknowledged writes in sequence order, coalesces them per key, writes them to the source in
//! lanes of disjoint keys, retries with backoff, splits failing parts down to single entries,
//! dead-letters poison entries once the source is known to be up, then checkpoints the journal.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::join_all;
use parking_lot::Mutex;
use serde::Serialize;
use strata_cache_core::{BoxError, Cache, CacheKey, Writer};
use tokio::sync::{Notify, Semaphore, watch};

use super::config::WriteBehindConfig;
use super::dead_letter;
use super::observer::WriteBehindEvent;
use crate::error::ConsistencyError;
use crate::journal::{Journal, Sealer};
use crate::stripes::Stripes;

/// One acknowledged operation waiting for the source.
pub(super) enum Op<K, V> {
    Put(K, V),
    Delete(K),
}

/// One flush lane's share of a batch: puts and deletes.
type Lane<K, V> = (Vec<(K, V)>, Vec<K>);

/// An operation and its journal sequence number.
pub(super) struct Pending<K, V> {
    pub(super) seq: u64,
    pub(super) op: Op<K, V>,
    /// Whether this entry holds a backlog permit (replayed entries do not).
    pub(super) held: bool,
}

/// The state shared by the [`WriteBehind`](super::WriteBehind) handles and the flusher.
pub(super) struct Shared<K, V> {
    pub(super) name: Arc<str>,
    pub(super) sealer: Arc<Sealer>,
    pub(super) cache: Cache<K, V>,
    pub(super) writer: Arc<dyn Writer<K, V>>,
    pub(super) journal: Journal,
    pub(super) cfg: WriteBehindConfig,
    pub(super) pending: Mutex<VecDeque<Pending<K, V>>>,
    pub(super) wake: Notify,
    pub(super) urgent: Notify,
    pub(super) urgent_waiters: AtomicUsize,
    pub(super) permits: Semaphore,
    pub(super) backlog: AtomicUsize,
    pub(super) flushed: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    /// Successful source writes (evidence that the source is up when one entry keeps failing).
    pub(super) successes: AtomicU64,
    /// One probe at a time (`probe_with_a_waiting_entry`): two lanes probing at once could pick
    /// two waiting entries of one key (the first is out of `pending` while it is written) and
    /// write them concurrently, out of order.
    pub(super) probe: tokio::sync::Mutex<()>,
    pub(super) confirmed: watch::Sender<u64>,
    pub(super) closing: AtomicBool,
    pub(super) stripes: Stripes,
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

impl<K, V> Shared<K, V>
where
    K: CacheKey + Serialize,
    V: Serialize + Send + Sync + 'static,
{
    pub(super) fn check_open(&self) -> Result<(), ConsistencyError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(ConsistencyError::Closed(self.name.clone()));
        }
        Ok(())
    }

    pub(super) async fn acquire(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ConsistencyError> {
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
    pub(super) fn push(&self, p: Pending<K, V>) {
        self.backlog.fetch_add(1, Ordering::AcqRel);
        self.pending.lock().push_back(p);
    }

    pub(super) fn emit_backlog(&self) {
        if let Some(o) = &self.cfg.observer {
            o.on_event(&WriteBehindEvent::Backlog { cache: &self.name, backlog: self.backlog.load(Ordering::Acquire) });
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
                    o.on_event(&WriteBehindEvent::Flush {
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

/// The flusher task: runs until the policy closes and everything is flushed, or the journal
/// stops.
pub(super) async fn flusher<K, V>(s: Arc<Shared<K, V>>)
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
