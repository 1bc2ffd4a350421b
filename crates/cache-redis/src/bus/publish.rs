//! Publishing: through the breaker and the call timeout, or into the [`Outbox`] when Redis
//! fails, and the task that re-publishes what waits there.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_redis::redis;
use strata_cache_core::{BusError, TierError, TierErrorKind};

use super::{RESYNC_MESSAGE, Shared};
use crate::breakers::counts_as_failure;
use crate::conn::{redis_error, with_timeout};

/// Invalidations that could not be published yet.
#[derive(Default)]
pub(super) struct Outbox {
    /// Payloads in arrival order, each with its sequence number; no duplicates.
    queue: VecDeque<(u64, Vec<u8>)>,
    members: HashSet<Vec<u8>>,
    next_seq: u64,
    /// The queue overflowed: a resync message must be published (before the queue).
    overflowed: bool,
    /// Bumped on each overflow (a resync sent before the latest overflow does not cover it).
    overflow_epoch: u64,
    /// Whether the re-publishing task runs.
    draining: bool,
    /// Why the latest publish failed (quoted in the errors of the messages queued after it).
    last_failure: Option<String>,
}

impl Outbox {
    fn pending(&self) -> bool {
        self.overflowed || !self.queue.is_empty()
    }
}

impl Shared {
    /// One `PUBLISH` (or `SPUBLISH`) within the call timeout.
    async fn send(&self, payload: &[u8]) -> Result<(), TierError> {
        let tier: Arc<str> = Arc::from(self.name.as_str());
        let cmd = match self.sharded().await {
            Ok(true) => "SPUBLISH",
            Ok(false) => "PUBLISH",
            Err(e) => return Err(TierError::new(tier, TierErrorKind::Unavailable, e.message)),
        };
        with_timeout(&tier, self.timeout, "PUBLISH", async {
            let mut c = self.backend.get(&tier).await?;
            redis::cmd(cmd)
                .arg(&self.spec.channel)
                .arg(payload)
                .query_async::<i64>(&mut c)
                .await
                .map_err(|e| redis_error(&tier, e))
        })
        .await
        .map(drop)
    }

    /// Publishes at once when nothing is waiting and the breaker lets the call through;
    /// otherwise (or when that fails) queues the message for the re-publishing task and
    /// returns an error saying so.
    pub(super) async fn publish(self: &Arc<Self>, payload: &[u8]) -> Result<(), BusError> {
        if self.outbox.lock().pending() {
            // Earlier messages wait: this one waits with them (no call on the write path while
            // Redis is known to be failing).
            return Err(self.defer(payload, "earlier invalidations are waiting for Redis", None));
        }
        let Ok(permit) = self.breaker.try_call() else {
            return Err(self.defer(payload, "circuit breaker is open", None));
        };
        match self.send(payload).await {
            Ok(()) => {
                permit.record(true);
                self.stats.published.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if !counts_as_failure(&e) => {
                // A refusal (e.g. an ACL without PUBLISH): retrying would not help.
                drop(permit);
                Err(BusError {
                    bus: self.name.clone(),
                    message: format!("publish failed: {e}"),
                    source: Some(Arc::new(e)),
                })
            }
            Err(e) => {
                permit.record(false);
                let message = format!("publish failed: {e}");
                self.outbox.lock().last_failure = Some(message.clone());
                Err(self.defer(payload, &message, Some(e)))
            }
        }
    }

    /// Queues `payload` (once; an overflow turns the queue into one resync) and makes sure the
    /// re-publishing task runs.
    fn defer(self: &Arc<Self>, payload: &[u8], why: &str, source: Option<TierError>) -> BusError {
        self.stats.deferred.fetch_add(1, Ordering::Relaxed);
        let start = {
            let mut o = self.outbox.lock();
            if !o.members.contains(payload) {
                if o.queue.len() >= self.max_pending {
                    if !o.overflowed {
                        tracing::warn!(
                            bus = %self.name,
                            capacity = self.max_pending,
                            "too many unpublished invalidations; a resync will be published instead"
                        );
                    }
                    o.overflowed = true;
                    o.overflow_epoch += 1;
                    o.queue.clear();
                    o.members.clear();
                } else {
                    let seq = o.next_seq;
                    o.next_seq += 1;
                    o.queue.push_back((seq, payload.to_vec()));
                    o.members.insert(payload.to_vec());
                }
            }
            !std::mem::replace(&mut o.draining, true)
        };
        if start {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(drain(Arc::downgrade(self)));
                }
                Err(_) => self.outbox.lock().draining = false,
            }
        }
        let last = match self.outbox.lock().last_failure.as_deref() {
            Some(f) if f != why => format!(" (latest failure: {f})"),
            _ => String::new(),
        };
        BusError {
            bus: self.name.clone(),
            message: format!("{why}{last}; invalidation queued for re-publication"),
            source: source.map(|e| Arc::new(e) as Arc<dyn std::error::Error + Send + Sync>),
        }
    }
}

/// Re-publishes queued messages (a pending resync first) once Redis answers again, one at a
/// time through the breaker, backing off while it fails. Stops when the queue is empty or the
/// bus is gone.
async fn drain(weak: Weak<Shared>) {
    let mut backoff = Duration::from_millis(20);
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let next = {
            let mut o = shared.outbox.lock();
            if o.overflowed {
                Some((None, RESYNC_MESSAGE.to_vec(), o.overflow_epoch))
            } else if let Some((seq, p)) = o.queue.front() {
                Some((Some(*seq), p.clone(), o.overflow_epoch))
            } else {
                o.draining = false;
                o.last_failure = None;
                None
            }
        };
        let Some((seq, payload, epoch)) = next else { return };
        let wait = match shared.breaker.try_call() {
            Err(()) => Some(shared.breaker.config().open_wait.min(Duration::from_millis(250))),
            Ok(permit) => match shared.send(&payload).await {
                Ok(()) => {
                    permit.record(true);
                    shared.stats.published.fetch_add(1, Ordering::Relaxed);
                    shared.stats.republished.fetch_add(1, Ordering::Relaxed);
                    let mut o = shared.outbox.lock();
                    match seq {
                        None if o.overflow_epoch == epoch => {
                            o.overflowed = false;
                            shared.stats.overflows.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {}
                        Some(seq) => {
                            if o.queue.front().is_some_and(|(s, _)| *s == seq)
                                && let Some((_, p)) = o.queue.pop_front()
                            {
                                o.members.remove(&p);
                            }
                        }
                    }
                    backoff = Duration::from_millis(20);
                    None
                }
                Err(e) => {
                    if counts_as_failure(&e) {
                        permit.record(false);
                    } else {
                        drop(permit);
                    }
                    tracing::debug!(bus = %shared.name, error = %e, "re-publishing failed; retrying");
                    shared.outbox.lock().last_failure = Some(format!("publish failed: {e}"));
                    let w = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    Some(w)
                }
            },
        };
        drop(shared);
        if let Some(w) = wait {
            tokio::time::sleep(w).await;
        }
    }
}
