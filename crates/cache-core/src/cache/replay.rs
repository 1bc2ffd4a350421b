//! Recovery of tiers that missed writes: recording what they missed, the background task that
//! replays it, and the public view of the backlog (see [`crate::recovery`] for the ledger).

use std::sync::{Arc, Weak};

use futures::future::join_all;

use super::{Cache, Inner};
use crate::bus::InvalidationTarget;
use crate::error::{TierError, TierErrorKind};
use crate::key::CacheKey;
use crate::observer::CacheEvent;
use crate::recovery::{Missed, TierBacklog, TierRecovery, Work};
use crate::tier::Tier;

/// The recovery task: replays what the tiers missed whenever something is recorded, and every
/// `recovery_retry` while a tier still fails. Holds the cache only while replaying.
pub(super) async fn recover<K: CacheKey, V: Send + Sync + 'static>(
    weak: Weak<Inner<K, V>>,
    wake: Arc<tokio::sync::Notify>,
) {
    loop {
        let (clean, retry) = {
            let Some(inner) = weak.upgrade() else { return };
            (inner.replay().await, inner.recovery_retry)
        };
        if clean {
            wake.notified().await;
        } else {
            tokio::time::sleep(retry).await;
        }
    }
}

impl<K, V> Cache<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    /// What each tier missed during an outage and has not had replayed yet (see
    /// [`crate::recovery`]): all zero once every tier is recovered.
    pub fn pending_recovery(&self) -> Vec<TierBacklog> {
        let inner = &self.inner;
        inner
            .tiers
            .iter()
            .zip(inner.recovery.iter())
            .map(|(t, r)| TierBacklog { tier: t.name().to_owned(), pending: r.pending(), overflowed: r.overflowed() })
            .collect()
    }

    /// Replays what the tiers missed now, without waiting for the recovery task; returns
    /// whether nothing is left pending.
    pub async fn recover_now(&self) -> bool {
        self.inner.replay().await
    }
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    /// Tier `i` missed a write or invalidation: counted, remembered for replay, and the
    /// recovery task woken.
    pub(super) fn missed(&self, i: usize, err: &TierError, what: Missed<'_>) {
        self.observers.emit(&CacheEvent::TierError { cache: &self.name, error: err });
        let tier = self.tiers[i].name();
        if self.recovery[i].record(what) {
            self.observers.emit(&CacheEvent::RecoveryOverflow { cache: &self.name, tier });
            tracing::warn!(cache = %self.name, tier, "too many missed writes to remember: tier not read until recovered");
        }
        self.recovery_wake.notify_one();
    }

    /// One replay round over every tier with something pending. Returns whether nothing is
    /// left pending.
    pub(super) async fn replay(&self) -> bool {
        let mut clean = true;
        for (tier, rec) in self.tiers.iter().zip(self.recovery.iter()) {
            let Some(work) = rec.snapshot() else { continue };
            let replayed = work.keys.len() + work.tags.len() + usize::from(work.overflow.is_some());
            match self.replay_tier(tier.as_ref(), rec, work).await {
                Ok(()) if rec.pending() == 0 => {
                    tracing::info!(cache = %self.name, tier = tier.name(), replayed, "tier recovered");
                    self.observers.emit(&CacheEvent::TierRecovered { cache: &self.name, tier: tier.name(), replayed });
                }
                Ok(()) => clean = false,
                Err(err) => {
                    clean = false;
                    tracing::debug!(cache = %self.name, tier = tier.name(), error = %err, "recovery replay deferred");
                }
            }
        }
        clean
    }

    /// Applies one tier's pending work: namespace-wide invalidations after an overflow, then
    /// the pending keys (deleted; the next read refills them from below), then the tags.
    async fn replay_tier(&self, tier: &dyn Tier, rec: &TierRecovery, work: Work) -> Result<(), TierError> {
        if let Some((namespaces, stamp)) = work.overflow {
            let mut horizon = None;
            match namespaces {
                Some(list) => {
                    for ns in list {
                        match tier.invalidate_namespace(&self.name, ns.as_str()).await {
                            Ok(_) => self.publish(&ns, InvalidationTarget::Namespace).await,
                            Err(e) if e.kind() == TierErrorKind::Unsupported => {
                                horizon = Some(self.clock.now());
                                break;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                None => horizon = Some(self.clock.now()),
            }
            rec.overflow_done(stamp, horizon);
        }
        // One key alone first: a tier still down costs one failed call per round, not 64. After
        // the probe, a failing chunk (one bad key, one master still down on a cluster) does not
        // hold back the others: every chunk and tag is tried, the first error is returned.
        let (probe, rest) = work.keys.split_at(work.keys.len().min(1));
        let mut first_error = None;
        for (i, chunk) in std::iter::once(probe).chain(rest.chunks(64)).enumerate() {
            let results = join_all(chunk.iter().map(|(k, _)| tier.delete(k))).await;
            let mut failed = None;
            for ((k, stamp), r) in chunk.iter().zip(results) {
                match r {
                    Ok(()) => {
                        rec.key_done(k, *stamp);
                        // Other instances may have refilled their L1 from the tier's older copy
                        // between its return and this delete: tell them again, now that the
                        // tier holds nothing older (the bus deduplicates).
                        self.publish(k.namespace(), InvalidationTarget::Key(k.id().to_owned())).await;
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = failed {
                if i == 0 {
                    return Err(e);
                }
                first_error.get_or_insert(e);
            }
        }
        for (ns, tag, stamp) in work.tags {
            match tier.invalidate_tag(&self.name, ns.as_str(), &tag).await {
                Ok(_) => {
                    rec.tag_done(&ns, &tag, stamp);
                    self.publish(&ns, InvalidationTarget::Tag(tag.clone())).await;
                }
                Err(e) if e.kind() == TierErrorKind::Unsupported => rec.tag_done(&ns, &tag, stamp),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
