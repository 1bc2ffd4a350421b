//! Seams for the leaf crates: tag invalidation, the fleet-wide load lock, hashed key ids,
//! invalidation by id, L1 key snapshots.
#![allow(clippy::unwrap_used)] // test helpers

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use strata_cache_core::*;

fn opts() -> EntryOptions {
    EntryOptions::new(Duration::from_secs(60))
}

/// A tier that stores frames but cannot delete by tag (the default `invalidate_tag`).
#[derive(Clone, Default)]
struct NoTagTier(Arc<Mutex<HashMap<Key, Bytes>>>);

#[async_trait]
impl Tier for NoTagTier {
    fn name(&self) -> &str {
        "notag"
    }
    async fn get(&self, key: &Key) -> Result<Option<Bytes>, TierError> {
        Ok(self.0.lock().get(key).cloned())
    }
    async fn set(&self, key: &Key, entry: &StoredEntry) -> Result<(), TierError> {
        self.0.lock().insert(key.clone(), entry.frame.clone());
        Ok(())
    }
    async fn delete(&self, key: &Key) -> Result<(), TierError> {
        self.0.lock().remove(key);
        Ok(())
    }
    async fn health(&self) -> TierHealth {
        TierHealth::Healthy
    }
}

#[tokio::test]
async fn tag_invalidation_reaches_l1_tiers_and_other_instances() {
    let mem = MemoryTier::new("mem");
    let notag = NoTagTier::default();
    let bus = Arc::new(LocalBus::new(64));
    let build = || async {
        Cache::<u64, String>::builder("tags")
            .tier(Arc::new(mem.clone()))
            .tier(Arc::new(notag.clone()))
            .serializer(Postcard)
            .options(opts())
            .bus(bus.clone())
            .build()
            .await
            .unwrap()
    };
    let (a, b) = (build().await, build().await);
    let tagged = opts().tag("team:7");
    a.set_with(1, "one".into(), &tagged).await.unwrap();
    a.set_with(2, "two".into(), &opts().tag("team:8")).await.unwrap();
    a.set(3, "three".into()).await.unwrap();
    // B has its own L1 copy of key 1.
    assert_eq!(b.get(&1).await.unwrap().as_deref(), Some(&"one".to_string()));
    assert!(b.l1().unwrap().get(b.namespace(), &1, SystemClock.now()).is_some());

    a.invalidate_tag("team:7").await.unwrap();
    assert_eq!(a.get(&1).await.unwrap(), None, "gone from A's L1 and every tier");
    assert_eq!(mem.len(), 2, "the memory tier deleted the tagged entry");
    assert_eq!(notag.0.lock().len(), 3, "the tier without tag support still holds the bytes");
    assert_eq!(a.get(&2).await.unwrap().as_deref(), Some(&"two".to_string()), "other tags untouched");
    assert_eq!(a.get(&3).await.unwrap().as_deref(), Some(&"three".to_string()));

    // B hears about it over the bus: its L1 copy goes and the stale bytes in `notag` are misses.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while b.l1().unwrap().get(b.namespace(), &1, SystemClock.now()).is_some() {
        assert!(tokio::time::Instant::now() < deadline, "B's L1 still holds the tagged entry");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(b.get(&1).await.unwrap(), None);

    // A value written after the invalidation with the same tag is visible.
    tokio::time::sleep(Duration::from_millis(2)).await;
    a.set_with(1, "one again".into(), &tagged).await.unwrap();
    b.clear_l1();
    assert_eq!(b.get(&1).await.unwrap().as_deref(), Some(&"one again".to_string()));
}

#[tokio::test]
async fn invalid_tags_are_rejected() {
    let cache = Cache::<u64, String>::builder("tags2").build().await.unwrap();
    assert!(matches!(cache.invalidate_tag("").await, Err(CacheError::InvalidKey(_))));
    assert!(matches!(cache.invalidate_tag(&"x".repeat(10_000)).await, Err(CacheError::InvalidKey(_))));
    assert!(matches!(cache.invalidate_tag("a\nb").await, Err(CacheError::InvalidKey(_))));
}

/// An in-process lock shared by several caches (standing in for Redis in this unit test).
#[derive(Default)]
struct SharedLock {
    held: Mutex<HashMap<Key, LockToken>>,
}

#[async_trait]
impl LoadLock for SharedLock {
    fn name(&self) -> &str {
        "shared"
    }
    async fn try_acquire(&self, key: &Key, _ttl: Duration) -> Result<Option<LockToken>, TierError> {
        let mut held = self.held.lock();
        if held.contains_key(key) {
            return Ok(None);
        }
        let t = LockToken::random();
        held.insert(key.clone(), t.clone());
        Ok(Some(t))
    }
    async fn release(&self, key: &Key, token: &LockToken) -> Result<(), TierError> {
        let mut held = self.held.lock();
        if held.get(key) == Some(token) {
            held.remove(key);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_lock_lets_one_instance_load_for_all() {
    let tier = MemoryTier::new("shared");
    let lock = Arc::new(SharedLock::default());
    let calls = Arc::new(AtomicUsize::new(0));
    let mut caches = Vec::new();
    let mut stats = Vec::new();
    for _ in 0..4 {
        let calls = calls.clone();
        let s = CacheStats::new();
        let cache = Cache::<u64, String>::builder("locked")
            .tier(Arc::new(tier.clone()))
            .serializer(Postcard)
            .options(opts())
            .observer(s.clone())
            .load_lock(
                lock.clone(),
                // Generous: the holder's load must finish within them however busy the machine.
                LockOptions {
                    ttl: Duration::from_secs(120),
                    max_wait: Duration::from_secs(60),
                    poll_interval: Duration::from_millis(5),
                },
            )
            .loader(FnLoader::new(move |k: u64| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(Some(format!("v{k}")))
                }
            }))
            .build()
            .await
            .unwrap();
        caches.push(cache);
        stats.push(s);
    }
    let mut tasks = Vec::new();
    for c in &caches {
        for _ in 0..50 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move { c.get_or_load(&9).await.unwrap() }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().as_deref(), Some(&"v9".to_string()));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one loader call across four instances");
    let acquired: u64 = stats.iter().map(|s| s.lock_acquired()).sum();
    let waited_found: u64 = stats.iter().map(|s| s.lock_waited().0).sum();
    assert_eq!(acquired, 1);
    assert_eq!(waited_found, 3, "the other three instances found the holder's value");
    assert!(lock.held.lock().is_empty(), "the lock was released");
}

#[tokio::test]
async fn load_lock_wait_is_bounded() {
    let tier = MemoryTier::new("shared");
    let lock = Arc::new(SharedLock::default());
    let key = Key::new("stuck", Namespace::default_namespace(), "1").unwrap();
    // Someone else holds the lock and never writes the value.
    lock.try_acquire(&key, Duration::from_secs(60)).await.unwrap().unwrap();
    let stats = CacheStats::new();
    let cache = Cache::<u64, String>::builder("stuck")
        .tier(Arc::new(tier))
        .serializer(Postcard)
        .observer(stats.clone())
        .load_lock(
            lock,
            LockOptions {
                ttl: Duration::from_secs(5),
                max_wait: Duration::from_millis(60),
                poll_interval: Duration::from_millis(10),
            },
        )
        .loader(FnLoader::new(|k: u64| async move { Ok(Some(format!("v{k}"))) }))
        .build()
        .await
        .unwrap();
    let t = std::time::Instant::now();
    assert_eq!(cache.get_or_load(&1).await.unwrap().as_deref(), Some(&"v1".to_string()));
    assert!(t.elapsed() >= Duration::from_millis(60));
    assert_eq!(stats.lock_waited(), (0, 1));
    assert_eq!(stats.loads(), 1, "loaded itself after the bounded wait");
}

#[tokio::test]
async fn lock_without_a_tier_is_a_config_error() {
    let r = Cache::<u64, String>::builder("nolock")
        .load_lock(Arc::new(SharedLock::default()), LockOptions::default())
        .build()
        .await;
    assert!(matches!(r, Err(CacheError::Config(_))));
}

#[tokio::test]
async fn hashed_key_ids_keep_ids_out_of_tiers_and_still_invalidate() {
    let tier = MemoryTier::new("mem");
    let bus = Arc::new(LocalBus::new(64));
    let hasher: KeyIdHasher =
        Arc::new(|id: &str| format!("h{:x}", id.len() * 7919 + id.bytes().map(usize::from).sum::<usize>()));
    let build = || async {
        Cache::<String, String>::builder("pii")
            .tier(Arc::new(tier.clone()))
            .serializer(Postcard)
            .options(opts())
            .bus(bus.clone())
            .key_id_hasher(hasher.clone())
            .build()
            .await
            .unwrap()
    };
    let (a, b) = (build().await, build().await);
    a.set("alice@example.com".into(), "secret".into()).await.unwrap();
    let plain = Key::new("pii", Namespace::default_namespace(), "alice@example.com").unwrap();
    assert!(tier.raw(&plain).is_none(), "the plaintext id is not a tier key");
    let hashed = Key::new("pii", Namespace::default_namespace(), &hasher("alice@example.com")).unwrap();
    assert!(tier.raw(&hashed).is_some());
    assert_eq!(b.get(&"alice@example.com".to_string()).await.unwrap().as_deref(), Some(&"secret".to_string()));
    a.set("alice@example.com".into(), "new".into()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while b.l1().unwrap().get(b.namespace(), &"alice@example.com".to_string(), SystemClock.now()).is_some() {
        assert!(tokio::time::Instant::now() < deadline, "B's L1 copy survived the hashed invalidation");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(b.get(&"alice@example.com".to_string()).await.unwrap().as_deref(), Some(&"new".to_string()));
}

#[tokio::test]
async fn invalidate_by_id_and_l1_keys() {
    let cache = Cache::<u64, String>::builder("ids").build().await.unwrap();
    for i in 0..10 {
        cache.set(i, format!("v{i}")).await.unwrap();
    }
    let other = cache.in_namespace("other").unwrap();
    other.set(100, "x".into()).await.unwrap();
    let mut keys = cache.l1_keys(100);
    keys.sort_unstable();
    assert_eq!(keys, (0..10).collect::<Vec<_>>(), "only this namespace's keys");
    assert_eq!(cache.l1_keys(3).len(), 3);
    cache.invalidate_id("4").await.unwrap();
    assert_eq!(cache.get(&4).await.unwrap(), None);
    assert!(matches!(cache.invalidate_id("not a number").await, Err(CacheError::InvalidKey(_))));
    assert!(cache.codec_names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_lock_holder_releases_the_lock() {
    let tier = MemoryTier::new("shared");
    let lock = Arc::new(SharedLock::default());
    let cache = Cache::<u64, String>::builder("cancel")
        .tier(Arc::new(tier))
        .serializer(Postcard)
        .load_lock(lock.clone(), LockOptions::default())
        // A load that outlasts the deadline below: only the cancellation can release the lock.
        .loader(FnLoader::new(|k: u64| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Some(format!("v{k}")))
        }))
        .build()
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_millis(50), cache.get_or_load(&1)).await;
    assert!(r.is_err(), "the caller gave up");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !lock.held.lock().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the lock outlived its cancelled holder");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A tier whose reads wait until the test lets them go (to race an invalidation against them
/// in a fixed order, however slow the machine).
#[derive(Clone)]
struct SlowTier(MemoryTier, Arc<tokio::sync::Notify>, Arc<tokio::sync::Semaphore>);

impl SlowTier {
    fn new(inner: MemoryTier) -> Self {
        Self(inner, Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Semaphore::new(0)))
    }

    /// Signals that a read is in flight, then waits to be let go.
    async fn hold(&self) {
        self.1.notify_one();
        self.2.acquire().await.unwrap().forget();
    }
}

#[async_trait]
impl Tier for SlowTier {
    fn name(&self) -> &str {
        "slow"
    }
    async fn get(&self, key: &Key) -> Result<Option<Bytes>, TierError> {
        self.hold().await;
        self.0.get(key).await
    }
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>, TierError> {
        self.hold().await;
        self.0.get_many(keys).await
    }
    async fn set(&self, key: &Key, entry: &StoredEntry) -> Result<(), TierError> {
        self.0.set(key, entry).await
    }
    async fn delete(&self, key: &Key) -> Result<(), TierError> {
        self.0.delete(key).await
    }
    async fn health(&self) -> TierHealth {
        TierHealth::Healthy
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_racing_an_invalidation_do_not_write_the_old_value_back() {
    let l2 = MemoryTier::new("l2");
    let l3 = SlowTier::new(MemoryTier::new("l3"));
    let cache = Cache::<u64, String>::builder("race")
        .tier(Arc::new(l2.clone()))
        .tier(Arc::new(l3.clone()))
        .serializer(Postcard)
        .options(opts())
        .build()
        .await
        .unwrap();
    for batch in [false, true] {
        cache.set(1, "old".into()).await.unwrap();
        let skey = Key::new("race", Namespace::default_namespace(), "1").unwrap();
        l2.delete(&skey).await.unwrap(); // only the slow L3 has it now
        cache.clear_l1();
        let reader = {
            let cache = cache.clone();
            tokio::spawn(async move {
                if batch { cache.get_many(&[1]).await.unwrap().remove(0) } else { cache.get(&1).await.unwrap() }
            })
        };
        l3.1.notified().await; // the read is in flight
        cache.invalidate(&1).await.unwrap();
        l3.2.add_permits(1);
        let _ = reader.await.unwrap();
        assert!(l2.raw(&skey).is_none(), "batch={batch}: the invalidated value was copied back into L2");
        assert!(
            cache.l1().unwrap().get(cache.namespace(), &1, SystemClock.now()).is_none(),
            "batch={batch}: the invalidated value was put in L1"
        );
    }
}

#[tokio::test]
async fn a_tier_that_cannot_delete_a_tag_is_reported_and_its_copies_stay_hidden() {
    let ok = MemoryTier::new("ok");
    let flaky = MemoryTier::new("flaky");
    let cache = Cache::<u64, String>::builder("tagfail")
        .no_l1()
        .tier(Arc::new(ok.clone()))
        .tier(Arc::new(flaky.clone()))
        .serializer(Postcard)
        .options(opts())
        .build()
        .await
        .unwrap();
    cache.set_with(1, "tagged".into(), &opts().tag("t")).await.unwrap();
    flaky.set_failing(true);
    let err = cache.invalidate_tag("t").await.unwrap_err();
    assert!(matches!(err, CacheError::Tier(_)), "{err}");
    flaky.set_failing(false);
    assert_eq!(flaky.len(), 1, "the flaky tier still stores the entry");
    assert_eq!(cache.get(&1).await.unwrap(), None, "but it is never served");
}

/// The builder's one rule: a cache's own serializer and loader are values, and an `Arc` of one
/// (concrete or `dyn`) is a value too — the caller keeps a handle and the cache uses the same
/// object.
#[tokio::test]
async fn shared_serializer_and_loader_are_passed_as_arcs() {
    struct Counting(AtomicUsize);
    #[async_trait]
    impl Loader<u64, String> for Counting {
        async fn load(&self, id: &u64) -> Result<Option<String>, BoxError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(Some(format!("v{id}")))
        }
    }
    let loader = Arc::new(Counting(AtomicUsize::new(0)));
    let as_dyn: Arc<dyn Loader<u64, String>> = loader.clone();
    let serializer: Arc<dyn Serializer<String>> = Arc::new(Json);
    let tier = Arc::new(MemoryTier::new("l2"));
    let cache: Cache<u64, String> = Cache::builder("arcs")
        .tier(tier.clone())
        .serializer(serializer)
        .loader(as_dyn)
        .options(opts())
        .build()
        .await
        .unwrap();
    assert_eq!(cache.get_or_load(&7).await.unwrap().as_deref().map(String::as_str), Some("v7"));
    assert_eq!(loader.0.load(Ordering::Relaxed), 1, "the caller's handle sees the cache's call");
    // The frame in the tier was written by the shared JSON serializer (id 2): a second cache
    // with a plain `Json` value reads it back.
    let reader: Cache<u64, String> =
        Cache::builder("arcs").no_l1().tier(tier).serializer(Json).options(opts()).build().await.unwrap();
    assert_eq!(reader.get(&7).await.unwrap().as_deref().map(String::as_str), Some("v7"));
    assert_eq!(loader.0.load(Ordering::Relaxed), 1);
}
