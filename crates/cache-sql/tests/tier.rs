//! `SqlTier` against real databases: SQLite (temp file), PostgreSQL (fresh schema) and
//! MariaDB (fresh database). Each scenario runs on every backend that is reachable.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::DbEnv;
use strata_cache_core::{
    Cache, CacheStats, Clock, EntryMeta, EntryOptions, FnLoader, Key, ManualClock, Namespace, Postcard, StoredEntry,
    Tier, TierErrorKind, TierHealth, Timestamp,
};
use strata_cache_sql::raw::sea_orm::{ConnectionTrait, Statement};
use strata_cache_sql::{SqlConfig, SqlError, SqlTier};

fn key(cache: &str, ns: &str, id: &str) -> Key {
    Key::new(cache, Namespace::new(ns).unwrap(), id).unwrap()
}

fn entry(frame: &[u8], expires_at: u64, version: u64, tags: &[&str]) -> StoredEntry {
    StoredEntry {
        meta: EntryMeta {
            created: Timestamp(0),
            fresh_until: Timestamp(expires_at),
            expires_at: Timestamp(expires_at),
            version,
            load_cost_us: 0,
            negative: false,
            tags: tags.iter().map(|t| t.to_string()).collect::<Vec<_>>().into(),
        },
        frame: Bytes::copy_from_slice(frame),
    }
}

const FAR: u64 = u64::MAX;

async fn count_rows(tier: &SqlTier) -> i64 {
    let db = strata_cache_sql::raw::connection(tier);
    let sql = format!("SELECT COUNT(*) AS n FROM {}", tier.table());
    let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap().unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

async fn round_trip(env: DbEnv) {
    let tier = env.tier().await;
    let k = key("users", "eu", "alice@example.com");
    assert_eq!(tier.get(&k).await.unwrap(), None);
    let frame: Vec<u8> = (0..=255u8).collect();
    tier.set(&k, &entry(&frame, FAR, 1, &[])).await.unwrap();
    assert_eq!(tier.get(&k).await.unwrap().as_deref(), Some(&frame[..]));
    // Same id in another namespace or cache is another row.
    assert_eq!(tier.get(&key("users", "us", "alice@example.com")).await.unwrap(), None);
    assert_eq!(tier.get(&key("orders", "eu", "alice@example.com")).await.unwrap(), None);
    // Ids compare exactly (no case folding, no trailing-space padding).
    assert_eq!(tier.get(&key("users", "eu", "ALICE@example.com")).await.unwrap(), None);
    assert_eq!(tier.get(&key("users", "eu", "alice@example.com ")).await.unwrap(), None);
    // Empty frame, unicode id, an id with SQL in it.
    let k2 = key("users", "eu", "日本'; DROP TABLE strata_cache; --");
    tier.set(&k2, &entry(b"", FAR, 1, &[])).await.unwrap();
    assert_eq!(tier.get(&k2).await.unwrap().as_deref(), Some(&b""[..]));
    tier.delete(&k).await.unwrap();
    tier.delete(&k).await.unwrap();
    assert_eq!(tier.get(&k).await.unwrap(), None);
    assert_eq!(count_rows(&tier).await, 1);
    assert_eq!(tier.health().await, TierHealth::Healthy);
    // A second connect finds the table migrated and keeps the data.
    let again = env.tier().await;
    assert_eq!(again.get(&k2).await.unwrap().as_deref(), Some(&b""[..]));
    // An id too long for the key column is refused on write, a miss on read.
    let long = key("users", "eu", &"x".repeat(3000));
    let err = tier.set(&long, &entry(b"v", FAR, 1, &[])).await.unwrap_err();
    assert_eq!(err.kind(), TierErrorKind::InvalidRequest, "{err}");
    assert_eq!(tier.get(&long).await.unwrap(), None);
}

async fn batches(env: DbEnv) {
    let tier = env.tier().await;
    let items: Vec<(Key, StoredEntry)> =
        (0..1000).map(|i| (key("c", "ns", &format!("k{i}")), entry(format!("v{i}").as_bytes(), FAR, 1, &[]))).collect();
    tier.set_many(&items).await.unwrap();
    assert_eq!(count_rows(&tier).await, 1000);
    let mut keys: Vec<Key> = (0..1000).map(|i| key("c", "ns", &format!("k{i}"))).collect();
    keys.push(key("c", "ns", "missing"));
    keys.push(key("c", "ns", "k5")); // duplicate
    keys.push(key("c", "other", "k5")); // other namespace, same id
    let got = tier.get_many(&keys).await.unwrap();
    assert_eq!(got.len(), 1003);
    for (i, g) in got.iter().take(1000).enumerate() {
        assert_eq!(g.as_deref(), Some(format!("v{i}").as_bytes()), "k{i}");
    }
    assert_eq!(got[1000], None);
    assert_eq!(got[1001].as_deref(), Some(&b"v5"[..]));
    assert_eq!(got[1002], None);
    // A batch over the bound-parameter limit is chunked (SQLite: 32766 / 7 rows per statement).
    let big: Vec<(Key, StoredEntry)> =
        (0..5000).map(|i| (key("big", "ns", &format!("b{i}")), entry(b"x", FAR, 1, &[]))).collect();
    tier.set_many(&big).await.unwrap();
    let big_keys: Vec<Key> = (0..40_000).map(|i| key("big", "ns", &format!("b{i}"))).collect();
    let got = tier.get_many(&big_keys).await.unwrap();
    assert_eq!(got.iter().filter(|g| g.is_some()).count(), 5000);
    // Duplicate keys in one batch: the higher version wins whatever the order.
    let dup =
        vec![(key("c", "ns", "d"), entry(b"new", FAR, 9, &[])), (key("c", "ns", "d"), entry(b"old", FAR, 3, &[]))];
    tier.set_many(&dup).await.unwrap();
    assert_eq!(tier.get(&key("c", "ns", "d")).await.unwrap().as_deref(), Some(&b"new"[..]));
    tier.set_many(&[]).await.unwrap();
    assert!(tier.get_many(&[]).await.unwrap().is_empty());
}

async fn expiry_and_sweep(env: DbEnv) {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let tier = SqlTier::connect(env.config().clock(clock.clone())).await.unwrap();
    let now = clock.now().as_millis();
    let mut items = Vec::new();
    for i in 0..10 {
        items.push((key("c", "ns", &format!("short{i}")), entry(b"s", now + 1_000, 1, &[])));
    }
    for i in 0..5 {
        items.push((key("c", "ns", &format!("long{i}")), entry(b"l", now + 60_000, 1, &[])));
    }
    tier.set_many(&items).await.unwrap();
    assert_eq!(tier.sweep(3).await.unwrap(), 0);
    assert!(tier.get(&key("c", "ns", "short0")).await.unwrap().is_some());
    clock.advance(Duration::from_millis(1_000)); // expires_at == now: expired
    assert_eq!(tier.get(&key("c", "ns", "short0")).await.unwrap(), None, "expired rows are skipped on read");
    let many = tier.get_many(&[key("c", "ns", "short1"), key("c", "ns", "long1")]).await.unwrap();
    assert_eq!(many[0], None);
    assert!(many[1].is_some());
    assert_eq!(count_rows(&tier).await, 15, "reads do not delete");
    assert_eq!(tier.sweep(3).await.unwrap(), 10, "all expired rows, in batches of 3");
    assert_eq!(count_rows(&tier).await, 5);
    assert_eq!(tier.sweep(3).await.unwrap(), 0);
    assert_eq!(tier.sweep(0).await.unwrap_err().kind(), TierErrorKind::InvalidRequest);

    // The background sweeper purges on its own.
    clock.advance(Duration::from_secs(60));
    let handle = tier.spawn_sweeper(Duration::from_millis(20), 2).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count_rows(&tier).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "sweeper did not purge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!handle.is_finished());
    handle.stop();
    assert!(tier.spawn_sweeper(Duration::ZERO, 1).is_err());
}

async fn last_writer_wins(env: DbEnv) {
    let tier = env.tier().await;
    let k = key("c", "ns", "k");
    tier.set(&k, &entry(b"v10", FAR, 10, &["a"])).await.unwrap();
    tier.set(&k, &entry(b"v5", 1, 5, &["b"])).await.unwrap();
    assert_eq!(tier.get(&k).await.unwrap().as_deref(), Some(&b"v10"[..]), "older version must not overwrite");
    // The older write did not touch the tags or the expiry either.
    assert_eq!(tier.invalidate_tag("c", "ns", "b").await.unwrap(), 0);
    tier.set_many(&[(k.clone(), entry(b"v7", FAR, 7, &[]))]).await.unwrap();
    assert_eq!(tier.get(&k).await.unwrap().as_deref(), Some(&b"v10"[..]));
    tier.set(&k, &entry(b"v10b", FAR, 10, &[])).await.unwrap();
    assert_eq!(tier.get(&k).await.unwrap().as_deref(), Some(&b"v10b"[..]), "a tie overwrites");
    tier.set(&k, &entry(b"v11", FAR, 11, &[])).await.unwrap();
    assert_eq!(tier.get(&k).await.unwrap().as_deref(), Some(&b"v11"[..]));
    // Versions past i64::MAX are stored clamped and still win over smaller ones.
    tier.set(&k, &entry(b"huge", FAR, u64::MAX, &[])).await.unwrap();
    tier.set(&k, &entry(b"small", FAR, 12, &[])).await.unwrap();
    assert_eq!(tier.get(&k).await.unwrap().as_deref(), Some(&b"huge"[..]));
}

const HOSTILE: [&str; 12] =
    ["%", "_", "|", "a|b", "\\", "\\|", "%7C", "'; DROP TABLE strata_cache; --", "", "a%", "ä🎉", "A"];

async fn tags(env: DbEnv) {
    let tier = env.tier().await;
    // One entry per hostile tag, plus a few carrying neighbours of it.
    let mut items = Vec::new();
    for (i, t) in HOSTILE.iter().enumerate() {
        items.push((key("c", "ns", &format!("h{i}")), entry(b"v", FAR, 1, &[t])));
    }
    items.push((key("c", "ns", "plain"), entry(b"v", FAR, 1, &["a", "b"])));
    items.push((key("c", "ns", "multi"), entry(b"v", FAR, 1, &["x", "a", "%"])));
    items.push((key("c", "other", "plain"), entry(b"v", FAR, 1, &["a"])));
    items.push((key("d", "ns", "plain"), entry(b"v", FAR, 1, &["a"])));
    items.push((key("c", "ns", "none"), entry(b"v", FAR, 1, &[])));
    tier.set_many(&items).await.unwrap();
    let total = count_rows(&tier).await;

    // "a" matches exactly the entries carrying "a" in c/ns: not "a|b", "a%", "A".
    assert_eq!(tier.invalidate_tag("c", "ns", "a").await.unwrap(), 2);
    assert_eq!(tier.get(&key("c", "ns", "plain")).await.unwrap(), None);
    assert_eq!(tier.get(&key("c", "ns", "multi")).await.unwrap(), None);
    assert!(tier.get(&key("c", "other", "plain")).await.unwrap().is_some());
    assert!(tier.get(&key("d", "ns", "plain")).await.unwrap().is_some());
    for (i, t) in HOSTILE.iter().enumerate() {
        assert!(tier.get(&key("c", "ns", &format!("h{i}"))).await.unwrap().is_some(), "{t:?} survived 'a'");
    }
    // Each hostile tag deletes its own entry and nothing else (no pattern semantics).
    for (i, t) in HOSTILE.iter().enumerate() {
        assert_eq!(tier.invalidate_tag("c", "ns", t).await.unwrap(), 1, "tag {t:?}");
        assert_eq!(tier.get(&key("c", "ns", &format!("h{i}"))).await.unwrap(), None);
    }
    assert_eq!(count_rows(&tier).await, total - 2 - HOSTILE.len() as i64);
    assert!(tier.get(&key("c", "ns", "none")).await.unwrap().is_some());
    // Through the trait too.
    assert_eq!(Tier::invalidate_tag(&tier, "c", "other", "a").await.unwrap(), 1);
}

async fn garbage_rows(env: DbEnv) {
    let tier = env.tier().await;
    let stats = CacheStats::new();
    let cache: Cache<u64, String> = Cache::builder("users")
        .no_l1()
        .tier(Arc::new(tier.clone()))
        .serializer(Postcard)
        .options(EntryOptions::new(Duration::from_secs(60)))
        .loader(FnLoader::new(|id: u64| async move { Ok(Some(format!("loaded-{id}"))) }))
        .observer(stats.clone())
        .build()
        .await
        .unwrap();
    cache.set(1, "good".into()).await.unwrap();
    assert_eq!(cache.get(&1).await.unwrap().as_deref().map(String::as_str), Some("good"));
    // Overwrite the row with garbage at a higher version.
    let k = key("users", "default", "1");
    tier.set(&k, &entry(b"\x00\xffnot a frame at all", FAR, u64::MAX, &[])).await.unwrap();
    assert_eq!(tier.get(&k).await.unwrap().as_deref(), Some(&b"\x00\xffnot a frame at all"[..]), "bytes as stored");
    assert_eq!(cache.get(&1).await.unwrap(), None, "garbage is a miss");
    assert_eq!(stats.decode_errors(), 1);
    let many = cache.get_many(&[1]).await.unwrap();
    assert_eq!(many[0].as_deref().map(String::as_str), Some("loaded-1"), "get_many falls back to the loader");
    assert!(stats.decode_errors() >= 2);
}

macro_rules! on_every_backend {
    ($($name:ident),*) => {
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::common::sqlite()).await } )* }
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { if let Some(env) = super::common::postgres().await { super::$name(env).await } } )* }
        mod mysql { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { if let Some(env) = super::common::mysql().await { super::$name(env).await } } )* }
    };
}

on_every_backend!(round_trip, batches, expiry_and_sweep, last_writer_wins, tags, garbage_rows);

#[tokio::test]
async fn bad_config_and_unreachable_databases_are_typed_errors() {
    let err = SqlTier::connect(SqlConfig::new("redis://127.0.0.1")).await.unwrap_err();
    assert!(matches!(&err, SqlError::Config(c) if c.field == "sql.url"), "{err}");
    let err = SqlTier::connect(SqlConfig::sqlite("/x.db").table("no-dashes")).await.unwrap_err();
    assert!(matches!(&err, SqlError::Config(c) if c.field == "sql.table"), "{err}");
    // Nothing listens on port 1 (refused at once; the long timeout only keeps a busy machine from
    // turning the refusal into a timeout).
    let cfg = SqlConfig::new("postgres://postgres@127.0.0.1:1/test").connect_timeout(Duration::from_secs(30));
    let err = SqlTier::connect(cfg).await.unwrap_err();
    assert_eq!(err.kind(), Some(TierErrorKind::Unavailable), "{err}");
    assert!(std::error::Error::source(&err).is_some() || matches!(err, SqlError::Tier(_)));
    let SqlError::Tier(te) = &err else { panic!("{err}") };
    assert!(std::error::Error::source(te).is_some(), "the DbErr is kept as the source");
    // A directory that does not exist.
    let err = SqlTier::connect(SqlConfig::sqlite("/nonexistent-dir-strata/x.db")).await.unwrap_err();
    assert!(matches!(err, SqlError::Tier(_)), "{err}");
}

#[tokio::test]
async fn cache_keeps_answering_when_the_database_is_down() {
    // A lazy pool to a port where nothing listens: every tier call fails with a typed error.
    let cfg = SqlConfig::new("postgres://postgres@127.0.0.1:1/test")
        .run_migrations(false)
        .lazy(true)
        .connect_timeout(Duration::from_millis(300))
        .acquire_timeout(Duration::from_millis(300));
    let tier = SqlTier::connect(cfg).await.unwrap();
    let err = tier.get(&key("c", "ns", "k")).await.unwrap_err();
    assert!(
        matches!(err.kind(), TierErrorKind::Unavailable | TierErrorKind::Overloaded | TierErrorKind::Timeout),
        "{err}"
    );
    assert!(matches!(tier.health().await, TierHealth::Unhealthy(_)));
    let stats = CacheStats::new();
    let cache: Cache<u64, String> = Cache::builder("users")
        .no_l1()
        .tier(Arc::new(tier))
        .serializer(Postcard)
        .loader(FnLoader::new(|id: u64| async move { Ok(Some(format!("user-{id}"))) }))
        .observer(stats.clone())
        .build()
        .await
        .unwrap();
    assert_eq!(cache.get_or_load(&3).await.unwrap().as_deref().map(String::as_str), Some("user-3"));
    assert!(stats.tier_errors() >= 1);
    assert_eq!(stats.loads(), 1);
}

#[tokio::test]
async fn a_dropped_table_is_an_error_not_a_panic() {
    let env = common::sqlite();
    let tier = env.tier().await;
    strata_cache_sql::raw::connection(&tier).execute_unprepared("DROP TABLE strata_cache").await.unwrap();
    let err = tier.get(&key("c", "ns", "k")).await.unwrap_err();
    assert_eq!(err.kind(), TierErrorKind::Other, "{err}");
    assert!(tier.set(&key("c", "ns", "k"), &entry(b"v", FAR, 1, &[])).await.is_err());
}

#[tokio::test]
async fn custom_table_names_are_separate() {
    let env = common::sqlite();
    let a = SqlTier::connect(env.config().table("cache_a")).await.unwrap();
    let b = SqlTier::connect(env.config().table("cache_b")).await.unwrap();
    a.set(&key("c", "ns", "k"), &entry(b"a", FAR, 1, &[])).await.unwrap();
    assert_eq!(b.get(&key("c", "ns", "k")).await.unwrap(), None);
    assert_eq!(a.table(), "cache_a");
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<SqlTier>();
    check::<SqlConfig>();
    check::<SqlError>();
    check::<strata_cache_sql::SweeperHandle>();
    check::<strata_cache_sql::PgNotifySource>();
}

#[tokio::test]
async fn sqlite_busy_is_a_timeout_and_an_exhausted_pool_is_overloaded() {
    use strata_cache_sql::raw::sea_orm::TransactionTrait;
    let env = common::sqlite();
    let tier = SqlTier::connect(env.config().busy_timeout(Duration::from_millis(100))).await.unwrap();
    let k = key("c", "ns", "k");
    // Another connection holds the write lock.
    let other = env.connect().await;
    other.execute_unprepared("BEGIN IMMEDIATE").await.unwrap();
    let err = tier.set(&k, &entry(b"v", FAR, 1, &[])).await.unwrap_err();
    assert_eq!(err.kind(), TierErrorKind::Timeout, "{err}");
    other.execute_unprepared("ROLLBACK").await.unwrap();
    tier.set(&k, &entry(b"v", FAR, 1, &[])).await.unwrap();

    // One connection, held by a transaction: the next call waits 100 ms for it, then gives up.
    let small =
        SqlTier::connect(env.config().max_connections(1).acquire_timeout(Duration::from_millis(100))).await.unwrap();
    let txn = strata_cache_sql::raw::connection(&small).begin().await.unwrap();
    let err = small.get(&k).await.unwrap_err();
    assert_eq!(err.kind(), TierErrorKind::Overloaded, "{err}");
    assert!(err.is_retryable());
    txn.rollback().await.unwrap();
    assert!(small.get(&k).await.unwrap().is_some());
}
