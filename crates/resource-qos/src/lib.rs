//! # strata-resource-qos
//!
//! Resource manager: admission, QoS classes, priorities and preemption, quotas, limit ranges, breakers.
//!
//! **Status: not implemented yet** — this crate is a placeholder in the workspace layout and
//! exports nothing usable; the work is tracked in issue #6.
//!
//! ```
//! assert_eq!(strata_resource_qos::STATUS, "planned");
//! ```

/// Implementation status of this crate.
pub const STATUS: &str = "planned";
