//! Configuration of a [`SqlTier`](crate::SqlTier): the connection URL, the table and the pool.

use std::sync::Arc;
use std::time::Duration;

use strata_cache_core::{Clock, ConfigError, SystemClock};

/// The longest accepted table name (index names derived from it must stay under 64 chars).
pub const MAX_TABLE_LEN: usize = 48;

/// The default table name.
pub const DEFAULT_TABLE: &str = "strata_cache";

/// The database behind a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// SQLite (`sqlite://path?mode=rwc`), the embedded default.
    Sqlite,
    /// PostgreSQL (`postgres://user@host/db`).
    Postgres,
    /// MySQL or MariaDB (`mysql://user@host/db`).
    MySql,
}

impl Backend {
    /// The backend a URL names, from its scheme.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase()).unwrap_or_default();
        match scheme.as_str() {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            "mysql" | "mariadb" => Ok(Backend::MySql),
            _ => Err(ConfigError::new(
                "sql.url",
                "unsupported or missing URL scheme; use sqlite://path?mode=rwc, postgres://user@host/db \
                 or mysql://user@host/db",
            )),
        }
    }
}

/// Settings of a [`SqlTier`](crate::SqlTier). Build with [`SqlConfig::new`] or
/// [`SqlConfig::sqlite`] and adjust with the builder methods; [`SqlConfig::validate`] runs in
/// `connect`.
///
/// ```
/// use std::time::Duration;
/// use strata_cache_sql::SqlConfig;
///
/// let config = SqlConfig::sqlite("/var/lib/app/cache.db").table("app_cache").max_connections(4);
/// assert_eq!(config.url(), "sqlite:///var/lib/app/cache.db?mode=rwc");
/// assert!(config.validate().is_ok());
/// assert!(SqlConfig::new("sqlite://x.db").table("bad name; DROP TABLE x").validate().is_err());
/// ```
#[derive(Clone)]
#[must_use]
pub struct SqlConfig {
    pub(crate) url: String,
    pub(crate) table: String,
    pub(crate) name: String,
    pub(crate) max_connections: u32,
    pub(crate) min_connections: u32,
    pub(crate) connect_timeout: Duration,
    pub(crate) acquire_timeout: Duration,
    pub(crate) busy_timeout: Duration,
    pub(crate) run_migrations: bool,
    pub(crate) lazy: bool,
    pub(crate) clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SqlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password (or, malformed, anything): print it redacted.
        f.debug_struct("SqlConfig")
            .field("url", &strata_cache_core::redact::redact_url(&self.url))
            .field("table", &self.table)
            .field("name", &self.name)
            .field("max_connections", &self.max_connections)
            .field("min_connections", &self.min_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("busy_timeout", &self.busy_timeout)
            .field("run_migrations", &self.run_migrations)
            .field("lazy", &self.lazy)
            .finish()
    }
}

impl SqlConfig {
    /// Settings for `url` (`sqlite://path?mode=rwc`, `postgres://…`, `mysql://…`) with the
    /// defaults: table `strata_cache`, tier name `sql`, 10 connections, 5 s connect timeout,
    /// 2 s acquire timeout, 5 s SQLite busy timeout, migrations on.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            table: DEFAULT_TABLE.to_owned(),
            name: "sql".to_owned(),
            max_connections: 10,
            min_connections: 0,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(2),
            busy_timeout: Duration::from_secs(5),
            run_migrations: true,
            lazy: false,
            clock: Arc::new(SystemClock),
        }
    }

    /// Settings for an SQLite file at `path`, created when missing (`sqlite://path?mode=rwc`).
    pub fn sqlite(path: impl AsRef<std::path::Path>) -> Self {
        Self::new(format!("sqlite://{}?mode=rwc", path.as_ref().display()))
    }

    /// The connection URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The table name (1–48 chars of `[A-Za-z0-9_]`, not starting with a digit).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// The tier's name in errors, metrics and health reports (default `sql`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The most pooled connections (default 10).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Connections kept open when idle (default 0).
    pub fn min_connections(mut self, n: u32) -> Self {
        self.min_connections = n;
        self
    }

    /// How long opening a connection may take (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long a call may wait for a pooled connection before failing with
    /// `TierErrorKind::Overloaded` (default 2 s).
    pub fn acquire_timeout(mut self, d: Duration) -> Self {
        self.acquire_timeout = d;
        self
    }

    /// SQLite only: how long a statement waits on a locked database (default 5 s).
    pub fn busy_timeout(mut self, d: Duration) -> Self {
        self.busy_timeout = d;
        self
    }

    /// Whether `connect` creates/updates the table (default true). Turn off where the schema
    /// is managed elsewhere; the table must then match [`crate::migration`].
    pub fn run_migrations(mut self, on: bool) -> Self {
        self.run_migrations = on;
        self
    }

    /// Whether `connect` returns without opening a connection (default false): the pool
    /// connects on first use, so a service can start while its database is down (calls fail
    /// with typed errors until it is up). Needs `run_migrations(false)`: migrating connects.
    pub fn lazy(mut self, on: bool) -> Self {
        self.lazy = on;
        self
    }

    /// The clock that decides what is expired (tests use `ManualClock`).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The backend the URL names.
    pub fn backend(&self) -> Result<Backend, ConfigError> {
        Backend::from_url(&self.url)
    }

    /// Checks every setting; the error names the setting and what to do.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.backend()?;
        validate_table_name(&self.table)?;
        if self.name.is_empty() || self.name.len() > 64 {
            return Err(ConfigError::new("sql.name", "tier name must be 1..=64 bytes"));
        }
        if self.lazy && self.run_migrations {
            return Err(ConfigError::new("sql.lazy", "a lazy pool cannot run migrations at connect; turn one off"));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new("sql.max_connections", "must be at least 1"));
        }
        if self.min_connections > self.max_connections {
            return Err(ConfigError::new("sql.min_connections", "must not exceed max_connections"));
        }
        for (field, d) in [
            ("sql.connect_timeout", self.connect_timeout),
            ("sql.acquire_timeout", self.acquire_timeout),
            ("sql.busy_timeout", self.busy_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(field, "must be greater than zero"));
            }
            strata_cache_core::options::check_max_duration(field, d)?;
        }
        Ok(())
    }
}

/// Checks a table name: 1–48 chars of `[A-Za-z0-9_]`, not starting with a digit (it is
/// interpolated into SQL, so nothing else is accepted).
pub fn validate_table_name(table: &str) -> Result<(), ConfigError> {
    let ok = !table.is_empty()
        && table.len() <= MAX_TABLE_LEN
        && table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !table.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            "sql.table",
            "table name must be 1..=48 chars of [A-Za-z0-9_] and must not start with a digit",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(SqlConfig::new("sqlite://a.db?mode=rwc").validate().is_ok());
        assert!(SqlConfig::new("postgresql://u@h/db").validate().is_ok());
        assert!(SqlConfig::new("mariadb://u@h/db").validate().is_ok());
        let e = SqlConfig::new("redis://h").validate().unwrap_err();
        assert_eq!(e.field, "sql.url");
        assert!(SqlConfig::new("").validate().is_err());
        for bad in ["", "1abc", "a-b", "a b", "t\"; drop", "ä", &"x".repeat(64)] {
            assert_eq!(SqlConfig::new("sqlite://a").table(bad).validate().unwrap_err().field, "sql.table", "{bad:?}");
        }
        assert!(SqlConfig::new("sqlite://a").table("_x9").validate().is_ok());
        assert_eq!(
            SqlConfig::new("sqlite://a").max_connections(0).validate().unwrap_err().field,
            "sql.max_connections"
        );
        assert_eq!(
            SqlConfig::new("sqlite://a").min_connections(3).max_connections(2).validate().unwrap_err().field,
            "sql.min_connections"
        );
        assert_eq!(
            SqlConfig::new("sqlite://a").acquire_timeout(Duration::ZERO).validate().unwrap_err().field,
            "sql.acquire_timeout"
        );
        let max = strata_cache_core::options::MAX_DURATION;
        for d in [max + Duration::from_nanos(1), Duration::MAX] {
            assert_eq!(
                SqlConfig::new("sqlite://a").acquire_timeout(d).validate().unwrap_err().field,
                "sql.acquire_timeout"
            );
            assert_eq!(
                SqlConfig::new("sqlite://a").connect_timeout(d).validate().unwrap_err().field,
                "sql.connect_timeout"
            );
            assert_eq!(SqlConfig::new("sqlite://a").busy_timeout(d).validate().unwrap_err().field, "sql.busy_timeout");
        }
        assert!(SqlConfig::new("sqlite://a").busy_timeout(max).acquire_timeout(max).validate().is_ok());
    }

    #[test]
    fn debug_hides_credentials() {
        let dbg = format!("{:?}", SqlConfig::new("postgres://user:hunter2@db/x"));
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }
}
