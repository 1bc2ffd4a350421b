//! Durations a tier cannot represent, against a real Redis: an entry is stored with a finite
//! expiry or refused with an error, never stored without expiry by accident.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_cache_core::options::MAX_DURATION;
use strata_cache_core::{
    Cache, CacheError, CacheStats, EntryMeta, EntryOptions, Key, ManualClock, Namespace, Postcard, StoredEntry, Tier,
    TierErrorKind, Timestamp,
};
use strata_cache_redis::raw::deadpool_redis::redis;
use strata_cache_redis::tier::MAX_PX_MS;
use strata_cache_redis::{RedisConfig, RedisTier};

fn key(id: &str) -> Key {
    Key::new("bounds", Namespace::new("ns").unwrap(), id).unwrap()
}

fn entry(now: Timestamp, expires_at: Timestamp, tags: &[&str]) -> StoredEntry {
    StoredEntry {
        meta: EntryMeta {
            created: now,
            fresh_until: expires_at.min(now),
            expires_at,
            version: 1,
            load_cost_us: 0,
            negative: false,
            tags: tags.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>().into(),
        },
        frame: Bytes::from_static(b"v"),
    }
}

async fn pttl(url: &str, k: &str) -> i64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("PTTL").arg(k).query_async(&mut conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiries_past_what_redis_stores_are_refused_not_stored_forever() {
    let Some(redis) = support::standalone() else { return };
    // A fixed clock: the remaining time the tier computes is exactly `expires_at - now`.
    let now = Timestamp(1_800_000_000_000);
    let clock = Arc::new(ManualClock::new(now.as_millis()));
    let config = RedisConfig::standalone(redis.url.clone()).prefix(support::unique_prefix("bounds"));
    let tier = RedisTier::new(&config).unwrap().with_clock(clock.clone());

    let ms = |d: u64| Timestamp(now.as_millis() + d);
    for tags in [&[][..], &["t"][..]] {
        // Stored, with the PX asked for (Redis reports what is left: at most that).
        // 1 ms: accepted (it may be gone by the time anyone looks).
        tier.set(&key("1ms"), &entry(now, ms(1), tags)).await.unwrap();
        for (id, at) in [("1min", ms(60_000)), ("day", ms(86_400_000)), ("limit", ms(MAX_PX_MS))] {
            tier.set(&key(id), &entry(now, at, tags)).await.unwrap();
            let left = pttl(&redis.url, &tier.redis_key(&key(id))).await;
            let asked = i64::try_from(at.as_millis() - now.as_millis()).unwrap();
            assert!(left > 0 && left <= asked, "{id}: PTTL {left}, asked {asked}");
            if id != "1min" {
                assert!(left > asked - 60_000, "{id}: PTTL {left}, asked {asked}");
            }
        }
        // Refused with an error, and nothing stored.
        for (id, at) in [
            ("over", ms(MAX_PX_MS + 1)),
            ("i64", Timestamp(i64::MAX as u64)),
            ("past-i64", Timestamp(i64::MAX as u64 + 1)),
            ("max-1", Timestamp(u64::MAX - 1)),
        ] {
            let e = tier.set(&key(id), &entry(now, at, tags)).await.unwrap_err();
            assert_eq!(e.kind(), TierErrorKind::InvalidRequest, "{id}: {e}");
            assert!(e.to_string().contains("past what the Redis tier stores"), "{e}");
            assert_eq!(tier.get(&key(id)).await.unwrap(), None, "{id}");
            // A batch with one such entry is refused as a whole, before anything is sent.
            let batch = vec![(key(&format!("{id}-ok")), entry(now, ms(1_000), tags)), (key(id), entry(now, at, tags))];
            assert_eq!(tier.set_many(&batch).await.unwrap_err().kind(), TierErrorKind::InvalidRequest);
            assert_eq!(tier.get(&key(&format!("{id}-ok"))).await.unwrap(), None);
        }
        // `Timestamp::MAX` is the explicit "never expires".
        tier.set(&key("never"), &entry(now, Timestamp::MAX, tags)).await.unwrap();
        assert_eq!(pttl(&redis.url, &tier.redis_key(&key("never"))).await, -1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_stores_the_longest_accepted_options_with_a_finite_expiry_and_refuses_longer() {
    let Some(redis) = support::standalone() else { return };
    let config = RedisConfig::standalone(redis.url.clone()).prefix(support::unique_prefix("cache-bounds"));
    let tier = RedisTier::new(&config).unwrap();
    let longest = EntryOptions::new(MAX_DURATION).jitter(MAX_DURATION).stale_limit(MAX_DURATION);
    let stats = CacheStats::new();
    let build = |options: EntryOptions| {
        Cache::<u64, String>::builder("bounds")
            .tier(Arc::new(tier.clone()))
            .serializer(Postcard)
            .options(options)
            .observer(stats.clone())
            .build()
    };
    // Past the maximum: refused when the cache is built, naming the option.
    for (options, field) in [
        (EntryOptions::new(Duration::from_secs(60)).stale_limit(Duration::MAX), "stale_limit"),
        (EntryOptions::new(Duration::MAX), "ttl"),
        (EntryOptions::new(MAX_DURATION + Duration::from_nanos(1)), "ttl"),
        (EntryOptions::new(Duration::from_secs(60)).jitter(Duration::MAX), "jitter"),
        (EntryOptions::new(Duration::from_secs(60)).negative_ttl(Duration::MAX), "negative_ttl"),
        (EntryOptions::new(Duration::from_secs(60)).fail_safe_throttle(Duration::MAX), "fail_safe_throttle"),
        (EntryOptions::new(Duration::from_secs(60)).hard_timeout(Duration::MAX), "hard_timeout"),
    ] {
        match build(options).await {
            Err(CacheError::Config(e)) => assert_eq!(e.field, field, "{e}"),
            Err(e) => panic!("{field}: {e}"),
            Ok(_) => panic!("{field}: accepted"),
        }
    }
    // At the maximum: accepted and stored with a finite expiry.
    let cache = build(longest.clone()).await.unwrap();
    cache.set(1, "one".into()).await.unwrap();
    let left = pttl(&redis.url, &tier.redis_key(&cache_key(&cache, 1))).await;
    assert!(left > 0, "finite PX expected, PTTL {left}");
    assert!(u64::try_from(left).unwrap() <= 3 * MAX_DURATION.as_millis() as u64);
    // Per call: `set_with` refuses, and nothing is written.
    let e =
        cache.set_with(2, "two".into(), &EntryOptions::new(Duration::from_secs(60)).stale_limit(Duration::MAX)).await;
    assert!(matches!(e, Err(CacheError::Config(ref c)) if c.field == "stale_limit"), "{e:?}");
    assert_eq!(pttl(&redis.url, &tier.redis_key(&cache_key(&cache, 2))).await, -2, "not written");
    assert_eq!(stats.tier_errors(), 0);
    // ZERO and 1 ns: a zero TTL is refused; 1 ns is below the tiers' millisecond resolution,
    // so the entry is already expired when written and Redis holds nothing.
    assert!(build(EntryOptions::new(Duration::ZERO)).await.is_err());
    let tiny = build(EntryOptions::new(Duration::from_nanos(1))).await.unwrap();
    tiny.set(3, "three".into()).await.unwrap();
    assert_eq!(pttl(&redis.url, &tier.redis_key(&cache_key(&tiny, 3))).await, -2);
    assert_eq!(stats.tier_errors(), 0);
}

fn cache_key(_cache: &Cache<u64, String>, id: u64) -> Key {
    Key::new("bounds", Namespace::default_namespace(), &id.to_string()).unwrap()
}
