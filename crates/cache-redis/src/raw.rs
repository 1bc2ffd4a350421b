//! The escape hatch: the Redis client this crate is built on, for what the tier does not do.
//!
//! Everything here names deadpool-redis / redis types, so code that uses it is tied to the
//! versions this crate builds with (see the crate's `Cargo.toml`); the rest of the crate's
//! public API names none (`cargo xtask public-api` keeps it so).
//!
//! - [`deadpool_redis`] (with its `redis` re-export): run raw commands without adding the
//!   dependency yourself.
//! - [`standalone_pool`]: the pool behind a standalone [`RedisTier`].

use crate::RedisTier;

/// The deadpool-redis crate this one is built on (its `redis` re-export included).
pub use deadpool_redis;

/// The standalone pool behind `tier` (for raw commands beside the tier, e.g. benchmarks);
/// `None` on a cluster.
pub fn standalone_pool(tier: &RedisTier) -> Option<&deadpool_redis::Pool> {
    tier.standalone_pool()
}
