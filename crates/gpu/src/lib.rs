//! # strata-gpu
//!
//! GPU inventory: NVML (nvml-wrapper) and static/simulated inventories.
//!
//! **Status: not implemented yet** — this crate is a placeholder in the workspace layout and
//! exports nothing usable; the work is tracked in issue #6.
//!
//! ```
//! assert_eq!(strata_gpu::STATUS, "planned");
//! ```

/// Implementation status of this crate.
pub const STATUS: &str = "planned";
