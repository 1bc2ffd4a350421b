//! `Tier::invalidate_namespace` on Redis (used by the cache's auto-recovery when an outage missed
//! more writes than it could remember): exactly one cache/namespace goes, under a prefix that
//! holds glob characters; a cluster says `Unsupported`.
#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use strata_cache_core::{Clock, EntryMeta, Key, Namespace, StoredEntry, SystemClock, Tier, TierErrorKind, Timestamp};
use strata_cache_redis::{RedisConfig, RedisTier};

fn entry(tags: &[&str]) -> StoredEntry {
    let now = SystemClock.now();
    StoredEntry {
        meta: EntryMeta {
            created: now,
            fresh_until: Timestamp::MAX,
            expires_at: Timestamp::MAX,
            version: 1,
            load_cost_us: 0,
            negative: false,
            tags: tags.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>().into(),
        },
        frame: Bytes::from_static(b"x"),
    }
}

fn key(cache: &str, ns: &str, id: &str) -> Key {
    Key::new(cache, Namespace::new(ns).unwrap(), id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_namespace_drops_one_namespace_only() {
    let Some(redis) = support::standalone() else { return };
    let base = support::unique_prefix("ns");
    // Unescaped, the glob `?` of the first prefix would match the second prefix's keys.
    let a = RedisTier::new(&RedisConfig::standalone(&redis.url).prefix(format!("{base}?[x]*:"))).unwrap();
    let b = RedisTier::new(&RedisConfig::standalone(&redis.url).prefix(format!("{base}Z[x]*:"))).unwrap();
    let long = "y".repeat(2_000); // stored under a hashed key (`cache:ns#...`)
    let gone = [key("c", "n", "1"), key("c", "n", "2"), key("c", "n", &long)];
    let kept = [key("c", "other", "1"), key("c2", "n", "1"), key("c", "n2", "1")];
    for k in gone.iter().chain(&kept) {
        a.set(k, &entry(&["t"])).await.unwrap();
        b.set(k, &entry(&["t"])).await.unwrap();
    }
    let n = a.invalidate_namespace("c", "n").await.unwrap();
    assert_eq!(n, 4, "three entries and the namespace's tag set");
    for k in &gone {
        assert_eq!(a.get(k).await.unwrap(), None);
        assert!(b.get(k).await.unwrap().is_some(), "another prefix is untouched");
    }
    for k in &kept {
        assert!(a.get(k).await.unwrap().is_some(), "another cache or namespace is untouched");
    }
    // Tag sets of the kept namespaces still work; the dropped one is empty.
    assert_eq!(a.invalidate_tag("c", "other", "t").await.unwrap(), 1);
    assert_eq!(a.invalidate_tag("c", "n", "t").await.unwrap(), 0);
    assert_eq!(a.invalidate_namespace("c", "n").await.unwrap(), 0, "idempotent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_does_not_support_namespace_invalidation() {
    let Some(cluster) = support::cluster() else { return };
    let tier =
        RedisTier::new(&RedisConfig::cluster(cluster.urls.clone()).prefix(support::unique_prefix("nsc"))).unwrap();
    let e = tier.invalidate_namespace("c", "n").await.unwrap_err();
    assert_eq!(e.kind(), TierErrorKind::Unsupported);
}
