//! [`RedisTier`]: the L2 [`Tier`] on Redis or Redis Cluster.
//!
//! The files of this folder:
//! - `mod.rs`: [`RedisTier`] (construction, observer/clock/breaker wrappers, key layout), the
//!   [`Tier`] impl (each method calls the room that does the work) and `health`.
//! - `route.rs`: running commands: one command on one key, pipelines per batch (per hash slot
//!   on a cluster), each slot group on the master serving it through that master's breaker,
//!   following redirects; replies put back in input order.
//! - `read.rs`: `get` (`GET`) and `get_many` (`MGET`, one per hash slot on a cluster).
//! - `write.rs`: `set`/`set_many` (`SET .. PX`, tag-set updates first) and `delete`.
//! - `tags.rs`: tag invalidation (unlist, then delete; re-list on failure) and namespace
//!   invalidation (`SCAN` + `DEL`, standalone only).

mod read;
mod route;
mod tags;
mod write;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_redis::redis;
use strata_cache_core::{
    BreakerConfig, BreakerProbe, BreakerState, BreakerTier, CacheObserver, Clock, ConfigError, Key, StoredEntry,
    SystemClock, Tier, TierError, TierErrorKind, TierHealth,
};

use crate::breakers::Breakers;
use crate::config::RedisConfig;
use crate::conn::Backend;
use crate::keys::KeySpace;

/// The largest value Redis accepts (512 MiB).
pub const MAX_REDIS_VALUE: usize = 512 * 1024 * 1024;

/// The longest `PX` the tier sends, in ms (2^53, about 285,000 years): Redis keeps absolute
/// expiry times as signed 64-bit ms, and a finite expiry past this is refused with
/// `InvalidRequest` rather than stored without one. Every TTL that
/// [`EntryOptions::validate`](strata_cache_core::EntryOptions::validate) accepts fits.
pub const MAX_PX_MS: u64 = 1 << 53;

/// The L2 tier on Redis (standalone or cluster), through a deadpool-redis pool.
///
/// - `get`/`set`/`delete`: `GET`, `SET .. PX <remaining ms>` (no `PX` for entries that never
///   expire; an entry already expired is not written and the old one is deleted), `DEL`.
/// - `get_many`/`set_many`: one `MGET` / one pipeline per batch on a standalone server; on a
///   cluster one per hash slot, sent concurrently.
/// - Tags: `set` adds the entry's Redis key to one set per tag (which lives at least as long as
///   the entry); [`Tier::invalidate_tag`] deletes the listed entries.
/// - On a cluster, every call goes through the circuit breaker of the master serving its hash
///   slot ([`RedisConfig::breaker`]): a failed or hung master fails fast for its slots only,
///   the other slots keep being served; after a failover the promoted replica serves them
///   again. On a standalone server wrap the tier with [`RedisTier::with_breaker`].
/// - Every call is bounded by [`RedisConfig::command_timeout`]; every failure is a
///   [`TierError`] (connection refused → `Unavailable`, timeouts → `Timeout`, pool exhausted →
///   `Overloaded`, `MOVED`/`CLUSTERDOWN` → `Unavailable`) with the Redis error as its source.
///
/// Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct RedisTier {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    backend: Backend,
    keys: KeySpace,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    /// One breaker per master (cluster only; a standalone tier is wrapped by the caller).
    breakers: Option<Arc<Breakers>>,
    /// Kept to rebuild the breakers with an observer.
    breaker_config: BreakerConfig,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("name", &self.inner.name)
            .field("backend", &self.inner.backend)
            .field("prefix", &self.inner.keys.prefix())
            .finish()
    }
}

impl RedisTier {
    /// A tier for `config` (validated). Connections open lazily: an unreachable server is
    /// reported by the calls (and [`Tier::health`]), not here.
    pub fn new(config: &RedisConfig) -> Result<Self, ConfigError> {
        let backend = config.backend()?;
        let name: Arc<str> = Arc::from(config.name.as_str());
        let breakers = Self::breakers(&name, &backend, config.breaker.clone(), config.command_timeout, None)?;
        Ok(Self {
            inner: Arc::new(Inner {
                name,
                backend,
                keys: config.key_space(),
                timeout: config.command_timeout,
                clock: Arc::new(SystemClock),
                breakers,
                breaker_config: config.breaker.clone(),
            }),
        })
    }

    fn breakers(
        name: &Arc<str>,
        backend: &Backend,
        config: BreakerConfig,
        timeout: Duration,
        observer: Option<Arc<dyn CacheObserver>>,
    ) -> Result<Option<Arc<Breakers>>, ConfigError> {
        if !backend.is_cluster() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Breakers::new(name.clone(), config, backend.clone(), timeout, observer)?)))
    }

    /// On a cluster, reports the state changes of each master's breaker to `observer` as
    /// [`CacheEvent::BreakerTransition`](strata_cache_core::CacheEvent::BreakerTransition)
    /// with the tier named `<name>@<host:port>` (the breakers start afresh). No effect on a
    /// standalone server (wrap the tier with [`BreakerTier::with_observer`] there).
    pub fn with_observer(self, observer: Arc<dyn CacheObserver>) -> Result<Self, ConfigError> {
        let i = &self.inner;
        let breakers = Self::breakers(&i.name, &i.backend, i.breaker_config.clone(), i.timeout, Some(observer))?;
        Ok(Self {
            inner: Arc::new(Inner {
                name: i.name.clone(),
                backend: i.backend.clone(),
                keys: i.keys.clone(),
                timeout: i.timeout,
                clock: i.clock.clone(),
                breakers,
                breaker_config: i.breaker_config.clone(),
            }),
        })
    }

    /// On a cluster, the state of the breaker of each master in the current slot map, by
    /// `host:port` (empty on a standalone server, or before the map was read).
    pub fn node_breakers(&self) -> Vec<(String, BreakerState)> {
        self.inner.breakers.as_ref().map(|b| b.node_states()).unwrap_or_default()
    }

    /// On a cluster, a probe of the worst state among the masters' breakers (open, then
    /// half-open, then closed); `None` on a standalone server, whose breaker is the
    /// [`BreakerTier`] around it ([`BreakerTier::probe`]).
    pub fn breaker_probe(&self) -> Option<BreakerProbe> {
        let b = self.inner.breakers.clone()?;
        Some(BreakerProbe::new(move || b.worst()))
    }

    /// On a cluster, the master serving `key` in the tier's current slot map (`host:port`).
    pub fn node_of(&self, key: &Key) -> Option<String> {
        let b = self.inner.breakers.as_ref()?;
        b.node_of(crate::keys::slot(self.redis_key(key).as_bytes()))
    }

    /// Uses `clock` to turn expiry timestamps into `PX` durations (default: the system clock;
    /// use the cache's clock when it has its own).
    #[must_use]
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        let i = &self.inner;
        Self {
            inner: Arc::new(Inner {
                name: i.name.clone(),
                backend: i.backend.clone(),
                keys: i.keys.clone(),
                timeout: i.timeout,
                clock,
                breakers: i.breakers.clone(),
                breaker_config: i.breaker_config.clone(),
            }),
        }
    }

    /// Wraps the tier in the core's circuit breaker (one for the whole tier: what a standalone
    /// server needs; a cluster tier already has one per master).
    pub fn with_breaker(self, config: BreakerConfig) -> Result<BreakerTier<RedisTier>, ConfigError> {
        BreakerTier::new(self, config)
    }

    /// The key layout.
    pub fn key_space(&self) -> &KeySpace {
        &self.inner.keys
    }

    /// The Redis key an entry is stored under.
    pub fn redis_key(&self, key: &Key) -> String {
        self.inner.keys.entry(key.cache(), key.namespace().as_str(), key.id())
    }

    /// The standalone pool (public as [`crate::raw::standalone_pool`]); `None` on a cluster.
    pub(crate) fn standalone_pool(&self) -> Option<&deadpool_redis::Pool> {
        match &self.inner.backend {
            Backend::Standalone(p) => Some(p),
            Backend::Cluster(_) => None,
        }
    }

    /// Whether the tier talks to a cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.backend.is_cluster()
    }

    fn err(&self, kind: TierErrorKind, message: impl Into<String>) -> TierError {
        TierError::new(self.inner.name.clone(), kind, message)
    }
}

#[async_trait]
impl Tier for RedisTier {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn get(&self, key: &Key) -> Result<Option<Bytes>, TierError> {
        self.read_one(key).await
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>, TierError> {
        self.read_many(keys).await
    }

    async fn set(&self, key: &Key, entry: &StoredEntry) -> Result<(), TierError> {
        self.write_one(key, entry).await
    }

    async fn set_many(&self, entries: &[(Key, StoredEntry)]) -> Result<(), TierError> {
        self.write_many(entries).await
    }

    async fn delete(&self, key: &Key) -> Result<(), TierError> {
        self.delete_one(key).await
    }

    async fn invalidate_tag(&self, cache: &str, namespace: &str, tag: &str) -> Result<u64, TierError> {
        self.delete_tagged(cache, namespace, tag).await
    }

    /// Standalone only (`SCAN MATCH` + `DEL`; a cluster reports `Unsupported`): deletes the
    /// namespace's entries and tag sets. Used by the cache's auto-recovery after an outage that
    /// missed more writes than it could remember.
    async fn invalidate_namespace(&self, cache: &str, namespace: &str) -> Result<u64, TierError> {
        self.delete_namespace(cache, namespace).await
    }

    async fn health(&self) -> TierHealth {
        let started = std::time::Instant::now();
        match self.query::<String>(redis::cmd("PING"), "PING").await {
            Ok(_) if started.elapsed() > self.inner.timeout / 2 => {
                TierHealth::Degraded(format!("PING took {} ms", started.elapsed().as_millis()))
            }
            Ok(_) => TierHealth::Healthy,
            Err(e) => TierHealth::Unhealthy(e.to_string()),
        }
    }
}
