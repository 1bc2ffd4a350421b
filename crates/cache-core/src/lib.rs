//! # strata-cache-core
//!
//! The small, stable core of Strata's multi-level cache: the traits every tier and plugin
//! implements, the typed L1, the frame format for remote tiers, singleflight, expiry math and
//! the [`Cache`] engine that composes them. No Redis, no SQL, no OpenTelemetry here: those live
//! in leaf crates that implement these traits.
//!
//! ## Tour
//! - Seams: [`Tier`] (byte-level L2/L3; [`BreakerTier`] puts a circuit breaker in front),
//!   [`LoadLock`] (fleet-wide stampede lock), [`Codec`] + [`CodecPipeline`], [`Serializer`]
//!   ([`Postcard`], [`Json`]), [`Loader`] / [`Writer`], [`InvalidationBus`] ([`LocalBus`]),
//!   [`CacheObserver`] ([`CacheStats`], [`NoopObserver`]), [`Clock`] ([`ManualClock`] for tests).
//! - Data: [`Key`] (cache, [`Namespace`], id), [`EntryMeta`], [`EntryOptions`], [`frame`].
//! - Machinery: [`L1Cache`] (quick_cache underneath), [`SingleFlight`], [`expiry`] (jitter and
//!   XFetch).
//!
//! ## One read, end to end
//! [`Cache::get_or_load`]: L1 fresh hit → return (and maybe refresh early in the background,
//! at most once per key); otherwise singleflight per key → each tier top to bottom (a hit is
//! decoded and copied into the levels above) → the loader, with soft/hard timeouts and
//! fail-safe (serve a stale value within its stale limit when the loader fails or is slow) →
//! the value is written to every level. A tier that fails is skipped and counted; what it
//! missed is remembered and replayed before it is read again ([`recovery`]), and a frame older
//! than one already seen for its key is refused ([`freshness`]).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use strata_cache_core::{Cache, CacheStats, EntryOptions, FnLoader, MemoryTier, Postcard};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let stats = CacheStats::new();
//! let cache: Cache<u64, String> = Cache::builder("users")
//!     .tier(Arc::new(MemoryTier::new("l2")))
//!     .serializer(Postcard)
//!     .options(EntryOptions::new(Duration::from_secs(60)).stale_limit(Duration::from_secs(600)))
//!     .loader(FnLoader::new(|id: u64| async move { Ok(Some(format!("user-{id}"))) }))
//!     .observer(stats.clone())
//!     .build()
//!     .await?;
//!
//! assert_eq!(cache.get_or_load(&7).await?.as_deref(), Some(&"user-7".to_string()));
//! assert_eq!(cache.get_or_load(&7).await?.as_deref(), Some(&"user-7".to_string()));
//! assert_eq!(stats.loads(), 1);
//! assert_eq!(stats.hits("l1"), 1);
//! # Ok::<(), strata_cache_core::CacheError>(())
//! # }).unwrap();
//! ```

pub mod breaker;
pub mod bus;
mod cache;
pub mod clock;
pub mod codec;
pub mod error;
pub mod expiry;
pub mod frame;
pub mod freshness;
pub mod key;
pub mod l1;
pub mod lock;
pub mod meta;
pub mod observer;
pub mod options;
pub mod recovery;
pub mod redact;
pub mod serializer;
pub mod singleflight;
pub mod source;
pub mod tier;

pub use breaker::{BreakerConfig, BreakerState, BreakerTier, CircuitBreaker};
pub use bus::{BusEvent, InstanceId, Invalidation, InvalidationBus, InvalidationTarget, LocalBus, Subscription};
pub use cache::{
    Cache, CacheBuilder, CacheDefaults, DEFAULT_MAX_VALUE_BYTES, KeyIdHasher, LoadResult, WarmReport, Weigher,
};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use codec::{Codec, CodecContext, CodecPipeline, Encoded};
pub use error::{
    BoxError, BusError, CacheError, CodecError, ConfigError, FrameError, SerializeError, SharedError, TierError,
    TierErrorKind,
};
pub use key::{CacheKey, Key, Namespace};
pub use l1::{L1Cache, L1Config, L1Entry};
pub use lock::{LoadLock, LockOptions, LockToken};
pub use meta::EntryMeta;
pub use observer::{CacheEvent, CacheObserver, CacheStats, LoadOutcome, NoopObserver, RejectReason, StaleReason};
pub use options::EntryOptions;
pub use recovery::TierBacklog;
pub use serializer::{Json, Postcard, Serializer};
pub use singleflight::SingleFlight;
pub use source::{FnLoader, Loader, Writer};
pub use tier::{MemoryTier, StoredEntry, Tier, TierHealth};
