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
//! ```
//!
//! Environment overrides (applied over the file): `STRATA_<SECTION>_<FIELD>` for the fixed
//! sections (`STRATA_REDIS_URL`, `STRATA_L1_MAX_ENTRIES`, `STRATA_DEFAULTS_TTL`, ...) and
//! `STRATA_CACHES__<NAME>__<FIELD>` for named caches (`STRATA_CACHES__RULES__TTL=30m`).
//! `STRATA_CONFIG` names the file and is not an override. Any other `STRATA_*` variable is an
//! error, so a typo does not go unnoticed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use strata_cache_core::options::check_max_duration;
use strata_cache_core::redact::{redact_url, redact_urls};
use strata_cache_core::{ConfigError, EntryOptions, L1Config};

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
    fn apply(&self, mut o: EntryOptions) -> EntryOptions {
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

    fn listen_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
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
    /// Entry options over the preset.
    #[serde(flatten)]
    pub entry: EntrySettings,
}

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
        for (k, v) in env {
            apply_env(&mut table, &k, &v)?;
        }
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

/// A TOML syntax error with its position but without the excerpt of the file that the `toml`
/// crate's `Display` adds: the offending line may hold a secret (a token, a password in a URL).
fn toml_syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    // The message may quote a value (`invalid type: integer `123...``): keep short quotes
    // (expected punctuation such as `=` or `]]`), hide longer ones.
    let mut message = String::new();
    for (i, part) in e.message().trim().split('`').enumerate() {
        if i > 0 {
            message.push('`');
        }
        message.push_str(if i % 2 == 1 && part.chars().count() > 3 { "…" } else { part });
    }
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            let message = redact_urls(&message);
            ConfigError::new("toml", format!("syntax error at line {line}, column {column}: {message}"))
        }
        None => ConfigError::new("toml", format!("syntax error: {}", redact_urls(&message))),
    }
}

/// The largest configuration file [`StrataConfig::load`] reads, in bytes (1 MiB).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads a configuration file: a regular file (or a link to one) of at most
/// [`MAX_CONFIG_BYTES`], in UTF-8. Devices (`/dev/zero`), FIFOs, sockets and directories are
/// refused before they are opened (opening a FIFO would block), and the read itself is
/// bounded, so a file that grows while it is read is refused too.
fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let shown = path.display();
    let err = |msg: String| ConfigError::new("STRATA_CONFIG", msg);
    let check = |meta: &std::fs::Metadata| -> Result<(), ConfigError> {
        if !meta.is_file() {
            return Err(err(format!(
                "{shown} is {}, not a regular file; point it at a TOML file",
                file_kind(&meta.file_type())
            )));
        }
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(err(format!(
                "{shown} is {} bytes; a configuration file may have at most {MAX_CONFIG_BYTES}",
                meta.len()
            )));
        }
        Ok(())
    };
    // `metadata` follows links: a link to a regular file is fine.
    check(&std::fs::metadata(path).map_err(|e| err(format!("cannot read {shown}: {e}")))?)?;
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot read {shown}: {e}")))?;
    // The path may have been replaced between the check and the open: check what was opened.
    check(&file.metadata().map_err(|e| err(format!("cannot read {shown}: {e}")))?)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(|e| err(format!("cannot read {shown}: {e}")))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(err(format!("{shown} grew past {MAX_CONFIG_BYTES} bytes while being read")));
    }
    String::from_utf8(bytes)
        .map_err(|e| err(format!("{shown} is not UTF-8 text (byte {})", e.utf8_error().valid_up_to())))
}

/// What a file that is not regular is, in words.
fn file_kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() { "a directory" } else { "not a regular file" }
}

fn prefix(section: &str, e: ConfigError) -> ConfigError {
    ConfigError::new(format!("{section}.{}", e.field), e.message)
}

fn apply_env(table: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let Some(rest) = var.strip_prefix("STRATA_") else { return Ok(()) };
    if rest == "CONFIG" {
        return Ok(());
    }
    let lower = rest.to_ascii_lowercase();
    let path: Vec<String> = if let Some(c) = lower.strip_prefix("caches__") {
        let parts: Vec<&str> = c.split("__").collect();
        match parts.as_slice() {
            [name, field] if !name.is_empty() && !field.is_empty() => {
                // Variable names are upper case, cache names may not be: an override applies to
                // the file's cache whose name matches ignoring case (ambiguity is an error).
                let existing: Vec<String> = table
                    .get("caches")
                    .and_then(toml::Value::as_table)
                    .map(|t| t.keys().filter(|k| k.eq_ignore_ascii_case(name)).cloned().collect())
                    .unwrap_or_default();
                let name = match existing.as_slice() {
                    [] => (*name).to_owned(),
                    [one] => one.clone(),
                    _ => {
                        return Err(ConfigError::new(
                            var,
                            format!("matches several caches ignoring case: {}", existing.join(", ")),
                        ));
                    }
                };
                vec!["caches".into(), name, (*field).to_owned()]
            }
            _ => return Err(ConfigError::new(var, "expected STRATA_CACHES__<NAME>__<FIELD>")),
        }
    } else {
        match SECTIONS.iter().find(|s| lower.starts_with(&format!("{s}_"))) {
            Some(s) => vec![(*s).to_owned(), lower[s.len() + 1..].to_owned()],
            None => {
                return Err(ConfigError::new(
                    var,
                    "unknown Strata setting; use STRATA_{L1,DEFAULTS,REDIS,SQL,ADMIN}_<FIELD> or STRATA_CACHES__<NAME>__<FIELD>",
                ));
            }
        }
    };
    // A secret stays text whatever it looks like (a numeric token must not turn into a number,
    // whose type error would echo it).
    let parsed = if path == ["admin", "token"] {
        toml::Value::String(value.to_owned())
    } else if let Ok(i) = value.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(f) = value.parse::<f64>() {
        toml::Value::Float(f)
    } else if let Ok(b) = value.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(value.to_owned())
    };
    let mut cur = table;
    for seg in &path[..path.len() - 1] {
        let entry = cur.entry(seg.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur =
            entry.as_table_mut().ok_or_else(|| ConfigError::new(var, format!("`{seg}` is not a table in the file")))?;
    }
    cur.insert(path[path.len() - 1].clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    const FILE: &str = r#"
        [l1]
        max_entries = 500
        [defaults]
        ttl = "90s"
        [caches.rules]
        preset = "rule"
        ttl = "2h"
        [caches.sessions]
        preset = "session"
    "#;

    #[test]
    fn file_presets_and_overrides() {
        let c = StrataConfig::from_toml(FILE).unwrap();
        assert_eq!(c.entry_options_for("rules").ttl, Duration::from_secs(7200));
        assert_eq!(c.entry_options_for("rules").stale_limit, Duration::from_secs(86_400), "from the preset");
        assert_eq!(c.entry_options_for("other").ttl, Duration::from_secs(90), "from [defaults]");
        assert_eq!(c.l1_for("other").max_entries, Some(500));
        assert_eq!(c.l1_for("sessions").max_weight, Some(64 * 1024 * 1024));
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = StrataConfig::from_toml_with_env(
            FILE,
            env(&[
                ("STRATA_REDIS_URL", "redis://127.0.0.1:6390"),
                ("STRATA_L1_MAX_ENTRIES", "42"),
                ("STRATA_CACHES__RULES__TTL", "30m"),
                ("STRATA_CACHES__NEW__PRESET", "analytics"),
                ("STRATA_CONFIG", "/ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(c.redis.as_ref().unwrap().url.as_deref(), Some("redis://127.0.0.1:6390"));
        assert!(c.redis.as_ref().unwrap().bus, "the backplane is on by default");
        let c2 = StrataConfig::from_toml_with_env(
            "",
            env(&[
                ("STRATA_REDIS_CLUSTER", "redis://127.0.0.1:7001, redis://127.0.0.1:7002"),
                ("STRATA_SQL_URL", "sqlite://strata.db?mode=rwc"),
                ("STRATA_ADMIN_LISTEN", "127.0.0.1:0"),
            ]),
        )
        .unwrap();
        assert_eq!(c2.redis.as_ref().unwrap().cluster, ["redis://127.0.0.1:7001", "redis://127.0.0.1:7002"]);
        assert_eq!(c2.sql.as_ref().unwrap().url, "sqlite://strata.db?mode=rwc");
        assert_eq!(c.l1.max_entries, Some(42));
        assert_eq!(c.entry_options_for("rules").ttl, Duration::from_secs(1800));
        assert_eq!(c.caches["new"].preset, Some(Preset::Analytics));
        // Mixed-case cache names in the file are found by their upper-case variables.
        let c3 = StrataConfig::from_toml_with_env(
            "[caches.userProfiles]\nttl = \"10m\"",
            env(&[("STRATA_CACHES__USERPROFILES__TTL", "1m")]),
        )
        .unwrap();
        assert_eq!(c3.caches.len(), 1);
        assert_eq!(c3.entry_options_for("userProfiles").ttl, Duration::from_secs(60));
    }

    #[test]
    fn clear_errors_name_the_setting() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            ("[defaults]\nttl = \"soon\"", &[], "invalid duration"),
            ("[defaults]\nttl = \"0s\"", &[], "defaults.ttl"),
            ("[caches.x]\npreset = \"turbo\"", &[], "unknown variant"),
            ("[caches.x]\nttll = \"1s\"", &[], "ttll"),
            ("[l1]\nmax_entries = 0", &[], "l1.max_entries"),
            ("[caches.\"bad name\"]", &[], "caches.bad name"),
            ("[redis]\nurl = \"localhost\"", &[], "redis.url"),
            ("[redis]\nprefix = \"x:\"", &[], "set `url` (standalone) or `cluster`"),
            ("[redis]\nurl = \"redis://a:1\"\ncluster = [\"redis://b:1\"]", &[], "not both"),
            ("[sql]\nurl = \"oracle://x\"", &[], "sql.url"),
            ("[admin]\nlisten = \"nowhere\"", &[], "admin.listen"),
            ("[sql]\nurl = \"sqlite://x\"\nsweep_interval = \"1ms\"", &[], "sql.sweep_interval"),
            ("[caches.ab]\n[caches.AB]", &[("STRATA_CACHES__AB__TTL", "1m")], "several caches"),
            ("[sql]\nurl = \"postgress://app:s3cret@db/x\"", &[], "postgress://***@db/x"),
            ("", &[("STRATA_REDIS_ULR", "x")], "ulr"),
            ("", &[("STRATA_TURBO", "1")], "STRATA_TURBO"),
            ("", &[("STRATA_CACHES__X", "1")], "STRATA_CACHES__X"),
            ("[caches.y]\nsoft_timeout = \"5s\"\nhard_timeout = \"1s\"", &[], "caches.y.soft_timeout"),
            ("not toml ===", &[], "toml"),
        ];
        for (text, vars, needle) in cases {
            let err = StrataConfig::from_toml_with_env(text, env(vars)).unwrap_err();
            assert!(err.to_string().contains(needle), "{text:?} {vars:?}: {err}");
        }
    }

    #[test]
    fn the_admin_token_comes_from_the_environment_and_is_never_shown() {
        const TOKEN: &str = "98765432109876543";
        // Digits only: still a string, not a number.
        let c = StrataConfig::from_toml_with_env(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            env(&[("STRATA_ADMIN_TOKEN", TOKEN), ("STRATA_ADMIN_ALLOWED_HOSTS", "a.internal, b.internal:9464")]),
        )
        .unwrap();
        let a = c.admin.as_ref().unwrap();
        assert_eq!(a.token.as_ref().map(Secret::expose), Some(TOKEN));
        assert_eq!(a.allowed_hosts, ["a.internal", "b.internal:9464"]);
        assert!(!format!("{c:?}").contains(TOKEN), "Debug shows the token");
        assert!(format!("{c:?}").contains("Secret(<redacted>)"));
        // A token of the wrong type in the file is refused without echoing it.
        let err = StrataConfig::from_toml(&format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = {TOKEN}")).unwrap_err();
        assert!(!err.to_string().contains(TOKEN), "{err}");
        assert!(err.to_string().contains("quoted string"), "{err}");
        // Nor does a syntax error on the token's line (or any line) quote the file.
        for bad in [
            format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = {TOKEN}{TOKEN}"),
            format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = un{TOKEN}quoted"),
            format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}"),
        ] {
            let err = StrataConfig::from_toml(&bad).unwrap_err();
            assert!(!err.to_string().contains(TOKEN), "{err}");
            assert!(err.to_string().contains("line 3"), "{err}");
        }
    }

    #[cfg(feature = "admin")]
    #[test]
    fn admin_settings_are_checked_at_load() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            ("[admin]\nlisten = \"0.0.0.0:9464\"", &[], "admin.token"),
            ("[admin]\nlisten = \"[::]:0\"", &[], "admin.token"),
            ("[admin]\nlisten = \"10.1.2.3:0\"", &[], "admin.token"),
            ("[admin]\nlisten = \"127.0.0.1:0\"", &[("STRATA_ADMIN_TOKEN", "tiny1")], "admin.token"),
            ("[admin]\nlisten = \"127.0.0.1:0\"", &[("STRATA_ADMIN_TOKEN", "has spaces in it, 12345")], "admin.token"),
            ("[admin]\nlisten = \"127.0.0.1:0\"\nallowed_hosts = [\"http://x\"]", &[], "admin.allowed_hosts"),
            ("[admin]\nlisten = \"127.0.0.1:0\"\nheader_timeout = \"0s\"", &[], "admin.header_timeout"),
            ("[admin]\nlisten = \"127.0.0.1:0\"\nidle_timeout = \"400days\"", &[], "admin.idle_timeout"),
            ("[admin]\nlisten = \"127.0.0.1:0\"\nmax_connections = 0", &[], "admin.max_connections"),
        ];
        for (text, vars, field) in cases {
            let err = StrataConfig::from_toml_with_env(text, env(vars)).unwrap_err();
            assert_eq!(err.field, *field, "{text:?} {vars:?}: {err}");
            for (_, v) in *vars {
                assert!(!err.to_string().contains(v), "the error shows the token: {err}");
            }
        }
        let ok = StrataConfig::from_toml_with_env(
            "[admin]\nlisten = \"0.0.0.0:0\"\nallowed_hosts = \"metrics.internal\"\nheader_timeout = \"5s\"",
            env(&[("STRATA_ADMIN_TOKEN", "a-long-enough-admin-token")]),
        )
        .unwrap();
        let (addr, config) = ok.admin.unwrap().admin_config().unwrap();
        assert!(addr.ip().is_unspecified() && config.has_token());
        let (_, plain) = AdminSettings::new("127.0.0.1:0").admin_config().unwrap();
        assert!(!plain.has_token());
    }

    /// `STRATA_CONFIG` naming something that is not a small regular file: refused with an error
    /// naming the path, without reading (a FIFO would block, `/dev/zero` never ends).
    #[test]
    fn config_files_must_be_small_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |path: &Path, needle: &str| {
            let e = StrataConfig::load(Some(path)).expect_err(needle);
            assert_eq!(e.field, "STRATA_CONFIG");
            assert!(e.message.contains(&path.display().to_string()), "{e}");
            assert!(e.message.contains(needle), "{e}");
        };
        #[cfg(unix)]
        {
            refused(Path::new("/dev/zero"), "a character device");
            refused(Path::new("/dev/null"), "a character device");
            let fifo = dir.path().join("fifo");
            let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
            assert!(made.success());
            refused(&fifo, "a FIFO");
            let to_zero = dir.path().join("to-zero.toml");
            std::os::unix::fs::symlink("/dev/zero", &to_zero).unwrap();
            refused(&to_zero, "a character device");
        }
        refused(dir.path(), "a directory");
        refused(&dir.path().join("missing.toml"), "cannot read");

        // Sizes: the limit is accepted, one byte over is not.
        let write_comment = |name: &str, len: u64| {
            let path = dir.path().join(name);
            let mut text = String::from("#");
            text.push_str(&"x".repeat(usize::try_from(len).unwrap() - 2));
            text.push('\n');
            std::fs::write(&path, text).unwrap();
            path
        };
        let at_limit = write_comment("at-limit.toml", MAX_CONFIG_BYTES);
        assert_eq!(read_config_file(&at_limit).unwrap().len() as u64, MAX_CONFIG_BYTES);
        refused(&write_comment("over.toml", MAX_CONFIG_BYTES + 1), "at most 1048576");
        refused(&write_comment("far-over.toml", 8 * MAX_CONFIG_BYTES), "at most 1048576");
        let not_utf8 = dir.path().join("latin1.toml");
        std::fs::write(&not_utf8, b"# caf\xe9\n").unwrap();
        refused(&not_utf8, "not UTF-8");

        // A regular file, directly or through a link, is read.
        let file = dir.path().join("strata.toml");
        std::fs::write(&file, "[defaults]\nttl = \"90s\"\n").unwrap();
        let text = read_config_file(&file).unwrap();
        assert_eq!(StrataConfig::from_toml(&text).unwrap().entry_options_for("x").ttl, Duration::from_secs(90));
        #[cfg(unix)]
        {
            let link = dir.path().join("link.toml");
            std::os::unix::fs::symlink(&file, &link).unwrap();
            assert_eq!(read_config_file(&link).unwrap(), text);
        }
        let empty = dir.path().join("empty.toml");
        std::fs::write(&empty, "").unwrap();
        assert_eq!(read_config_file(&empty).unwrap(), "");
    }

    /// Durations a tier cannot represent are refused at configuration time, from the file and
    /// from the environment, for every duration setting: ZERO, 1 ns, the 100-year maximum and
    /// its neighbours, and values far past it.
    #[test]
    fn durations_past_the_maximum_are_refused() {
        // 100 years of 365 days is 3,153,600,000 s.
        let cases: &[(&str, bool)] = &[
            ("1ns", true),
            ("3153599999s", true),
            ("3153600000s", true),
            ("3153600000s 1ns", false),
            ("3153600001s", false),
            ("101years", false),
            ("18446744073709551615s", false),
        ];
        let fields = [
            ("[defaults]", "ttl", "defaults.ttl", "STRATA_DEFAULTS_TTL"),
            ("[defaults]", "stale_limit", "defaults.stale_limit", "STRATA_DEFAULTS_STALE_LIMIT"),
            ("[defaults]", "jitter", "defaults.jitter", "STRATA_DEFAULTS_JITTER"),
            ("[defaults]", "negative_ttl", "defaults.negative_ttl", "STRATA_DEFAULTS_NEGATIVE_TTL"),
            ("[defaults]", "fail_safe_throttle", "defaults.fail_safe_throttle", "STRATA_DEFAULTS_FAIL_SAFE_THROTTLE"),
            ("[defaults]", "hard_timeout", "defaults.hard_timeout", "STRATA_DEFAULTS_HARD_TIMEOUT"),
            (
                "[caches.rules]\npreset = \"rule\"",
                "stale_limit",
                "caches.rules.stale_limit",
                "STRATA_CACHES__RULES__STALE_LIMIT",
            ),
            ("[redis]\nurl = \"redis://h:1\"", "timeout", "redis.timeout", "STRATA_REDIS_TIMEOUT"),
            (
                "[sql]\nurl = \"sqlite::memory:\"",
                "acquire_timeout",
                "sql.acquire_timeout",
                "STRATA_SQL_ACQUIRE_TIMEOUT",
            ),
        ];
        for (section, key, field, var) in fields {
            for (value, ok) in cases {
                let text = format!("{section}\n{key} = \"{value}\"");
                let from_file = StrataConfig::from_toml(&text);
                let from_env = StrataConfig::from_toml_with_env(section, env(&[(var, value)]));
                for (how, r) in [("file", from_file), ("env", from_env)] {
                    match (r, ok) {
                        (Ok(_), true) => {}
                        (Err(e), false) => {
                            // Either the value is refused as over the maximum, or it does not
                            // even parse as a duration (u64::MAX seconds).
                            let named = e.field == field && e.message.contains("at most 100 years");
                            assert!(named || e.to_string().contains("invalid duration"), "{how} {text}: {e}");
                        }
                        (r, _) => panic!("{how} {text}: expected ok={ok}, got {r:?}"),
                    }
                }
            }
        }
        // `sweep_interval`: 0s turns the sweeper off; otherwise 1s ..= 100 years.
        for (value, ok) in [("0s", true), ("1s", true), ("3153600000s", true), ("3153600001s", false)] {
            let text = format!("[sql]\nurl = \"sqlite::memory:\"\nsweep_interval = \"{value}\"");
            assert_eq!(StrataConfig::from_toml(&text).is_ok(), ok, "{text}");
        }
    }
}
