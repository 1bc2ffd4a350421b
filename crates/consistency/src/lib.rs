//! # strata-consistency
//!
//! Write policies (cache-aside, write-through, journaled write-behind), tag invalidation, warming.
//!
//! **Status: not implemented yet** — this crate is a placeholder in the workspace layout and
//! exports nothing usable; the work is tracked in issue #4.
//!
//! ```
//! assert_eq!(strata_consistency::STATUS, "planned");
//! ```

/// Implementation status of this crate.
pub const STATUS: &str = "planned";
