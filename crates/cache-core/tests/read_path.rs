//! The read path of the `Cache` engine against in-memory tiers: levels, fill-up, errors,
#![allow(clippy::unwrap_used)] // test helpers
//! singleflight, fail-safe, timeouts, negative caching, early refresh, invalidation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use strata_cache_core::*;

type Calls = Arc<AtomicUsize>;

fn loader(calls: &Calls, delay: Duration) -> impl Loader<u64, String> {
    let calls = calls.clone();
    FnLoader::new(move |k: u64| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            if k == 404 { Ok(None) } else { Ok(Some(format!("v{k}"))) }
        }
    })
}

async fn two_tier(
    clock: &ManualClock,
    opts: EntryOptions,
    calls: &Calls,
    delay: Duration,
) -> (Cache<u64, String>, MemoryTier, MemoryTier, Arc<CacheStats>) {
    let l2 = MemoryTier::with_clock("l2", Arc::new(clock.clone()));
    let l3 = MemoryTier::with_clock("l3", Arc::new(clock.clone()));
    let stats = CacheStats::new();
    let cache = Cache::builder("t")
        .tier(Arc::new(l2.clone()))
        .tier(Arc::new(l3.clone()))
        .serializer(Postcard)
        .clock(Arc::new(clock.clone()))
        .options(opts)
        .loader(loader(calls, delay))
        .observer(stats.clone())
        .build()
        .await
        .unwrap();
    (cache, l2, l3, stats)
}

fn key(id: u64) -> Key {
    Key::new("t", Namespace::default_namespace(), &id.to_string()).unwrap()
}

#[tokio::test]
async fn levels_fill_on_the_way_up() {
    let clock = ManualClock::new(1_000_000);
    let calls = Calls::default();
    let (cache, l2, l3, stats) =
        two_tier(&clock, EntryOptions::new(Duration::from_secs(60)), &calls, Duration::ZERO).await;

    assert_eq!(cache.get_or_load(&1).await.unwrap().as_deref(), Some(&"v1".to_string()));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(l2.raw(&key(1)).is_some() && l3.raw(&key(1)).is_some(), "load writes every tier");

    // Only L3 has it: a read fills L2 and L1 from L3.
    cache.clear_l1();
    let k2 = key(2);
    let frame = l3.raw(&key(1)).unwrap();
    l3.put_raw(&k2, frame.clone()); // same bytes are valid for another key when unencrypted
    let v = cache.get_or_load(&2).await.unwrap();
    assert_eq!(v.as_deref(), Some(&"v1".to_string()));
    assert_eq!(stats.hits("l3"), 1);
    assert_eq!(l2.raw(&k2).unwrap().frame, frame.frame, "L2 filled with L3's frame");
    assert_eq!(cache.get(&2).await.unwrap().as_deref(), Some(&"v1".to_string()));
    assert_eq!(stats.hits("l1"), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn failing_tier_is_skipped_and_counted() {
    let clock = ManualClock::new(1_000_000);
    let calls = Calls::default();
    let (cache, l2, l3, stats) =
        two_tier(&clock, EntryOptions::new(Duration::from_secs(60)), &calls, Duration::ZERO).await;
    l2.set_failing(true);
    assert_eq!(cache.get_or_load(&5).await.unwrap().as_deref(), Some(&"v5".to_string()));
    assert!(stats.tier_errors() >= 2, "read and write errors counted");
    assert!(l3.raw(&key(5)).is_some(), "other tiers still written");
    cache.clear_l1();
    assert_eq!(cache.get_or_load(&5).await.unwrap().as_deref(), Some(&"v5".to_string()));
    assert_eq!(stats.hits("l3"), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn corrupt_frames_are_misses_never_panics() {
    let clock = ManualClock::new(1_000_000);
    let calls = Calls::default();
    let (cache, l2, _l3, stats) =
        two_tier(&clock, EntryOptions::new(Duration::from_secs(60)), &calls, Duration::ZERO).await;
    cache.get_or_load(&9).await.unwrap();
    let good = l2.raw(&key(9)).unwrap();
    let mut bad = good.frame.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    for frame in [Bytes::from(bad), Bytes::from_static(b"garbage"), Bytes::new(), good.frame.slice(..10)] {
        l2.put_raw(&key(9), StoredEntry { meta: good.meta.clone(), frame });
        cache.clear_l1();
        // L2 is corrupt, L3 still good.
        assert_eq!(cache.get(&9).await.unwrap().as_deref(), Some(&"v9".to_string()));
    }
    assert_eq!(stats.decode_errors(), 4);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_cold_reads_one_load() {
    let clock = ManualClock::new(1_000_000);
    let calls = Calls::default();
    let (cache, _l2, _l3, stats) =
        two_tier(&clock, EntryOptions::new(Duration::from_secs(60)), &calls, Duration::from_millis(50)).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(10_000));
    let tasks: Vec<_> = (0..10_000)
        .map(|_| {
            let (cache, barrier) = (cache.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                cache.get_or_load(&77).await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().as_deref(), Some(&"v77".to_string()));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(stats.loads(), 1);
}

#[tokio::test]
async fn waiters_share_the_same_arc_error() {
    let cache: Cache<u64, String> = Cache::builder("e").build().await.unwrap();
    let calls = Calls::default();
    let mk = |calls: Calls| {
        move |_k: u64| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err::<Option<String>, BoxError>("source down".into())
        }
    };
    let (a, b) =
        tokio::join!(cache.get_or_load_with(&1, mk(calls.clone())), cache.get_or_load_with(&1, mk(calls.clone())));
    let (CacheError::Load { source: ea, .. }, CacheError::Load { source: eb, .. }) = (a.unwrap_err(), b.unwrap_err())
    else {
        panic!("expected load errors")
    };
    assert!(Arc::ptr_eq(&ea, &eb));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn fail_safe_serves_stale_on_loader_error_then_errors_past_the_limit() {
    let clock = ManualClock::new(1_000_000);
    let stats = CacheStats::new();
    let opts = EntryOptions::new(Duration::from_secs(10))
        .stale_limit(Duration::from_secs(60))
        .fail_safe_throttle(Duration::ZERO);
    let cache: Cache<u64, String> = Cache::builder("fs")
        .clock(Arc::new(clock.clone()))
        .options(opts)
        .observer(stats.clone())
        .build()
        .await
        .unwrap();
    cache.get_or_load_with(&1, |_| async { Ok(Some("old".to_string())) }).await.unwrap();
    clock.advance(Duration::from_secs(30)); // stale, within limit
    let failing = |_k: u64| async { Err::<Option<String>, BoxError>("down".into()) };
    assert_eq!(cache.get_or_load_with(&1, failing).await.unwrap().as_deref(), Some(&"old".to_string()));
    assert_eq!(stats.stale_served(), 1);
    clock.advance(Duration::from_secs(60)); // past the stale limit
    assert!(matches!(cache.get_or_load_with(&1, failing).await, Err(CacheError::Load { .. })));
}

#[tokio::test]
async fn fail_safe_throttle_keeps_a_failing_source_quiet() {
    let clock = ManualClock::new(1_000_000);
    let opts = EntryOptions::new(Duration::from_secs(10))
        .stale_limit(Duration::from_secs(60))
        .fail_safe_throttle(Duration::from_secs(5));
    let cache: Cache<u64, String> =
        Cache::builder("fst").clock(Arc::new(clock.clone())).options(opts).build().await.unwrap();
    cache.get_or_load_with(&1, |_| async { Ok(Some("old".to_string())) }).await.unwrap();
    clock.advance(Duration::from_secs(11));
    let calls = Calls::default();
    for _ in 0..5 {
        let c = calls.clone();
        let v = cache
            .get_or_load_with(&1, move |_| async move {
                c.fetch_add(1, Ordering::SeqCst);
                Err::<Option<String>, BoxError>("down".into())
            })
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some(&"old".to_string()));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "stale value throttled as fresh after one failure");
}

#[tokio::test(start_paused = true)]
async fn soft_timeout_serves_stale_and_finishes_in_background() {
    let clock = ManualClock::new(1_000_000);
    let stats = CacheStats::new();
    let opts = EntryOptions::new(Duration::from_secs(10))
        .stale_limit(Duration::from_secs(60))
        .soft_timeout(Duration::from_millis(100))
        .hard_timeout(Duration::from_secs(5));
    let cache: Cache<u64, String> = Cache::builder("st")
        .clock(Arc::new(clock.clone()))
        .options(opts)
        .observer(stats.clone())
        .build()
        .await
        .unwrap();
    cache.get_or_load_with(&1, |_| async { Ok(Some("old".to_string())) }).await.unwrap();
    clock.advance(Duration::from_secs(11));
    let slow = |_k: u64| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, BoxError>(Some("new".to_string()))
    };
    let started = tokio::time::Instant::now();
    assert_eq!(cache.get_or_load_with(&1, slow).await.unwrap().as_deref(), Some(&"old".to_string()));
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(stats.stale_served(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await; // background load completes
    assert_eq!(cache.get(&1).await.unwrap().as_deref(), Some(&"new".to_string()));
}

#[tokio::test(start_paused = true)]
async fn hard_timeout_without_stale_is_an_error() {
    let opts = EntryOptions::new(Duration::from_secs(10)).hard_timeout(Duration::from_millis(500));
    let cache: Cache<u64, String> = Cache::builder("ht").options(opts).build().await.unwrap();
    let slow = |_k: u64| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, BoxError>(Some("late".to_string()))
    };
    assert!(matches!(cache.get_or_load_with(&1, slow).await, Err(CacheError::Timeout { timeout_ms: 500, .. })));
}

#[tokio::test]
async fn negative_caching() {
    let clock = ManualClock::new(1_000_000);
    let calls = Calls::default();
    let opts = EntryOptions::new(Duration::from_secs(60)).negative_ttl(Duration::from_secs(5));
    let (cache, l2, _l3, _) = two_tier(&clock, opts, &calls, Duration::ZERO).await;
    assert_eq!(cache.get_or_load(&404).await.unwrap(), None);
    assert_eq!(cache.get_or_load(&404).await.unwrap(), None);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "not-found cached");
    assert!(l2.raw(&key(404)).unwrap().meta.negative);
    cache.clear_l1();
    assert_eq!(cache.get_or_load(&404).await.unwrap(), None);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "negative entry read back from L2");
    clock.advance(Duration::from_secs(6));
    assert_eq!(cache.get_or_load(&404).await.unwrap(), None);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "negative TTL expired");
}

#[tokio::test]
async fn ttl_expiry_with_manual_clock() {
    let clock = ManualClock::new(1_000_000);
    let calls = Calls::default();
    let (cache, _l2, _l3, _) =
        two_tier(&clock, EntryOptions::new(Duration::from_secs(60)), &calls, Duration::ZERO).await;
    cache.get_or_load(&3).await.unwrap();
    clock.advance(Duration::from_secs(59));
    cache.get_or_load(&3).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_secs(2));
    cache.get_or_load(&3).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn early_refresh_runs_once_in_the_background() {
    let clock = ManualClock::new(1_000_000);
    let calls = Calls::default();
    let stats = CacheStats::new();
    // β large and a 1 s recorded load cost: refreshes become certain-ish near expiry.
    let opts = EntryOptions::new(Duration::from_secs(10)).early_refresh_beta(50.0);
    let cache: Cache<u64, String> = Cache::builder("xf")
        .clock(Arc::new(clock.clone()))
        .options(opts)
        .loader(loader(&calls, Duration::from_millis(20)))
        .observer(stats.clone())
        .build()
        .await
        .unwrap();
    cache.get_or_load(&1).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_millis(9_990));
    for _ in 0..200 {
        // All hits: served from L1 while at most one refresh runs.
        assert_eq!(cache.get_or_load(&1).await.unwrap().as_deref(), Some(&"v1".to_string()));
    }
    // Wait for the refresh to finish (however slow the machine): every refresh the gets above
    // spawned has started its load by the time the first one has finished.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stats.loads() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no background refresh");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "exactly one background refresh");
    assert_eq!(stats.hits("l1"), 200);
    // The refreshed entry is fresh for another TTL.
    clock.advance(Duration::from_secs(5));
    cache.get_or_load(&1).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn invalidate_and_set_reach_every_level() {
    let clock = ManualClock::new(1_000_000);
    let calls = Calls::default();
    let (cache, l2, l3, _) = two_tier(&clock, EntryOptions::new(Duration::from_secs(60)), &calls, Duration::ZERO).await;
    cache.set(8, "manual".to_string()).await.unwrap();
    assert!(l2.raw(&key(8)).is_some() && l3.raw(&key(8)).is_some());
    assert_eq!(cache.get_or_load(&8).await.unwrap().as_deref(), Some(&"manual".to_string()));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    cache.invalidate(&8).await.unwrap();
    assert!(l2.raw(&key(8)).is_none() && l3.raw(&key(8)).is_none());
    assert_eq!(cache.get(&8).await.unwrap(), None);
    assert_eq!(cache.get_or_load(&8).await.unwrap().as_deref(), Some(&"v8".to_string()));
}

#[tokio::test]
async fn get_many_batches_and_loads_the_rest() {
    let clock = ManualClock::new(1_000_000);
    let calls = Calls::default();
    let (cache, l2, _l3, stats) =
        two_tier(&clock, EntryOptions::new(Duration::from_secs(60)), &calls, Duration::ZERO).await;
    for k in 0..5 {
        cache.get_or_load(&k).await.unwrap();
    }
    cache.clear_l1();
    let l2_calls = l2.calls();
    let keys: Vec<u64> = (0..10).collect();
    let vals = cache.get_many(&keys).await.unwrap();
    assert_eq!(
        vals.iter().map(|v| v.as_deref().cloned()).collect::<Vec<_>>(),
        keys.iter().map(|k| Some(format!("v{k}"))).collect::<Vec<_>>()
    );
    assert_eq!(stats.hits("l2"), 5);
    assert_eq!(calls.load(Ordering::SeqCst), 10);
    assert!(l2.calls() > l2_calls);
}

#[tokio::test]
async fn warm_loads_with_bounded_concurrency() {
    let calls = Calls::default();
    let cache: Cache<u64, String> =
        Cache::builder("w").loader(loader(&calls, Duration::from_millis(1))).build().await.unwrap();
    let report = cache.warm((0..50).chain([404]), 8).await;
    assert_eq!(report, WarmReport { loaded: 50, not_found: 1, failed: 0 });
    assert_eq!(cache.l1().unwrap().len(), 50);
}

#[tokio::test]
async fn bus_invalidates_other_instances_l1() {
    let bus = Arc::new(LocalBus::default());
    let l2 = MemoryTier::new("shared");
    let mk = || async {
        Cache::<u64, String>::builder("b")
            .tier(Arc::new(l2.clone()))
            .serializer(Postcard)
            .bus(bus.clone())
            .build()
            .await
            .unwrap()
    };
    let (a, b) = (mk().await, mk().await);
    a.set(1, "one".into()).await.unwrap();
    assert_eq!(b.get(&1).await.unwrap().as_deref(), Some(&"one".to_string()));
    a.set(1, "uno".into()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if b.get(&1).await.unwrap().as_deref() == Some(&"uno".to_string()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "b still serves its stale L1 copy");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn invalid_configuration_is_refused_with_a_clear_error() {
    let e = Cache::<u64, String>::builder("x").tier(Arc::new(MemoryTier::new("m"))).build().await.unwrap_err();
    assert!(e.to_string().contains("serializer"), "{e}");
    let e = Cache::<u64, String>::builder("bad name").build().await.unwrap_err();
    assert!(matches!(e, CacheError::InvalidKey(_)));
    let e = Cache::<u64, String>::builder("x").options(EntryOptions::new(Duration::ZERO)).build().await.unwrap_err();
    assert!(e.to_string().contains("ttl"), "{e}");
    let e = Cache::<u64, String>::builder("x").no_l1().build().await.unwrap_err();
    assert!(e.to_string().contains("tier"), "{e}");
}

#[tokio::test]
async fn oversized_values_are_refused_before_anything_changes() {
    let l2 = MemoryTier::new("m");
    let cache: Cache<u64, Vec<u8>> = Cache::builder("big")
        .tier(Arc::new(l2.clone()))
        .serializer(Postcard)
        .max_value_bytes(1024)
        .build()
        .await
        .unwrap();
    let err = cache.set(1, vec![0; 4096]).await.unwrap_err();
    assert!(matches!(err, CacheError::TooLarge { limit: 1024, .. }), "{err}");
    assert!(l2.is_empty());
    assert!(cache.get(&1).await.unwrap().is_none());
}

#[tokio::test]
async fn namespaces_do_not_mix() {
    let l2 = MemoryTier::new("m");
    let cache: Cache<u64, String> =
        Cache::builder("ns").tier(Arc::new(l2.clone())).serializer(Postcard).build().await.unwrap();
    let a = cache.in_namespace("tenant-a").unwrap();
    let b = cache.in_namespace("tenant-b").unwrap();
    a.set(1, "a".into()).await.unwrap();
    assert_eq!(b.get(&1).await.unwrap(), None);
    assert_eq!(a.get(&1).await.unwrap().as_deref(), Some(&"a".to_string()));
    assert!(cache.in_namespace("bad ns").is_err());
}
