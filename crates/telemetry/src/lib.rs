//! # strata-telemetry
//!
//! Prometheus and OpenTelemetry observers, correlation ids, admin HTTP and dashboard.
//!
//! **Status: not implemented yet** — this crate is a placeholder in the workspace layout and
//! exports nothing usable; the work is tracked in issue #7.
//!
//! ```
//! assert_eq!(strata_telemetry::STATUS, "planned");
//! ```

/// Implementation status of this crate.
pub const STATUS: &str = "planned";
