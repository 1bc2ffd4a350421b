//! Real databases for the tests: a temp SQLite file, a fresh PostgreSQL schema, a fresh
//! MariaDB database. An unreachable server fails the test under `CI=true` (as `cargo xtask test`
//! sets) and skips it with a message otherwise (`strata_testkit::missing_service`).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use strata_cache_sql::raw::sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use strata_cache_sql::{SqlConfig, SqlTier};

pub fn ci() -> bool {
    strata_testkit::services_required()
}

pub fn pg_base_url() -> String {
    std::env::var("STRATA_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn mysql_base_url() -> String {
    std::env::var("STRATA_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

fn unreachable(what: &str, err: impl std::fmt::Display) -> Option<DbEnv> {
    strata_testkit::missing_service(what, &err);
    None
}

fn rand_suffix() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// One isolated database: a file, a schema or a database, removed on drop.
pub struct DbEnv {
    pub url: String,
    pub label: &'static str,
    cleanup: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl DbEnv {
    pub fn config(&self) -> SqlConfig {
        SqlConfig::new(self.url.clone()).max_connections(5)
    }

    pub async fn tier(&self) -> SqlTier {
        SqlTier::connect(self.config()).await.unwrap()
    }

    pub async fn connect(&self) -> DatabaseConnection {
        Database::connect(self.url.clone()).await.unwrap()
    }
}

impl Drop for DbEnv {
    fn drop(&mut self) {
        let Some((admin_url, sql)) = self.cleanup.take() else { return };
        // Runs even when the test panicked; on its own thread because Drop cannot await.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(db) = Database::connect(admin_url).await {
                    let _ = db.execute_unprepared(&sql).await;
                    let _ = db.close().await;
                }
            });
        })
        .join();
    }
}

pub fn sqlite() -> DbEnv {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("cache.db").display());
    DbEnv { url, label: "sqlite", cleanup: None, _dir: Some(dir) }
}

/// A fresh schema `strata_t_<random>`; the URL sets `search_path` to it for every pooled
/// connection.
pub async fn postgres() -> Option<DbEnv> {
    let base = pg_base_url();
    let admin = match Database::connect(base.clone()).await {
        Ok(db) => db,
        Err(e) => return unreachable("PostgreSQL", e),
    };
    let schema = format!("strata_t_{}", rand_suffix());
    admin.execute_unprepared(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    admin.close().await.unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    Some(DbEnv { url, label: "postgres", cleanup: Some((base, format!("DROP SCHEMA {schema} CASCADE"))), _dir: None })
}

/// A fresh database `strata_t_<random>` on MariaDB/MySQL.
pub async fn mysql() -> Option<DbEnv> {
    let base = mysql_base_url();
    let admin = match Database::connect(base.clone()).await {
        Ok(db) => db,
        Err(e) => return unreachable("MariaDB/MySQL", e),
    };
    let name = format!("strata_t_{}", rand_suffix());
    admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.unwrap();
    admin.close().await.unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    let url = format!("{prefix}/{name}");
    Some(DbEnv { url, label: "mysql", cleanup: Some((base, format!("DROP DATABASE {name}"))), _dir: None })
}

pub fn clock() -> Arc<strata_cache_core::ManualClock> {
    Arc::new(strata_cache_core::ManualClock::new(1_700_000_000_000))
}
