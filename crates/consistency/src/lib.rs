//! # strata-consistency
//!
//! How writes reach the source of truth and how caches stay consistent with it: write
//! policies chosen per cache, a crash-safe write-behind journal, warming from an L1 snapshot,
//! and invalidations from outside. Generic over [`strata_cache_core`]'s seams: it depends on no
//! Redis or SQL crate.
//!
//! ## Tour
//! - Write policies ([`WritePolicy`] picks one per cache), each wrapping a
//!   [`Cache`](strata_cache_core::Cache) and a [`Writer`](strata_cache_core::Writer):
//!   - [`CacheAside`]: the source is written, then the key invalidated
//!     ([`invalidate_after_write`] when the application writes the source itself);
//!   - [`WriteThrough`]: source first, then every cache level; a failed source write leaves the
//!     cache unchanged and returns [`ConsistencyError::Source`];
//!   - [`WriteBehind`]: cache now, source later. Acknowledged writes are in a local
//!     [journal] (length-prefixed, CRC-checked records; group commit; segment files) before
//!     `set` returns; a background flusher coalesces per key, writes batches, retries with
//!     backoff and checkpoints; a restart replays what the source had not confirmed. Bounded:
//!     a full backlog gives [`ConsistencyError::Overloaded`] after a deadline. Given the
//!     cache's codecs ([`WriteBehindConfigBuilder::codecs`]), journal records and dead-letter lines are
//!     sealed (encrypted), and an encrypting cache is refused a plaintext journal. Its
//!     backlog and flushes go to a [`WriteBehindObserver`] as [`WriteBehindEvent`]s.
//! - Warming: [`save_hot_keys`] / [`warm_from_snapshot`] ([`warm`]).
//! - Outside invalidations: [`ExternalInvalidator`] applies JSON messages from an
//!   [`ExternalSource`] to the caches of an [`InvalidationRegistry`] ([`external`]).
//!
//! ## Example: write-behind
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use strata_cache_core::{BoxError, Cache, MemoryTier, Postcard, Writer};
//! use strata_consistency::{SyncPolicy, WriteBehind, WriteBehindConfig};
//!
//! /// A source that counts the rows it receives.
//! #[derive(Default)]
//! struct Rows(AtomicUsize);
//!
//! #[async_trait::async_trait]
//! impl Writer<u64, String> for Rows {
//!     async fn write(&self, _k: &u64, _v: &String) -> Result<(), BoxError> {
//!         self.0.fetch_add(1, Ordering::SeqCst);
//!         Ok(())
//!     }
//!     async fn delete(&self, _k: &u64) -> Result<(), BoxError> {
//!         Ok(())
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let dir = std::env::temp_dir().join(format!("strata-doc-{}", std::process::id()));
//! let cache: Cache<u64, String> =
//!     Cache::builder("users").tier(Arc::new(MemoryTier::new("l2"))).serializer(Postcard).build().await?;
//! let rows = Arc::new(Rows::default());
//! let config = WriteBehindConfig::builder(&dir).sync(SyncPolicy::Always).build()?;
//! let (wb, replay) = WriteBehind::open(cache.clone(), rows.clone(), config).await?;
//! assert_eq!(replay.requeued, 0);
//!
//! for i in 0..10 {
//!     wb.set(7, format!("v{i}")).await?; // durable in the journal when it returns
//! }
//! assert_eq!(cache.get(&7).await?.as_deref().map(String::as_str), Some("v9"));
//! wb.shutdown().await?; // everything acknowledged is now in the source
//! assert!(rows.0.load(Ordering::SeqCst) >= 1); // coalesced: usually one write of "v9"
//! assert_eq!(wb.flushed(), 10);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod error;
pub mod external;
pub mod journal;
mod policy;
mod stripes;
pub mod warm;
pub mod write_behind;

pub use error::ConsistencyError;
pub use external::{
    Applied, ChannelSender, ChannelSource, ExternalCounts, ExternalInvalidator, ExternalInvalidatorHandle,
    ExternalSource, Invalidate, InvalidationRegistry, MessageError,
};
pub use journal::{ReplayReport, SyncPolicy, TornTail};
pub use policy::{CacheAside, WritePolicy, WriteThrough, invalidate_after_write};
pub use warm::{SnapshotWarm, save_hot_keys, warm_from_snapshot};
pub use write_behind::{
    DeadLetter, WriteBehind, WriteBehindConfig, WriteBehindConfigBuilder, WriteBehindEvent, WriteBehindObserver,
};
