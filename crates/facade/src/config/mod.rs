//! Configuration: a TOML file plus `STRATA_*` environment overrides, validated with errors
//! that name the setting.
//!
//! ```toml
//! [l1]                      # default L1 bounds for every cache
//! max_entries = 10000
//! max_weight_bytes = 67108864
//!
//! [defaults]                # default entry options for caches without a preset
//! ttl = "5m"
//! stale_limit = "1h"
//!
//! [redis]                   # L2 (feature `redis`): `url` for one server or `cluster = [...]`
//! url = "redis://127.0.0.1:6379"
//! prefix = "myapp:"         # key/channel prefix (default "strata:")
//! bus = true                # pub/sub backplane (default true)
//! lock = false              # fleet-wide stampede lock (default false)
//!
//! [sql]                     # L3 (feature `sql`): SQLite, PostgreSQL or MySQL/MariaDB
//! url = "sqlite://strata.db?mode=rwc"
//! sweep_interval = "60s"    # purge expired rows; "0s" disables
//!
//! [admin]                   # admin HTTP (feature `telemetry`): /metrics /health /topology /dashboard
//! listen = "127.0.0.1:9464"  # a non-loopback address requires a token (STRATA_ADMIN_TOKEN)
//! allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]   # Host/Origin allow-list (the default)
//!
//! [caches.rules]            # one section per named cache
//! preset = "rule"
//! ttl = "2h"                # overrides the preset
//!
//! [caches.people.security]  # feature `security`: secrets only from files or the environment
//! encryption = { key_file = "/etc/strata/people.keys" }   # or key_env = "PEOPLE_KEYS"
//! pii = { max_ttl = "1h", hash_secret_env = "PEOPLE_HASH_SECRET" }
//! audit = { path = "/var/log/strata/people.audit" }
//! ```
//!
//! Environment overrides (applied over the file): `STRATA_<SECTION>_<FIELD>` for the fixed
//! sections (`STRATA_REDIS_URL`, `STRATA_L1_MAX_ENTRIES`, `STRATA_DEFAULTS_TTL`, ...) and
//! `STRATA_CACHES__<NAME>__<FIELD>` for named caches (`STRATA_CACHES__RULES__TTL=30m`;
//! nested: `STRATA_CACHES__PEOPLE__SECURITY__PII__MAX_TTL=30m`). Variables that a security
//! section names as secret sources (`key_env`, ...) are secrets, not overrides.
//! `STRATA_CONFIG` names the file and is not an override. Any other `STRATA_*` variable is an
//! error, so a typo does not go unnoticed.
//!
//! Files: `mod.rs` ([`StrataConfig`]: loading, per-cache lookups, validation), `sections.rs`
//! (the sections: [`RedisSettings`], [`SqlSettings`], [`AdminSettings`], [`CacheSettings`], ...),
//! `security.rs` (`[caches.NAME.security]`: [`SecuritySettings`], [`SecurityConfigError`]),
//! `apply.rs` (resolving it: keyrings, secrets, audit logs; `CacheSecurity`), `source.rs` (the
//! file, TOML syntax errors, environment overrides), `tests.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use strata_cache_core::options::check_max_duration;
use strata_cache_core::redact::{redact_url, redact_urls};
use strata_cache_core::{ConfigError, EntryOptions, L1Config};

use crate::preset::Preset;

mod apply;
mod sections;
mod security;
mod source;
#[cfg(test)]
mod tests;

#[cfg(feature = "security")]
pub use apply::CacheSecurity;
pub(crate) use apply::SecurityState;
pub use sections::{AdminSettings, CacheSettings, Dur, EntrySettings, L1Settings, RedisSettings, Secret, SqlSettings};
pub use security::{AuditSettings, EncryptionSettings, PiiSettings, SecurityConfigError, SecuritySettings};
pub use source::MAX_CONFIG_BYTES;
use source::{apply_env, prefix, read_config_file, toml_syntax_error};

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrataConfig {
    /// Default L1 bounds.
    #[serde(default)]
    pub l1: L1Settings,
    /// Default entry options (for caches without a preset).
    #[serde(default)]
    pub defaults: EntrySettings,
    /// L2 Redis.
    pub redis: Option<RedisSettings>,
    /// L3 SQL.
    pub sql: Option<SqlSettings>,
    /// Admin HTTP endpoint.
    pub admin: Option<AdminSettings>,
    /// Named caches.
    #[serde(default)]
    pub caches: BTreeMap<String, CacheSettings>,
}

const SECTIONS: [&str; 5] = ["l1", "defaults", "redis", "sql", "admin"];

impl StrataConfig {
    /// Parses TOML text, applies `env` overrides, and validates.
    pub fn from_toml_with_env<I>(text: &str, env: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        // toml's messages quote the offending line, which may hold a token or a URL with its
        // password: keep the position, drop the excerpt (`toml_syntax_error`).
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| toml_syntax_error(text, &e))?;
        let env: Vec<(String, String)> = env.into_iter().collect();
        // Variables named as secret sources hold secrets: never overrides (nor "unknown").
        let mut secret_vars = security::secret_env_vars(&table);
        secret_vars.extend(env.iter().filter(|(k, _)| security::names_secret_var(k)).map(|(_, v)| v.clone()));
        for (k, v) in env {
            if secret_vars.contains(&k) {
                continue;
            }
            apply_env(&mut table, &k, &v)?;
        }
        security::reject_inline_secrets(&table)?;
        let cfg: StrataConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::new("config", redact_urls(e.to_string().trim())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text without environment overrides.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_toml_with_env(text, std::iter::empty())
    }

    /// Loads the file at `path` (or an empty configuration when `None`) with the process's
    /// `STRATA_*` environment applied.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => read_config_file(p)?,
            None => String::new(),
        };
        // `vars_os`: a non-UTF-8 variable elsewhere in the environment must not panic here.
        let mut vars = Vec::new();
        for (k, v) in std::env::vars_os() {
            let Some(k) = k.to_str().filter(|k| k.starts_with("STRATA_")).map(str::to_owned) else { continue };
            let v = v.into_string().map_err(|_| ConfigError::new(k.clone(), "value is not valid UTF-8"))?;
            vars.push((k, v));
        }
        Self::from_toml_with_env(&text, vars)
    }

    /// Loads from `$STRATA_CONFIG` if set, else defaults, plus the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let path = std::env::var_os("STRATA_CONFIG").map(std::path::PathBuf::from);
        Self::load(path.as_deref())
    }

    /// L1 bounds for cache `name`.
    pub fn l1_for(&self, name: &str) -> L1Config {
        let c = self.caches.get(name);
        let base = c.and_then(|c| c.preset).map_or_else(L1Config::default, Preset::l1);
        let entries = c.and_then(|c| c.l1_max_entries).or(self.l1.max_entries);
        let weight = c.and_then(|c| c.l1_max_weight_bytes).or(self.l1.max_weight_bytes);
        match (entries, weight) {
            (None, None) => base,
            (e, w) => L1Config { max_entries: e.or(base.max_entries), max_weight: w.or(base.max_weight) },
        }
    }

    /// Entry options for cache `name`: its preset (or `[defaults]`), then its overrides.
    pub fn entry_options_for(&self, name: &str) -> EntryOptions {
        let c = self.caches.get(name);
        let base = match c.and_then(|c| c.preset) {
            Some(p) => p.entry_options(),
            None => self.defaults.apply(EntryOptions::default()),
        };
        match c {
            Some(c) => c.entry.apply(base),
            None => base,
        }
    }

    /// Checks every setting, naming the first one that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.entry_options_for("").validate().map_err(|e| prefix("defaults", e))?;
        let names: Vec<&str> = std::iter::once("").chain(self.caches.keys().map(String::as_str)).collect();
        for name in names {
            let field = if name.is_empty() { "l1".to_owned() } else { format!("caches.{name}") };
            if !name.is_empty() {
                strata_cache_core::key::validate_name("cache", name)
                    .map_err(|e| ConfigError::new(field.clone(), e.to_string()))?;
                self.entry_options_for(name).validate().map_err(|e| prefix(&field, e))?;
            }
            self.l1_for(name).validate().map_err(|e| prefix(&field, e))?;
        }
        for (name, c) in &self.caches {
            let Some(s) = &c.security else { continue };
            if cfg!(not(feature = "security")) {
                return Err(SecurityConfigError::FeatureMissing { field: format!("caches.{name}.security") }.into());
            }
            s.validate(name, &self.entry_options_for(name))?;
        }
        if let Some(r) = &self.redis {
            let urls = r.url.iter().map(|u| ("redis.url", u)).chain(r.cluster.iter().map(|u| ("redis.cluster", u)));
            for (field, u) in urls {
                if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                    let shown = redact_url(u);
                    return Err(ConfigError::new(field, format!("{shown:?} is not a Redis URL (redis://host:port)")));
                }
            }
            match (&r.url, r.cluster.is_empty()) {
                (None, true) => {
                    return Err(ConfigError::new("redis", "set `url` (standalone) or `cluster` (seed nodes)"));
                }
                (Some(_), false) => return Err(ConfigError::new("redis", "set `url` or `cluster`, not both")),
                _ => {}
            }
            if r.pool_size == Some(0) {
                return Err(ConfigError::new("redis.pool_size", "must be greater than zero"));
            }
            if let Some(t) = r.timeout {
                check_max_duration("redis.timeout", t.0)?;
            }
        }
        if let Some(sql) = &self.sql {
            if !["sqlite:", "postgres://", "postgresql://", "mysql://", "mariadb://"]
                .iter()
                .any(|p| sql.url.starts_with(p))
            {
                return Err(ConfigError::new(
                    "sql.url",
                    format!("{:?} is not a SQL URL (sqlite://path, postgres://..., mysql://...)", redact_url(&sql.url)),
                ));
            }
            for (field, d) in [("sql.sweep_interval", sql.sweep_interval), ("sql.acquire_timeout", sql.acquire_timeout)]
            {
                if let Some(d) = d {
                    check_max_duration(field, d.0)?;
                }
            }
            if let Some(d) = sql.sweep_interval
                && !d.0.is_zero()
                && d.0 < Duration::from_secs(1)
            {
                return Err(ConfigError::new("sql.sweep_interval", "must be 0s (off) or at least 1s"));
            }
        }
        if let Some(a) = &self.admin {
            a.listen_addr()?;
            #[cfg(feature = "admin")]
            let _checked = a.admin_config()?;
        }
        Ok(())
    }
}
