//! Observation: every event worth counting goes through [`CacheObserver`].
//!
//! Events carry the cache name and tier name (bounded cardinality) and never a key: observers
//! that need one get the key's fingerprint.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

use crate::breaker::BreakerState;
use crate::error::{CacheError, CodecError, TierError};

/// The name the L1 memory tier reports as.
pub const L1: &str = "l1";
/// The name the loader reports as.
pub const SOURCE: &str = "source";

/// Why a stale value was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    /// The loader failed.
    LoaderError,
    /// The loader passed its soft timeout.
    SoftTimeout,
    /// The loader passed its hard timeout.
    HardTimeout,
}

/// Why a frame that decoded fine was refused (treated as a miss, never served).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// Older than a write, invalidation or read this process has seen for the key (a rollback:
    /// an older genuine frame put back, or a tier restored from an old snapshot).
    OlderThanSeen,
    /// Strict mode: the last tier holds a newer version of the key.
    OlderThanLastTier,
    /// Strict mode: the last tier could not confirm the frame (no row, unreadable, or the tier
    /// failed).
    Unconfirmed,
}

impl RejectReason {
    /// `older_than_seen`, `older_than_last_tier` or `unconfirmed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OlderThanSeen => "older_than_seen",
            Self::OlderThanLastTier => "older_than_last_tier",
            Self::Unconfirmed => "unconfirmed",
        }
    }
}

/// How a load ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadOutcome {
    /// A value.
    Found,
    /// "Not found".
    NotFound,
    /// An error.
    Error,
    /// Hard timeout.
    Timeout,
}

/// Something that happened in a cache.
#[derive(Debug)]
#[non_exhaustive]
pub enum CacheEvent<'a> {
    /// A fresh value was found in `tier` (`"l1"` or a tier's name).
    Hit {
        /// The cache.
        cache: &'a str,
        /// Where.
        tier: &'a str,
    },
    /// Nothing usable in `tier`.
    Miss {
        /// The cache.
        cache: &'a str,
        /// Where.
        tier: &'a str,
    },
    /// A stale value was served (fail-safe).
    StaleServed {
        /// The cache.
        cache: &'a str,
        /// Why.
        reason: StaleReason,
    },
    /// The loader ran.
    Load {
        /// The cache.
        cache: &'a str,
        /// How long it took.
        duration: Duration,
        /// How it ended.
        outcome: LoadOutcome,
    },
    /// A waiter joined a load already in flight instead of starting one.
    Coalesced {
        /// The cache.
        cache: &'a str,
    },
    /// A background early refresh (XFetch) started.
    EarlyRefresh {
        /// The cache.
        cache: &'a str,
    },
    /// A tier call failed and the tier was skipped.
    TierError {
        /// The cache.
        cache: &'a str,
        /// The error (carries the tier name).
        error: &'a TierError,
    },
    /// A frame read from `tier` could not be decoded; treated as a miss.
    DecodeError {
        /// The cache.
        cache: &'a str,
        /// Where it came from.
        tier: &'a str,
        /// The error.
        error: &'a CacheError,
    },
    /// A codec refused bytes (tampering, wrong key): also reported as a decode error.
    CodecRejected {
        /// The cache.
        cache: &'a str,
        /// Where it came from.
        tier: &'a str,
        /// The error.
        error: &'a CodecError,
    },
    /// L1 evicted entries to stay within its bounds.
    Eviction {
        /// The cache.
        cache: &'a str,
    },
    /// An invalidation was received from another instance and applied.
    InvalidationReceived {
        /// The cache.
        cache: &'a str,
    },
    /// Publishing an invalidation failed: other instances may keep a stale L1 copy until it
    /// expires.
    BusError {
        /// The cache.
        cache: &'a str,
        /// The error.
        error: &'a crate::error::BusError,
    },
    /// The bus may have lost messages; L1 was cleared.
    Resync {
        /// The cache.
        cache: &'a str,
    },
    /// A tier's circuit breaker changed state (`cache` is empty when a tier wrapper shared by
    /// several caches reports it).
    BreakerTransition {
        /// The cache, or `""`.
        cache: &'a str,
        /// The tier.
        tier: &'a str,
        /// The previous state.
        from: BreakerState,
        /// The new state.
        to: BreakerState,
    },
    /// This process took the fleet-wide load lock for a key and runs the loader.
    LockAcquired {
        /// The cache.
        cache: &'a str,
    },
    /// Another process held the load lock; this one waited for its value.
    LockWaited {
        /// The cache.
        cache: &'a str,
        /// Whether the value appeared in a tier before the wait ended.
        found: bool,
    },
    /// Every entry carrying a tag was invalidated.
    TagInvalidated {
        /// The cache.
        cache: &'a str,
    },
    /// A frame from `tier` decoded fine but is older than data already seen for its key (see
    /// [`crate::freshness`]); treated as a miss.
    FrameRejected {
        /// The cache.
        cache: &'a str,
        /// Where it came from.
        tier: &'a str,
        /// Why.
        reason: RejectReason,
    },
    /// More writes or invalidations missed `tier` than the recovery bound: this process stops
    /// reading the tier until a namespace-wide replay succeeds (see [`crate::recovery`]).
    RecoveryOverflow {
        /// The cache.
        cache: &'a str,
        /// The tier.
        tier: &'a str,
    },
    /// Everything `tier` missed during an outage was applied to it: it is read again.
    TierRecovered {
        /// The cache.
        cache: &'a str,
        /// The tier.
        tier: &'a str,
        /// Keys, tags and overflows replayed in the last round.
        replayed: usize,
    },
}

/// Receives [`CacheEvent`]s. Implementations must be cheap and must not block: they run on
/// the request path (including inside L1's eviction hook).
///
/// [`CacheEvent`] is `#[non_exhaustive]`: match the events you count and ignore the rest.
///
/// # Implementing an observer
/// Counting hits per tier and loads by outcome:
///
/// ```
/// use strata_cache_core::plugin::*;
/// use std::collections::HashMap;
/// use std::sync::{Arc, Mutex};
///
/// #[derive(Default)]
/// struct Counts {
///     hits: Mutex<HashMap<String, u64>>,
///     loads: Mutex<Vec<LoadOutcome>>,
/// }
///
/// impl CacheObserver for Counts {
///     fn on_event(&self, event: &CacheEvent<'_>) {
///         match event {
///             CacheEvent::Hit { tier, .. } => {
///                 if let Ok(mut hits) = self.hits.lock() {
///                     *hits.entry((*tier).to_owned()).or_default() += 1;
///                 }
///             }
///             CacheEvent::Load { outcome, .. } => {
///                 if let Ok(mut loads) = self.loads.lock() {
///                     loads.push(*outcome);
///                 }
///             }
///             _ => {}
///         }
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let counts = Arc::new(Counts::default());
/// let cache: Cache<u64, String> = Cache::builder("users")
///     .observer(counts.clone())
///     .loader(FnLoader::new(|id: u64| async move { Ok((id < 10).then(|| format!("user-{id}"))) }))
///     .build()
///     .await?;
/// cache.get_or_load(&1).await?;
/// cache.get_or_load(&1).await?;
/// cache.get_or_load(&42).await?;
/// assert_eq!(counts.hits.lock().unwrap().get("l1"), Some(&1));
/// assert_eq!(*counts.loads.lock().unwrap(), vec![LoadOutcome::Found, LoadOutcome::NotFound]);
/// # Ok::<(), CacheError>(())
/// # }).unwrap();
/// ```
pub trait CacheObserver: Send + Sync + 'static {
    /// Called for every event. The default ignores it.
    fn on_event(&self, event: &CacheEvent<'_>) {
        let _ = event;
    }
}

/// An observer that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl CacheObserver for NoopObserver {}

/// Counters per event kind and tier: the built-in observer behind the demo's table and the
/// tests' assertions.
#[derive(Debug, Default)]
pub struct CacheStats {
    hits: PerTier,
    misses: PerTier,
    loads: AtomicU64,
    stale: AtomicU64,
    evictions: AtomicU64,
    tier_errors: AtomicU64,
    decode_errors: AtomicU64,
    coalesced: AtomicU64,
    resyncs: AtomicU64,
    invalidations_received: AtomicU64,
    lock_acquired: AtomicU64,
    lock_waited_found: AtomicU64,
    lock_waited_timeout: AtomicU64,
    frames_rejected: AtomicU64,
    recoveries: AtomicU64,
}

impl CacheStats {
    /// A new set of zeroed counters.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Hits recorded for `tier`.
    pub fn hits(&self, tier: &str) -> u64 {
        self.hits.get(tier)
    }

    /// Misses recorded for `tier`.
    pub fn misses(&self, tier: &str) -> u64 {
        self.misses.get(tier)
    }

    /// Loader calls.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Stale values served.
    pub fn stale_served(&self) -> u64 {
        self.stale.load(Ordering::Relaxed)
    }

    /// L1 evictions.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Tier errors (tiers skipped).
    pub fn tier_errors(&self) -> u64 {
        self.tier_errors.load(Ordering::Relaxed)
    }

    /// Frames that failed to decode.
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors.load(Ordering::Relaxed)
    }

    /// Waiters that joined an in-flight load.
    pub fn coalesced(&self) -> u64 {
        self.coalesced.load(Ordering::Relaxed)
    }

    /// Bus resyncs (L1 cleared because messages may have been lost).
    pub fn resyncs(&self) -> u64 {
        self.resyncs.load(Ordering::Relaxed)
    }

    /// Invalidations received from other instances.
    pub fn invalidations_received(&self) -> u64 {
        self.invalidations_received.load(Ordering::Relaxed)
    }

    /// Loads run while holding the fleet-wide load lock.
    pub fn lock_acquired(&self) -> u64 {
        self.lock_acquired.load(Ordering::Relaxed)
    }

    /// Waits on another process's load lock: `(value appeared, timed out)`.
    pub fn lock_waited(&self) -> (u64, u64) {
        (self.lock_waited_found.load(Ordering::Relaxed), self.lock_waited_timeout.load(Ordering::Relaxed))
    }

    /// Genuine frames refused as older than data already seen (rollbacks).
    pub fn frames_rejected(&self) -> u64 {
        self.frames_rejected.load(Ordering::Relaxed)
    }

    /// Tiers whose missed writes were replayed after an outage.
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Relaxed)
    }
}

impl CacheObserver for CacheStats {
    fn on_event(&self, event: &CacheEvent<'_>) {
        match event {
            CacheEvent::Hit { tier, .. } => self.hits.bump(tier),
            CacheEvent::Miss { tier, .. } => self.misses.bump(tier),
            CacheEvent::StaleServed { .. } => {
                self.stale.fetch_add(1, Ordering::Relaxed);
            }
            CacheEvent::Load { .. } => {
                self.loads.fetch_add(1, Ordering::Relaxed);
            }
            CacheEvent::Coalesced { .. } => {
                self.coalesced.fetch_add(1, Ordering::Relaxed);
            }
            CacheEvent::TierError { .. } => {
                self.tier_errors.fetch_add(1, Ordering::Relaxed);
            }
            CacheEvent::DecodeError { .. } => {
                self.decode_errors.fetch_add(1, Ordering::Relaxed);
            }
            CacheEvent::Eviction { .. } => {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
            CacheEvent::Resync { .. } => {
                self.resyncs.fetch_add(1, Ordering::Relaxed);
            }
            CacheEvent::InvalidationReceived { .. } => {
                self.invalidations_received.fetch_add(1, Ordering::Relaxed);
            }
            CacheEvent::LockAcquired { .. } => {
                self.lock_acquired.fetch_add(1, Ordering::Relaxed);
            }
            CacheEvent::LockWaited { found: true, .. } => {
                self.lock_waited_found.fetch_add(1, Ordering::Relaxed);
            }
            CacheEvent::LockWaited { found: false, .. } => {
                self.lock_waited_timeout.fetch_add(1, Ordering::Relaxed);
            }
            CacheEvent::FrameRejected { .. } => {
                self.frames_rejected.fetch_add(1, Ordering::Relaxed);
            }
            CacheEvent::TierRecovered { .. } => {
                self.recoveries.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// One counter per tier name. Counting takes a shared read lock and allocates nothing once a
/// tier has been seen (this runs on every L1 hit).
#[derive(Debug, Default)]
struct PerTier(RwLock<HashMap<String, AtomicU64>>);

impl PerTier {
    fn bump(&self, tier: &str) {
        if let Some(c) = self.0.read().get(tier) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.0.write().entry(tier.to_owned()).or_default().fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, tier: &str) -> u64 {
        self.0.read().get(tier).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// Fans one event out to several observers.
#[derive(Clone, Default)]
pub(crate) struct Observers(pub(crate) Arc<[Arc<dyn CacheObserver>]>);

impl Observers {
    #[inline]
    pub(crate) fn emit(&self, event: &CacheEvent<'_>) {
        for o in self.0.iter() {
            o.on_event(event);
        }
    }
}
