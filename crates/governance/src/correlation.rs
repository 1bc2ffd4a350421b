//! Correlation ids: one [`CorrelationId`] per request, carried by one tokio task-local across
//! `.await`s, so that audit records and log lines of a request share it without threading it
//! through every call.
//!
//! [`current`] returns the id set with [`scope`] (or [`sync_scope`]) if any, else what the
//! installed trace-id source returns (the telemetry crate installs one that reads the current
//! OpenTelemetry trace id; see [`set_trace_id_source`]), else `None`.
//!
//! ```
//! use strata_governance::correlation::{self, CorrelationId};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let id = CorrelationId::new("req-42").unwrap();
//! let seen = correlation::scope(id.clone(), async { correlation::current() }).await;
//! assert_eq!(seen, Some(id));
//! assert_eq!(correlation::current(), None);
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};

/// The longest accepted correlation id, in bytes.
pub const MAX_CORRELATION_ID_LEN: usize = 128;

/// A correlation id was refused (empty, too long, or a character outside `[A-Za-z0-9_.:-]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid correlation id: {0}")]
pub struct InvalidCorrelationId(pub String);

/// A request's correlation id: 1–128 chars of `[A-Za-z0-9_.:-]` (so it is safe in a log line,
/// an audit record and an HTTP header).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CorrelationId(Arc<str>);

impl CorrelationId {
    /// Validates and wraps an id (e.g. from an `x-correlation-id` header).
    ///
    /// # Errors
    /// [`InvalidCorrelationId`] when the id is empty, too long or has other characters.
    pub fn new(id: &str) -> Result<Self, InvalidCorrelationId> {
        if id.is_empty() || id.len() > MAX_CORRELATION_ID_LEN {
            return Err(InvalidCorrelationId(format!(
                "correlation id must be 1..={MAX_CORRELATION_ID_LEN} bytes, got {}",
                id.len()
            )));
        }
        if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))) {
            return Err(InvalidCorrelationId(format!("correlation id may only contain [A-Za-z0-9_.:-], found {c:?}")));
        }
        Ok(Self(id.into()))
    }

    /// A fresh random id (32 hex chars).
    pub fn random() -> Self {
        let (a, b) = (fastrand::u64(..), fastrand::u64(..));
        Self(format!("{a:016x}{b:016x}").into())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CorrelationId({})", self.0)
    }
}

tokio::task_local! {
    static CORRELATION: CorrelationId;
}

static TRACE_ID_SOURCE: OnceLock<fn() -> Option<CorrelationId>> = OnceLock::new();

/// Runs `fut` with `id` as the correlation id of everything it does (on this task).
pub async fn scope<F: Future>(id: CorrelationId, fut: F) -> F::Output {
    CORRELATION.scope(id, fut).await
}

/// Runs `f` synchronously with `id` as the correlation id.
pub fn sync_scope<R>(id: CorrelationId, f: impl FnOnce() -> R) -> R {
    CORRELATION.sync_scope(id, f)
}

/// The id set by [`scope`] or [`sync_scope`] around the caller, ignoring the trace-id source.
pub fn task_local() -> Option<CorrelationId> {
    CORRELATION.try_with(Clone::clone).ok()
}

/// The current correlation id: the task-local one, else the installed trace-id source's answer
/// (the current trace id), else `None`.
pub fn current() -> Option<CorrelationId> {
    task_local().or_else(|| TRACE_ID_SOURCE.get().and_then(|source| source()))
}

/// Installs the fallback [`current`] consults outside a [`scope`] (the telemetry crate installs
/// one that returns the current span's trace id). The first installation wins; returns whether
/// this one was installed.
pub fn set_trace_id_source(source: fn() -> Option<CorrelationId>) -> bool {
    TRACE_ID_SOURCE.set(source).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(CorrelationId::new("req-1:abc_2.x").is_ok());
        for bad in ["", "a b", "x\ny", "é", &"a".repeat(129)] {
            assert!(matches!(CorrelationId::new(bad), Err(InvalidCorrelationId(_))), "{bad:?}");
        }
        let (a, b) = (CorrelationId::random(), CorrelationId::random());
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(CorrelationId::new(a.as_str()).is_ok());
    }

    #[test]
    fn sync_scope_sets_and_unsets() {
        let id = CorrelationId::new("abc").unwrap_or_else(|_| CorrelationId::random());
        assert_eq!(sync_scope(id.clone(), current), Some(id));
        assert_eq!(task_local(), None);
    }
}
