//! RedisTier against real Redis: standalone and cluster.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_cache_core::{
    Cache, CacheStats, Clock, EntryMeta, FnLoader, Key, Namespace, Postcard, StoredEntry, SystemClock, Tier,
    TierErrorKind, TierHealth, Timestamp,
};
use strata_cache_redis::keys::slot;
use strata_cache_redis::raw::deadpool_redis::redis;
use strata_cache_redis::{RedisConfig, RedisTier};

fn key(id: &str) -> Key {
    Key::new("users", Namespace::new("eu").unwrap(), id).unwrap()
}

fn entry(frame: &str, ttl: Option<Duration>, tags: &[&str]) -> StoredEntry {
    let now = SystemClock.now();
    let expires_at = ttl.map_or(Timestamp::MAX, |t| now.saturating_add(t));
    StoredEntry {
        meta: EntryMeta {
            created: now,
            fresh_until: expires_at,
            expires_at,
            version: 1,
            load_cost_us: 0,
            negative: false,
            tags: tags.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>().into(),
        },
        frame: Bytes::from(frame.to_owned()),
    }
}

async fn raw_pttl(client: &redis::Client, cluster: Option<&redis::cluster::ClusterClient>, k: &str) -> i64 {
    match cluster {
        Some(c) => {
            let mut conn = c.get_async_connection().await.unwrap();
            redis::cmd("PTTL").arg(k).query_async(&mut conn).await.unwrap()
        }
        None => {
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            redis::cmd("PTTL").arg(k).query_async(&mut conn).await.unwrap()
        }
    }
}

/// The same checks on either topology.
async fn battery(tier: &RedisTier, urls: &[String]) {
    let client = redis::Client::open(urls[0].as_str()).unwrap();
    let cluster_client = tier.is_cluster().then(|| redis::cluster::ClusterClient::new(urls.to_vec()).unwrap());

    // Round trip, miss, delete.
    assert_eq!(tier.get(&key("missing")).await.unwrap(), None);
    tier.set(&key("a"), &entry("va", Some(Duration::from_secs(60)), &[])).await.unwrap();
    assert_eq!(tier.get(&key("a")).await.unwrap(), Some(Bytes::from_static(b"va")));
    let pttl = raw_pttl(&client, cluster_client.as_ref(), &tier.redis_key(&key("a"))).await;
    assert!((55_000..=60_000).contains(&pttl), "PX from expires_at: {pttl}");
    tier.delete(&key("a")).await.unwrap();
    assert_eq!(tier.get(&key("a")).await.unwrap(), None);
    tier.delete(&key("a")).await.unwrap(); // absent: no error

    // No expiry → no PX.
    tier.set(&key("forever"), &entry("f", None, &[])).await.unwrap();
    assert_eq!(raw_pttl(&client, cluster_client.as_ref(), &tier.redis_key(&key("forever"))).await, -1);

    // Batches (keys spread over many slots on a cluster), in order, with misses.
    let keys: Vec<Key> = (0..100).map(|i| key(&format!("batch-{i}"))).collect();
    let entries: Vec<(Key, StoredEntry)> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(i, k)| (k.clone(), entry(&format!("v{i}"), Some(Duration::from_secs(30)), &[])))
        .collect();
    tier.set_many(&entries).await.unwrap();
    let got = tier.get_many(&keys).await.unwrap();
    assert_eq!(got.len(), 100);
    for (i, v) in got.iter().enumerate() {
        let want = (i % 3 != 0).then(|| Bytes::from(format!("v{i}")));
        assert_eq!(v, &want, "key {i}");
    }
    let slots: std::collections::HashSet<u16> = keys.iter().map(|k| slot(tier.redis_key(k).as_bytes())).collect();
    assert!(slots.len() > 50, "keys should spread over slots: {}", slots.len());
    assert!(tier.get_many(&[]).await.unwrap().is_empty());
    tier.set_many(&[]).await.unwrap();

    // PX expiry: gone after it passes; an already-expired entry is not written (and removes the old).
    // A busy machine may take longer than the expiry to read the entry back: then it tries again
    // with a longer one. Either way Redis (not this test's timing) expires it.
    let mut px = Duration::from_millis(300);
    loop {
        tier.set(&key("short"), &entry("s", Some(px), &[])).await.unwrap();
        if tier.get(&key("short")).await.unwrap().is_some() {
            break;
        }
        assert!(px < Duration::from_secs(60), "never readable before its expiry");
        px *= 2;
    }
    let end = std::time::Instant::now() + px + Duration::from_secs(60);
    while tier.get(&key("short")).await.unwrap().is_some() {
        assert!(std::time::Instant::now() < end, "not expired by Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tier.set(&key("old"), &entry("old", Some(Duration::from_secs(30)), &[])).await.unwrap();
    let mut expired = entry("new", Some(Duration::from_secs(1)), &[]);
    expired.meta.expires_at = Timestamp(SystemClock.now().0 - 10);
    tier.set(&key("old"), &expired).await.unwrap();
    assert_eq!(tier.get(&key("old")).await.unwrap(), None);

    // Tags: entries of two tags (over several slots), invalidate one.
    let tagged: Vec<(Key, StoredEntry)> = (0..20)
        .map(|i| {
            let tags: &[&str] = if i < 15 { &["red", "all"] } else { &["blue", "all"] };
            (key(&format!("tagged-{i}")), entry("t", Some(Duration::from_secs(30)), tags))
        })
        .collect();
    tier.set_many(&tagged).await.unwrap();
    tier.set(&key("tagged-single"), &entry("t", Some(Duration::from_secs(30)), &["red"])).await.unwrap();
    let tag_key = tier.key_space().tag_set("users", "eu", "red");
    let tag_ttl = raw_pttl(&client, cluster_client.as_ref(), &tag_key).await;
    assert!(tag_ttl >= 30_000, "tag set outlives its entries: {tag_ttl}");
    assert_eq!(tier.invalidate_tag("users", "eu", "red").await.unwrap(), 16);
    for (i, (k, _)) in tagged.iter().enumerate() {
        assert_eq!(tier.get(k).await.unwrap().is_some(), i >= 15, "tagged-{i}");
    }
    assert_eq!(tier.get(&key("tagged-single")).await.unwrap(), None);
    assert_eq!(tier.invalidate_tag("users", "eu", "red").await.unwrap(), 0, "set emptied");
    assert_eq!(tier.invalidate_tag("users", "other", "all").await.unwrap(), 0, "per namespace");
    assert_eq!(tier.invalidate_tag("users", "eu", "all").await.unwrap(), 5);

    // Hostile ids round-trip and land where Redis says.
    for id in ["{", "}", "{}", "a{b}c", "*?[x]", "with space", "ünïcødé ✓", "\0nul", &"L".repeat(3000)] {
        let k = key(id);
        tier.set(&k, &entry(id, Some(Duration::from_secs(10)), &[])).await.unwrap();
        assert_eq!(tier.get(&k).await.unwrap(), Some(Bytes::from(id.to_owned())), "{id:?}");
    }
    assert_eq!(tier.health().await, TierHealth::Healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_battery() {
    let Some(redis) = support::standalone() else { return };
    let tier = RedisTier::new(&RedisConfig::standalone(&redis.url).prefix(support::unique_prefix("tier"))).unwrap();
    assert!(!tier.is_cluster());
    assert!(tier.breaker_probe().is_none(), "a standalone tier's breaker is the BreakerTier around it");
    battery(&tier, std::slice::from_ref(&redis.url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_battery_and_server_slots() {
    let Some(cluster) = support::cluster() else { return };
    let config = RedisConfig::cluster(cluster.urls.clone()).prefix(support::unique_prefix("ctier"));
    let tier = RedisTier::new(&config).unwrap();
    assert!(tier.is_cluster());
    let probe = tier.breaker_probe().expect("a cluster tier keeps a breaker per master");
    battery(&tier, &cluster.urls).await;
    assert_eq!(probe.state(), strata_cache_core::BreakerState::Closed, "every master answered");

    // Our slot math agrees with the server's for hostile keys.
    let client = redis::cluster::ClusterClient::new(cluster.urls.clone()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    for id in ["{", "}", "{}x{y}", "a{b}c", "{{a}}", "*?[", " ", "ü✓", "x{}", &"z".repeat(2000)] {
        let k = tier.redis_key(&key(id));
        let server: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(&k).query_async(&mut conn).await.unwrap();
        assert_eq!(i64::from(slot(k.as_bytes())), server, "{id:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_value_is_a_counted_decode_error_and_a_miss() {
    let Some(redis) = support::standalone() else { return };
    let tier = RedisTier::new(&RedisConfig::standalone(&redis.url).prefix(support::unique_prefix("garbage"))).unwrap();
    let stats = CacheStats::new();
    let cache: Cache<u64, String> = Cache::builder("users")
        .no_l1()
        .tier(Arc::new(tier.clone()))
        .serializer(Postcard)
        .loader(FnLoader::new(|id: u64| async move { Ok(Some(format!("loaded-{id}"))) }))
        .observer(stats.clone())
        .build()
        .await
        .unwrap();
    let k = Key::new("users", Namespace::default_namespace(), "7").unwrap();
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(tier.redis_key(&k))
        .arg(b"\xffnot a frame\x00".as_slice())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(cache.get_or_load(&7).await.unwrap().as_deref(), Some(&"loaded-7".to_owned()));
    assert_eq!(stats.decode_errors(), 1);
    assert_eq!(stats.loads(), 1);
    // The loaded value replaced the garbage.
    assert_eq!(cache.get_or_load(&7).await.unwrap().as_deref(), Some(&"loaded-7".to_owned()));
    assert_eq!(stats.loads(), 1);
    assert_eq!(stats.hits("redis"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_unavailable_and_cache_keeps_answering() {
    let url = support::closed_port_url();
    let tier = RedisTier::new(&RedisConfig::standalone(url).command_timeout(Duration::from_secs(2))).unwrap();
    let e = tier.get(&key("x")).await.unwrap_err();
    assert_eq!(e.kind(), TierErrorKind::Unavailable, "{e}");
    assert!(std::error::Error::source(&e).is_some(), "source kept: {e:?}");
    assert!(matches!(tier.health().await, TierHealth::Unhealthy(_)));
    let stats = CacheStats::new();
    let cache: Cache<u64, String> = Cache::builder("users")
        .tier(Arc::new(tier))
        .serializer(Postcard)
        .loader(FnLoader::new(|id: u64| async move { Ok(Some(format!("loaded-{id}"))) }))
        .observer(stats.clone())
        .build()
        .await
        .unwrap();
    for i in 0..5 {
        assert_eq!(cache.get_or_load(&i).await.unwrap().as_deref(), Some(&format!("loaded-{i}")));
    }
    assert!(stats.tier_errors() >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_server_is_a_timeout() {
    let Some(server) = support::Server::start(0, false) else { return };
    let tier =
        RedisTier::new(&RedisConfig::standalone(server.url()).command_timeout(Duration::from_millis(150))).unwrap();
    tier.set(&key("warm"), &entry("w", None, &[])).await.unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // If a busy machine only sends the read after the pause is over, pause again for longer.
    let mut pause_ms = 600u64;
    loop {
        let paused_at = std::time::Instant::now();
        let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(pause_ms).arg("ALL").query_async(&mut conn).await.unwrap();
        match tier.get(&key("warm")).await {
            Err(e) => {
                assert_eq!(e.kind(), TierErrorKind::Timeout, "{e}");
                break;
            }
            Ok(_) => {
                assert!(paused_at.elapsed() >= Duration::from_millis(pause_ms), "answered during the pause");
                assert!(pause_ms < 60_000, "the read never met the pause");
                pause_ms *= 2;
            }
        }
    }
    let end = std::time::Instant::now() + Duration::from_millis(pause_ms) + Duration::from_secs(60);
    loop {
        match tier.get(&key("warm")).await {
            Ok(v) => {
                assert!(v.is_some(), "recovers after the pause");
                break;
            }
            Err(e) => {
                assert_eq!(e.kind(), TierErrorKind::Timeout, "{e}");
                assert!(std::time::Instant::now() < end, "still timing out long after the pause");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_tag_invalidation_reaches_redis() {
    let Some(redis) = support::standalone() else { return };
    let tier = RedisTier::new(&RedisConfig::standalone(&redis.url).prefix(support::unique_prefix("ctag"))).unwrap();
    let cache: Cache<u64, String> =
        Cache::builder("users").no_l1().tier(Arc::new(tier.clone())).serializer(Postcard).build().await.unwrap();
    let opts = cache.options().clone().tag("team-1");
    cache.set_with(1, "one".into(), &opts).await.unwrap();
    cache.set(2, "two".into()).await.unwrap();
    let k1 = Key::new("users", Namespace::default_namespace(), "1").unwrap();
    assert!(tier.get(&k1).await.unwrap().is_some());
    cache.invalidate_tag("team-1").await.unwrap();
    assert_eq!(tier.get(&k1).await.unwrap(), None, "deleted from Redis");
    assert_eq!(cache.get(&2).await.unwrap().as_deref(), Some(&"two".to_owned()));
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<RedisTier>();
    check::<RedisConfig>();
    check::<strata_cache_redis::RedisBus>();
    check::<strata_cache_redis::RedisLock>();
    check::<strata_cache_redis::RedisChannelSource>();
    check::<strata_cache_redis::BusStats>();
    check::<strata_cache_core::BreakerTier<RedisTier>>();
}
