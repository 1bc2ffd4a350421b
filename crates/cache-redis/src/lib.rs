//! # strata-cache-redis
//!
//! Redis for Strata's multi-level cache, on a standalone server or a Redis Cluster, through a
//! [deadpool-redis](https://docs.rs/deadpool-redis) pool.
//!
//! ## Tour
//! - [`RedisConfig`]: where Redis is (one URL or cluster node URLs), pool size, timeouts, key
//!   prefix; validated into a typed [`ConfigError`](strata_cache_core::ConfigError).
//! - [`RedisTier`]: the L2 [`Tier`](strata_cache_core::Tier): `GET`/`SET PX`/`DEL`, `MGET` and
//!   pipelines per batch (per hash slot on a cluster), tag sets for tag invalidation, `PING`
//!   health; on a cluster one circuit breaker per master (a failed master costs only its
//!   slots); [`RedisTier::with_breaker`] puts a standalone tier behind the core's breaker.
//! - [`RedisBus`]: the [`InvalidationBus`](strata_cache_core::InvalidationBus) over pub/sub
//!   (sharded on Redis 7 clusters), reconnecting and resyncing on its own.
//! - [`RedisLock`]: the fleet-wide [`LoadLock`](strata_cache_core::LoadLock).
//! - [`RedisChannelSource`]: raw payloads from a channel you name, for invalidations sent by
//!   other systems.
//! - [`keys`]: the key layout and hash-slot math.
//! - [`raw`]: the escape hatch, the only place that names deadpool-redis / redis types: the
//!   [`raw::deadpool_redis`] crate and a standalone tier's pool
//!   ([`raw::standalone_pool`]).
//!
//! Every Redis failure becomes a [`TierError`](strata_cache_core::TierError) (or
//! [`BusError`](strata_cache_core::BusError)) with the Redis error as its source; the cache
//! skips a failing tier and keeps answering.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use strata_cache_core::{Cache, CacheStats, FnLoader, Postcard, Tier};
//! use strata_cache_redis::{RedisConfig, RedisTier};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! // A port nobody listens on: the tier fails, the cache answers from its loader.
//! let config = RedisConfig::standalone("redis://127.0.0.1:1").command_timeout(Duration::from_millis(200));
//! let tier = RedisTier::new(&config)?;
//! let stats = CacheStats::new();
//! let cache: Cache<u64, String> = Cache::builder("users")
//!     .tier(Arc::new(tier))
//!     .serializer(Postcard)
//!     .loader(FnLoader::new(|id: u64| async move { Ok(Some(format!("user-{id}"))) }))
//!     .observer(stats.clone())
//!     .build()
//!     .await?;
//! assert_eq!(cache.get_or_load(&7).await?.as_deref(), Some(&"user-7".to_string()));
//! assert!(stats.tier_errors() >= 1);
//!
//! // Invalid settings are typed errors, never panics.
//! let err = RedisTier::new(&RedisConfig::standalone("http://x")).unwrap_err();
//! assert_eq!(err.field, "redis.url");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod breakers;
pub mod bus;
pub mod config;
mod conn;
pub mod keys;
pub mod lock;
pub mod raw;
pub mod tier;

pub use bus::{BusStats, PubSubMode, RedisBus, RedisChannelSource};
pub use config::{RedisConfig, Topology};
pub use keys::KeySpace;
pub use lock::RedisLock;
pub use tier::RedisTier;
