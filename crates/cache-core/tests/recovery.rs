//! Auto-recovery after a tier outage and the per-key freshness floor, against in-memory tiers:
//! writes, deletes and tag invalidations that missed a tier are replayed before it is read
//! again; the pending bound's overflow; an older genuine frame put back is refused; strict mode.
#![allow(clippy::unwrap_used)] // test helpers

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use strata_cache_core::*;

const N: u64 = 20;

fn key(id: u64) -> Key {
    Key::new("rec", Namespace::default_namespace(), &id.to_string()).unwrap()
}

async fn cache(
    tiers: &[Arc<dyn Tier>],
    stats: &Arc<CacheStats>,
    f: impl FnOnce(CacheBuilder<u64, String>) -> CacheBuilder<u64, String>,
) -> Cache<u64, String> {
    let mut b = Cache::<u64, String>::builder("rec")
        .serializer(Postcard)
        .options(EntryOptions::new(Duration::from_secs(600)))
        .recovery_retry(Duration::from_millis(5))
        .observer(stats.clone());
    for t in tiers {
        b = b.tier(t.clone());
    }
    f(b).build().await.unwrap()
}

/// Waits (generous deadline) until nothing is pending on any tier.
async fn recovered(c: &Cache<u64, String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.pending_recovery().iter().any(|b| b.pending > 0) {
        assert!(Instant::now() < deadline, "not recovered: {:?}", c.pending_recovery());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn meta_of(t: &MemoryTier, id: u64) -> Option<EntryMeta> {
    t.raw(&key(id)).map(|e| e.meta)
}

/// The reproduction, on in-memory tiers: v1 everywhere; L2 down; v2 written (L3 takes it);
/// L2 back *with v1* (what a Redis restarted from its AOF looks like). No instance may read v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_missed_during_an_outage_are_replayed_before_the_tier_is_read() {
    let (l2, l3) = (MemoryTier::new("l2"), MemoryTier::new("l3"));
    let tiers: Vec<Arc<dyn Tier>> = vec![Arc::new(l2.clone()), Arc::new(l3.clone())];
    let stats = CacheStats::new();
    let a = cache(&tiers, &stats, |b| b).await;
    for i in 0..N {
        a.set(i, format!("v1-{i}")).await.unwrap();
    }
    l2.set_failing(true);
    for i in 0..N {
        a.set(i, format!("v2-{i}")).await.unwrap();
    }
    assert_eq!(a.pending_recovery()[0].pending, N as usize, "every missed write is remembered");
    assert_eq!(a.pending_recovery()[1].pending, 0);
    // The outage ends; L2 still holds v1 for every key.
    l2.set_failing(false);
    a.clear_l1();
    for i in 0..N {
        assert_eq!(a.get(&i).await.unwrap().as_deref(), Some(&format!("v2-{i}")), "key {i}");
    }
    recovered(&a).await;
    for i in 0..N {
        let m = meta_of(&l2, i);
        assert!(m.is_none_or(|m| m.version >= meta_of(&l3, i).unwrap().version), "L2 holds no v1 for {i}");
    }
    // A fresh instance (no memory of the writes) and the writer after clearing L1.
    let fresh = cache(&tiers, &CacheStats::new(), |b| b).await;
    a.clear_l1();
    for i in 0..N {
        assert_eq!(fresh.get(&i).await.unwrap().as_deref(), Some(&format!("v2-{i}")), "fresh, key {i}");
        assert_eq!(a.get(&i).await.unwrap().as_deref(), Some(&format!("v2-{i}")), "writer, key {i}");
    }
    assert!(stats.recoveries() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_tag_invalidations_missed_during_an_outage_are_replayed() {
    let (l2, l3) = (MemoryTier::new("l2"), MemoryTier::new("l3"));
    let tiers: Vec<Arc<dyn Tier>> = vec![Arc::new(l2.clone()), Arc::new(l3.clone())];
    let a = cache(&tiers, &CacheStats::new(), |b| b).await;
    let tagged = EntryOptions::new(Duration::from_secs(600)).tag("t");
    for i in 0..N {
        if i % 2 == 0 {
            a.set(i, format!("v1-{i}")).await.unwrap();
        } else {
            a.set_with(i, format!("v1-{i}"), &tagged).await.unwrap();
        }
    }
    l2.set_failing(true);
    for i in (0..N).step_by(2) {
        a.invalidate(&i).await.unwrap();
    }
    assert!(a.invalidate_tag("t").await.is_err(), "the tier that missed it is reported");
    let b = a.pending_recovery();
    assert_eq!(b[0].pending, N as usize / 2 + 1, "10 keys + 1 tag: {b:?}");
    for i in 0..N {
        assert_eq!(a.get(&i).await.unwrap(), None, "invalidated: {i}");
    }
    l2.set_failing(false);
    recovered(&a).await;
    assert_eq!(l2.len(), 0, "every deleted or tagged entry is gone from L2");
    let fresh = cache(&tiers, &CacheStats::new(), |b| b).await;
    for i in 0..N {
        assert_eq!(fresh.get(&i).await.unwrap(), None, "fresh instance: {i}");
    }
}

/// Neighbour: a delete that reaches the tier after a write missed it settles the key; a write
/// that misses it again after the replay snapshot stays pending.
#[tokio::test]
async fn a_successful_delete_settles_a_pending_key() {
    let l2 = MemoryTier::new("l2");
    let tiers: Vec<Arc<dyn Tier>> = vec![Arc::new(l2.clone())];
    let a = cache(&tiers, &CacheStats::new(), |b| b.recovery_retry(Duration::from_secs(3600))).await;
    l2.set_failing(true);
    a.set(1, "x".into()).await.unwrap();
    assert_eq!(a.pending_recovery()[0].pending, 1);
    l2.set_failing(false);
    a.invalidate(&1).await.unwrap();
    assert_eq!(a.pending_recovery()[0].pending, 0);
    assert!(a.recover_now().await);
}

/// More misses than the bound: the tier is not read at all until every namespace that lost a
/// write is invalidated in it; then a fresh instance reads the new values too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflowing_the_bound_invalidates_the_namespace_on_recovery() {
    for bound in [0usize, 1, 5] {
        let (l2, l3) = (MemoryTier::new("l2"), MemoryTier::new("l3"));
        let tiers: Vec<Arc<dyn Tier>> = vec![Arc::new(l2.clone()), Arc::new(l3.clone())];
        let stats = CacheStats::new();
        let a = cache(&tiers, &stats, |b| b.max_pending_invalidations(bound)).await;
        let other_ns = a.in_namespace("other").unwrap();
        for i in 0..N {
            a.set(i, format!("v1-{i}")).await.unwrap();
        }
        other_ns.set(99, "untouched".into()).await.unwrap();
        l2.set_failing(true);
        for i in 0..N {
            a.set(i, format!("v2-{i}")).await.unwrap();
        }
        let b = &a.pending_recovery()[0];
        assert!(b.overflowed, "bound {bound}: {b:?}");
        l2.set_failing(false);
        // Overflowed and not yet replayed: nothing is read from L2.
        let before = stats.hits("l2");
        a.clear_l1();
        for i in 0..N {
            assert_eq!(a.get(&i).await.unwrap().as_deref(), Some(&format!("v2-{i}")));
        }
        recovered(&a).await;
        assert_eq!(stats.hits("l2"), before, "bound {bound}: no L2 hit while overflowed");
        let fresh = cache(&tiers, &CacheStats::new(), |b| b).await;
        for i in 0..N {
            assert_eq!(fresh.get(&i).await.unwrap().as_deref(), Some(&format!("v2-{i}")), "bound {bound}");
        }
        let fresh_other = fresh.in_namespace("other").unwrap();
        assert_eq!(fresh_other.get(&99).await.unwrap().as_deref(), Some(&"untouched".to_string()));
        assert!(
            l2.raw(&Key::new("rec", Namespace::new("other").unwrap(), "99").unwrap()).is_some(),
            "a namespace that lost nothing is not invalidated"
        );
    }
}

/// A tier that cannot invalidate a namespace (the trait's default).
#[derive(Clone, Default)]
struct Plain(Arc<Mutex<HashMap<Key, Bytes>>>, Arc<std::sync::atomic::AtomicBool>);

impl Plain {
    fn check(&self) -> Result<(), TierError> {
        if self.1.load(std::sync::atomic::Ordering::SeqCst) {
            Err(TierError::new("plain", TierErrorKind::Unavailable, "down"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Tier for Plain {
    fn name(&self) -> &str {
        "plain"
    }
    async fn get(&self, key: &Key) -> Result<Option<Bytes>, TierError> {
        self.check()?;
        Ok(self.0.lock().get(key).cloned())
    }
    async fn set(&self, key: &Key, entry: &StoredEntry) -> Result<(), TierError> {
        self.check()?;
        self.0.lock().insert(key.clone(), entry.frame.clone());
        Ok(())
    }
    async fn delete(&self, key: &Key) -> Result<(), TierError> {
        self.check()?;
        self.0.lock().remove(key);
        Ok(())
    }
    async fn health(&self) -> TierHealth {
        TierHealth::Healthy
    }
}

/// Overflow on a tier without namespace invalidation: this process stops trusting every entry
/// of that tier created before the recovery (and still serves the new values).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_without_namespace_invalidation_falls_back_to_a_horizon() {
    let clock = ManualClock::new(1_000_000);
    let plain = Plain::default();
    let l3 = MemoryTier::with_clock("l3", Arc::new(clock.clone()));
    let tiers: Vec<Arc<dyn Tier>> = vec![Arc::new(plain.clone()), Arc::new(l3.clone())];
    let stats = CacheStats::new();
    let a = cache(&tiers, &stats, |b| b.max_pending_invalidations(2).clock(Arc::new(clock.clone()))).await;
    for i in 0..N {
        a.set(i, format!("v1-{i}")).await.unwrap();
    }
    plain.1.store(true, std::sync::atomic::Ordering::SeqCst);
    for i in 0..N {
        a.set(i, format!("v2-{i}")).await.unwrap();
    }
    plain.1.store(false, std::sync::atomic::Ordering::SeqCst);
    recovered(&a).await;
    a.clear_l1();
    for i in 0..N {
        assert_eq!(a.get(&i).await.unwrap().as_deref(), Some(&format!("v2-{i}")), "key {i}");
    }
    assert_eq!(stats.hits("plain"), 0, "entries older than the recovery are not trusted");
    // Entries written after the recovery are read from the tier again.
    clock.advance(Duration::from_secs(1));
    a.set(500, "new".into()).await.unwrap();
    a.clear_l1();
    assert_eq!(a.get(&500).await.unwrap().as_deref(), Some(&"new".to_string()));
    assert_eq!(stats.hits("plain"), 1);
}

/// Behind a circuit breaker: writes refused while it is open are remembered too, and the replay
/// is what probes the tier when its wait is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_refused_by_an_open_breaker_are_replayed() {
    let l2 = MemoryTier::new("l2");
    let l3 = MemoryTier::new("l3");
    let cfg = BreakerConfig {
        minimum_calls: 2,
        sliding_window: 4,
        open_wait: Duration::from_millis(20),
        ..BreakerConfig::default()
    };
    let guarded = Arc::new(BreakerTier::new(l2.clone(), cfg).unwrap());
    let tiers: Vec<Arc<dyn Tier>> = vec![guarded.clone(), Arc::new(l3.clone())];
    let a = cache(&tiers, &CacheStats::new(), |b| b).await;
    for i in 0..N {
        a.set(i, format!("v1-{i}")).await.unwrap();
    }
    l2.set_failing(true);
    for i in 0..N {
        a.set(i, format!("v2-{i}")).await.unwrap();
    }
    assert_eq!(a.pending_recovery()[0].pending, N as usize);
    l2.set_failing(false);
    recovered(&a).await;
    assert_eq!(guarded.state(), BreakerState::Closed);
    let fresh = cache(&tiers, &CacheStats::new(), |b| b).await;
    for i in 0..N {
        assert_eq!(fresh.get(&i).await.unwrap().as_deref(), Some(&format!("v2-{i}")));
    }
}

/// Rollback: an older genuine frame of the same key put back into a tier is refused, whether
/// the newer value came from a write, an invalidation or a read; the frame this process wrote
/// itself and newer ones are accepted.
#[tokio::test]
async fn an_older_genuine_frame_put_back_is_refused() {
    let (l2, l3) = (MemoryTier::new("l2"), MemoryTier::new("l3"));
    let tiers: Vec<Arc<dyn Tier>> = vec![Arc::new(l2.clone()), Arc::new(l3.clone())];
    let stats = CacheStats::new();
    let a = cache(&tiers, &stats, |b| b).await;
    a.set(1, "v1".into()).await.unwrap();
    let old = l2.raw(&key(1)).unwrap();
    a.set(1, "v2".into()).await.unwrap();
    let new = l2.raw(&key(1)).unwrap();

    // Put back in L2 only: L3 answers with v2.
    l2.put_raw(&key(1), old.clone());
    a.clear_l1();
    assert_eq!(a.get(&1).await.unwrap().as_deref(), Some(&"v2".to_string()));
    assert_eq!(stats.frames_rejected(), 1);
    // get_many takes the same path.
    l2.put_raw(&key(1), old.clone());
    a.clear_l1();
    assert_eq!(a.get_many(&[1]).await.unwrap()[0].as_deref(), Some(&"v2".to_string()));
    assert_eq!(stats.frames_rejected(), 2);
    // Put back in both tiers: a miss, never v1.
    l2.put_raw(&key(1), old.clone());
    l3.put_raw(&key(1), old.clone());
    a.clear_l1();
    assert_eq!(a.get(&1).await.unwrap(), None);
    assert_eq!(a.get_many(&[1]).await.unwrap()[0], None);
    // The frame it wrote itself is accepted.
    l2.put_raw(&key(1), new.clone());
    a.clear_l1();
    assert_eq!(a.get(&1).await.unwrap().as_deref(), Some(&"v2".to_string()));

    // After an invalidation, the last value's frame put back is refused too.
    a.invalidate(&1).await.unwrap();
    l2.put_raw(&key(1), new.clone());
    l3.put_raw(&key(1), new.clone());
    assert_eq!(a.get(&1).await.unwrap(), None);

    // A floor learnt by reading: a newer frame written by another instance, then the older
    // one put back.
    let other = cache(&tiers, &CacheStats::new(), |b| b).await;
    other.set(2, "w1".into()).await.unwrap();
    let w1 = l2.raw(&key(2)).unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await; // a later version
    other.set(2, "w2".into()).await.unwrap();
    assert_eq!(a.get(&2).await.unwrap().as_deref(), Some(&"w2".to_string()));
    a.clear_l1();
    l2.put_raw(&key(2), w1.clone());
    l3.put_raw(&key(2), w1);
    assert_eq!(a.get(&2).await.unwrap(), None, "older than the frame this process read");

    // Neighbour: the residual risk, stated as a test. A cold process has no floor for the key
    // and serves the older genuine frame (strict mode below closes this when L3 is intact).
    let cold = cache(&tiers, &CacheStats::new(), |b| b).await;
    l2.put_raw(&key(1), old.clone());
    l3.put_raw(&key(1), old);
    assert_eq!(cold.get(&1).await.unwrap().as_deref(), Some(&"v1".to_string()));
}

/// Strict mode: a cold process checks an upper-tier hit against the last tier.
#[tokio::test]
async fn strict_mode_checks_upper_tier_hits_against_the_last_tier() {
    let (l2, l3) = (MemoryTier::new("l2"), MemoryTier::new("l3"));
    let tiers: Vec<Arc<dyn Tier>> = vec![Arc::new(l2.clone()), Arc::new(l3.clone())];
    let writer = cache(&tiers, &CacheStats::new(), |b| b).await;
    writer.set(1, "v1".into()).await.unwrap();
    let old = l2.raw(&key(1)).unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    writer.set(1, "v2".into()).await.unwrap();
    writer.set(2, "same".into()).await.unwrap();
    l2.put_raw(&key(1), old.clone());

    let stats = CacheStats::new();
    let strict = cache(&tiers, &stats, |b| b.strict_versions(true)).await;
    let lax = cache(&tiers, &CacheStats::new(), |b| b).await;
    assert_eq!(lax.get(&1).await.unwrap().as_deref(), Some(&"v1".to_string()), "the risk strict mode closes");
    assert_eq!(strict.get(&1).await.unwrap().as_deref(), Some(&"v2".to_string()));
    assert_eq!(stats.frames_rejected(), 1);
    assert_eq!(stats.hits("l3"), 1);
    // Same version in both tiers: served from L2.
    assert_eq!(strict.get(&2).await.unwrap().as_deref(), Some(&"same".to_string()));
    assert_eq!(stats.hits("l2"), 1);
    // get_many takes the same path (the read above refilled L2 with v2: roll it back again).
    l2.put_raw(&key(1), old.clone());
    let fresh_stats = CacheStats::new();
    let strict2 = cache(&tiers, &fresh_stats, |b| b.strict_versions(true)).await;
    let got = strict2.get_many(&[1, 2]).await.unwrap();
    assert_eq!(got[0].as_deref(), Some(&"v2".to_string()));
    assert_eq!(got[1].as_deref(), Some(&"same".to_string()));
    assert_eq!(fresh_stats.frames_rejected(), 1);
    // Fails closed: no row in the last tier, or the last tier down → the L2 frame is not served.
    writer.set(4, "only-l2".into()).await.unwrap();
    let _ = l3.invalidate_namespace("rec", "default").await.unwrap();
    let strict3 = cache(&tiers, &CacheStats::new(), |b| b.strict_versions(true)).await;
    assert_eq!(strict3.get(&4).await.unwrap(), None, "unconfirmed");
    l3.set_failing(true);
    assert_eq!(strict3.get(&2).await.unwrap(), None, "last tier down: unconfirmed");
}
