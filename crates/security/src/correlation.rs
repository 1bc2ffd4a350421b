//! Correlation ids: the one task-local defined in `strata-governance`, re-exported, so that
//! audit records of one request share an id without threading it through every call (and
//! telemetry's log lines show the same id).
//!
//! ```
//! use strata_security::correlation::{self, CorrelationId};
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! assert_eq!(correlation::current(), None);
//! let id = CorrelationId::new("req-42").unwrap();
//! let seen = correlation::scope(id, async { correlation::current() }).await;
//! assert_eq!(seen.as_ref().map(|c| c.as_str()), Some("req-42"));
//! # });
//! ```

pub use strata_governance::correlation::{
    CorrelationId, InvalidCorrelationId, MAX_CORRELATION_ID_LEN, current, scope, sync_scope, task_local,
};
