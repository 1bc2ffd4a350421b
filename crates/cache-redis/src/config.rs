//! [`RedisConfig`]: where Redis is and how to talk to it.

use std::time::Duration;

use deadpool_redis::redis::IntoConnectionInfo;
use strata_cache_core::{BreakerConfig, ConfigError};

use crate::conn::{Backend, ClusterBackend};
use crate::keys::{DEFAULT_MAX_KEY_LEN, DEFAULT_PREFIX, KeySpace, hashtag};

/// A standalone server or a cluster.
#[derive(Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (`redis://host:port/db`).
    Standalone(String),
    /// A Redis Cluster, given by one or more of its nodes' URLs (the rest are discovered).
    Cluster(Vec<String>),
}

/// Settings of the Redis tier, bus and lock. Build with [`RedisConfig::standalone`] or
/// [`RedisConfig::cluster`] and the setters; [`RedisConfig::validate`] runs in every
/// constructor that takes one.
///
/// ```
/// use std::time::Duration;
/// use strata_cache_redis::RedisConfig;
///
/// let config = RedisConfig::standalone("redis://127.0.0.1:6379")
///     .pool_size(32)
///     .command_timeout(Duration::from_millis(250))
///     .prefix("myapp:");
/// assert!(config.validate().is_ok());
/// assert!(RedisConfig::standalone("http://nope").validate().is_err());
/// assert!(RedisConfig::cluster(Vec::<String>::new()).validate().is_err());
/// ```
#[derive(Clone, PartialEq)]
#[must_use]
pub struct RedisConfig {
    /// Where Redis is.
    pub topology: Topology,
    /// The largest number of pooled connections (multiplexed; a few go a long way). Default 16.
    pub pool_size: usize,
    /// How long opening a connection may take. Default 1 s.
    pub connect_timeout: Duration,
    /// How long one tier call (pool wait + round trip) may take. Default 500 ms.
    pub command_timeout: Duration,
    /// How long a call waits for a free pooled connection before failing as overloaded.
    /// Default 250 ms.
    pub pool_wait_timeout: Duration,
    /// Prefix of every key and channel. Default `strata:`.
    pub prefix: String,
    /// Keys longer than this are shortened by hashing their id. Default 512 bytes.
    pub max_key_len: usize,
    /// The tier's name in errors, metrics and health. Default `redis`.
    pub name: String,
    /// The circuit breakers in front of Redis: one per cluster master for the tier and the
    /// lock (one for the whole server on a standalone one), one for the bus publisher.
    /// A standalone [`RedisTier`](crate::RedisTier) has none of its own: wrap it with
    /// [`RedisTier::with_breaker`](crate::RedisTier::with_breaker). Default
    /// [`BreakerConfig::default`].
    pub breaker: BreakerConfig,
    /// How many invalidations that could not be published the bus keeps to re-publish once
    /// Redis is back; past that it forgets them and publishes a resync instead (every
    /// instance clears its L1). Default 10,000.
    pub max_pending_invalidations: usize,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let topology = match &self.topology {
            Topology::Standalone(u) => format!("Standalone({})", redact(u)),
            Topology::Cluster(us) => format!("Cluster({:?})", us.iter().map(|u| redact(u)).collect::<Vec<_>>()),
        };
        f.debug_struct("RedisConfig")
            .field("topology", &topology)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("pool_wait_timeout", &self.pool_wait_timeout)
            .field("prefix", &self.prefix)
            .field("max_key_len", &self.max_key_len)
            .field("name", &self.name)
            .field("breaker", &self.breaker)
            .field("max_pending_invalidations", &self.max_pending_invalidations)
            .finish()
    }
}

/// A URL without its credentials, for logs and errors (the workspace's one redaction).
pub(crate) use strata_cache_core::redact::redact_url as redact;

/// The largest accepted prefix, in bytes.
pub const MAX_PREFIX_LEN: usize = 128;

impl RedisConfig {
    /// A standalone server.
    pub fn standalone(url: impl Into<String>) -> Self {
        Self::with_topology(Topology::Standalone(url.into()))
    }

    /// A cluster, given by some of its nodes.
    pub fn cluster<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> Self {
        Self::with_topology(Topology::Cluster(urls.into_iter().map(Into::into).collect()))
    }

    fn with_topology(topology: Topology) -> Self {
        Self {
            topology,
            pool_size: 16,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_millis(500),
            pool_wait_timeout: Duration::from_millis(250),
            prefix: DEFAULT_PREFIX.to_owned(),
            max_key_len: DEFAULT_MAX_KEY_LEN,
            name: "redis".to_owned(),
            breaker: BreakerConfig::default(),
            max_pending_invalidations: 10_000,
        }
    }

    /// Sets the circuit breakers' settings.
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// Sets how many unpublished invalidations the bus keeps (at least 1).
    pub fn max_pending_invalidations(mut self, n: usize) -> Self {
        self.max_pending_invalidations = n;
        self
    }

    /// Sets the pool size.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets the per-call timeout.
    pub fn command_timeout(mut self, d: Duration) -> Self {
        self.command_timeout = d;
        self
    }

    /// Sets the pool wait timeout.
    pub fn pool_wait_timeout(mut self, d: Duration) -> Self {
        self.pool_wait_timeout = d;
        self
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the longest literal key.
    pub fn max_key_len(mut self, n: usize) -> Self {
        self.max_key_len = n;
        self
    }

    /// Sets the tier's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.topology, Topology::Cluster(_))
    }

    /// The node URLs (one for a standalone server).
    pub fn urls(&self) -> Vec<String> {
        match &self.topology {
            Topology::Standalone(u) => vec![u.clone()],
            Topology::Cluster(us) => us.clone(),
        }
    }

    /// Checks every setting; the error names the field and what to do.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let urls = match &self.topology {
            Topology::Standalone(u) => vec![u.as_str()],
            Topology::Cluster(us) => {
                if us.is_empty() {
                    return Err(ConfigError::new("redis.urls", "a cluster needs at least one node URL"));
                }
                us.iter().map(String::as_str).collect()
            }
        };
        for u in urls {
            check_url(u)?;
        }
        if self.pool_size == 0 || self.pool_size > 1024 {
            return Err(ConfigError::new("redis.pool_size", format!("must be in 1..=1024, got {}", self.pool_size)));
        }
        for (field, d) in [
            ("redis.connect_timeout", self.connect_timeout),
            ("redis.command_timeout", self.command_timeout),
            ("redis.pool_wait_timeout", self.pool_wait_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(field, "must be greater than zero"));
            }
            strata_cache_core::options::check_max_duration(field, d)?;
        }
        if self.prefix.len() > MAX_PREFIX_LEN {
            return Err(ConfigError::new(
                "redis.prefix",
                format!("must be at most {MAX_PREFIX_LEN} bytes, got {}", self.prefix.len()),
            ));
        }
        if let Some(c) = self.prefix.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::new(
                "redis.prefix",
                format!("must not contain whitespace or control characters ({c:?})"),
            ));
        }
        if self.prefix.contains('{') && hashtag(self.prefix.as_bytes()).is_none() {
            return Err(ConfigError::new(
                "redis.prefix",
                "a `{` in the prefix must open a complete, non-empty hashtag such as `{app}:`",
            ));
        }
        if self.max_key_len < 128 {
            return Err(ConfigError::new(
                "redis.max_key_len",
                format!("must be at least 128, got {}", self.max_key_len),
            ));
        }
        if self.name.is_empty() || self.name.len() > 64 {
            return Err(ConfigError::new("redis.name", "must be 1..=64 bytes"));
        }
        self.breaker.validate()?;
        if self.max_pending_invalidations == 0 || self.max_pending_invalidations > 1_000_000 {
            return Err(ConfigError::new(
                "redis.max_pending_invalidations",
                format!("must be in 1..=1000000, got {}", self.max_pending_invalidations),
            ));
        }
        Ok(())
    }

    pub(crate) fn key_space(&self) -> KeySpace {
        KeySpace::new(&self.prefix, self.max_key_len)
    }

    /// Builds the connection pool (connections open lazily, on first use).
    pub(crate) fn backend(&self) -> Result<Backend, ConfigError> {
        use deadpool_redis::{PoolConfig, Runtime, Timeouts};
        self.validate()?;
        let pool_config = PoolConfig {
            max_size: self.pool_size,
            timeouts: Timeouts {
                wait: Some(self.pool_wait_timeout),
                create: Some(self.connect_timeout),
                recycle: Some(self.command_timeout),
            },
            ..PoolConfig::default()
        };
        let urls = self.urls();
        let build_err = |e: &dyn std::fmt::Display| {
            let msg = urls.iter().fold(e.to_string(), |m, u| strata_cache_core::redact::redact_url_in(&m, u));
            ConfigError::new("redis", format!("cannot build the pool: {msg}"))
        };
        match &self.topology {
            Topology::Standalone(url) => {
                let conn_config = deadpool_redis::redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.command_timeout));
                let manager =
                    deadpool_redis::Manager::new_with_config(url.as_str(), conn_config).map_err(|e| build_err(&e))?;
                let pool = deadpool_redis::Pool::builder(manager)
                    .config(pool_config)
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map_err(|e| build_err(&e))?;
                Ok(Backend::Standalone(pool))
            }
            Topology::Cluster(urls) => {
                // Few retries: a call for a dead master's slots fails (and counts against that
                // master's breaker) instead of retrying until its timeout; redirects after a
                // failover still follow.
                let client = deadpool_redis::redis::cluster::ClusterClientBuilder::new(urls.clone())
                    .connection_timeout(self.connect_timeout)
                    .response_timeout(self.command_timeout)
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()
                    .map_err(|e| build_err(&e))?;
                let base =
                    urls.first().map(|u| u.as_str().into_connection_info()).transpose().map_err(|e| build_err(&e))?;
                let base =
                    base.ok_or_else(|| ConfigError::new("redis.urls", "a cluster needs at least one node URL"))?;
                Ok(Backend::Cluster(std::sync::Arc::new(ClusterBackend::new(
                    client,
                    base,
                    self.connect_timeout,
                    self.command_timeout,
                ))))
            }
        }
    }
}

fn check_url(url: &str) -> Result<(), ConfigError> {
    let shown = redact(url);
    if !(url.starts_with("redis://") || url.starts_with("redis+unix://") || url.starts_with("unix://")) {
        let hint = if url.starts_with("rediss://") {
            "TLS (rediss://) is not enabled in this build"
        } else {
            "expected redis://host:port[/db] (or redis+unix:///path)"
        };
        return Err(ConfigError::new("redis.url", format!("`{shown}`: {hint}")));
    }
    url.into_connection_info().map_err(|e| {
        // The driver's message may quote parts of the URL: clean it too.
        ConfigError::new(
            "redis.url",
            format!("`{shown}`: {}", strata_cache_core::redact::redact_url_in(&e.to_string(), url)),
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_settings_are_typed_errors() {
        let ok = RedisConfig::standalone("redis://127.0.0.1:6379");
        assert!(ok.validate().is_ok());
        let cases = [
            (ok.clone().pool_size(0), "redis.pool_size"),
            (ok.clone().command_timeout(Duration::ZERO), "redis.command_timeout"),
            (ok.clone().command_timeout(Duration::MAX), "redis.command_timeout"),
            (ok.clone().connect_timeout(Duration::MAX), "redis.connect_timeout"),
            (
                ok.clone().pool_wait_timeout(strata_cache_core::options::MAX_DURATION + Duration::from_nanos(1)),
                "redis.pool_wait_timeout",
            ),
            (ok.clone().prefix("a b"), "redis.prefix"),
            (ok.clone().prefix("x".repeat(200)), "redis.prefix"),
            (ok.clone().prefix("{open:"), "redis.prefix"),
            (ok.clone().max_key_len(10), "redis.max_key_len"),
            (RedisConfig::standalone("rediss://h:1"), "redis.url"),
            (RedisConfig::standalone("redis://:notaport:x"), "redis.url"),
            (RedisConfig::cluster(Vec::<String>::new()), "redis.urls"),
            (ok.clone().max_pending_invalidations(0), "redis.max_pending_invalidations"),
            (ok.clone().max_pending_invalidations(usize::MAX), "redis.max_pending_invalidations"),
            (
                ok.clone().breaker(BreakerConfig { minimum_calls: 0, ..BreakerConfig::default() }),
                "breaker.minimum_calls",
            ),
        ];
        for (cfg, field) in cases {
            let e = cfg.validate().expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
        assert!(ok.clone().prefix("{app}:").validate().is_ok());
    }

    /// Malformed and well-formed URLs of every scheme Redis is given: validation, pool building
    /// (`RedisTier::new`, `RedisBus::new`, `RedisLock::new`) and `Debug` never show the password.
    #[test]
    fn no_error_or_debug_output_shows_the_password() {
        let urls = [
            "redis://app:SeCrEt@127.0.0.1:notaport/0",
            "redis://app:SeCrEt@[::1",
            "redis://app:SeCrEt@[::1]:6379/notadb",
            "redis://:SeCrEt@127.0.0.1:6379/0",
            "redis://app:SeCrEt@127.0.0.1:6379/0?protocol=SeCrEt",
            "redis://app:p%40SeCrEt@127.0.0.1:6379",
            "redis://app:p@SeCrEt@127.0.0.1:6379",
            "redis://app:SeCrEt@",
            "redis://app:SeCrEt",
            "redis://app:SeCrEt/0",
            "rediss://app:SeCrEt@127.0.0.1:6380",
            "redis+unix:///tmp/x.sock?pass=SeCrEt",
            "unix://app:SeCrEt@/tmp/x.sock",
            "postgres://app:SeCrEt@db/x",
            "app:SeCrEt@127.0.0.1:6379",
            "redis://üser:SeCrEtü@hôst:6379",
        ];
        for url in urls {
            for cfg in [RedisConfig::standalone(url), RedisConfig::cluster([url, "redis://127.0.0.1:7000"])] {
                let debug = format!("{cfg:?}");
                assert!(!debug.contains("SeCrEt"), "{debug}");
                let results = [
                    cfg.validate().err(),
                    crate::RedisTier::new(&cfg).err(),
                    crate::RedisBus::new(&cfg).err(),
                    crate::RedisLock::new(&cfg).err(),
                ];
                for e in results.into_iter().flatten() {
                    let (shown, debug) = (e.to_string(), format!("{e:?}"));
                    assert!(!shown.contains("SeCrEt") && !debug.contains("SeCrEt"), "{url}: {shown} / {debug}");
                }
            }
        }
        // Well-formed URLs still validate (the password is fine, only never shown).
        assert!(RedisConfig::standalone("redis://app:SeCrEt@127.0.0.1:6379/0").validate().is_ok());
        let e = RedisConfig::standalone("redis://app:SeCrEt@127.0.0.1:notaport/0").validate().unwrap_err();
        assert!(e.to_string().contains("redis://***@127.0.0.1:notaport/0"), "{e}");
    }

    #[test]
    fn debug_redacts_credentials() {
        let c = RedisConfig::standalone("redis://user:s3cret@host:6379/0");
        let s = format!("{c:?}");
        assert!(!s.contains("s3cret"), "{s}");
        assert!(s.contains("host:6379"), "{s}");
    }
}
