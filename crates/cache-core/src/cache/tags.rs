//! Tag invalidation: the [`TagRegistry`] (when each tag was last invalidated) and the
//! `invalidate_tag` operations built on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::future::join_all;
use parking_lot::RwLock;
use tracing::Instrument;

use super::{Cache, Inner, Op};
use crate::bus::InvalidationTarget;
use crate::clock::Timestamp;
use crate::error::{CacheError, TierErrorKind};
use crate::frame::MAX_TAG_LEN;
use crate::key::{CacheKey, Namespace};
use crate::meta::EntryMeta;
use crate::observer::CacheEvent;
use crate::recovery::{Missed, TierRecovery};

/// The most tags whose invalidation time a cache remembers (oldest forgotten first).
const MAX_TAG_TIMES: usize = 10_000;

/// When each `(namespace, tag)` was last invalidated: an entry carrying such a tag and created at
/// or before that time is a miss wherever it is read.
///
/// Invariants it owns: at most `capacity` tag times are remembered; forgetting the oldest half
/// raises a floor so that forgetting never brings an invalidated entry back; a registry that never
/// saw an invalidation answers without taking its lock.
pub(super) struct TagRegistry {
    /// Keyed by namespace, then tag, so that reads look up with borrowed strings.
    times: RwLock<HashMap<String, HashMap<String, Timestamp>>>,
    /// Whether any tag was ever invalidated (the lock-free fast path of reads).
    any: AtomicBool,
    /// Entries carrying any tag created at or before this (ms) are misses: raised when old tag
    /// times are forgotten.
    floor: AtomicU64,
    capacity: usize,
}

impl TagRegistry {
    pub(super) fn new() -> Self {
        Self::with_capacity(MAX_TAG_TIMES)
    }

    fn with_capacity(capacity: usize) -> Self {
        Self { times: RwLock::new(HashMap::new()), any: AtomicBool::new(false), floor: AtomicU64::new(0), capacity }
    }

    /// Whether `meta` carries a tag of `ns` invalidated at or after the entry's creation.
    pub(super) fn hides(&self, ns: &Namespace, meta: &EntryMeta) -> bool {
        if meta.tags.is_empty() || !self.any.load(Ordering::Acquire) {
            return false;
        }
        if meta.created.0 <= self.floor.load(Ordering::Acquire) {
            return true;
        }
        let times = self.times.read();
        let Some(times) = times.get(ns.as_str()) else { return false };
        // `<=`: within the clock's millisecond, err on the side of a miss rather than stale data.
        meta.tags.iter().any(|t| times.get(t.as_str()).is_some_and(|&at| meta.created <= at))
    }

    /// Records that `tag` of `ns` was invalidated at `now`.
    pub(super) fn record(&self, ns: &Namespace, tag: &str, now: Timestamp) {
        let mut times = self.times.write();
        if times.values().map(HashMap::len).sum::<usize>() >= self.capacity {
            // Forget the oldest half: entries that old have usually expired.
            let mut all: Vec<Timestamp> = times.values().flat_map(|m| m.values().copied()).collect();
            all.sort_unstable();
            if let Some(&cut) = all.get(all.len() / 2) {
                for m in times.values_mut() {
                    m.retain(|_, t| *t > cut);
                }
                times.retain(|_, m| !m.is_empty());
                // Everything tagged from before the forgotten invalidations stays invalid.
                self.floor.fetch_max(cut.0, Ordering::AcqRel);
            }
        }
        times.entry(ns.as_str().to_owned()).or_default().insert(tag.to_owned(), now);
        self.any.store(true, Ordering::Release);
    }
}

/// Checks a tag: 1–[`MAX_TAG_LEN`] bytes, no control characters.
pub(super) fn validate_tag(tag: &str) -> Result<(), CacheError> {
    if tag.is_empty() || tag.len() > MAX_TAG_LEN {
        return Err(CacheError::InvalidKey(format!("tag must be 1..={MAX_TAG_LEN} bytes, got {}", tag.len())));
    }
    if tag.chars().any(char::is_control) {
        return Err(CacheError::InvalidKey("tag must not contain control characters".into()));
    }
    Ok(())
}

impl<K, V> Cache<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    /// Like [`Cache::invalidate_tag`] but without publishing on the bus (see
    /// [`Cache::invalidate_id_unpublished`]).
    pub async fn invalidate_tag_unpublished(&self, tag: &str) -> Result<(), CacheError> {
        self.invalidate_tag_inner(tag, false).await
    }

    /// Makes every entry of this namespace carrying `tag` a miss at every level: L1 entries are
    /// dropped, each tier deletes what it can ([`Tier::invalidate_tag`](crate::Tier::invalidate_tag)),
    /// entries created before now that still carry the tag are treated as misses wherever they
    /// are read, and other instances are told over the bus.
    ///
    /// A tier that failed to delete (unreachable, breaker open) makes this return its error after
    /// everything else was done: the entries are hidden but still stored there, and the
    /// invalidation is replayed on that tier when it is back (see [`crate::recovery`]).
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError> {
        self.invalidate_tag_inner(tag, true).await
    }

    async fn invalidate_tag_inner(&self, tag: &str, publish: bool) -> Result<(), CacheError> {
        validate_tag(tag)?;
        let inner = &self.inner;
        let span = Op::InvalidateTag.span(&inner.name, &self.ns);
        async {
            inner.apply_tag_invalidation(&self.ns, tag);
            let tickets: Vec<Option<u64>> = inner.recovery.iter().map(TierRecovery::ticket).collect();
            let deletes = inner.tiers.iter().map(|t| t.invalidate_tag(&inner.name, self.ns.as_str(), tag));
            let mut failed = None;
            for (i, r) in join_all(deletes).await.into_iter().enumerate() {
                match r {
                    Ok(_) => {
                        if let Some(t) = tickets[i] {
                            inner.recovery[i].tag_done(&self.ns, tag, t);
                        }
                    }
                    Err(e) if e.kind() == TierErrorKind::Unsupported => {}
                    Err(err) => {
                        // Remembered and replayed when the tier is back.
                        inner.missed(i, &err, Missed::Tag(&self.ns, tag));
                        failed.get_or_insert(err);
                    }
                }
            }
            inner.observers.emit(&CacheEvent::TagInvalidated { cache: &inner.name });
            if publish {
                inner.publish(&self.ns, InvalidationTarget::Tag(tag.to_owned())).await;
            }
            failed.map_or(Ok(()), |e| Err(CacheError::Tier(e)))
        }
        .instrument(span)
        .await
    }
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    /// Records a tag invalidation and drops L1 entries carrying it.
    pub(super) fn apply_tag_invalidation(&self, ns: &Namespace, tag: &str) {
        self.tags.record(ns, tag, self.clock.now());
        self.epochs.bump_all();
        if let Some(l1) = &self.l1 {
            l1.remove_where(|n, _, meta| n == ns && meta.tags.iter().any(|t| t == tag));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(created: u64, tags: &[&str]) -> EntryMeta {
        EntryMeta {
            created: Timestamp(created),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            ..crate::expiry::new_meta(
                &crate::options::EntryOptions::default(),
                Timestamp(created),
                Default::default(),
                false,
                1,
                0.0,
            )
        }
    }

    #[test]
    fn a_tag_hides_entries_created_up_to_its_invalidation_in_its_namespace_only() {
        let reg = TagRegistry::new();
        let (ns, other) = (Namespace::default_namespace(), Namespace::new("other").unwrap());
        assert!(!reg.hides(&ns, &meta(10, &["t"])), "nothing invalidated yet");
        reg.record(&ns, "t", Timestamp(100));
        assert!(reg.hides(&ns, &meta(100, &["t"])), "same millisecond: a miss");
        assert!(reg.hides(&ns, &meta(50, &["x", "t"])));
        assert!(!reg.hides(&ns, &meta(101, &["t"])), "written after the invalidation");
        assert!(!reg.hides(&ns, &meta(50, &["x"])), "another tag");
        assert!(!reg.hides(&ns, &meta(50, &[])), "untagged");
        assert!(!reg.hides(&other, &meta(50, &["t"])), "another namespace");
    }

    #[test]
    fn forgetting_old_tag_times_never_brings_an_invalidated_entry_back() {
        let reg = TagRegistry::with_capacity(4);
        let ns = Namespace::default_namespace();
        for (i, tag) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            reg.record(&ns, tag, Timestamp(10 * (i as u64 + 1)));
        }
        assert!(reg.times.read().values().map(HashMap::len).sum::<usize>() <= 4);
        for (i, tag) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            let at = 10 * (i as u64 + 1);
            assert!(reg.hides(&ns, &meta(at, &[tag])), "tag {tag} invalidated at {at} still hides");
        }
        assert!(!reg.hides(&ns, &meta(51, &["a"])), "newer entries are served");
    }

    #[test]
    fn tags_are_checked() {
        assert!(validate_tag("ok:tag-1").is_ok());
        assert!(validate_tag("").is_err());
        assert!(validate_tag("a\nb").is_err());
        assert!(validate_tag(&"x".repeat(MAX_TAG_LEN + 1)).is_err());
    }
}
