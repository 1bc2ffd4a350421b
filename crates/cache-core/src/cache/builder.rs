//! [`CacheDefaults`] (everything a cache is built from that does not depend on its key and
//! value types) and [`CacheBuilder`], which holds one and validates it in `build`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use parking_lot::Mutex;

use super::epochs::Epochs;
use super::tags::TagRegistry;
use super::{Cache, DEFAULT_MAX_VALUE_BYTES, Inner, KeyIdHasher, Weigher, bus, replay};
use crate::bus::{InstanceId, InvalidationBus};
use crate::clock::{Clock, SystemClock};
use crate::codec::{Codec, CodecPipeline};
use crate::error::{CacheError, ConfigError};
use crate::freshness::{DEFAULT_FLOOR_CAPACITY, FreshnessFloor};
use crate::key::{CacheKey, Namespace, validate_name};
use crate::l1::{L1Cache, L1Config};
use crate::lock::{LoadLock, LockOptions};
use crate::observer::{CacheObserver, Observers};
use crate::options::EntryOptions;
use crate::recovery::{DEFAULT_MAX_PENDING, DEFAULT_RETRY, TierRecovery};
use crate::serializer::Serializer;
use crate::singleflight::SingleFlight;
use crate::source::Loader;
use crate::tier::Tier;

/// Everything a [`CacheBuilder`] carries that does not depend on the cache's key and value
/// types: entry options, L1 bounds, tiers, codecs, observers, clock, bus, load lock and limits.
///
/// A runtime that builds many caches from the same parts (the `strata` facade) keeps one of
/// these and hands it to [`CacheBuilder::defaults`] in one call; each builder setter of the same
/// name sets one field. Defaults: an L1 of 10,000 entries, no tier, a 5-minute TTL, no early
/// refresh, no fail-safe, the system clock.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use strata_cache_core::{Cache, CacheDefaults, EntryOptions, MemoryTier, Postcard};
///
/// let mut shared = CacheDefaults::default();
/// shared.tiers.push(Arc::new(MemoryTier::new("l2")));
/// shared.options = EntryOptions::new(Duration::from_secs(60));
/// let builder = Cache::<u64, String>::builder("users").defaults(shared).serializer(Postcard);
/// # let _ = builder;
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct CacheDefaults {
    /// The default entry options ([`CacheBuilder::options`]).
    pub options: EntryOptions,
    /// The L1 bounds; `None` runs without L1 ([`CacheBuilder::l1`], [`CacheBuilder::no_l1`]).
    pub l1: Option<L1Config>,
    /// Byte-level tiers below L1, top to bottom ([`CacheBuilder::tier`]).
    pub tiers: Vec<Arc<dyn Tier>>,
    /// Codecs applied after serialization, in order ([`CacheBuilder::codec`]).
    pub codecs: Vec<Arc<dyn Codec>>,
    /// Observers of cache events ([`CacheBuilder::observer`]).
    pub observers: Vec<Arc<dyn CacheObserver>>,
    /// The clock ([`CacheBuilder::clock`]).
    pub clock: Arc<dyn Clock>,
    /// The invalidation bus ([`CacheBuilder::bus`]).
    pub bus: Option<Arc<dyn InvalidationBus>>,
    /// Fleet-wide stampede protection ([`CacheBuilder::load_lock`]).
    pub lock: Option<(Arc<dyn LoadLock>, LockOptions)>,
    /// Maps key ids before remote tiers see them ([`CacheBuilder::key_id_hasher`]).
    pub key_hasher: Option<KeyIdHasher>,
    /// The largest accepted serialized value ([`CacheBuilder::max_value_bytes`]).
    pub max_value_bytes: usize,
    /// Missed writes remembered per tier ([`CacheBuilder::max_pending_invalidations`]).
    pub max_pending_invalidations: usize,
    /// How often a failing tier's backlog is retried ([`CacheBuilder::recovery_retry`]).
    pub recovery_retry: Duration,
    /// Keys whose freshness floor is remembered ([`CacheBuilder::freshness_floor`]).
    pub freshness_floor: usize,
    /// Confirm upper-tier hits with the last tier ([`CacheBuilder::strict_versions`]).
    pub strict_versions: bool,
}

impl Default for CacheDefaults {
    fn default() -> Self {
        Self {
            options: EntryOptions::default(),
            l1: Some(L1Config::default()),
            tiers: Vec::new(),
            codecs: Vec::new(),
            observers: Vec::new(),
            clock: Arc::new(SystemClock),
            bus: None,
            lock: None,
            key_hasher: None,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_pending_invalidations: DEFAULT_MAX_PENDING,
            recovery_retry: DEFAULT_RETRY,
            freshness_floor: DEFAULT_FLOOR_CAPACITY,
            strict_versions: false,
        }
    }
}

impl std::fmt::Debug for CacheDefaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheDefaults")
            .field("options", &self.options)
            .field("l1", &self.l1)
            .field("tiers", &self.tiers.iter().map(|t| t.name().to_owned()).collect::<Vec<_>>())
            .field("codecs", &self.codecs.iter().map(|c| c.name()).collect::<Vec<_>>())
            .field("observers", &self.observers.len())
            .field("bus", &self.bus.as_ref().map(|b| b.name().to_owned()))
            .field("lock", &self.lock.as_ref().map(|(_, o)| o))
            .field("key_hasher", &self.key_hasher.is_some())
            .field("max_value_bytes", &self.max_value_bytes)
            .field("max_pending_invalidations", &self.max_pending_invalidations)
            .field("recovery_retry", &self.recovery_retry)
            .field("freshness_floor", &self.freshness_floor)
            .field("strict_versions", &self.strict_versions)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Cache`]. Defaults: an L1 of 10,000 entries, no remote tier, a 5-minute TTL, no
/// early refresh, no fail-safe, the system clock (see [`CacheDefaults`]).
///
/// One rule for how parts are passed: a part that several caches (or the caller) share — tier,
/// codec, observer, clock, bus, load lock — is an `Arc<dyn …>`; a part the cache owns — its
/// serializer and loader, the weigher — is taken by value, and an `Arc` of one is a value too
/// (`Arc<S>` implements [`Serializer`], `Arc<L>` implements [`Loader`]).
#[must_use]
pub struct CacheBuilder<K, V> {
    name: String,
    namespace: Option<String>,
    d: CacheDefaults,
    weigher: Option<Weigher<K, V>>,
    serializer: Option<Arc<dyn Serializer<V>>>,
    loader: Option<Arc<dyn Loader<K, V>>>,
}

impl<K, V> CacheBuilder<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    pub(super) fn new(name: String) -> Self {
        Self { name, namespace: None, d: CacheDefaults::default(), weigher: None, serializer: None, loader: None }
    }

    /// Replaces everything [`CacheDefaults`] holds (options, L1, tiers, codecs, observers, clock,
    /// bus, lock, limits) with `defaults`; the name, namespace, weigher, serializer and loader
    /// are kept. Setters called afterwards change single fields of it.
    pub fn defaults(mut self, defaults: CacheDefaults) -> Self {
        self.d = defaults;
        self
    }

    /// How many missed writes and invalidations are remembered per tier during an outage
    /// (default 10,000); beyond it the tier is not read by this process until a namespace-wide
    /// invalidation of it succeeds (see [`crate::recovery`]). Zero: the first miss overflows.
    pub fn max_pending_invalidations(mut self, n: usize) -> Self {
        self.d.max_pending_invalidations = n;
        self
    }

    /// How often the recovery task retries applying what a failing tier missed (default
    /// 250 ms; behind a breaker, a retry while it is open costs nothing).
    pub fn recovery_retry(mut self, interval: Duration) -> Self {
        self.d.recovery_retry = interval;
        self
    }

    /// How many keys' freshness floors are remembered (default 100,000; 0 turns rollback
    /// detection off). See [`crate::freshness`].
    pub fn freshness_floor(mut self, keys: usize) -> Self {
        self.d.freshness_floor = keys;
        self
    }

    /// Strict versions (off by default): a hit in a tier above the last one (e.g. Redis above
    /// SQL) is served only when the last tier holds the same or an older version of the key;
    /// otherwise it is refused ([`CacheEvent::FrameRejected`](crate::CacheEvent::FrameRejected))
    /// and the read goes on down. This catches rollbacks a cold process cannot see by itself, at
    /// the cost of one read of the last tier per upper-tier hit. It fails closed: when the last
    /// tier has no row for the key or cannot be read, the upper tier's frame is not served
    /// either. No effect with fewer than two tiers.
    pub fn strict_versions(mut self, strict: bool) -> Self {
        self.d.strict_versions = strict;
        self
    }

    /// Fleet-wide stampede protection: on an L1 and tier miss, take `lock` so that one process
    /// runs the loader while the others wait for its value (see [`crate::lock`]).
    pub fn load_lock(mut self, lock: Arc<dyn LoadLock>, options: LockOptions) -> Self {
        self.d.lock = Some((lock, options));
        self
    }

    /// Stores entries in remote tiers under `hasher(key_id)` instead of the id itself (a keyed
    /// hash keeps personal data out of Redis key names and SQL rows). Bus messages then carry
    /// the hashed id too; receivers find the L1 entry by hashing their resident keys.
    pub fn key_id_hasher(mut self, hasher: KeyIdHasher) -> Self {
        self.d.key_hasher = Some(hasher);
        self
    }

    /// Sets the L1 bounds.
    pub fn l1(mut self, config: L1Config) -> Self {
        self.d.l1 = Some(config);
        self
    }

    /// Runs without L1 (every read goes to the tiers).
    pub fn no_l1(mut self) -> Self {
        self.d.l1 = None;
        self
    }

    /// Weighs L1 entries (bytes). Without it, an entry weighs its frame's size when one was
    /// encoded, else `size_of::<V>()`.
    pub fn weigher(mut self, f: impl Fn(&K, &V) -> u64 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Arc::new(f));
        self
    }

    /// Adds a byte-level tier below the previous ones (L2, then L3, ...).
    pub fn tier(mut self, tier: Arc<dyn Tier>) -> Self {
        self.d.tiers.push(tier);
        self
    }

    /// Appends a codec to the pipeline (applied after serialization, in call order).
    pub fn codec(mut self, codec: Arc<dyn Codec>) -> Self {
        self.d.codecs.push(codec);
        self
    }

    /// Sets the serializer (required when there is a tier). A shared one may be passed as an
    /// `Arc` (`Arc<S>` and `Arc<dyn Serializer<V>>` are serializers).
    pub fn serializer(mut self, s: impl Serializer<V>) -> Self {
        self.serializer = Some(Arc::new(s));
        self
    }

    /// Sets the loader used by [`Cache::get_or_load`], [`Cache::get_many`] and [`Cache::warm`].
    /// Pass an `Arc` to keep a handle on it (`Arc<L>` and `Arc<dyn Loader<K, V>>` are loaders).
    pub fn loader(mut self, loader: impl Loader<K, V>) -> Self {
        self.loader = Some(Arc::new(loader));
        self
    }

    /// Adds an observer (several may be added).
    pub fn observer(mut self, o: Arc<dyn CacheObserver>) -> Self {
        self.d.observers.push(o);
        self
    }

    /// Replaces the clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.d.clock = clock;
        self
    }

    /// Sets the default entry options.
    pub fn options(mut self, options: EntryOptions) -> Self {
        self.d.options = options;
        self
    }

    /// Sets the invalidation bus.
    pub fn bus(mut self, bus: Arc<dyn InvalidationBus>) -> Self {
        self.d.bus = Some(bus);
        self
    }

    /// Sets the namespace used by the returned handle (default `"default"`).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// Sets the largest accepted serialized value (default 16 MiB).
    pub fn max_value_bytes(mut self, n: usize) -> Self {
        self.d.max_value_bytes = n;
        self
    }

    /// Checks the configuration without building anything.
    fn validate(&self) -> Result<(), CacheError> {
        let d = &self.d;
        validate_name("cache", &self.name)?;
        d.options.validate()?;
        if d.max_value_bytes == 0 {
            return Err(ConfigError::new("max_value_bytes", "must be greater than zero").into());
        }
        if !d.tiers.is_empty() && self.serializer.is_none() {
            return Err(ConfigError::new(
                "serializer",
                "a cache with remote tiers needs a serializer (e.g. .serializer(Postcard))",
            )
            .into());
        }
        if let Some((_, o)) = &d.lock {
            o.validate()?;
            if d.tiers.is_empty() {
                return Err(
                    ConfigError::new("lock", "a load lock needs a remote tier to share the loaded value").into()
                );
            }
        }
        if d.recovery_retry.is_zero() {
            return Err(ConfigError::new("recovery_retry", "must be greater than zero").into());
        }
        if d.l1.is_none() && d.tiers.is_empty() {
            return Err(ConfigError::new("tiers", "a cache needs an L1 or at least one tier").into());
        }
        Ok(())
    }

    /// Validates the configuration, subscribes to the bus (if any) and returns the cache.
    ///
    /// Must run inside a tokio runtime when a bus is configured (the listener is a task on the
    /// caller's runtime, stopped when the last clone of the cache is dropped).
    pub async fn build(self) -> Result<Cache<K, V>, CacheError> {
        self.validate()?;
        let d = self.d;
        let mut pipeline = CodecPipeline::new();
        for c in d.codecs {
            pipeline.push(c)?;
        }
        if let Some(s) = &self.serializer {
            crate::ids::check(crate::ids::IdKind::Serializer, s.id(), s.name())?;
        }
        let name: Arc<str> = Arc::from(self.name.as_str());
        let observers = Observers(d.observers.into());
        let l1 = d.l1.map(|c| L1Cache::new(c, name.clone(), observers.clone())).transpose()?;
        let ns = match &self.namespace {
            Some(n) => Namespace::new(n)?,
            None => Namespace::default_namespace(),
        };
        let recovery: Box<[TierRecovery]> =
            d.tiers.iter().map(|_| TierRecovery::new(d.max_pending_invalidations)).collect();
        let inner = Arc::new(Inner {
            name,
            l1,
            weigher: self.weigher,
            tiers: d.tiers,
            pipeline,
            serializer: self.serializer,
            loader: self.loader,
            observers,
            clock: d.clock,
            options: d.options,
            flights: SingleFlight::new(),
            refreshing: Mutex::new(HashSet::new()),
            epochs: Epochs::new(),
            bus: d.bus,
            bus_task: Mutex::new(None),
            instance: InstanceId::random(),
            max_value_bytes: d.max_value_bytes,
            seq: AtomicU64::new(0),
            publish_warned: AtomicBool::new(false),
            lock: d.lock,
            key_hasher: d.key_hasher,
            tags: TagRegistry::new(),
            recovery,
            recovery_wake: Arc::new(tokio::sync::Notify::new()),
            recovery_task: Mutex::new(None),
            recovery_retry: d.recovery_retry,
            floor: FreshnessFloor::new(d.freshness_floor),
            strict_versions: d.strict_versions,
        });
        if let Some(b) = &inner.bus {
            let sub = b.subscribe().await?;
            let task = tokio::spawn(bus::listen(Arc::downgrade(&inner), sub));
            *inner.bus_task.lock() = Some(task.abort_handle());
        }
        if !inner.tiers.is_empty()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let task = rt.spawn(replay::recover(Arc::downgrade(&inner), inner.recovery_wake.clone()));
            *inner.recovery_task.lock() = Some(task.abort_handle());
        }
        Ok(Cache { inner, ns })
    }
}
