//! The plugin author's front door at the facade: `use strata::plugin::*;` brings
//! [`strata_cache_core::plugin`] (tiers, codecs, serializers, loaders, writers, buses,
//! observers: the traits, their types and errors, `async_trait`, `Bytes`) and, with the `gpu`
//! feature, `strata_gpu::plugin` (`GpuInventory` and its model types).
//!
//! ```
//! use strata::plugin::*;
//!
//! struct Doubler;
//!
//! #[async_trait]
//! impl Loader<u64, u64> for Doubler {
//!     async fn load(&self, key: &u64) -> Result<Option<u64>, BoxError> {
//!         Ok(Some(key * 2))
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let strata = strata::Strata::builder().build();
//! let cache = strata.cache::<u64, u64>("doubles").loader(Doubler).build().await?;
//! assert_eq!(cache.get_or_load(&21).await?.as_deref(), Some(&42));
//! # Ok::<(), CacheError>(())
//! # }).unwrap();
//! ```

pub use strata_cache_core::plugin::*;
#[cfg(feature = "gpu")]
pub use strata_gpu::plugin::*;
