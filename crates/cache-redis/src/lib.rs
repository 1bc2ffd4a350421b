//! # strata-cache-redis
//!
//! L2 tier on Redis and Redis Cluster (deadpool-redis), Redis invalidation backplane, distributed stampede lock.
//!
//! **Status: not implemented yet** — this crate is a placeholder in the workspace layout and
//! exports nothing usable; the work is tracked in issue #3.
//!
//! ```
//! assert_eq!(strata_cache_redis::STATUS, "planned");
//! ```

/// Implementation status of this crate.
pub const STATUS: &str = "planned";
