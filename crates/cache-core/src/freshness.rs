//! The per-key freshness floor: a frame older than a write, an invalidation or a read this
//! process has already seen for its key is refused, never served.
//!
//! Frames carry their metadata (creation time and a version that orders writes: the writer's
//! clock in milliseconds, then a sequence number), and an encrypting codec binds that metadata
//! to the key as associated data, so it cannot be edited. What encryption alone cannot tell is
//! whether a *genuine* frame is the newest: an older ciphertext of the same key put back into
//! Redis (by an attacker with write access to Redis, or by a server restored from an old AOF)
//! decrypts fine. The floor catches that: the cache remembers, per key, the highest version it
//! has written, invalidated or read, and treats any frame below it as a miss (reported as
//! [`CacheEvent::FrameRejected`](crate::CacheEvent::FrameRejected)).
//!
//! Bounds and residual risk:
//! - The floor is bounded (most recently touched keys kept; the rest forgotten), and lives in
//!   process memory. A cold process, or one that forgot the key, cannot detect a rollback
//!   without a trusted version source: see the strict mode
//!   ([`CacheBuilder::strict_versions`](crate::CacheBuilder::strict_versions)), which checks an
//!   upper tier's hit against the last tier (the SQL tier, which keeps the highest version).
//! - Versions order writes by the writers' clocks, like the SQL tier's last-writer-wins upsert:
//!   clocks must be roughly in sync. When another instance announces a write of a key (a bus
//!   invalidation), this process lowers its floor for that key to what it saw up to
//!   [`MAX_CLOCK_SKEW`] ago, so that a writer whose clock is behind is not refused, while a bus
//!   message (unauthenticated) cannot switch the check off: older frames stay refused. A
//!   genuine frame written within that window can still be put back undetected.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::sync::Cache as QcCache;

use crate::key::Key;

/// How far behind this process's clock another writer's clock may be: a bus invalidation lowers
/// a key's floor to this far in the past, never further.
pub const MAX_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(5);

/// The default number of keys whose floor is remembered.
pub const DEFAULT_FLOOR_CAPACITY: usize = 100_000;

/// Remembers the newest version seen per key (bounded).
pub(crate) struct FreshnessFloor {
    map: Option<QcCache<Key, Arc<AtomicU64>>>,
}

impl std::fmt::Debug for FreshnessFloor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreshnessFloor").field("keys", &self.map.as_ref().map_or(0, QcCache::len)).finish()
    }
}

impl FreshnessFloor {
    /// A floor for up to `capacity` keys (0 disables it).
    pub(crate) fn new(capacity: usize) -> Self {
        Self { map: (capacity > 0).then(|| QcCache::new(capacity)) }
    }

    /// Raises the floor of `key` to `version` (never lowers it).
    pub(crate) fn raise(&self, key: &Key, version: u64) {
        let Some(map) = &self.map else { return };
        let slot = map
            .get_or_insert_with(key, || Ok::<_, std::convert::Infallible>(Arc::new(AtomicU64::new(0))))
            .unwrap_or_else(|never| match never {});
        slot.fetch_max(version, Ordering::AcqRel);
    }

    /// Lowers the floor of `key` to at most `version` (when it is higher; an unknown key stays
    /// unknown).
    pub(crate) fn lower_to(&self, key: &Key, version: u64) {
        if let Some(slot) = self.map.as_ref().and_then(|m| m.get(key)) {
            slot.fetch_min(version, Ordering::AcqRel);
        }
    }

    /// Whether a frame of `key` at `version` is at least as new as everything seen for it.
    pub(crate) fn admits(&self, key: &Key, version: u64) -> bool {
        let Some(map) = &self.map else { return true };
        map.get(key).is_none_or(|f| version >= f.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Namespace;

    fn key(id: &str) -> Key {
        Key::new("c", Namespace::new("n").unwrap(), id).unwrap()
    }

    #[test]
    fn floor_rises_never_falls_and_is_per_key() {
        let f = FreshnessFloor::new(16);
        let (a, b) = (key("a"), key("b"));
        assert!(f.admits(&a, 0), "nothing seen: everything admitted");
        f.raise(&a, 10);
        f.raise(&a, 5);
        assert!(!f.admits(&a, 9));
        assert!(f.admits(&a, 10), "the frame this process wrote itself");
        assert!(f.admits(&a, u64::MAX));
        assert!(f.admits(&b, 0), "other keys are unaffected");
        f.lower_to(&a, 7);
        assert!(f.admits(&a, 7) && !f.admits(&a, 6), "lowered, not forgotten");
        f.lower_to(&a, 100);
        assert!(f.admits(&a, 7) && !f.admits(&a, 6), "lower_to never raises");
        f.lower_to(&b, 3);
        assert!(f.admits(&b, 0), "an unknown key stays unknown");
    }

    #[test]
    fn disabled_floor_admits_everything() {
        let f = FreshnessFloor::new(0);
        f.raise(&key("a"), 10);
        assert!(f.admits(&key("a"), 0));
    }

    #[test]
    fn bounded() {
        let f = FreshnessFloor::new(100);
        for i in 0..10_000 {
            f.raise(&key(&i.to_string()), 1);
        }
        assert!(f.map.as_ref().unwrap().len() <= 200, "bounded near its capacity");
    }
}
