//! Event-driven invalidation from outside the library, end to end: a service that writes the
//! database directly publishes a JSON message on a Redis channel or with PostgreSQL `NOTIFY`;
//! the facade's glue feeds it to the consistency crate's invalidator, which drops the entry.
#![cfg(all(feature = "consistency", feature = "redis", feature = "sql"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use strata::consistency::external::{ExternalInvalidator, InvalidationRegistry};
use strata::external::{PgNotify, RedisChannel};
use strata::redis::{PubSubMode, RedisChannelSource, RedisConfig};
use strata::sql::PgNotifySource;
use strata::sql::raw::sea_orm::{ConnectionTrait, Database};
use strata::{Cache, SystemClock};

async fn cache() -> Cache<u64, String> {
    let c = Cache::<u64, String>::builder("users").build().await.unwrap();
    c.set(42, "old".into()).await.unwrap();
    c.set(43, "kept".into()).await.unwrap();
    c
}

async fn wait_gone(c: &Cache<u64, String>, key: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.l1().unwrap().get(c.namespace(), &key, strata::Clock::now(&SystemClock)).is_some() {
        assert!(Instant::now() < deadline, "the external invalidation did not arrive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_on_a_redis_channel_invalidates() {
    let Some(redis) = common::own_redis() else { return };
    let url = redis.url.clone();
    let users = cache().await;
    let source =
        RedisChannelSource::subscribe(&RedisConfig::standalone(url), "db-changes", PubSubMode::Classic).await.unwrap();
    let handle = ExternalInvalidator::spawn(RedisChannel(source), InvalidationRegistry::new().with_cache(&users));
    // The subscriber connects in the background: publish until someone receives it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "PUBLISH", "db-changes", r#"{"cache":"users","key":"42"}"#])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).trim() != "0" {
            break;
        }
        assert!(Instant::now() < deadline, "nobody subscribed to db-changes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_gone(&users, 42).await;
    assert_eq!(users.get(&43).await.unwrap().as_deref(), Some(&"kept".to_string()), "only key 42 dropped");
    // The invalidator drops the entry before it counts the message: wait for the count too.
    let deadline = Instant::now() + Duration::from_secs(60);
    while handle.counts().applied == 0 {
        assert!(Instant::now() < deadline, "the applied message was never counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(handle.counts().applied, 1, "one message published to a subscriber, one applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_notify_invalidates() {
    let url = std::env::var("STRATA_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let db = match Database::connect(&url).await {
        Ok(db) => db,
        Err(e) => {
            strata_testkit::missing_service("PostgreSQL", &e);
            return;
        }
    };
    let channel = format!("strata_ext_{}", std::process::id());
    let users = cache().await;
    let source = PgNotifySource::listen(&db, &[channel.as_str()]).await.unwrap();
    let handle = ExternalInvalidator::spawn(PgNotify(source), InvalidationRegistry::new().with_cache(&users));
    // A trigger or a service would do this after writing the row.
    db.execute_unprepared(&format!(
        r#"SELECT pg_notify('{channel}', '{{"cache":"users","namespace":"default","key":"42"}}')"#
    ))
    .await
    .unwrap();
    wait_gone(&users, 42).await;
    assert_eq!(users.get(&43).await.unwrap().as_deref(), Some(&"kept".to_string()));
    // Malformed payloads are counted, never fatal.
    db.execute_unprepared(&format!("SELECT pg_notify('{channel}', 'not json')")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while handle.counts().malformed == 0 {
        assert!(Instant::now() < deadline, "the malformed message was not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!handle.is_finished());
}
