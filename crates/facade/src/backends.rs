//! Connecting the backends a configuration names: L2 Redis (tier, backplane, stampede lock) and
//! L3 SQL (tier, sweeper), each tier behind a circuit breaker (a Redis Cluster tier: one per
//! master, so that a failed master costs only its slots).
//!
//! A section whose crate is not compiled in (`[redis]` without the `redis` feature) is an error
//! that names the feature: a configured backend is never silently ignored.

use std::sync::Arc;
#[cfg(feature = "sql")]
use std::time::Duration;

#[cfg(any(feature = "redis", feature = "sql"))]
use strata_cache_core::BreakerConfig;
use strata_cache_core::{CacheEvent, CacheObserver, ConfigError, InvalidationBus, LoadLock, LockOptions, Tier};

use crate::config::StrataConfig;

/// Why connecting the configured backends failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configuration names a backend this build does not include.
    #[error("the configuration has a [{section}] section but this build lacks the `{feature}` feature of `strata`")]
    FeatureMissing {
        /// The section.
        section: &'static str,
        /// The Cargo feature that adds it.
        feature: &'static str,
    },
    /// The SQL backend could not be reached or prepared.
    #[cfg(feature = "sql")]
    #[error(transparent)]
    Sql(#[from] strata_cache_sql::SqlError),
    /// The Redis backplane could not subscribe.
    #[error("redis backplane: {0}")]
    Bus(#[from] strata_cache_core::BusError),
}

/// What the backends are, for `/topology` and the demo's banner (URLs without credentials).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Topology {
    /// Tiers below L1, top to bottom: `(name, description)`.
    pub tiers: Vec<(String, String)>,
    /// The invalidation bus, if any.
    pub bus: Option<String>,
    /// The fleet-wide load lock, if any.
    pub lock: Option<String>,
}

/// The backends built from a configuration.
#[derive(Default)]
pub(crate) struct Backends {
    pub(crate) tiers: Vec<Arc<dyn Tier>>,
    /// Probes of the breakers in front of `tiers`, by tier name.
    pub(crate) breakers: Vec<(String, strata_cache_core::BreakerProbe)>,
    pub(crate) bus: Option<Arc<dyn InvalidationBus>>,
    pub(crate) lock: Option<(Arc<dyn LoadLock>, LockOptions)>,
    pub(crate) topology: Topology,
    #[cfg(feature = "sql")]
    pub(crate) sweeper: Option<strata_cache_sql::SweeperHandle>,
}

/// One observer standing for several (breaker transitions go to all of them).
pub(crate) struct Fanout(pub(crate) Vec<Arc<dyn CacheObserver>>);

impl CacheObserver for Fanout {
    fn on_event(&self, event: &CacheEvent<'_>) {
        for o in &self.0 {
            o.on_event(event);
        }
    }
}

/// A URL without its credentials (user info and query string), for logs, errors and
/// `/topology`: the workspace's one redaction,
/// [`strata_cache_core::redact::redact_url`], which also handles malformed URLs.
///
/// ```
/// assert_eq!(strata::backends::redact("postgres://app:s3cret@db/x?sslpassword=p"), "postgres://***@db/x?***");
/// assert_eq!(strata::backends::redact("postgres://app:s3cret@127.0.0.1:notaport/x"), "postgres://***@127.0.0.1:notaport/x");
/// ```
pub use strata_cache_core::redact::redact_url as redact;

#[cfg_attr(not(any(feature = "redis", feature = "sql")), allow(unused_variables, unused_mut, clippy::unused_async))]
pub(crate) async fn connect(
    config: &StrataConfig,
    observer: Arc<dyn CacheObserver>,
    clock: Arc<dyn strata_cache_core::Clock>,
) -> Result<Backends, ConnectError> {
    let mut out = Backends::default();
    if let Some(r) = &config.redis {
        #[cfg(feature = "redis")]
        {
            use strata_cache_redis::{RedisBus, RedisConfig, RedisLock, RedisTier};
            let mut rc = match &r.url {
                Some(u) => RedisConfig::standalone(u.clone()),
                None => RedisConfig::cluster(r.cluster.clone()),
            };
            if let Some(p) = &r.prefix {
                rc = rc.prefix(p.clone());
            }
            if let Some(n) = r.pool_size {
                rc = rc.pool_size(n);
            }
            if let Some(t) = r.timeout {
                rc = rc.command_timeout(t.0);
            }
            rc.validate()?;
            let tier = RedisTier::new(&rc)?.with_clock(clock.clone());
            // A cluster tier has a breaker per master (a failed master costs only its slots):
            // one breaker for the whole tier on top would open for every slot.
            let (tier, probe): (Arc<dyn Tier>, _) = if tier.is_cluster() {
                let tier = tier.with_observer(observer.clone())?;
                let probe = tier.breaker_probe();
                (Arc::new(tier), probe)
            } else {
                let tier = strata_cache_core::BreakerTier::with_observer(tier, rc.breaker.clone(), observer.clone())?;
                let probe = tier.probe();
                (Arc::new(tier), Some(probe))
            };
            if let Some(p) = probe {
                out.breakers.push((tier.name().to_owned(), p));
            }
            let desc = match &r.url {
                Some(u) => format!("redis standalone {}", redact(u)),
                None => format!("redis cluster {}", r.cluster.iter().map(|u| redact(u)).collect::<Vec<_>>().join(", ")),
            };
            out.topology.tiers.push((tier.name().to_owned(), desc));
            out.tiers.push(tier);
            if r.bus {
                let bus = RedisBus::new(&rc)?;
                out.topology.bus = Some(format!("redis pub/sub channel {}", bus.channel()));
                out.bus = Some(Arc::new(bus));
            }
            if r.lock {
                out.lock = Some((Arc::new(RedisLock::new(&rc)?), LockOptions::default()));
                out.topology.lock = Some("redis SET NX PX + compare-and-delete".into());
            }
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = r;
            return Err(ConnectError::FeatureMissing { section: "redis", feature: "redis" });
        }
    }
    if let Some(s) = &config.sql {
        #[cfg(feature = "sql")]
        {
            use strata_cache_sql::{SqlConfig, SqlTier};
            let mut sc = SqlConfig::new(s.url.clone()).clock(clock.clone());
            if let Some(t) = &s.table {
                sc = sc.table(t.clone());
            }
            if let Some(n) = s.max_connections {
                sc = sc.max_connections(n);
            }
            if let Some(d) = s.acquire_timeout {
                sc = sc.acquire_timeout(d.0);
            }
            let tier = SqlTier::connect(sc).await?;
            let interval = s.sweep_interval.map_or(Duration::from_secs(60), |d| d.0);
            if !interval.is_zero() {
                out.sweeper = Some(tier.spawn_sweeper(interval, 1_000)?);
            }
            let desc = format!("sql {:?} {} (table {})", tier.backend(), redact(&s.url), tier.table());
            let tier = strata_cache_core::BreakerTier::with_observer(tier, BreakerConfig::default(), observer.clone())?;
            out.topology.tiers.push((tier.name().to_owned(), desc));
            out.breakers.push((tier.name().to_owned(), tier.probe()));
            out.tiers.push(Arc::new(tier));
        }
        #[cfg(not(feature = "sql"))]
        {
            let _ = s;
            return Err(ConnectError::FeatureMissing { section: "sql", feature: "sql" });
        }
    }
    Ok(out)
}
