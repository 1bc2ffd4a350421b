//! # strata-cache-sql
//!
//! The L3 tier and a SQL source of truth for Strata, through sea-orm: SQLite (the embedded
//! default, WAL mode), PostgreSQL and MySQL/MariaDB.
//!
//! ## Tour
//! - [`SqlTier`]: a [`Tier`](strata_cache_core::Tier) on one table (created by the
//!   [`migration::Migrator`]): upserts where the higher `version` wins, reads that skip expired
//!   rows, a batched [`sweep`](SqlTier::sweep) (or a [`spawn_sweeper`](SqlTier::spawn_sweeper)
//!   task), exact tag invalidation ([`SqlTier::invalidate_tag`]), `get_many` / `set_many` as
//!   single statements.
//! - [`SqlConfig`]: URL, table, pool and timeouts, validated with errors that name the setting.
//! - [`raw::EntitySource`]: a sea-orm entity as the cache's
//!   [`Loader`](strata_cache_core::Loader) and [`Writer`](strata_cache_core::Writer).
//! - [`PgNotifySource`]: PostgreSQL `LISTEN` for invalidations published by other systems.
//! - Errors: database failures are [`TierError`](strata_cache_core::TierError)s whose kind says
//!   what happened (connection → `Unavailable`, timeout → `Timeout`, pool exhausted →
//!   `Overloaded`), with the `sea_orm::DbErr` kept as the source.
//! - [`raw`]: the escape hatch, the only module that names sea-orm types: the
//!   [`raw::sea_orm`] crate, a tier's [`connection`](raw::connection) and the
//!   [`EntitySource`](raw::EntitySource). Elsewhere only the constructors that take your own
//!   connection do ([`SqlTier::with_connection`], [`PgNotifySource::listen`]).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use strata_cache_core::{Cache, CacheStats, EntryOptions, Postcard};
//! use strata_cache_sql::{SqlConfig, SqlTier};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let dir = std::env::temp_dir().join(format!("strata-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let tier = SqlTier::connect(SqlConfig::sqlite(dir.join("cache.db"))).await?;
//!
//! let stats = CacheStats::new();
//! let cache: Cache<u64, String> = Cache::builder("users")
//!     .no_l1()
//!     .tier(Arc::new(tier.clone()))
//!     .serializer(Postcard)
//!     .options(EntryOptions::new(Duration::from_secs(60)))
//!     .observer(stats.clone())
//!     .build()
//!     .await?;
//! cache.set(7, "ada".to_string()).await?;
//! assert_eq!(cache.get(&7).await?.as_deref().map(String::as_str), Some("ada"));
//! assert_eq!(stats.hits("sql"), 1);
//! assert_eq!(tier.sweep(1000).await?, 0); // nothing has expired
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

pub mod config;
pub mod error;
pub mod migration;
pub mod notify;
pub mod raw;
mod tags;
pub mod tier;

pub use config::{Backend, DEFAULT_TABLE, SqlConfig, validate_table_name};
pub use error::SqlError;
pub use notify::{PgNotification, PgNotifySource};
pub use tier::{SqlTier, SweeperHandle};
