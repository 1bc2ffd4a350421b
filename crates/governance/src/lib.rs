//! # strata-governance
//!
//! The ground floor every Strata crate may stand on: the one definition of the concepts that
//! security, the resource manager, the cache core and telemetry share. It depends on no other
//! Strata crate and on nothing heavy (serde, hashing, a tokio task-local).
//!
//! ## Tour
//! - [`access`]: [`AccessPolicy`] (`Result` + [`Principal`] contract), [`Action`],
//!   [`AccessDenied`]. The security crate's `RoleBasedPolicy` and the resource manager's
//!   `AllowAll`/`StaticRbac` implement it.
//! - [`audit`]: [`AuditSink`] (fallible), [`AuditRecord`] (cache and resource events alike),
//!   [`MemoryAuditSink`], [`NoopAuditSink`], and [`JsonLinesAuditSink`], a hash-chained file
//!   that [`audit::verify`] (and the `strata-audit verify` command) checks.
//! - [`breaker`]: [`BreakerConfig`] (validated, `Duration`-based, reads older config keys) and
//!   [`BreakerState`].
//! - [`correlation`]: [`CorrelationId`] and the one task-local that carries it; audit records
//!   pick it up, and telemetry's log formatter prints it.
//! - [`hex`]: lower-case hex `encode`/`decode`/`is_lower_hex`, the workspace's one copy
//!   (`strata_cache_core::text::hex` re-exports it).
//!
//! ```
//! use strata_governance::audit::{self, AuditRecord, AuditSink, JsonLinesAuditSink, Outcome};
//! use strata_governance::correlation::{self, CorrelationId};
//! use strata_governance::{AccessDenied, AccessPolicy, Action, Principal, RESOURCES};
//!
//! struct OnlyMl;
//! impl AccessPolicy for OnlyMl {
//!     fn check(&self, p: &Principal, a: Action, target: &str, ns: &str) -> Result<(), AccessDenied> {
//!         if ns == "ml" { Ok(()) } else { Err(AccessDenied::new(p, a, target, ns)) }
//!     }
//! }
//!
//! let dir = tempfile::tempdir()?;
//! let log = dir.path().join("audit.jsonl");
//! let sink = JsonLinesAuditSink::open(&log)?;
//! let alice = Principal::id_only("alice");
//! let id = CorrelationId::new("req-1").unwrap();
//! correlation::sync_scope(id, || -> Result<(), audit::AuditError> {
//!     for ns in ["ml", "prod"] {
//!         let outcome = match OnlyMl.check(&alice, Action::Allocate, RESOURCES, ns) {
//!             Ok(()) => Outcome::Allowed,
//!             Err(_) => Outcome::Denied,
//!         };
//!         sink.record(&AuditRecord::now(alice.id(), Action::Allocate, RESOURCES, ns, None, outcome))?;
//!     }
//!     Ok(())
//! })?;
//! let report = audit::verify(&log)?;
//! assert_eq!(report.lines, 2);
//! let first = audit::parse_line(std::fs::read_to_string(&log)?.lines().next().unwrap())?;
//! assert_eq!(first.record.correlation_id.as_deref(), Some("req-1"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod access;
pub mod audit;
pub mod breaker;
pub mod correlation;
pub mod hex;

pub use access::{AccessDenied, AccessPolicy, Action, Principal, RESOURCES};
pub use audit::{
    AuditError, AuditRecord, AuditSink, ChainedRecord, JsonLinesAuditSink, MemoryAuditSink, NoopAuditSink, Outcome,
    VerifyReport,
};
pub use breaker::{BreakerConfig, BreakerConfigError, BreakerState, MAX_SLIDING_WINDOW};
pub use correlation::{CorrelationId, InvalidCorrelationId};
