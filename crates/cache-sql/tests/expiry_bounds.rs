//! Durations the SQL tier cannot represent, against real databases (SQLite always; PostgreSQL
//! and MariaDB when reachable): an entry is stored with a finite `expires_at` or refused with
//! an error, never clamped into "never expires" and never skipped silently.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::DbEnv;
use strata_cache_core::options::MAX_DURATION;
use strata_cache_core::{
    Cache, CacheError, CacheStats, EntryMeta, EntryOptions, Key, Namespace, Postcard, StoredEntry, Tier, TierErrorKind,
    Timestamp,
};
use strata_cache_sql::SqlTier;
use strata_cache_sql::raw::sea_orm::{ConnectionTrait, Statement};

fn key(id: &str) -> Key {
    Key::new("bounds", Namespace::new("ns").unwrap(), id).unwrap()
}

fn entry(expires_at: Timestamp) -> StoredEntry {
    StoredEntry {
        meta: EntryMeta {
            created: Timestamp(0),
            fresh_until: Timestamp(0),
            expires_at,
            version: 1,
            load_cost_us: 0,
            negative: false,
            tags: Vec::new().into(),
        },
        frame: Bytes::from_static(b"v"),
    }
}

/// `expires_at` of the stored row for `id` in cache `cache`, if there is one.
async fn stored_expiry(tier: &SqlTier, cache: &str, id: &str) -> Option<i64> {
    let db = strata_cache_sql::raw::connection(tier);
    let backend = db.get_database_backend();
    let p = if backend == strata_cache_sql::raw::sea_orm::DbBackend::Postgres { "$1" } else { "?" };
    let sql = format!("SELECT expires_at FROM {} WHERE key_id = {p} AND cache = {}", tier.table(), p.replace('1', "2"));
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [id.as_bytes().to_vec().into(), cache.as_bytes().to_vec().into()],
        ))
        .await
        .unwrap()?;
    Some(row.try_get_by_index::<i64>(0).unwrap())
}

async fn tier_bounds(env: DbEnv) {
    let tier = SqlTier::connect(env.config().clock(common::clock())).await.unwrap();
    let label = env.label;
    let max_i64 = i64::MAX as u64;
    // Stored as asked: up to the largest value the signed column holds.
    for (id, at) in [("now+1", 1_700_000_000_001), ("far", 1_700_000_000_000 + (1 << 53)), ("i64max", max_i64)] {
        tier.set(&key(id), &entry(Timestamp(at))).await.unwrap();
        assert_eq!(stored_expiry(&tier, "bounds", id).await, Some(i64::try_from(at).unwrap()), "{label} {id}");
    }
    // Past it: refused, nothing written (singly and in a batch, whose other rows are written).
    for (id, at) in [("i64max+1", max_i64 + 1), ("u64max-1", u64::MAX - 1)] {
        let e = tier.set(&key(id), &entry(Timestamp(at))).await.unwrap_err();
        assert_eq!(e.kind(), TierErrorKind::InvalidRequest, "{label} {id}: {e}");
        assert!(e.to_string().contains("past what the SQL tier stores"), "{e}");
        assert_eq!(stored_expiry(&tier, "bounds", id).await, None, "{label} {id}");
        let ok = format!("{id}-neighbour");
        let batch = vec![(key(&ok), entry(Timestamp(max_i64))), (key(id), entry(Timestamp(at)))];
        assert_eq!(tier.set_many(&batch).await.unwrap_err().kind(), TierErrorKind::InvalidRequest, "{label}");
        assert_eq!(stored_expiry(&tier, "bounds", id).await, None, "{label} {id}");
        assert_eq!(stored_expiry(&tier, "bounds", &ok).await, Some(i64::MAX), "{label} {ok}");
    }
    // `Timestamp::MAX` is the explicit "never expires".
    tier.set(&key("never"), &entry(Timestamp::MAX)).await.unwrap();
    assert_eq!(stored_expiry(&tier, "bounds", "never").await, Some(i64::MAX), "{label}");
}

async fn cache_bounds(env: DbEnv) {
    let tier = SqlTier::connect(env.config()).await.unwrap();
    let label = env.label;
    let stats = CacheStats::new();
    let build = |options: EntryOptions| {
        Cache::<u64, String>::builder("cbounds")
            .no_l1()
            .tier(Arc::new(tier.clone()))
            .serializer(Postcard)
            .options(options)
            .observer(stats.clone())
            .build()
    };
    for (options, field) in [
        (EntryOptions::new(Duration::from_secs(60)).stale_limit(Duration::MAX), "stale_limit"),
        (EntryOptions::new(Duration::MAX), "ttl"),
        (EntryOptions::new(Duration::from_secs(60)).stale_limit(MAX_DURATION + Duration::from_nanos(1)), "stale_limit"),
    ] {
        match build(options).await {
            Err(CacheError::Config(e)) => assert_eq!(e.field, field, "{label}: {e}"),
            other => panic!("{label} {field}: {:?}", other.err()),
        }
    }
    // The longest accepted options: the row is written, with a finite expiry.
    let longest = EntryOptions::new(MAX_DURATION).jitter(MAX_DURATION).stale_limit(MAX_DURATION);
    let cache = build(longest).await.unwrap();
    cache.set(1, "one".into()).await.unwrap();
    let at = stored_expiry(&tier, "cbounds", "1").await.expect("row written");
    assert!(at < i64::MAX, "{label}: finite expiry expected, got {at}");
    let now =
        i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let max_ms = i64::try_from(MAX_DURATION.as_millis()).unwrap();
    assert!(at >= now + 2 * max_ms - 60_000 && at <= now + 3 * max_ms + 60_000, "{label}: {at}");
    // `set_with` too long: refused, nothing written, no tier error counted.
    let e =
        cache.set_with(2, "two".into(), &EntryOptions::new(Duration::from_secs(60)).stale_limit(Duration::MAX)).await;
    assert!(matches!(e, Err(CacheError::Config(ref c)) if c.field == "stale_limit"), "{label}: {e:?}");
    assert_eq!(stored_expiry(&tier, "cbounds", "2").await, None, "{label}");
    assert_eq!(stats.tier_errors(), 0, "{label}");
}

#[tokio::test]
async fn sqlite_tier_refuses_expiries_it_cannot_store() {
    tier_bounds(common::sqlite()).await;
    cache_bounds(common::sqlite()).await;
}

#[tokio::test]
async fn postgres_tier_refuses_expiries_it_cannot_store() {
    let Some(env) = common::postgres().await else { return };
    tier_bounds(env).await;
    let Some(env) = common::postgres().await else { return };
    cache_bounds(env).await;
}

#[tokio::test]
async fn mysql_tier_refuses_expiries_it_cannot_store() {
    let Some(env) = common::mysql().await else { return };
    tier_bounds(env).await;
    let Some(env) = common::mysql().await else { return };
    cache_bounds(env).await;
}
