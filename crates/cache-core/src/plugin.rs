//! The plugin author's front door: `use strata_cache_core::plugin::*;` brings everything needed
//! to write a [`Tier`], [`Codec`], [`Serializer`], [`Loader`], [`Writer`], [`InvalidationBus`],
//! [`LoadLock`] or [`CacheObserver`] and to try it in a [`Cache`]: the traits, the types their
//! methods take and return, the error types with their constructors, the
//! [`async_trait`](macro@async_trait) macro and [`Bytes`]/[`BytesMut`] (re-exported, so a
//! plugin crate needs neither `async-trait` nor `bytes` in its own manifest).
//!
//! Each trait's documentation opens with a complete implementation that compiles and runs as
//! a doctest using only this prelude (and `std`). Ids of codecs and serializers follow
//! [the id-range rule](crate::ids): third-party ids are 64–255.
//!
//! ```
//! use strata_cache_core::plugin::*;
//!
//! /// A loader that knows every square.
//! struct Squares;
//!
//! #[async_trait]
//! impl Loader<u64, u64> for Squares {
//!     async fn load(&self, key: &u64) -> Result<Option<u64>, BoxError> {
//!         Ok(Some(key * key))
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let cache: Cache<u64, u64> = Cache::builder("squares").loader(Squares).build().await?;
//! assert_eq!(cache.get_or_load(&12).await?.as_deref(), Some(&144));
//! # Ok::<(), CacheError>(())
//! # }).unwrap();
//! ```

// The macro and the byte buffers plugin signatures need.
pub use async_trait::async_trait;
pub use bytes::{Bytes, BytesMut};

// The seams.
pub use crate::bus::InvalidationBus;
pub use crate::codec::Codec;
pub use crate::key::CacheKey;
pub use crate::lock::LoadLock;
pub use crate::observer::CacheObserver;
pub use crate::serializer::Serializer;
pub use crate::source::{Loader, Writer};
pub use crate::tier::Tier;

// What the seams take and return.
pub use crate::breaker::{BreakerConfig, BreakerState, BreakerTier};
pub use crate::bus::{BusEvent, InstanceId, Invalidation, InvalidationTarget, Subscription, SubscriptionSender};
pub use crate::clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use crate::codec::{CodecContext, CodecPipeline, Encoded};
pub use crate::frame::CodecStep;
pub use crate::key::{Key, Namespace};
pub use crate::lock::{LockOptions, LockToken};
pub use crate::meta::EntryMeta;
pub use crate::observer::{CacheEvent, LoadOutcome, RejectReason, StaleReason};
pub use crate::options::EntryOptions;
pub use crate::tier::{BreakerProbe, StoredEntry, TierHealth};

// Errors (with their constructors: `TierError::new`, `ConfigError::new`, ...).
pub use crate::error::{
    BoxError, BusError, CacheError, CodecError, ConfigError, FrameError, SerializeError, SharedError, TierError,
    TierErrorKind,
};
pub use crate::ids::{IdError, IdKind};

// Enough of the engine to try a plugin: a cache, an in-memory tier and bus, the built-in
// serializers, a closure loader and a counting observer.
pub use crate::bus::LocalBus;
pub use crate::cache::{Cache, CacheBuilder};
pub use crate::observer::{CacheStats, NoopObserver};
pub use crate::serializer::{Json, Postcard};
pub use crate::source::FnLoader;
pub use crate::tier::MemoryTier;
