//! PostgreSQL specifics: the per-test schema really isolates, and LISTEN/NOTIFY arrives.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use strata_cache_sql::raw::sea_orm::{ConnectionTrait, DbBackend, Statement};
use strata_cache_sql::{PgNotifySource, SqlError};

#[tokio::test]
async fn search_path_option_selects_the_fresh_schema() {
    let Some(env) = common::postgres().await else { return };
    let tier = env.tier().await;
    let db = strata_cache_sql::raw::connection(&tier);
    // Ask several pooled connections: each one is in the schema.
    for _ in 0..3 {
        let row = db
            .query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT current_schema()::text"))
            .await
            .unwrap()
            .unwrap();
        let schema: String = row.try_get_by_index(0).unwrap();
        assert!(schema.starts_with("strata_t_"), "{schema}");
    }
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT table_schema::text FROM information_schema.tables WHERE table_name = 'strata_cache'",
        ))
        .await
        .unwrap()
        .unwrap();
    assert!(row.try_get_by_index::<String>(0).unwrap().starts_with("strata_t_"));
}

#[tokio::test]
async fn notify_from_another_connection_arrives() {
    let Some(env) = common::postgres().await else { return };
    let listener_db = env.connect().await;
    // Channels of this process only: another run against the same server must not interfere.
    let (inval, other) = (format!("strata_inval_{}", std::process::id()), format!("other_{}", std::process::id()));
    let mut source = PgNotifySource::listen(&listener_db, &[inval.as_str(), other.as_str()]).await.unwrap();
    let sender = env.connect().await;
    sender.execute_unprepared(&format!("NOTIFY {inval}, 'users:eu:42'")).await.unwrap();
    sender.execute_unprepared(&format!("SELECT pg_notify('{other}', 'tag:x|y''z')")).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(60), source.recv()).await.unwrap().unwrap();
    assert_eq!((n.channel.as_str(), n.payload.as_str()), (inval.as_str(), "users:eu:42"));
    let n = tokio::time::timeout(Duration::from_secs(60), source.recv()).await.unwrap().unwrap();
    assert_eq!((n.channel.as_str(), n.payload.as_str()), (other.as_str(), "tag:x|y'z"));
}

#[tokio::test]
async fn notify_needs_postgres() {
    let env = common::sqlite();
    let db = env.connect().await;
    let err = PgNotifySource::listen(&db, &["x"]).await.unwrap_err();
    assert!(matches!(err, SqlError::Config(_)), "{err}");
}

#[tokio::test]
async fn a_lock_timeout_is_a_timeout() {
    use strata_cache_core::{Key, Namespace, Tier, TierErrorKind};
    use strata_cache_sql::raw::sea_orm::TransactionTrait;
    let Some(env) = common::postgres().await else { return };
    let tier = env.tier().await;
    // The tier's connections give up on locks after 100 ms.
    let cfg = strata_cache_sql::SqlConfig::new(format!("{}%20-c%20lock_timeout%3D100", env.url)).max_connections(2);
    let impatient = strata_cache_sql::SqlTier::connect(cfg).await.unwrap();
    let txn = strata_cache_sql::raw::connection(&tier).begin().await.unwrap();
    txn.execute_unprepared("LOCK TABLE strata_cache IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let key = Key::new("c", Namespace::new("ns").unwrap(), "k").unwrap();
    let err = impatient.get(&key).await.unwrap_err();
    assert_eq!(err.kind(), TierErrorKind::Timeout, "{err}");
    txn.rollback().await.unwrap();
    assert_eq!(impatient.get(&key).await.unwrap(), None);
}
