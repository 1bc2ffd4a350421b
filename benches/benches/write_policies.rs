//! Write policies: write-behind vs write-through writes/s to a SQL source through
//! `strata_cache_sql::raw::EntitySource` (a sea-orm entity, upserts). On SQLite (a temp file, WAL,
//! `synchronous=NORMAL`, as `SqlTier` configures it) and, when reachable, PostgreSQL
//! (`STRATA_BENCH_PG_URL` or `postgres://postgres@127.0.0.1:5432/test`, in a fresh schema that
//! is dropped afterwards). Target: write-behind >= 10x write-through.
//!
//! Both policies write the same cache (L1 only, so the source dominates) with the same number
//! of concurrent writers and distinct keys (no coalescing gain). Write-behind syncs its
//! journal on every commit (`SyncPolicy::Always`, group commit) and its figure is end to end:
//! the clock stops after `shutdown()`, i.e. once every write is in the database. The
//! acknowledgement rate (what callers see) is printed too; write-behind runs with `Always`
//! and with `Never` (no fsync: the durability class of SQLite's WAL `synchronous=NORMAL`).
//! Batches of up to 4,000 rows; PostgreSQL gets 4 concurrent flush lanes (its pool takes
//! concurrent upserts), SQLite 1. Every run checks the row count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_cache_core::{Cache, L1Config, Writer};
use strata_cache_sql::raw::EntitySource;
use strata_cache_sql::raw::sea_orm::{self, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Set};
use strata_cache_sql::{SqlConfig, SqlTier};
use strata_consistency::{SyncPolicy, WriteBehind, WriteBehindConfig, WriteThrough};

#[allow(unreachable_pub)] // the entity macros need `pub` items
mod row {
    use strata_cache_sql::raw::sea_orm;
    use strata_cache_sql::raw::sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wp_bench")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
        pub value: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Concurrent writers, both policies alike: group commit shares one journal fsync among the
/// writers waiting on it, so write-behind's `Always` rate grows with concurrency while
/// write-through stays bound by the database's write path.
const WRITER_COUNTS: [u64; 2] = [64, 512];
const WRITE_THROUGH_WRITES: u64 = 10_000;
const WRITE_BEHIND_WRITES: u64 = 100_000;

fn value(k: u64) -> String {
    format!("value-{k}-{}", "x".repeat(48))
}

fn source(db: &DatabaseConnection) -> Arc<dyn Writer<u64, String>> {
    Arc::new(EntitySource::<row::Entity, u64, String>::mapped(
        db.clone(),
        |k: &u64| *k as i64,
        |m: row::Model| m.value,
        |k: &u64, v: &String| row::ActiveModel { id: Set(*k as i64), value: Set(v.clone()) },
    ))
}

async fn create_table(db: &DatabaseConnection) {
    db.execute_unprepared("DROP TABLE IF EXISTS wp_bench").await.expect("drop table");
    db.execute_unprepared("CREATE TABLE wp_bench (id BIGINT PRIMARY KEY, value TEXT NOT NULL)")
        .await
        .expect("create table");
}

async fn row_count(db: &DatabaseConnection) -> i64 {
    let r = db
        .query_one_raw(sea_orm::Statement::from_string(db.get_database_backend(), "SELECT COUNT(*) AS n FROM wp_bench"))
        .await
        .expect("count")
        .expect("a row");
    r.try_get::<i64>("", "n").expect("n")
}

async fn cache() -> Cache<u64, String> {
    Cache::builder("wp").l1(L1Config::entries(2 * WRITE_BEHIND_WRITES)).build().await.expect("cache")
}

/// Runs `writes` writes over `writers` tasks; returns the elapsed time.
async fn drive<F, Fut>(writers: u64, writes: u64, write: F) -> Duration
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let write = write.clone();
            tokio::spawn(async move {
                let mut k = w;
                while k < writes {
                    write(k).await;
                    k += writers;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer task");
    }
    started.elapsed()
}

async fn write_through(db: &DatabaseConnection, writers: u64) -> f64 {
    create_table(db).await;
    let wt = WriteThrough::new(cache().await, source(db));
    let elapsed = drive(writers, WRITE_THROUGH_WRITES, move |k| {
        let wt = wt.clone();
        async move {
            wt.set(k, value(k)).await.expect("write-through set");
        }
    })
    .await;
    assert_eq!(row_count(db).await, WRITE_THROUGH_WRITES as i64);
    WRITE_THROUGH_WRITES as f64 / elapsed.as_secs_f64()
}

async fn write_behind(
    db: &DatabaseConnection,
    journal: &std::path::Path,
    sync: SyncPolicy,
    lanes: usize,
    writers: u64,
) -> (f64, f64) {
    create_table(db).await;
    let _ = std::fs::remove_dir_all(journal);
    let config = WriteBehindConfig::builder(journal)
        .sync(sync)
        .max_batch(4_000)
        .flush_concurrency(lanes)
        .max_backlog(2 * WRITE_BEHIND_WRITES as usize)
        .enqueue_timeout(Duration::from_secs(60))
        .build()
        .expect("write-behind config");
    let (wb, _) = WriteBehind::open(cache().await, source(db), config).await.expect("open write-behind");
    let started = Instant::now();
    let w = wb.clone();
    let acked = drive(writers, WRITE_BEHIND_WRITES, move |k| {
        let w = w.clone();
        async move {
            w.set(k, value(k)).await.expect("write-behind set");
        }
    })
    .await;
    wb.shutdown().await.expect("shutdown");
    let end_to_end = started.elapsed();
    assert_eq!(row_count(db).await, WRITE_BEHIND_WRITES as i64);
    let _ = std::fs::remove_dir_all(journal);
    (WRITE_BEHIND_WRITES as f64 / acked.as_secs_f64(), WRITE_BEHIND_WRITES as f64 / end_to_end.as_secs_f64())
}

async fn compare(label: &str, db: &DatabaseConnection, journal: &std::path::Path, lanes: usize) {
    for writers in WRITER_COUNTS {
        let wt = write_through(db, writers).await;
        println!("write_policies on {label}: write-through {wt:.0} writes/s ({writers} writers)");
        for (sync, what) in [
            (SyncPolicy::Always, "journal fdatasync per group commit: survives power loss"),
            (SyncPolicy::Never, "journal write per group commit, no fsync: survives a process crash"),
        ] {
            let (wb_ack, wb) = write_behind(db, journal, sync, lanes, writers).await;
            println!(
                "write_policies on {label}: write-behind {sync:?}, {writers} writers: {wb:.0} writes/s end to end \
                 ({wb_ack:.0}/s acknowledged, {lanes} flush lane(s)), ratio {:.1}x vs write-through (target >= \
                 10x) [{what}]",
                wb / wt
            );
        }
    }
}

async fn postgres(url: &str, journal: &std::path::Path) {
    let admin = match Database::connect(ConnectOptions::new(url.to_owned()).sqlx_logging(false).to_owned()).await {
        Ok(db) => db,
        Err(e) => {
            println!("write_policies on postgres: skipped ({e})");
            return;
        }
    };
    let schema = format!("strata_wp_{:016x}", fastrand::u64(..));
    admin.execute_unprepared(&format!("CREATE SCHEMA {schema}")).await.expect("create schema");
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(16).sqlx_logging(false).set_schema_search_path(schema.clone());
    let db = Database::connect(opts).await.expect("connect to the bench schema");
    compare("postgres", &db, journal, 4).await;
    db.close().await.ok();
    admin.execute_unprepared(&format!("DROP SCHEMA {schema} CASCADE")).await.expect("drop schema");
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = std::env::temp_dir().join(format!("strata-bench-wp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    rt.block_on(async {
        let tier = SqlTier::connect(SqlConfig::sqlite(dir.join("source.db")).max_connections(8)).await.expect("sqlite");
        compare("sqlite", strata_cache_sql::raw::connection(&tier), &dir.join("journal"), 1).await;
        let url = std::env::var("STRATA_BENCH_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        postgres(&url, &dir.join("journal")).await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}
