//! The sections of the configuration file: durations, L1 bounds, entry options, `[redis]`,
//! `[sql]`, `[admin]` (with its [`Secret`] token) and one named cache.

use std::time::Duration;

use serde::{Deserialize, Deserializer};
use strata_cache_core::redact::redact_url;
use strata_cache_core::{ConfigError, EntryOptions};

use super::security::SecuritySettings;
use crate::preset::Preset;

/// A duration written as text: `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"7days"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write e.g. \"250ms\", \"30s\", \"5m\", \"2h\""
            ))
        })
    }
}

/// L1 bounds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L1Settings {
    /// Most entries.
    pub max_entries: Option<u64>,
    /// Most weight in bytes.
    pub max_weight_bytes: Option<u64>,
}

/// Entry options; every field optional so that it overlays a preset or the defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntrySettings {
    /// Fresh TTL.
    pub ttl: Option<Dur>,
    /// Random extra TTL, at most this.
    pub jitter: Option<Dur>,
    /// XFetch β (0 disables early refresh).
    pub early_refresh_beta: Option<f64>,
    /// Fail-safe stale limit.
    pub stale_limit: Option<Dur>,
    /// Fail-safe throttle.
    pub fail_safe_throttle: Option<Dur>,
    /// Negative-caching TTL.
    pub negative_ttl: Option<Dur>,
    /// Soft timeout.
    pub soft_timeout: Option<Dur>,
    /// Hard timeout.
    pub hard_timeout: Option<Dur>,
}

impl EntrySettings {
    pub(super) fn apply(&self, mut o: EntryOptions) -> EntryOptions {
        if let Some(d) = self.ttl {
            o.ttl = d.0;
        }
        if let Some(d) = self.jitter {
            o.jitter = d.0;
        }
        if let Some(b) = self.early_refresh_beta {
            o.early_refresh_beta = b;
        }
        if let Some(d) = self.stale_limit {
            o.stale_limit = d.0;
        }
        if let Some(d) = self.fail_safe_throttle {
            o.fail_safe_throttle = d.0;
        }
        if let Some(d) = self.negative_ttl {
            o.negative_ttl = Some(d.0);
        }
        if let Some(d) = self.soft_timeout {
            o.soft_timeout = Some(d.0);
        }
        if let Some(d) = self.hard_timeout {
            o.hard_timeout = Some(d.0);
        }
        o
    }
}

/// The L2 Redis section (`[redis]`, `STRATA_REDIS_*`). Its `Debug` shows the URLs redacted.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// A standalone server: `redis://host:port[/db]`.
    pub url: Option<String>,
    /// Redis Cluster seed nodes (a list, or one comma-separated string in the environment).
    #[serde(default, deserialize_with = "list_or_csv")]
    pub cluster: Vec<String>,
    /// Key prefix (default `strata:`).
    pub prefix: Option<String>,
    /// Connection pool size.
    pub pool_size: Option<usize>,
    /// Per-call timeout.
    pub timeout: Option<Dur>,
    /// Publish and receive invalidations over Redis pub/sub (default true).
    #[serde(default = "yes")]
    pub bus: bool,
    /// Fleet-wide stampede lock on cold keys (default false).
    #[serde(default)]
    pub lock: bool,
}

/// The L3 SQL section (`[sql]`, `STRATA_SQL_*`). Its `Debug` shows the URL redacted.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSettings {
    /// `sqlite://path?mode=rwc`, `postgres://user@host/db`, `mysql://...`.
    pub url: String,
    /// The cache table (default `strata_cache`).
    pub table: Option<String>,
    /// How often expired rows are purged (default 60s; "0s" disables the sweeper).
    pub sweep_interval: Option<Dur>,
    /// Largest number of pooled connections.
    pub max_connections: Option<u32>,
    /// How long a call waits for a pooled connection before failing as overloaded.
    pub acquire_timeout: Option<Dur>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("cluster", &self.cluster.iter().map(|u| redact_url(u)).collect::<Vec<_>>())
            .field("prefix", &self.prefix)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .field("bus", &self.bus)
            .field("lock", &self.lock)
            .finish()
    }
}

impl std::fmt::Debug for SqlSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlSettings")
            .field("url", &redact_url(&self.url))
            .field("table", &self.table)
            .field("sweep_interval", &self.sweep_interval)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

/// The admin HTTP section (`[admin]`, `STRATA_ADMIN_*`): `/metrics`, `/health`, `/topology`,
/// `/dashboard`. See `strata_telemetry::admin::access` for the rules these settings feed.
///
/// ```toml
/// [admin]
/// listen = "0.0.0.0:9464"                        # a non-loopback address needs a token
/// allowed_hosts = ["metrics.internal", "10.0.0.5:9464"]
/// header_timeout = "10s"
/// idle_timeout = "60s"
/// max_connections = 128
/// # token: better from the environment, STRATA_ADMIN_TOKEN=..., than in the file
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Listen address, e.g. `127.0.0.1:9464` (port 0 picks a free one).
    pub listen: String,
    /// Host names (`name` for any port, `name:port` for one) that requests may carry in
    /// `Host`/`Origin` (a list or a comma-separated string). Empty (the default): the loopback
    /// names `localhost`, `127.0.0.1` and `[::1]`. The listen address itself is always allowed.
    #[serde(default, deserialize_with = "list_or_csv")]
    pub allowed_hosts: Vec<String>,
    /// Bearer token required by every data route (`STRATA_ADMIN_TOKEN`); mandatory when
    /// `listen` is not a loopback address. Never shown by `Debug` or in errors.
    #[serde(default)]
    pub token: Option<Secret>,
    /// How long a client has to send a request head (default 10s).
    pub header_timeout: Option<Dur>,
    /// How long a connection may make no progress before it is closed (default 60s).
    pub idle_timeout: Option<Dur>,
    /// The most connections served at once (default 128).
    pub max_connections: Option<usize>,
}

impl AdminSettings {
    /// Settings listening on `listen`, everything else by default (loopback hosts, no token).
    pub fn new(listen: impl Into<String>) -> Self {
        Self {
            listen: listen.into(),
            allowed_hosts: Vec::new(),
            token: None,
            header_timeout: None,
            idle_timeout: None,
            max_connections: None,
        }
    }

    /// The listen address and the admin server's configuration, checked.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the setting: `admin.listen` not a socket address, `admin.token`
    /// missing for a non-loopback `listen` or malformed (the token is never shown),
    /// `admin.allowed_hosts` or a limit out of range.
    #[cfg(feature = "admin")]
    pub fn admin_config(&self) -> Result<(std::net::SocketAddr, strata_telemetry::admin::AdminConfig), ConfigError> {
        use strata_telemetry::TelemetryError;
        use strata_telemetry::admin::{AdminConfig, AdminToken};
        let addr = self.listen_addr()?;
        let token = match &self.token {
            Some(t) => Some(AdminToken::new(t.expose()).map_err(|e| ConfigError::new("admin.token", e.to_string()))?),
            None => None,
        };
        let mut config = AdminConfig::default().maybe_token(token);
        if !self.allowed_hosts.is_empty() {
            config = config.allowed_hosts(self.allowed_hosts.iter().cloned());
        }
        if let Some(d) = self.header_timeout {
            config = config.header_timeout(d.0);
        }
        if let Some(d) = self.idle_timeout {
            config = config.idle_timeout(d.0);
        }
        if let Some(n) = self.max_connections {
            config = config.max_connections(n);
        }
        config.validate(addr).map_err(|e| match e {
            TelemetryError::AdminTokenRequired { .. } => ConfigError::new("admin.token", e.to_string()),
            other => {
                let text = other.to_string();
                let field = text
                    .split_once("admin.")
                    .and_then(|(_, rest)| rest.split_once(':'))
                    .map_or_else(|| "admin".to_owned(), |(f, _)| format!("admin.{f}"));
                ConfigError::new(field, text)
            }
        })?;
        Ok((addr, config))
    }

    pub(super) fn listen_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        self.listen.parse::<std::net::SocketAddr>().map_err(|e| {
            ConfigError::new("admin.listen", format!("{:?} is not a socket address (host:port): {e}", self.listen))
        })
    }
}

/// A secret setting (the admin token): `Debug` shows `<redacted>`, there is no `Display`, and a
/// value of the wrong type is refused without echoing it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a quoted string (the value is not shown)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom("must be a quoted string (the value is not shown)"))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom("must be a quoted string (the value is not shown)"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom("must be a quoted string (the value is not shown)"))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom("must be a quoted string (the value is not shown)"))
            }
        }
        d.deserialize_any(V)
    }
}

fn yes() -> bool {
    true
}

fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(v) => v,
        ListOrCsv::Csv(s) => s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_owned).collect(),
    })
}

/// One named cache.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Starting point (`rule`, `session`, `analytics`, `prompt`).
    pub preset: Option<Preset>,
    /// L1 entries.
    pub l1_max_entries: Option<u64>,
    /// L1 weight.
    pub l1_max_weight_bytes: Option<u64>,
    /// Encryption, PII policy and audit (`[caches.NAME.security]`).
    pub security: Option<SecuritySettings>,
    /// Entry options over the preset.
    #[serde(flatten)]
    pub entry: EntrySettings,
}
