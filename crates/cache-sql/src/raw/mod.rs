//! The escape hatch: sea-orm, for what the tier does not do.
//!
//! Everything here names sea-orm types, so code that uses it is tied to the sea-orm version
//! this crate builds with (see the crate's `Cargo.toml`); the rest of the crate's public API
//! names none (`cargo xtask public-api` keeps it so), except the constructors that take a
//! connection you hand us on purpose ([`SqlTier::with_connection`],
//! [`PgNotifySource::listen`](crate::PgNotifySource::listen)).
//!
//! - `entity.rs`: [`EntitySource`], a sea-orm entity as the cache's
//!   [`Loader`](strata_cache_core::Loader) and [`Writer`](strata_cache_core::Writer), and
//!   [`PrimaryKeyOf`].
//! - [`sea_orm`]: the crate itself, so that applications and benches use the same version.
//! - [`connection`]: the connection behind a [`SqlTier`] (raw queries on the same pool).

mod entity;

pub use entity::{EntitySource, PrimaryKeyOf};
/// sea-orm, re-exported so that applications and benches use the same version (raw queries
/// on [`connection`], entities for [`EntitySource`]).
pub use sea_orm;

use crate::SqlTier;

/// The connection behind `tier` (for raw queries on the same pool: benches, diagnostics).
pub fn connection(tier: &SqlTier) -> &sea_orm::DatabaseConnection {
    tier.connection()
}
