//! Byte-level tiers (L2, L3, plugins) and an in-memory tier for unit tests.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use crate::breaker::BreakerState;
use crate::clock::{Clock, SystemClock};
use crate::error::{TierError, TierErrorKind};
use crate::key::Key;
use crate::meta::EntryMeta;

/// What a tier stores for a key: the metadata (for the backend's own expiry, tags, version
/// columns) and the encoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// Metadata (also inside the frame; given separately so the backend need not parse frames).
    pub meta: EntryMeta,
    /// The encoded frame.
    pub frame: Bytes,
}

/// The health of a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierHealth {
    /// Serving normally.
    Healthy,
    /// Serving, with a problem worth reporting.
    Degraded(String),
    /// Not serving.
    Unhealthy(String),
}

/// Where the circuit breaker(s) guarding a tier stand, read at any time without a round trip.
///
/// A [`Tier`] knows nothing of breakers: the wrapper that owns one hands out a probe
/// ([`BreakerTier::probe`](crate::BreakerTier::probe); a Redis Cluster tier, which keeps a
/// breaker per master, reports the worst of them). Health reports pair the two:
/// [`Tier::health`] for the backend, the probe for the breaker in front of it (the
/// breaker's transitions also reach observers as
/// [`CacheEvent::BreakerTransition`](crate::CacheEvent::BreakerTransition)).
///
/// ```
/// use strata_cache_core::{BreakerConfig, BreakerProbe, BreakerState, BreakerTier, MemoryTier};
///
/// let tier = BreakerTier::new(MemoryTier::new("l2"), BreakerConfig::default())?;
/// let probe: BreakerProbe = tier.probe();
/// assert_eq!(probe.state(), BreakerState::Closed);
/// assert_eq!(BreakerProbe::new(|| BreakerState::Open).state(), BreakerState::Open);
/// # Ok::<(), strata_cache_core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct BreakerProbe(Arc<dyn Fn() -> BreakerState + Send + Sync>);

impl BreakerProbe {
    /// A probe that reads the state with `f` (keep it cheap: it runs at metrics scrape time).
    pub fn new(f: impl Fn() -> BreakerState + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        (self.0)()
    }
}

impl std::fmt::Debug for BreakerProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BreakerProbe").field(&self.state()).finish()
    }
}

/// A byte-level cache level: Redis, SQL, or a plugin's.
///
/// Implementations should expire entries at `meta.expires_at` themselves where the backend
/// allows it (Redis `PX`, a SQL `expires_at` column); the cache also checks metadata on read.
/// `expires_at == Timestamp::MAX` means the entry never expires (the cache itself never
/// produces it: [`EntryOptions`](crate::EntryOptions) durations are bounded by
/// [`MAX_DURATION`](crate::options::MAX_DURATION)); a finite expiry the backend cannot
/// represent must be refused with a [`TierError`], never stored without expiry or skipped.
/// Every failure is a [`TierError`]: the cache then skips the tier and keeps answering.
///
/// A tier knows nothing of circuit breakers: wrap it in a
/// [`BreakerTier`](crate::BreakerTier), whose [`probe`](crate::BreakerTier::probe) reports the
/// breaker's state beside the tier's [`health`](Tier::health) (see [`BreakerProbe`]).
///
/// # Implementing a tier
/// A `HashMap`-backed tier that honours expiry, does batches in one step, supports tag
/// invalidation and reports its health, used as the L2 of a cache:
///
/// ```
/// use strata_cache_core::plugin::*;
/// use std::collections::HashMap;
/// use std::sync::{Arc, Mutex, MutexGuard};
///
/// #[derive(Default)]
/// struct MapTier {
///     map: Mutex<HashMap<Key, StoredEntry>>,
/// }
///
/// impl MapTier {
///     fn map(&self) -> Result<MutexGuard<'_, HashMap<Key, StoredEntry>>, TierError> {
///         // Every failure is a TierError with a kind the cache (and a breaker) understands.
///         self.map.lock().map_err(|_| TierError::new("map", TierErrorKind::Other, "lock poisoned"))
///     }
/// }
///
/// /// A frame, unless its entry expired (the tier expires entries itself).
/// fn live(entry: Option<&StoredEntry>, now: Timestamp) -> Option<Bytes> {
///     entry.filter(|e| e.meta.expires_at > now).map(|e| e.frame.clone())
/// }
///
/// #[async_trait]
/// impl Tier for MapTier {
///     fn name(&self) -> &str {
///         "map"
///     }
///     async fn get(&self, key: &Key) -> Result<Option<Bytes>, TierError> {
///         Ok(live(self.map()?.get(key), SystemClock.now()))
///     }
///     async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>, TierError> {
///         // One "round trip" for the batch, answers in `keys` order.
///         let (map, now) = (self.map()?, SystemClock.now());
///         Ok(keys.iter().map(|k| live(map.get(k), now)).collect())
///     }
///     async fn set(&self, key: &Key, entry: &StoredEntry) -> Result<(), TierError> {
///         self.map()?.insert(key.clone(), entry.clone());
///         Ok(())
///     }
///     async fn set_many(&self, entries: &[(Key, StoredEntry)]) -> Result<(), TierError> {
///         self.map()?.extend(entries.iter().cloned());
///         Ok(())
///     }
///     async fn delete(&self, key: &Key) -> Result<(), TierError> {
///         self.map()?.remove(key);
///         Ok(())
///     }
///     async fn invalidate_tag(&self, cache: &str, namespace: &str, tag: &str) -> Result<u64, TierError> {
///         let mut map = self.map()?;
///         let before = map.len();
///         map.retain(|k, e| {
///             !(k.cache() == cache && k.namespace().as_str() == namespace && e.meta.tags.iter().any(|t| t == tag))
///         });
///         Ok((before - map.len()) as u64)
///     }
///     async fn health(&self) -> TierHealth {
///         match self.map.lock() {
///             Ok(_) => TierHealth::Healthy,
///             Err(_) => TierHealth::Unhealthy("lock poisoned".into()),
///         }
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let tier = Arc::new(MapTier::default());
/// let cache: Cache<u64, String> = Cache::builder("users")
///     .no_l1()
///     .tier(tier.clone())
///     .serializer(Postcard)
///     .options(EntryOptions::default().tag("people"))
///     .loader(FnLoader::new(|id: u64| async move { Ok(Some(format!("user-{id}"))) }))
///     .build()
///     .await?;
///
/// // A miss loads the value and writes it to the tier; the next read is a tier hit.
/// assert_eq!(cache.get_or_load(&1).await?.as_deref().map(String::as_str), Some("user-1"));
/// assert_eq!(tier.map.lock().unwrap().len(), 1);
/// assert_eq!(cache.get(&1).await?.as_deref().map(String::as_str), Some("user-1"));
/// // Batches go through get_many / set_many.
/// let both = cache.get_many(&[1, 2]).await?;
/// assert_eq!(both.iter().flatten().count(), 2);
/// assert_eq!(tier.map.lock().unwrap().len(), 2);
/// // Deletes and tag invalidation reach the tier.
/// cache.invalidate(&1).await?;
/// assert_eq!(tier.map.lock().unwrap().len(), 1);
/// cache.invalidate_tag("people").await?;
/// assert!(tier.map.lock().unwrap().is_empty());
/// assert_eq!(cache.health().await, vec![("map".to_string(), TierHealth::Healthy)]);
/// # Ok::<(), CacheError>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait Tier: Send + Sync + 'static {
    /// A short name for errors, metrics and health reports (`redis`, `sql`, ...).
    fn name(&self) -> &str;

    /// Reads one frame.
    async fn get(&self, key: &Key) -> Result<Option<Bytes>, TierError>;

    /// Reads many frames, in `keys` order. Backends should do this in one round trip.
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>, TierError> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.get(k).await?);
        }
        Ok(out)
    }

    /// Writes one entry.
    async fn set(&self, key: &Key, entry: &StoredEntry) -> Result<(), TierError>;

    /// Writes many entries. Backends should do this in one round trip.
    async fn set_many(&self, entries: &[(Key, StoredEntry)]) -> Result<(), TierError> {
        for (k, e) in entries {
            self.set(k, e).await?;
        }
        Ok(())
    }

    /// Deletes one entry (no error if absent).
    async fn delete(&self, key: &Key) -> Result<(), TierError>;

    /// Deletes every entry of `cache`/`namespace` that carries `tag` (see
    /// [`EntryMeta::tags`]); returns how many were removed when the backend knows.
    ///
    /// The default reports [`TierErrorKind::Unsupported`]: the cache then still hides such
    /// entries (it remembers when each tag was invalidated and treats older entries carrying it
    /// as misses), but the backend keeps the bytes until they expire.
    async fn invalidate_tag(&self, cache: &str, namespace: &str, tag: &str) -> Result<u64, TierError> {
        let _ = (cache, namespace, tag);
        Err(TierError::new(self.name().to_owned(), TierErrorKind::Unsupported, "tag invalidation is not supported"))
    }

    /// Deletes every entry of `cache`/`namespace`; returns how many were removed when the
    /// backend knows. Used by auto-recovery when more writes were missed during an outage than
    /// could be remembered one by one (see [`crate::recovery`]).
    ///
    /// The default reports [`TierErrorKind::Unsupported`]: the cache then stops trusting this
    /// tier's entries created before the recovery, in this process only.
    async fn invalidate_namespace(&self, cache: &str, namespace: &str) -> Result<u64, TierError> {
        let _ = (cache, namespace);
        Err(TierError::new(
            self.name().to_owned(),
            TierErrorKind::Unsupported,
            "namespace invalidation is not supported",
        ))
    }

    /// Reports health (a cheap round trip such as PING / `SELECT 1`).
    async fn health(&self) -> TierHealth;
}

/// An in-memory byte tier with fault injection, for unit tests and examples.
///
/// It is not a production tier (no bound, no eviction): integration tests use real Redis and
/// SQL tiers.
#[derive(Clone)]
pub struct MemoryTier {
    name: Arc<str>,
    map: Arc<Mutex<HashMap<Key, StoredEntry>>>,
    failing: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for MemoryTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTier").field("name", &self.name).field("len", &self.len()).finish()
    }
}

impl MemoryTier {
    /// A new empty tier named `name`, on the system clock.
    pub fn new(name: &str) -> Self {
        Self::with_clock(name, Arc::new(SystemClock))
    }

    /// A new empty tier that expires entries by `clock`.
    pub fn with_clock(name: &str, clock: Arc<dyn Clock>) -> Self {
        Self { name: Arc::from(name), map: Arc::default(), failing: Arc::default(), calls: Arc::default(), clock }
    }

    /// Makes every call fail with [`TierErrorKind::Unavailable`] (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// How many calls the tier received.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Overwrites the raw frame bytes of a key (to test corrupt data handling).
    pub fn put_raw(&self, key: &Key, entry: StoredEntry) {
        self.map.lock().insert(key.clone(), entry);
    }

    /// The raw stored entry of a key.
    pub fn raw(&self, key: &Key) -> Option<StoredEntry> {
        self.map.lock().get(key).cloned()
    }

    fn check(&self) -> Result<(), TierError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.failing.load(Ordering::SeqCst) {
            Err(TierError::new(self.name.clone(), TierErrorKind::Unavailable, "injected failure"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Tier for MemoryTier {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, key: &Key) -> Result<Option<Bytes>, TierError> {
        self.check()?;
        let now = self.clock.now();
        let mut map = self.map.lock();
        match map.get(key) {
            Some(e) if e.meta.expires_at <= now => {
                map.remove(key);
                Ok(None)
            }
            Some(e) => Ok(Some(e.frame.clone())),
            None => Ok(None),
        }
    }

    async fn set(&self, key: &Key, entry: &StoredEntry) -> Result<(), TierError> {
        self.check()?;
        self.map.lock().insert(key.clone(), entry.clone());
        Ok(())
    }

    async fn delete(&self, key: &Key) -> Result<(), TierError> {
        self.check()?;
        self.map.lock().remove(key);
        Ok(())
    }

    async fn invalidate_tag(&self, cache: &str, namespace: &str, tag: &str) -> Result<u64, TierError> {
        self.check()?;
        let mut map = self.map.lock();
        let before = map.len();
        map.retain(|k, e| {
            !(k.cache() == cache && k.namespace().as_str() == namespace && e.meta.tags.iter().any(|t| t == tag))
        });
        Ok((before - map.len()) as u64)
    }

    async fn invalidate_namespace(&self, cache: &str, namespace: &str) -> Result<u64, TierError> {
        self.check()?;
        let mut map = self.map.lock();
        let before = map.len();
        map.retain(|k, _| !(k.cache() == cache && k.namespace().as_str() == namespace));
        Ok((before - map.len()) as u64)
    }

    async fn health(&self) -> TierHealth {
        if self.failing.load(Ordering::SeqCst) {
            TierHealth::Unhealthy("injected failure".into())
        } else {
            TierHealth::Healthy
        }
    }
}
