//! Errors: database failures become [`TierError`]s with a kind the cache can branch on; the
//! original `sea_orm::DbErr` is kept as the source.

use strata_cache_core::{ConfigError, TierError, TierErrorKind};

use sea_orm::{DbErr, RuntimeErr};

/// The error type of this crate's constructors and adapters.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// The configuration is invalid (bad URL scheme, table name, pool sizes, timeouts).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database failed (connecting, migrating, querying).
    #[error(transparent)]
    Tier(#[from] TierError),
}

impl SqlError {
    /// The tier error kind, for database failures (`None` for configuration errors).
    pub fn kind(&self) -> Option<TierErrorKind> {
        match self {
            SqlError::Config(_) => None,
            SqlError::Tier(e) => Some(e.kind()),
        }
    }
}

/// Classifies a database error.
pub(crate) fn kind_of(err: &DbErr) -> TierErrorKind {
    match err {
        DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout) => TierErrorKind::Overloaded,
        DbErr::ConnectionAcquire(_) => TierErrorKind::Unavailable,
        // Opening the pool: a pool timeout here means no connection could be made at all.
        DbErr::Conn(rt) => match runtime_kind(rt) {
            None | Some(TierErrorKind::Overloaded) => TierErrorKind::Unavailable,
            Some(k) => k,
        },
        DbErr::Exec(rt) | DbErr::Query(rt) => runtime_kind(rt).unwrap_or(TierErrorKind::Other),
        DbErr::Type(_) | DbErr::TryIntoErr { .. } | DbErr::Json(_) => TierErrorKind::Protocol,
        _ => TierErrorKind::Other,
    }
}

fn runtime_kind(rt: &RuntimeErr) -> Option<TierErrorKind> {
    use sea_orm::sqlx::Error as X;
    let RuntimeErr::SqlxError(e) = rt else { return None };
    Some(match &**e {
        X::Io(_) | X::Tls(_) | X::PoolClosed | X::WorkerCrashed => TierErrorKind::Unavailable,
        X::PoolTimedOut => TierErrorKind::Overloaded,
        X::Configuration(_) => TierErrorKind::InvalidRequest,
        X::Protocol(_) | X::Decode(_) | X::ColumnDecode { .. } | X::TypeNotFound { .. } => TierErrorKind::Protocol,
        X::Database(db) => match db.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
            Some(my) => mysql_kind(my.number()),
            None => database_kind(db.code().as_deref().unwrap_or("")),
        },
        _ => return None,
    })
}

/// Kinds from MySQL/MariaDB error numbers.
fn mysql_kind(number: u16) -> TierErrorKind {
    match number {
        // Lock wait timeout, max_execution_time (MySQL), max_statement_time (MariaDB).
        1205 | 3024 | 1969 => TierErrorKind::Timeout,
        // Too many connections, user has too many connections.
        1040 | 1203 => TierErrorKind::Overloaded,
        // Server shutdown in progress, connection killed.
        1053 | 1927 => TierErrorKind::Unavailable,
        _ => TierErrorKind::Other,
    }
}

/// Kinds from SQLite result codes and PostgreSQL SQLSTATEs.
fn database_kind(code: &str) -> TierErrorKind {
    match code {
        // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6) once the busy timeout has passed.
        "5" | "6" | "261" | "517" => TierErrorKind::Timeout,
        // PostgreSQL: query_canceled (statement_timeout), lock_not_available.
        "57014" | "55P03" => TierErrorKind::Timeout,
        // PostgreSQL: too_many_connections, insufficient resources.
        "53300" | "53000" | "53100" | "53200" => TierErrorKind::Overloaded,
        // PostgreSQL: admin/crash shutdown, cannot connect now.
        "57P01" | "57P02" | "57P03" => TierErrorKind::Unavailable,
        // SQLSTATE class 08: connection exceptions.
        c if c.starts_with("08") => TierErrorKind::Unavailable,
        _ => TierErrorKind::Other,
    }
}

/// Wraps a database error for tier `tier`, saying what was being done.
pub(crate) fn tier_err(tier: &str, op: &str, err: DbErr) -> TierError {
    let kind = kind_of(&err);
    TierError::new(tier.to_owned(), kind, format!("{op}: {err}")).with_source(err)
}

/// A failed connect for `config`. The driver's message may quote the URL with its password
/// (sea-orm does for a URL that does not parse), so the message is redacted, and the original
/// error is kept as the source only when neither its `Display` nor its `Debug` holds any part
/// of the URL's secrets; otherwise a redacted copy of its message stands in for it.
pub(crate) fn connect_err(config: &crate::SqlConfig, err: DbErr) -> TierError {
    use strata_cache_core::redact::redact_url_in;
    let url = config.url();
    let (shown, debug) = (err.to_string(), format!("{err:?}"));
    let clean = redact_url_in(&shown, url);
    let e = TierError::new(config.name.clone(), kind_of(&err), format!("connect: {clean}"));
    if clean == shown && redact_url_in(&debug, url) == debug && !url_quoted(&shown, &debug, url) {
        e.with_source(err)
    } else {
        e.with_source(RedactedDbErr(clean))
    }
}

/// Whether a driver message quotes the URL verbatim (even one with nothing secret in it, the
/// redacted form is shown instead, so that both texts agree).
fn url_quoted(shown: &str, debug: &str, url: &str) -> bool {
    !url.is_empty() && (shown.contains(url) || debug.contains(url))
}

/// A driver error whose text quoted a connection URL, standing in for it as a source with the
/// URL redacted.
#[derive(Debug)]
struct RedactedDbErr(String);

impl std::fmt::Display for RedactedDbErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedactedDbErr {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn kinds() {
        let timeout = DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout);
        assert_eq!(kind_of(&timeout), TierErrorKind::Overloaded);
        let io = DbErr::Conn(RuntimeErr::SqlxError(Arc::new(sea_orm::sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        )))));
        assert_eq!(kind_of(&io), TierErrorKind::Unavailable);
        let pool = DbErr::Query(RuntimeErr::SqlxError(Arc::new(sea_orm::sqlx::Error::PoolTimedOut)));
        assert_eq!(kind_of(&pool), TierErrorKind::Overloaded);
        assert_eq!(kind_of(&DbErr::Custom("x".into())), TierErrorKind::Other);
        assert_eq!(database_kind("57014"), TierErrorKind::Timeout);
        assert_eq!(database_kind("5"), TierErrorKind::Timeout);
        assert_eq!(database_kind("08006"), TierErrorKind::Unavailable);
        assert_eq!(database_kind("53300"), TierErrorKind::Overloaded);
        assert_eq!(database_kind("42P01"), TierErrorKind::Other);
        assert_eq!(mysql_kind(1205), TierErrorKind::Timeout);
        assert_eq!(mysql_kind(1040), TierErrorKind::Overloaded);
        assert_eq!(mysql_kind(1146), TierErrorKind::Other);
        let e = tier_err("sql", "get", io);
        assert!(std::error::Error::source(&e).is_some());
        assert!(e.is_retryable());
    }
}
