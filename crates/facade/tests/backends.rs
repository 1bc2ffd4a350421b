//! The facade connecting real backends from configuration: L1 → Redis → SQLite, with the Redis
//! backplane between two runtimes. Needs `redis-server` (a throwaway instance is started on a
//! free port unless `STRATA_TEST_REDIS_URL` names one).
#![cfg(all(feature = "redis", feature = "sql"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use strata::{CacheStats, ConnectError, FnLoader, Strata, StrataConfig};

fn config(redis: &str, db: &std::path::Path, prefix: &str) -> StrataConfig {
    StrataConfig::from_toml(&format!(
        "[redis]\nurl = \"{redis}\"\nprefix = \"{prefix}\"\n[sql]\nurl = \"sqlite://{}?mode=rwc\"\n",
        db.display()
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_backends_serve_every_level_and_invalidate_across_runtimes() {
    let Some(redis) = common::redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("l3.db");
    let prefix = format!("facade{}:", std::process::id());

    let stats = CacheStats::new();
    let a = Strata::builder().config(config(&redis.url, &db, &prefix)).observer(stats.clone()).connect().await.unwrap();
    let names: Vec<&str> = a.topology().tiers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["redis", "sql"]);
    assert!(a.topology().bus.is_some(), "the Redis backplane is on by default");

    let users = a
        .cache::<u64, String>("users")
        .loader(FnLoader::new(|id: u64| async move { Ok(Some(format!("user-{id}"))) }))
        .build()
        .await
        .unwrap();
    assert_eq!(users.get_or_load(&1).await.unwrap().as_deref(), Some(&"user-1".to_string()));
    assert_eq!(stats.loads(), 1);

    // L1 cleared: Redis answers. Redis flushed of our keys: SQLite answers.
    users.clear_l1();
    assert_eq!(users.get(&1).await.unwrap().as_deref(), Some(&"user-1".to_string()));
    assert_eq!(stats.hits("redis"), 1);

    // A second runtime (another process, in effect) with its own L1 shares both tiers.
    let b = Strata::builder().config(config(&redis.url, &db, &prefix)).connect().await.unwrap();
    let users_b = b.cache::<u64, String>("users").build().await.unwrap();
    assert_eq!(users_b.get(&1).await.unwrap().as_deref(), Some(&"user-1".to_string()));
    users.set(1, "renamed".into()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if users_b.get(&1).await.unwrap().as_deref() == Some(&"renamed".to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "B still serves the old value from its L1");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(redis);
}

#[tokio::test]
async fn a_dead_redis_is_skipped_and_sqlite_still_serves() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&format!("redis://127.0.0.1:{port}"), &dir.path().join("l3.db"), "dead:");
    cfg.redis.as_mut().unwrap().bus = false; // nothing to subscribe to
    let stats = CacheStats::new();
    let s = Strata::builder().config(cfg).observer(stats.clone()).connect().await.unwrap();
    let c = s
        .cache::<u64, String>("c")
        .loader(FnLoader::new(|id: u64| async move { Ok(Some(format!("v{id}"))) }))
        .build()
        .await
        .unwrap();
    for i in 0..20 {
        assert_eq!(c.get_or_load(&i).await.unwrap().as_deref(), Some(&format!("v{i}")));
    }
    c.clear_l1();
    for i in 0..20 {
        assert_eq!(c.get(&i).await.unwrap().as_deref(), Some(&format!("v{i}")), "served by SQLite");
    }
    assert!(stats.tier_errors() > 0, "the Redis failures were counted");
    assert_eq!(stats.hits("sql"), 20);
    let health = c.health().await;
    assert!(!matches!(health[0].1, strata::TierHealth::Healthy), "redis reported unhealthy: {health:?}");
}

#[test]
fn bad_backend_settings_are_typed_errors() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cfg = StrataConfig::from_toml("[sql]\nurl = \"postgres://nobody@127.0.0.1:1/none\"\n").unwrap();
    let err = rt.block_on(Strata::builder().config(cfg).connect()).map(|_| ()).unwrap_err();
    assert!(matches!(err, ConnectError::Sql(_)), "{err}");
}
