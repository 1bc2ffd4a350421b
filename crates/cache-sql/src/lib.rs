//! # strata-cache-sql
//!
//! L3 tier and SQL source/writer through sea-orm (SQLite default, PostgreSQL, MySQL).
//!
//! **Status: not implemented yet** — this crate is a placeholder in the workspace layout and
//! exports nothing usable; the work is tracked in issue #4.
//!
//! ```
//! assert_eq!(strata_cache_sql::STATUS, "planned");
//! ```

/// Implementation status of this crate.
pub const STATUS: &str = "planned";
