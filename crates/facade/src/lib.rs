//! # strata
//!
//! The facade: one dependency that composes Strata's crates into typed caches.
//!
//! ## Tour
//! - [`Strata`]: a runtime shared by named caches (shared tiers, bus, observers, clock,
//!   configuration). [`Strata::cache`] returns a [`CacheBuilder`] pre-filled from the
//!   configuration's `[caches.NAME]` section or [`Preset`].
//! - [`config`]: TOML plus `STRATA_*` environment overrides, validated.
//! - [`preset`]: rule / session / analytics / prompt caches.
//! - [`plugin`]: one `use strata::plugin::*;` for writing a tier, codec, serializer, loader,
//!   writer, bus, observer (and, with `gpu`, a GPU inventory).
//! - Everything from [`strata_cache_core`] is re-exported: [`Cache`], the traits ([`Tier`],
//!   [`Codec`], [`Loader`], [`InvalidationBus`], [`CacheObserver`], ...), [`EntryOptions`].
//! - [`governance`] (always present, it is the ground floor every crate stands on): the one
//!   `AccessPolicy`, the hash-chained `AuditSink` and its `verify`, `BreakerConfig`, correlation
//!   ids and `hex`.
//!
//! Leaf crates join through features (`redis`, `sql`, `consistency`, `security`; telemetry as
//! `prometheus`, `otel` and `admin`, or all three as `telemetry`; the resource manager as
//! `resources`, plus the NVML inventory as `gpu`); a crate or part that is not enabled pulls in
//! none of its dependencies: `prometheus` alone compiles no HTTP server, no OpenTelemetry, no
//! resource manager and no NVML.
//!
//! ## Dependency versions
//! No public signature names a third-party type whose version you would have to match, except
//! in the escape hatches: each crate's `raw` module (`strata::redis::raw`: deadpool-redis and a
//! tier's pool; `strata::sql::raw`: sea-orm, a tier's connection, `EntitySource`;
//! `strata::telemetry::raw`: the Prometheus registry, the axum router, the OpenTelemetry layer)
//! and the constructors that take what you hand us on purpose (`SqlTier::with_connection`,
//! `PgNotifySource::listen`, `TracingConfig::span_exporter`). The small, stable vocabulary
//! types are allowed: `bytes::Bytes`, `serde` bounds, `futures::Stream`, `tokio::time::Instant`,
//! tokio channel receivers, `tracing::Level`, `zeroize::Zeroizing`. `cargo xtask public-api`
//! keeps it so (the list and its reasons are in `xtask/src/public_api.rs`).
//!
//! ```
//! use std::sync::Arc;
//! use strata::{Strata, StrataConfig, CacheStats, FnLoader};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let config = StrataConfig::from_toml(r#"
//!     [caches.rules]
//!     preset = "rule"
//!     ttl = "10m"
//! "#)?;
//! let stats = CacheStats::new();
//! let strata = Strata::builder().config(config).observer(stats.clone()).build();
//! let rules = strata
//!     .cache::<String, Vec<String>>("rules")
//!     .loader(FnLoader::new(|k: String| async move { Ok(Some(vec![format!("allow {k}")])) }))
//!     .build()
//!     .await?;
//! let v = rules.get_or_load(&"admin".to_string()).await?.unwrap();
//! assert_eq!(v[0], "allow admin");
//! assert_eq!(rules.options().ttl, std::time::Duration::from_secs(600));
//! assert_eq!(stats.loads(), 1);
//! # Ok::<(), strata::CacheError>(())
//! # }).unwrap();
//! ```

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use strata_cache_core as core;
pub use strata_cache_core::{
    BoxError, Cache, CacheBuilder, CacheDefaults, CacheError, CacheEvent, CacheKey, CacheObserver, CacheStats, Clock,
    Codec, ConfigError, EntryOptions, FnLoader, InvalidationBus, Json, L1Config, Loader, LocalBus, ManualClock,
    MemoryTier, Namespace, Postcard, Serializer, SystemClock, Tier, TierHealth, WarmReport, Writer,
};

pub mod backends;
pub mod config;
#[cfg(all(feature = "consistency", any(feature = "redis", feature = "sql")))]
pub mod external;
pub mod plugin;
pub mod preset;
#[cfg(all(feature = "consistency", feature = "telemetry"))]
pub mod write_behind_metrics;

pub use backends::{ConnectError, Topology};
pub use config::StrataConfig;
pub use preset::Preset;
pub use strata_cache_core::{BreakerConfig, BreakerProbe, BreakerState, BreakerTier, LoadLock, LockOptions};

#[cfg(feature = "redis")]
pub use strata_cache_redis as redis;
#[cfg(feature = "sql")]
pub use strata_cache_sql as sql;
#[cfg(feature = "consistency")]
pub use strata_consistency as consistency;
/// The ground floor ([`strata_governance`]): access policy, hash-chained audit, breaker
/// configuration, correlation ids, hex.
///
/// ```
/// use strata::governance::{AccessPolicy, Action, Principal, RESOURCES};
/// assert_eq!(strata::governance::hex::encode(&[0x00, 0xab]), "00ab");
/// let _ = (Action::Allocate, RESOURCES, Principal::id_only("alice"));
/// fn _takes(_: &dyn AccessPolicy) {}
/// ```
pub use strata_governance as governance;
#[cfg(feature = "resources")]
pub use strata_gpu as gpu;
#[cfg(feature = "resources")]
pub use strata_resource_qos as resource_qos;
#[cfg(feature = "security")]
pub use strata_security as security;
#[cfg(any(feature = "prometheus", feature = "otel"))]
pub use strata_telemetry as telemetry;

/// A runtime shared by named caches.
#[derive(Clone)]
pub struct Strata {
    config: Arc<StrataConfig>,
    /// The tiers, bus, lock, observers and clock every cache of this runtime starts from.
    shared: CacheDefaults,
    topology: Arc<Topology>,
    /// Probes of the breakers in front of the connected tiers, by tier name.
    breakers: Arc<[(String, BreakerProbe)]>,
    /// Each configured cache's `[caches.NAME.security]`, resolved.
    security: Arc<config::SecurityState>,
    /// Background tasks (the SQL sweeper) that live as long as the runtime.
    _tasks: Arc<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for Strata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Strata")
            .field("tiers", &self.shared.tiers.iter().map(|t| t.name().to_owned()).collect::<Vec<_>>())
            .field("bus", &self.shared.bus.as_ref().map(|b| b.name().to_owned()))
            .field("caches", &self.config.caches.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Builds a [`Strata`] runtime.
#[must_use]
pub struct StrataBuilder {
    config: StrataConfig,
    /// What every cache of the runtime shares (tiers, bus, observers, clock).
    shared: CacheDefaults,
}

impl StrataBuilder {
    /// Uses `config` (already validated by its constructors).
    pub fn config(mut self, config: StrataConfig) -> Self {
        self.config = config;
        self
    }

    /// Replaces what every cache of the runtime starts from (tiers, bus, observers, clock,
    /// codecs, limits) in one value; the setters below change single fields of it. Entry options
    /// and L1 bounds still come from the configuration for each cache name.
    pub fn defaults(mut self, defaults: CacheDefaults) -> Self {
        self.shared = defaults;
        self
    }

    /// Adds a tier shared by every cache (L2 first, then L3, ...).
    pub fn tier(mut self, tier: Arc<dyn Tier>) -> Self {
        self.shared.tiers.push(tier);
        self
    }

    /// Sets the invalidation bus shared by every cache.
    pub fn bus(mut self, bus: Arc<dyn InvalidationBus>) -> Self {
        self.shared.bus = Some(bus);
        self
    }

    /// Adds an observer shared by every cache.
    pub fn observer(mut self, o: Arc<dyn CacheObserver>) -> Self {
        self.shared.observers.push(o);
        self
    }

    /// Replaces the clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.shared.clock = clock;
        self
    }

    /// Builds the runtime from the tiers and bus given explicitly (the configuration's
    /// `[redis]` / `[sql]` sections are not connected: use [`StrataBuilder::connect`]).
    /// `[caches.NAME.security]` sections are resolved; one that fails is logged and its cache
    /// fails closed ([`StrataBuilder::connect`] returns the error instead).
    pub fn build(self) -> Strata {
        let security = config::SecurityState::resolve(&self.config);
        self.assemble(backends::Backends::default(), security)
    }

    /// Connects the backends the configuration names — `[redis]` (tier behind a circuit
    /// breaker, pub/sub backplane unless `bus = false`, stampede lock when `lock = true`) and
    /// `[sql]` (tier behind a circuit breaker, expired-row sweeper) — below any tiers added
    /// explicitly, then builds the runtime. Breaker transitions go to the observers added so far.
    /// `[caches.NAME.security]` sections are resolved first (keyrings, secrets, audit logs).
    pub async fn connect(self) -> Result<Strata, ConnectError> {
        let security = config::SecurityState::resolve(&self.config);
        if let Some(e) = security.first_error() {
            return Err(ConfigError::from(e.clone()).into());
        }
        let fanout: Arc<dyn CacheObserver> = Arc::new(backends::Fanout(self.shared.observers.clone()));
        let b = backends::connect(&self.config, fanout, self.shared.clock.clone()).await?;
        Ok(self.assemble(b, security))
    }

    /// The runtime from the explicitly added tiers and bus plus the connected `b` (below them;
    /// an explicit bus wins).
    fn assemble(mut self, b: backends::Backends, security: config::SecurityState) -> Strata {
        let shared = &mut self.shared;
        let mut topology = Topology {
            tiers: shared.tiers.iter().map(|t| (t.name().to_owned(), "custom".to_owned())).collect(),
            bus: shared.bus.as_ref().map(|b| b.name().to_owned()),
            lock: b.topology.lock,
        };
        topology.tiers.extend(b.topology.tiers);
        shared.tiers.extend(b.tiers);
        if shared.bus.is_none() {
            shared.bus = b.bus;
            topology.bus = b.topology.bus;
        }
        shared.lock = b.lock;
        #[cfg(feature = "sql")]
        let tasks: Arc<dyn std::any::Any + Send + Sync> = Arc::new(b.sweeper);
        #[cfg(not(feature = "sql"))]
        let tasks: Arc<dyn std::any::Any + Send + Sync> = Arc::new(());
        Strata {
            config: Arc::new(self.config),
            shared: self.shared,
            topology: Arc::new(topology),
            breakers: b.breakers.into(),
            security: Arc::new(security),
            _tasks: tasks,
        }
    }
}

impl Strata {
    /// Starts a builder with an empty configuration.
    pub fn builder() -> StrataBuilder {
        StrataBuilder { config: StrataConfig::default(), shared: CacheDefaults::default() }
    }

    /// The configuration.
    pub fn config(&self) -> &StrataConfig {
        &self.config
    }

    /// The tiers below L1, the bus and the lock (for `/topology` and banners).
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The shared tiers, top to bottom.
    pub fn tiers(&self) -> &[Arc<dyn Tier>] {
        &self.shared.tiers
    }

    /// What a cache named `name` starts from: the runtime's tiers, bus, lock, observers and
    /// clock, with the entry options and L1 bounds the configuration gives this name.
    pub fn cache_defaults(&self, name: &str) -> CacheDefaults {
        let mut d = self.shared.clone();
        d.options = self.config.entry_options_for(name);
        d.l1 = Some(self.config.l1_for(name));
        d
    }

    /// Probes of the circuit breakers in front of the tiers that [`StrataBuilder::connect`]
    /// built, by tier name (e.g. for a metrics gauge; tiers added explicitly bring their own).
    pub fn breakers(&self) -> &[(String, BreakerProbe)] {
        &self.breakers
    }

    /// A builder for the cache `name`, pre-filled with the runtime's tiers, bus, observers and
    /// clock, postcard serialization, and the options and L1 bounds that the configuration
    /// gives this name. Everything can still be changed before `build()`.
    pub fn cache<K, V>(&self, name: &str) -> CacheBuilder<K, V>
    where
        K: CacheKey,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let b = Cache::<K, V>::builder(name).defaults(self.cache_defaults(name)).serializer(Postcard);
        self.security.apply(name, b)
    }

    /// Cache `name`'s security from `[caches.NAME.security]` (codec, PII policy, audit sink),
    /// when configured and resolved.
    #[cfg(feature = "security")]
    pub fn security(&self, name: &str) -> Option<&Arc<config::CacheSecurity>> {
        self.security.get(name)
    }

    /// A builder for cache `name` starting from `preset` (configuration overrides still apply
    /// when `[caches.NAME]` exists).
    pub fn cache_with_preset<K, V>(&self, name: &str, preset: Preset) -> CacheBuilder<K, V>
    where
        K: CacheKey,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let configured = self.config.caches.contains_key(name);
        let b = self.cache::<K, V>(name);
        if configured { b } else { b.options(preset.entry_options()).l1(preset.l1()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn named_caches_share_tiers_and_stay_separate() {
        let l2 = MemoryTier::new("shared-l2");
        let strata = Strata::builder().tier(Arc::new(l2.clone())).build();
        let a = strata.cache_with_preset::<u64, String>("sessions", Preset::Session).build().await.unwrap();
        let b = strata.cache_with_preset::<u64, String>("rules", Preset::Rule).build().await.unwrap();
        a.set(1, "session".into()).await.unwrap();
        b.set(1, "rule".into()).await.unwrap();
        assert_eq!(l2.len(), 2, "both caches write the shared tier under their own names");
        a.clear_l1();
        b.clear_l1();
        assert_eq!(a.get(&1).await.unwrap().as_deref(), Some(&"session".to_string()));
        assert_eq!(b.get(&1).await.unwrap().as_deref(), Some(&"rule".to_string()));
        assert_eq!(a.options().stale_limit, std::time::Duration::ZERO);
        assert!(b.options().early_refresh_beta > 0.0);
    }
}
