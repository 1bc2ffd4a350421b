//! The multi-level cache engine: L1 → tiers → loader, with singleflight, XFetch early refresh,
//! fail-safe, negative caching and distributed invalidation.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, future::join_all};
use parking_lot::{Mutex, RwLock};
use tracing::Instrument;

use crate::bus::{BusEvent, InstanceId, Invalidation, InvalidationBus, InvalidationTarget, Subscription};
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::codec::{Codec, CodecContext, CodecPipeline};
use crate::error::{BoxError, CacheError, ConfigError, FrameError, SerializeError, TierError, TierErrorKind};
use crate::expiry::{new_meta, should_refresh_early};
use crate::frame::{self, Frame};
use crate::freshness::{DEFAULT_FLOOR_CAPACITY, FreshnessFloor, MAX_CLOCK_SKEW};
use crate::key::{CacheKey, Key, Namespace, validate_name};
use crate::l1::{L1Cache, L1Config};
use crate::lock::{LoadLock, LockOptions};
use crate::meta::EntryMeta;
use crate::observer::{CacheEvent, CacheObserver, L1, LoadOutcome, Observers, RejectReason, StaleReason};
use crate::options::EntryOptions;
use crate::recovery::{DEFAULT_MAX_PENDING, DEFAULT_RETRY, Missed, TierBacklog, TierRecovery, Work};
use crate::serializer::Serializer;
use crate::singleflight::SingleFlight;
use crate::source::Loader;
use crate::tier::{StoredEntry, Tier, TierHealth};

/// The result of a read: the value, `None` for "not found".
pub type LoadResult<V> = Result<Option<Arc<V>>, CacheError>;

/// A one-shot load function (the configured [`Loader`] or a caller's closure).
type LoadFn<K, V> = Box<dyn FnOnce(K) -> BoxFuture<'static, Result<Option<V>, BoxError>> + Send>;

/// A weigher for L1 entries: the value's approximate size in bytes.
pub type Weigher<K, V> = Arc<dyn Fn(&K, &V) -> u64 + Send + Sync>;

/// Maps a key id to the id remote tiers store (e.g. a keyed hash, so that personal data never
/// appears in Redis key names or SQL rows).
pub type KeyIdHasher = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// The most tags whose invalidation time a cache remembers (oldest forgotten first).
const MAX_TAG_TIMES: usize = 10_000;

/// The default largest serialized value (16 MiB).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;

const EPOCH_STRIPES: usize = 256;

/// Striped invalidation epochs: a load that raced with an invalidation of its key (or of
/// everything) returns its value to its waiters but does not store it.
struct Epochs {
    stripes: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Epochs {
    fn new() -> Self {
        Self { stripes: (0..EPOCH_STRIPES).map(|_| AtomicU64::new(0)).collect(), hasher: Default::default() }
    }
    fn slot<K: Hash>(&self, ns: &Namespace, key: &K) -> &AtomicU64 {
        let h = self.hasher.hash_one((ns.as_str(), key));
        &self.stripes[(h as usize) % EPOCH_STRIPES]
    }
    fn get<K: Hash>(&self, ns: &Namespace, key: &K) -> u64 {
        self.slot(ns, key).load(Ordering::Acquire)
    }
    fn bump<K: Hash>(&self, ns: &Namespace, key: &K) {
        self.slot(ns, key).fetch_add(1, Ordering::AcqRel);
    }
    fn bump_all(&self) {
        for s in self.stripes.iter() {
            s.fetch_add(1, Ordering::AcqRel);
        }
    }
}

struct Fallback<V> {
    value: Option<Arc<V>>,
    meta: Arc<EntryMeta>,
}

struct Inner<K, V> {
    name: Arc<str>,
    l1: Option<L1Cache<K, V>>,
    weigher: Option<Weigher<K, V>>,
    tiers: Vec<Arc<dyn Tier>>,
    pipeline: CodecPipeline,
    serializer: Option<Arc<dyn Serializer<V>>>,
    loader: Option<Arc<dyn Loader<K, V>>>,
    observers: Observers,
    clock: Arc<dyn Clock>,
    options: EntryOptions,
    flights: SingleFlight<(Namespace, K), LoadResult<V>>,
    refreshing: Mutex<HashSet<(Namespace, K)>>,
    epochs: Epochs,
    bus: Option<Arc<dyn InvalidationBus>>,
    bus_task: Mutex<Option<tokio::task::AbortHandle>>,
    instance: InstanceId,
    max_value_bytes: usize,
    seq: AtomicU64,
    /// Whether a failed publish was already logged at warn level (reset by a success).
    publish_warned: std::sync::atomic::AtomicBool,
    lock: Option<(Arc<dyn LoadLock>, LockOptions)>,
    key_hasher: Option<KeyIdHasher>,
    /// When each `(namespace, tag)` was last invalidated: older entries carrying it are misses.
    /// Keyed by namespace, then tag, so that reads look up with borrowed strings.
    tag_times: RwLock<HashMap<String, HashMap<String, Timestamp>>>,
    has_tag_times: AtomicBool,
    /// Entries carrying any tag created at or before this (ms) are misses: set when old tag
    /// times are forgotten, so forgetting never brings invalidated entries back.
    tag_floor: AtomicU64,
    /// What each tier (same index as `tiers`) missed during an outage (see [`crate::recovery`]).
    recovery: Box<[TierRecovery]>,
    /// Wakes the recovery task when something is recorded.
    recovery_wake: Arc<tokio::sync::Notify>,
    recovery_task: Mutex<Option<tokio::task::AbortHandle>>,
    recovery_retry: Duration,
    /// The newest version seen per key (see [`crate::freshness`]).
    floor: FreshnessFloor,
    /// Check upper-tier hits against the last tier.
    strict_versions: bool,
}

impl<K, V> Drop for Inner<K, V> {
    fn drop(&mut self) {
        if let Some(h) = self.bus_task.lock().take() {
            h.abort();
        }
        if let Some(h) = self.recovery_task.lock().take() {
            h.abort();
        }
    }
}

/// A typed multi-level cache. Cheap to clone; clones share everything.
///
/// See the [crate documentation](crate) for the read path. Build one with [`Cache::builder`].
pub struct Cache<K, V> {
    inner: Arc<Inner<K, V>>,
    ns: Namespace,
}

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), ns: self.ns.clone() }
    }
}

impl<K, V> std::fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.inner.name)
            .field("namespace", &self.ns)
            .field("tiers", &self.inner.tiers.iter().map(|t| t.name().to_owned()).collect::<Vec<_>>())
            .field("codecs", &self.inner.pipeline)
            .finish()
    }
}

/// What [`Cache::warm`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmReport {
    /// Keys now cached with a value.
    pub loaded: usize,
    /// Keys the source does not have.
    pub not_found: usize,
    /// Keys whose load failed.
    pub failed: usize,
}

/// Builds a [`Cache`]. Defaults: an L1 of 10,000 entries, no remote tier, a 5-minute TTL, no
/// early refresh, no fail-safe, the system clock.
#[must_use]
pub struct CacheBuilder<K, V> {
    name: String,
    namespace: Option<String>,
    l1: Option<L1Config>,
    weigher: Option<Weigher<K, V>>,
    tiers: Vec<Arc<dyn Tier>>,
    codecs: Vec<Arc<dyn Codec>>,
    serializer: Option<Arc<dyn Serializer<V>>>,
    loader: Option<Arc<dyn Loader<K, V>>>,
    observers: Vec<Arc<dyn CacheObserver>>,
    clock: Arc<dyn Clock>,
    options: EntryOptions,
    bus: Option<Arc<dyn InvalidationBus>>,
    max_value_bytes: usize,
    lock: Option<(Arc<dyn LoadLock>, LockOptions)>,
    key_hasher: Option<KeyIdHasher>,
    max_pending: usize,
    recovery_retry: Duration,
    floor_capacity: usize,
    strict_versions: bool,
}

impl<K, V> CacheBuilder<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    fn new(name: String) -> Self {
        Self {
            name,
            namespace: None,
            l1: Some(L1Config::default()),
            weigher: None,
            tiers: Vec::new(),
            codecs: Vec::new(),
            serializer: None,
            loader: None,
            observers: Vec::new(),
            clock: Arc::new(SystemClock),
            options: EntryOptions::default(),
            bus: None,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            lock: None,
            key_hasher: None,
            max_pending: DEFAULT_MAX_PENDING,
            recovery_retry: DEFAULT_RETRY,
            floor_capacity: DEFAULT_FLOOR_CAPACITY,
            strict_versions: false,
        }
    }

    /// How many missed writes and invalidations are remembered per tier during an outage
    /// (default 10,000); beyond it the tier is not read by this process until a namespace-wide
    /// invalidation of it succeeds (see [`crate::recovery`]). Zero: the first miss overflows.
    pub fn max_pending_invalidations(mut self, n: usize) -> Self {
        self.max_pending = n;
        self
    }

    /// How often the recovery task retries applying what a failing tier missed (default
    /// 250 ms; behind a breaker, a retry while it is open costs nothing).
    pub fn recovery_retry(mut self, interval: Duration) -> Self {
        self.recovery_retry = interval;
        self
    }

    /// How many keys' freshness floors are remembered (default 100,000; 0 turns rollback
    /// detection off). See [`crate::freshness`].
    pub fn freshness_floor(mut self, keys: usize) -> Self {
        self.floor_capacity = keys;
        self
    }

    /// Strict versions (off by default): a hit in a tier above the last one (e.g. Redis above
    /// SQL) is served only when the last tier holds the same or an older version of the key;
    /// otherwise it is refused ([`CacheEvent::FrameRejected`]) and the read goes on down. This
    /// catches rollbacks a cold process cannot see by itself, at the cost of one read of the
    /// last tier per upper-tier hit. It fails closed: when the last tier has no row for the key
    /// or cannot be read, the upper tier's frame is not served either. No effect with fewer than
    /// two tiers.
    pub fn strict_versions(mut self, strict: bool) -> Self {
        self.strict_versions = strict;
        self
    }

    /// Fleet-wide stampede protection: on an L1 and tier miss, take `lock` so that one process
    /// runs the loader while the others wait for its value (see [`crate::lock`]).
    pub fn load_lock(mut self, lock: Arc<dyn LoadLock>, options: LockOptions) -> Self {
        self.lock = Some((lock, options));
        self
    }

    /// Stores entries in remote tiers under `hasher(key_id)` instead of the id itself (a keyed
    /// hash keeps personal data out of Redis key names and SQL rows). Bus messages then carry
    /// the hashed id too; receivers find the L1 entry by hashing their resident keys.
    pub fn key_id_hasher(mut self, hasher: KeyIdHasher) -> Self {
        self.key_hasher = Some(hasher);
        self
    }

    /// Sets the L1 bounds.
    pub fn l1(mut self, config: L1Config) -> Self {
        self.l1 = Some(config);
        self
    }

    /// Runs without L1 (every read goes to the tiers).
    pub fn no_l1(mut self) -> Self {
        self.l1 = None;
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
        self.tiers.push(tier);
        self
    }

    /// Appends a codec to the pipeline (applied after serialization, in call order).
    pub fn codec(mut self, codec: Arc<dyn Codec>) -> Self {
        self.codecs.push(codec);
        self
    }

    /// Sets the serializer (required when there is a tier).
    pub fn serializer(mut self, s: impl Serializer<V>) -> Self {
        self.serializer = Some(Arc::new(s));
        self
    }

    /// Sets the serializer from an `Arc`.
    pub fn serializer_arc(mut self, s: Arc<dyn Serializer<V>>) -> Self {
        self.serializer = Some(s);
        self
    }

    /// Sets the loader used by [`Cache::get_or_load`], [`Cache::get_many`] and [`Cache::warm`].
    pub fn loader(mut self, loader: impl Loader<K, V>) -> Self {
        self.loader = Some(Arc::new(loader));
        self
    }

    /// Sets the loader from an `Arc`.
    pub fn loader_arc(mut self, loader: Arc<dyn Loader<K, V>>) -> Self {
        self.loader = Some(loader);
        self
    }

    /// Adds an observer (several may be added).
    pub fn observer(mut self, o: Arc<dyn CacheObserver>) -> Self {
        self.observers.push(o);
        self
    }

    /// Replaces the clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the default entry options.
    pub fn options(mut self, options: EntryOptions) -> Self {
        self.options = options;
        self
    }

    /// Sets the invalidation bus.
    pub fn bus(mut self, bus: Arc<dyn InvalidationBus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Sets the namespace used by the returned handle (default `"default"`).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// Sets the largest accepted serialized value (default 16 MiB).
    pub fn max_value_bytes(mut self, n: usize) -> Self {
        self.max_value_bytes = n;
        self
    }

    /// Validates the configuration, subscribes to the bus (if any) and returns the cache.
    ///
    /// Must run inside a tokio runtime when a bus is configured (the listener is a task on the
    /// caller's runtime, stopped when the last clone of the cache is dropped).
    pub async fn build(self) -> Result<Cache<K, V>, CacheError> {
        validate_name("cache", &self.name)?;
        self.options.validate()?;
        if self.max_value_bytes == 0 {
            return Err(ConfigError::new("max_value_bytes", "must be greater than zero").into());
        }
        if !self.tiers.is_empty() && self.serializer.is_none() {
            return Err(ConfigError::new(
                "serializer",
                "a cache with remote tiers needs a serializer (e.g. .serializer(Postcard))",
            )
            .into());
        }
        if let Some((_, o)) = &self.lock {
            o.validate()?;
            if self.tiers.is_empty() {
                return Err(
                    ConfigError::new("lock", "a load lock needs a remote tier to share the loaded value").into()
                );
            }
        }
        if self.recovery_retry.is_zero() {
            return Err(ConfigError::new("recovery_retry", "must be greater than zero").into());
        }
        if self.l1.is_none() && self.tiers.is_empty() {
            return Err(ConfigError::new("tiers", "a cache needs an L1 or at least one tier").into());
        }
        let mut pipeline = CodecPipeline::new();
        for c in self.codecs {
            pipeline.push(c)?;
        }
        if let Some(s) = &self.serializer {
            crate::ids::check(crate::ids::IdKind::Serializer, s.id(), s.name())?;
        }
        let name: Arc<str> = Arc::from(self.name.as_str());
        let observers = Observers(self.observers.into());
        let l1 = self.l1.map(|c| L1Cache::new(c, name.clone(), observers.clone())).transpose()?;
        let ns = match &self.namespace {
            Some(n) => Namespace::new(n)?,
            None => Namespace::default_namespace(),
        };
        let recovery: Box<[TierRecovery]> = self.tiers.iter().map(|_| TierRecovery::new(self.max_pending)).collect();
        let inner = Arc::new(Inner {
            name,
            l1,
            weigher: self.weigher,
            tiers: self.tiers,
            pipeline,
            serializer: self.serializer,
            loader: self.loader,
            observers,
            clock: self.clock,
            options: self.options,
            flights: SingleFlight::new(),
            refreshing: Mutex::new(HashSet::new()),
            epochs: Epochs::new(),
            bus: self.bus,
            bus_task: Mutex::new(None),
            instance: InstanceId::random(),
            max_value_bytes: self.max_value_bytes,
            seq: AtomicU64::new(0),
            publish_warned: std::sync::atomic::AtomicBool::new(false),
            lock: self.lock,
            key_hasher: self.key_hasher,
            tag_times: RwLock::new(HashMap::new()),
            has_tag_times: AtomicBool::new(false),
            tag_floor: AtomicU64::new(0),
            recovery,
            recovery_wake: Arc::new(tokio::sync::Notify::new()),
            recovery_task: Mutex::new(None),
            recovery_retry: self.recovery_retry,
            floor: FreshnessFloor::new(self.floor_capacity),
            strict_versions: self.strict_versions,
        });
        if let Some(bus) = &inner.bus {
            let sub = bus.subscribe().await?;
            let task = tokio::spawn(listen(Arc::downgrade(&inner), sub));
            *inner.bus_task.lock() = Some(task.abort_handle());
        }
        if !inner.tiers.is_empty()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let task = rt.spawn(recover(Arc::downgrade(&inner), inner.recovery_wake.clone()));
            *inner.recovery_task.lock() = Some(task.abort_handle());
        }
        Ok(Cache { inner, ns })
    }
}

async fn listen<K: CacheKey, V: Send + Sync + 'static>(weak: Weak<Inner<K, V>>, mut sub: Subscription) {
    while let Some(ev) = sub.recv().await {
        let Some(inner) = weak.upgrade() else { return };
        inner.apply_bus_event(ev);
    }
}

/// The recovery task: replays what the tiers missed whenever something is recorded, and every
/// `recovery_retry` while a tier still fails. Holds the cache only while replaying.
async fn recover<K: CacheKey, V: Send + Sync + 'static>(weak: Weak<Inner<K, V>>, wake: Arc<tokio::sync::Notify>) {
    loop {
        let (clean, retry) = {
            let Some(inner) = weak.upgrade() else { return };
            (inner.replay().await, inner.recovery_retry)
        };
        if clean {
            wake.notified().await;
        } else {
            tokio::time::sleep(retry).await;
        }
    }
}

impl<K, V> Cache<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    /// Starts a builder for a cache named `name` (`[A-Za-z0-9_.-]`, 1–64 chars).
    pub fn builder(name: impl Into<String>) -> CacheBuilder<K, V> {
        CacheBuilder::new(name.into())
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The namespace this handle reads and writes.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// A handle on the same cache for another namespace.
    pub fn in_namespace(&self, ns: &str) -> Result<Self, CacheError> {
        Ok(Self { inner: self.inner.clone(), ns: Namespace::new(ns)? })
    }

    /// The default entry options.
    pub fn options(&self) -> &EntryOptions {
        &self.inner.options
    }

    /// The L1 tier, if any.
    pub fn l1(&self) -> Option<&L1Cache<K, V>> {
        self.inner.l1.as_ref()
    }

    /// The tiers' names, top to bottom.
    pub fn tier_names(&self) -> Vec<String> {
        self.inner.tiers.iter().map(|t| t.name().to_owned()).collect()
    }

    /// This instance's id on the bus.
    pub fn instance_id(&self) -> InstanceId {
        self.inner.instance
    }

    /// Health of every tier.
    pub async fn health(&self) -> Vec<(String, TierHealth)> {
        let checks = self.inner.tiers.iter().map(|t| async move { (t.name().to_owned(), t.health().await) });
        join_all(checks).await
    }

    /// What each tier missed during an outage and has not had replayed yet (see
    /// [`crate::recovery`]): all zero once every tier is recovered.
    pub fn pending_recovery(&self) -> Vec<TierBacklog> {
        let inner = &self.inner;
        inner
            .tiers
            .iter()
            .zip(inner.recovery.iter())
            .map(|(t, r)| TierBacklog { tier: t.name().to_owned(), pending: r.pending(), overflowed: r.overflowed() })
            .collect()
    }

    /// Replays what the tiers missed now, without waiting for the recovery task; returns
    /// whether nothing is left pending.
    pub async fn recover_now(&self) -> bool {
        self.inner.replay().await
    }

    /// Reads a fresh value from L1 or the tiers, without calling the loader.
    pub async fn get(&self, key: &K) -> LoadResult<V> {
        if let Some(v) = self.l1_fresh(key, |_, _| {}) {
            return Ok(v);
        }
        // The slow path is boxed so that the future of an L1 hit stays a few words large.
        let span = self.span("cache.get", key);
        let slow: BoxFuture<'_, LoadResult<V>> = Box::pin(self.get_below_l1(key).instrument(span));
        slow.await
    }

    /// The L1 fast path: a fresh entry's value (reported as a hit), or `None` (reported as an
    /// L1 miss when there is an L1). `on_hit` sees the entry's metadata and the time.
    #[inline]
    fn l1_fresh(&self, key: &K, on_hit: impl FnOnce(&EntryMeta, Timestamp)) -> Option<Option<Arc<V>>> {
        let inner = &*self.inner;
        let l1 = inner.l1.as_ref()?;
        let now = inner.clock.now();
        if let Some(e) = l1.get(&self.ns, key, now)
            && e.meta.is_fresh(now)
        {
            inner.observers.emit(&CacheEvent::Hit { cache: &inner.name, tier: L1 });
            on_hit(&e.meta, now);
            return Some(e.value);
        }
        inner.observers.emit(&CacheEvent::Miss { cache: &inner.name, tier: L1 });
        None
    }

    async fn get_below_l1(&self, key: &K) -> LoadResult<V> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let epoch = inner.epochs.get(&self.ns, key);
        let skey = inner.storage_key(&self.ns, key)?;
        let (hit, _) = inner.read_tiers(&self.ns, key, &skey, now, None, epoch).await;
        Ok(hit.and_then(|f| f.value))
    }

    /// Reads through every level, calling the configured loader on a miss.
    pub async fn get_or_load(&self, key: &K) -> LoadResult<V> {
        let Some(loader) = &self.inner.loader else { return Err(CacheError::NoLoader(self.inner.name.clone())) };
        self.read_through(key, move || -> LoadFn<K, V> {
            let loader = loader.clone();
            Box::new(move |k: K| Box::pin(async move { loader.load(&k).await }))
        })
        .await
    }

    /// Reads through every level, calling `load` on a miss (at most once across concurrent
    /// callers of the same key).
    pub async fn get_or_load_with<F, Fut>(&self, key: &K, load: F) -> LoadResult<V>
    where
        F: FnOnce(K) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, BoxError>> + Send + 'static,
    {
        self.read_through(key, move || -> LoadFn<K, V> { Box::new(move |k: K| Box::pin(load(k))) }).await
    }

    async fn read_through(&self, key: &K, make_load: impl FnOnce() -> LoadFn<K, V> + Send) -> LoadResult<V> {
        let inner = &self.inner;
        let mut make_load = Some(make_load);
        let hit = self.l1_fresh(key, |meta, now| {
            if inner.options.early_refresh_beta > 0.0
                && let Some(make) = make_load.take()
            {
                inner.maybe_refresh_early(&self.ns, key, meta, now, make);
            }
        });
        if let Some(v) = hit {
            return Ok(v);
        }
        let Some(make_load) = make_load else { unreachable!("only taken on a hit") };
        let this = inner.clone();
        let (ns, k) = (self.ns.clone(), key.clone());
        // Boxed so that the future of an L1 hit stays small.
        let span = self.span("cache.get", key);
        let slow: BoxFuture<'_, (LoadResult<V>, bool)> = Box::pin(
            inner
                .flights
                .run((self.ns.clone(), key.clone()), move || Box::pin(this.resolve(ns, k, make_load(), None)))
                .instrument(span),
        );
        let (result, leader) = slow.await;
        if !leader {
            inner.observers.emit(&CacheEvent::Coalesced { cache: &inner.name });
        }
        result
    }

    /// A span for an operation below L1 (`cache.level` and `cache.hit` are recorded by the read
    /// path). The key appears only as its fingerprint.
    fn span(&self, name: &'static str, key: &K) -> tracing::Span {
        let span = match name {
            "cache.set" => tracing::info_span!(
                "cache.set",
                cache.name = %self.inner.name,
                cache.namespace = %self.ns,
                cache.key_hash = tracing::field::Empty
            ),
            "cache.invalidate" => tracing::info_span!(
                "cache.invalidate",
                cache.name = %self.inner.name,
                cache.namespace = %self.ns,
                cache.key_hash = tracing::field::Empty
            ),
            _ => tracing::info_span!(
                "cache.get",
                cache.name = %self.inner.name,
                cache.namespace = %self.ns,
                cache.key_hash = tracing::field::Empty,
                cache.level = tracing::field::Empty,
                cache.hit = tracing::field::Empty
            ),
        };
        if !span.is_disabled()
            && let Ok(k) = self.inner.storage_key(&self.ns, key)
        {
            span.record("cache.key_hash", k.log_hash().as_str());
        }
        span
    }

    /// Reads many keys: L1 first, then each tier with one batched call for the keys still
    /// missing, then the loader (if configured) for the rest, concurrently. Results are in `keys`
    /// order.
    pub async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<Arc<V>>>, CacheError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let mut out: Vec<Option<Arc<V>>> = vec![None; keys.len()];
        let mut missing = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match inner.l1.as_ref().and_then(|l1| l1.get(&self.ns, k, now)) {
                Some(e) if e.meta.is_fresh(now) => {
                    inner.observers.emit(&CacheEvent::Hit { cache: &inner.name, tier: L1 });
                    out[i] = e.value;
                }
                _ => {
                    if inner.l1.is_some() {
                        inner.observers.emit(&CacheEvent::Miss { cache: &inner.name, tier: L1 });
                    }
                    missing.push(i);
                }
            }
        }
        // Epochs before any tier read: a key invalidated while its batch is in flight is neither
        // put in L1 nor copied into the upper tiers.
        let mut pending: Vec<(usize, Key)> = Vec::with_capacity(missing.len());
        let mut epochs = vec![0u64; keys.len()];
        for i in missing {
            epochs[i] = inner.epochs.get(&self.ns, &keys[i]);
            pending.push((i, inner.storage_key(&self.ns, &keys[i])?));
        }
        for (ti, tier) in inner.tiers.iter().enumerate() {
            if pending.is_empty() {
                break;
            }
            // Keys this tier missed during an outage are not read from it until replayed.
            let (blocked, readable): (Vec<_>, Vec<_>) =
                pending.into_iter().partition(|(_, k)| inner.recovery[ti].blocks(k));
            for _ in &blocked {
                inner.observers.emit(&CacheEvent::Miss { cache: &inner.name, tier: tier.name() });
            }
            pending = readable;
            if pending.is_empty() {
                pending = blocked;
                continue;
            }
            let batch: Vec<Key> = pending.iter().map(|(_, k)| k.clone()).collect();
            let frames = match tier.get_many(&batch).await {
                Ok(f) if f.len() == batch.len() => f,
                Ok(f) => {
                    let err = crate::error::TierError::new(
                        tier.name().to_owned(),
                        crate::error::TierErrorKind::Protocol,
                        format!("get_many returned {} results for {} keys", f.len(), batch.len()),
                    );
                    inner.observers.emit(&CacheEvent::TierError { cache: &inner.name, error: &err });
                    pending.extend(blocked);
                    continue;
                }
                Err(err) => {
                    inner.observers.emit(&CacheEvent::TierError { cache: &inner.name, error: &err });
                    pending.extend(blocked);
                    continue;
                }
            };
            let mut still = blocked;
            let mut fills: Vec<(Key, StoredEntry)> = Vec::new();
            for ((i, skey), frame) in pending.into_iter().zip(frames) {
                let mut hit = None;
                if let Some(bytes) = frame {
                    match inner.decode(&skey, &bytes) {
                        Ok((meta, value)) => {
                            if meta.is_fresh(now) && inner.admit(ti, &self.ns, &skey, &meta).await {
                                hit = Some((meta, value, bytes));
                            }
                        }
                        Err(e) => inner.report_decode_error(tier.name(), &e),
                    }
                }
                let Some((meta, value, bytes)) = hit else {
                    inner.observers.emit(&CacheEvent::Miss { cache: &inner.name, tier: tier.name() });
                    still.push((i, skey));
                    continue;
                };
                inner.observers.emit(&CacheEvent::Hit { cache: &inner.name, tier: tier.name() });
                inner.floor.raise(&skey, meta.version);
                let value = value.map(Arc::new);
                if inner.epochs.get(&self.ns, &keys[i]) == epochs[i] {
                    inner.fill_l1(&self.ns, keys[i].clone(), value.clone(), Arc::new(meta.clone()), Some(bytes.len()));
                    fills.push((skey, StoredEntry { meta, frame: bytes }));
                }
                out[i] = value;
            }
            if !fills.is_empty() {
                inner.settle_tier_writes(inner.tiers[..ti].iter().map(|t| t.set_many(&fills))).await;
            }
            pending = still;
        }
        let missing: Vec<usize> = pending.into_iter().map(|(i, _)| i).collect();
        if inner.loader.is_some() && !missing.is_empty() {
            let loads = missing.iter().map(|&i| self.get_or_load(&keys[i]));
            let results = join_all(loads).await;
            for (&i, r) in missing.iter().zip(results) {
                out[i] = r?;
            }
        }
        Ok(out)
    }

    /// Writes a value with the cache's default options: L1, every tier, then publishes an
    /// invalidation so other instances drop their L1 copy. Nothing changes if the value cannot
    /// be encoded.
    pub async fn set(&self, key: K, value: V) -> Result<Arc<V>, CacheError> {
        self.set_with(key, value, &self.inner.options.clone()).await
    }

    /// Like [`Cache::set`] with explicit options.
    pub async fn set_with(&self, key: K, value: V, options: &EntryOptions) -> Result<Arc<V>, CacheError> {
        let span = self.span("cache.set", &key);
        self.set_inner(key, value, options).instrument(span).await
    }

    async fn set_inner(&self, key: K, value: V, options: &EntryOptions) -> Result<Arc<V>, CacheError> {
        options.validate()?;
        let inner = &self.inner;
        let skey = inner.storage_key(&self.ns, &key)?;
        let now = inner.clock.now();
        let meta = new_meta(options, now, Duration::ZERO, false, inner.next_version(now), fastrand::f64());
        let value = Arc::new(value);
        let frame = inner.encode_if_needed(&skey, Some(&value), &meta)?;
        inner.epochs.bump(&self.ns, &key);
        inner.store(&self.ns, key.clone(), &skey, Some(value.clone()), Arc::new(meta), frame).await;
        inner.publish(&self.ns, InvalidationTarget::Key(skey.id().to_owned())).await;
        Ok(value)
    }

    /// Removes a key from L1 and every tier, then publishes the invalidation.
    pub async fn invalidate(&self, key: &K) -> Result<(), CacheError> {
        self.invalidate_traced(key, true).await
    }

    async fn invalidate_traced(&self, key: &K, publish: bool) -> Result<(), CacheError> {
        let span = self.span("cache.invalidate", key);
        self.invalidate_inner(key, publish).instrument(span).await
    }

    /// A key id received as text, parsed with the key type's `FromStr`.
    fn parse_id(id: &str) -> Result<K, CacheError> {
        K::from_key_id(id)
            .ok_or_else(|| CacheError::InvalidKey("key id does not parse as this cache's key type".into()))
    }

    async fn invalidate_inner(&self, key: &K, publish: bool) -> Result<(), CacheError> {
        let inner = &self.inner;
        let skey = inner.storage_key(&self.ns, key)?;
        inner.epochs.bump(&self.ns, key);
        // Whatever a tier still holds for this key from before now is older than this.
        inner.floor.raise(&skey, inner.next_version(inner.clock.now()));
        if let Some(l1) = &inner.l1 {
            l1.remove(&self.ns, key);
        }
        inner.delete_tiers(&skey).await;
        if publish {
            inner.publish(&self.ns, InvalidationTarget::Key(skey.id().to_owned())).await;
        }
        Ok(())
    }

    /// Invalidates a key given its id as text (for adapters that receive invalidations from
    /// outside the process): the id is parsed with the key type's `FromStr`.
    pub async fn invalidate_id(&self, id: &str) -> Result<(), CacheError> {
        self.invalidate_traced(&Self::parse_id(id)?, true).await
    }

    /// Like [`Cache::invalidate_id`] but without publishing on the bus: for invalidations that
    /// every instance receives on its own (a Redis channel or Postgres `NOTIFY` that all
    /// instances listen to), where republishing would multiply the messages by the fleet size.
    pub async fn invalidate_id_unpublished(&self, id: &str) -> Result<(), CacheError> {
        self.invalidate_traced(&Self::parse_id(id)?, false).await
    }

    /// Like [`Cache::invalidate_tag`] but without publishing on the bus (see
    /// [`Cache::invalidate_id_unpublished`]).
    pub async fn invalidate_tag_unpublished(&self, tag: &str) -> Result<(), CacheError> {
        self.invalidate_tag_inner(tag, false).await
    }

    /// Makes every entry of this namespace carrying `tag` a miss at every level: L1 entries are
    /// dropped, each tier deletes what it can ([`Tier::invalidate_tag`]), entries created
    /// before now that still carry the tag are treated as misses wherever they are read, and
    /// other instances are told over the bus.
    ///
    /// A tier that failed to delete (unreachable, breaker open) makes this return its error after
    /// everything else was done: the entries are hidden but still stored there, and the
    /// invalidation is replayed on that tier when it is back (see [`crate::recovery`]).
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError> {
        self.invalidate_tag_inner(tag, true).await
    }

    async fn invalidate_tag_inner(&self, tag: &str, publish: bool) -> Result<(), CacheError> {
        validate_tag(tag)?;
        let inner = &self.inner;
        let span = tracing::info_span!("cache.invalidate_tag", cache.name = %inner.name, cache.namespace = %self.ns);
        async {
            inner.apply_tag_invalidation(&self.ns, tag);
            let tickets: Vec<Option<u64>> = inner.recovery.iter().map(TierRecovery::ticket).collect();
            let deletes = inner.tiers.iter().map(|t| t.invalidate_tag(&inner.name, self.ns.as_str(), tag));
            let mut failed = None;
            for (i, r) in join_all(deletes).await.into_iter().enumerate() {
                match r {
                    Ok(_) => {
                        if let Some(t) = tickets[i] {
                            inner.recovery[i].tag_done(&self.ns, tag, t);
                        }
                    }
                    Err(e) if e.kind() == crate::error::TierErrorKind::Unsupported => {}
                    Err(err) => {
                        // Remembered and replayed when the tier is back.
                        inner.missed(i, &err, Missed::Tag(&self.ns, tag));
                        failed.get_or_insert(err);
                    }
                }
            }
            inner.observers.emit(&CacheEvent::TagInvalidated { cache: &inner.name });
            if publish {
                inner.publish(&self.ns, InvalidationTarget::Tag(tag.to_owned())).await;
            }
            failed.map_or(Ok(()), |e| Err(CacheError::Tier(e)))
        }
        .instrument(span)
        .await
    }

    /// Whether remote tiers see hashed key ids ([`CacheBuilder::key_id_hasher`]).
    pub fn hashes_key_ids(&self) -> bool {
        self.inner.key_hasher.is_some()
    }

    /// The names of the codecs values pass through before remote tiers, in encoding order.
    pub fn codec_names(&self) -> Vec<&'static str> {
        self.inner.pipeline.codecs().iter().map(|c| c.name()).collect()
    }

    /// Up to `limit` keys resident in this namespace's L1 (the hot set, for snapshots that warm a
    /// restarted process).
    pub fn l1_keys(&self, limit: usize) -> Vec<K> {
        let Some(l1) = &self.inner.l1 else { return Vec::new() };
        l1.keys_in(&self.ns, limit)
    }

    /// Drops every L1 entry of this cache (all namespaces); tiers are untouched.
    pub fn clear_l1(&self) {
        self.inner.epochs.bump_all();
        if let Some(l1) = &self.inner.l1 {
            l1.clear();
        }
    }

    /// Loads `keys` through the normal read path with at most `concurrency` loads at a time.
    pub async fn warm(&self, keys: impl IntoIterator<Item = K>, concurrency: usize) -> WarmReport {
        let results: Vec<LoadResult<V>> = futures::stream::iter(keys)
            .map(|k| async move { self.get_or_load(&k).await })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let mut report = WarmReport::default();
        for r in results {
            match r {
                Ok(Some(_)) => report.loaded += 1,
                Ok(None) => report.not_found += 1,
                Err(_) => report.failed += 1,
            }
        }
        report
    }
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    fn storage_key(&self, ns: &Namespace, key: &K) -> Result<Key, CacheError> {
        match &self.key_hasher {
            None => Key::with_cache(self.name.clone(), ns.clone(), &key.key_id()),
            Some(h) => Key::with_cache(self.name.clone(), ns.clone(), &h(&key.key_id())),
        }
    }

    /// Whether `meta` carries a tag invalidated at or after the entry's creation.
    fn tag_invalidated(&self, ns: &Namespace, meta: &EntryMeta) -> bool {
        if meta.tags.is_empty() || !self.has_tag_times.load(Ordering::Acquire) {
            return false;
        }
        if meta.created.0 <= self.tag_floor.load(Ordering::Acquire) {
            return true;
        }
        let times = self.tag_times.read();
        let Some(times) = times.get(ns.as_str()) else { return false };
        // `<=`: within the clock's millisecond, err on the side of a miss rather than stale data.
        meta.tags.iter().any(|t| times.get(t.as_str()).is_some_and(|&at| meta.created <= at))
    }

    /// Records a tag invalidation and drops L1 entries carrying it.
    fn apply_tag_invalidation(&self, ns: &Namespace, tag: &str) {
        let now = self.clock.now();
        {
            let mut times = self.tag_times.write();
            if times.values().map(HashMap::len).sum::<usize>() >= MAX_TAG_TIMES {
                // Forget the oldest half: entries that old have usually expired.
                let mut all: Vec<Timestamp> = times.values().flat_map(|m| m.values().copied()).collect();
                all.sort_unstable();
                let cut = all[all.len() / 2];
                for m in times.values_mut() {
                    m.retain(|_, t| *t > cut);
                }
                times.retain(|_, m| !m.is_empty());
                // Everything tagged from before the forgotten invalidations stays invalid.
                self.tag_floor.fetch_max(cut.0, Ordering::AcqRel);
            }
            times.entry(ns.as_str().to_owned()).or_default().insert(tag.to_owned(), now);
            self.has_tag_times.store(true, Ordering::Release);
        }
        self.epochs.bump_all();
        if let Some(l1) = &self.l1 {
            l1.remove_where(|n, _, meta| n == ns && meta.tags.iter().any(|t| t == tag));
        }
    }

    /// Whether a decoded frame of `skey` read from tier `i` may be served: not hidden by a tag
    /// invalidation or by the tier's recovery horizon, not older than the key's freshness
    /// floor, and (strict mode, upper tiers) confirmed by the last tier.
    async fn admit(&self, i: usize, ns: &Namespace, skey: &Key, meta: &EntryMeta) -> bool {
        if self.tag_invalidated(ns, meta) || self.recovery[i].below_horizon(meta.created) {
            return false;
        }
        let tier = self.tiers[i].name();
        if !self.floor.admits(skey, meta.version) {
            self.reject(tier, RejectReason::OlderThanSeen);
            return false;
        }
        if self.strict_versions
            && i + 1 < self.tiers.len()
            && let Err(reason) = self.confirm_with_last_tier(skey, meta).await
        {
            self.reject(tier, reason);
            return false;
        }
        true
    }

    fn reject(&self, tier: &str, reason: RejectReason) {
        self.observers.emit(&CacheEvent::FrameRejected { cache: &self.name, tier, reason });
        tracing::warn!(cache = %self.name, tier, reason = reason.as_str(), "older frame refused");
    }

    /// Strict mode: the last tier's version of `skey` must not be newer than `meta`'s.
    async fn confirm_with_last_tier(&self, skey: &Key, meta: &EntryMeta) -> Result<(), RejectReason> {
        let Some(last) = self.tiers.last() else { return Ok(()) };
        let bytes = match last.get(skey).await {
            Ok(Some(b)) => b,
            Ok(None) => return Err(RejectReason::Unconfirmed),
            Err(err) => {
                self.observers.emit(&CacheEvent::TierError { cache: &self.name, error: &err });
                return Err(RejectReason::Unconfirmed);
            }
        };
        // Only the metadata is needed (checked by the CRC; an encrypting codec also binds it).
        match Frame::decode(&bytes) {
            Ok((f, _)) if f.meta.version > meta.version => Err(RejectReason::OlderThanLastTier),
            Ok(_) => Ok(()),
            Err(_) => Err(RejectReason::Unconfirmed),
        }
    }

    /// Tier `i` missed a write or invalidation: counted, remembered for replay, and the
    /// recovery task woken.
    fn missed(&self, i: usize, err: &TierError, what: Missed<'_>) {
        self.observers.emit(&CacheEvent::TierError { cache: &self.name, error: err });
        let tier = self.tiers[i].name();
        if self.recovery[i].record(what) {
            self.observers.emit(&CacheEvent::RecoveryOverflow { cache: &self.name, tier });
            tracing::warn!(cache = %self.name, tier, "too many missed writes to remember: tier not read until recovered");
        }
        self.recovery_wake.notify_one();
    }

    /// Deletes `skey` from every tier; a tier that fails remembers it for replay, one that
    /// succeeds forgets what it had pending for the key.
    async fn delete_tiers(&self, skey: &Key) {
        let tickets: Vec<Option<u64>> = self.recovery.iter().map(TierRecovery::ticket).collect();
        let results = join_all(self.tiers.iter().map(|t| t.delete(skey))).await;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(()) => {
                    if let Some(t) = tickets[i] {
                        self.recovery[i].key_done(skey, t);
                    }
                }
                Err(err) => self.missed(i, &err, Missed::Key(skey)),
            }
        }
    }

    /// One replay round over every tier with something pending. Returns whether nothing is
    /// left pending.
    async fn replay(&self) -> bool {
        let mut clean = true;
        for (tier, rec) in self.tiers.iter().zip(self.recovery.iter()) {
            let Some(work) = rec.snapshot() else { continue };
            let replayed = work.keys.len() + work.tags.len() + usize::from(work.overflow.is_some());
            match self.replay_tier(tier.as_ref(), rec, work).await {
                Ok(()) if rec.pending() == 0 => {
                    tracing::info!(cache = %self.name, tier = tier.name(), replayed, "tier recovered");
                    self.observers.emit(&CacheEvent::TierRecovered { cache: &self.name, tier: tier.name(), replayed });
                }
                Ok(()) => clean = false,
                Err(err) => {
                    clean = false;
                    tracing::debug!(cache = %self.name, tier = tier.name(), error = %err, "recovery replay deferred");
                }
            }
        }
        clean
    }

    /// Applies one tier's pending work: namespace-wide invalidations after an overflow, then
    /// the pending keys (deleted; the next read refills them from below), then the tags.
    async fn replay_tier(&self, tier: &dyn Tier, rec: &TierRecovery, work: Work) -> Result<(), TierError> {
        if let Some((namespaces, stamp)) = work.overflow {
            let mut horizon = None;
            match namespaces {
                Some(list) => {
                    for ns in list {
                        match tier.invalidate_namespace(&self.name, ns.as_str()).await {
                            Ok(_) => self.publish(&ns, InvalidationTarget::Namespace).await,
                            Err(e) if e.kind() == TierErrorKind::Unsupported => {
                                horizon = Some(self.clock.now());
                                break;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                None => horizon = Some(self.clock.now()),
            }
            rec.overflow_done(stamp, horizon);
        }
        // One key alone first: a tier still down costs one failed call per round, not 64. After
        // the probe, a failing chunk (one bad key, one master still down on a cluster) does not
        // hold back the others: every chunk and tag is tried, the first error is returned.
        let (probe, rest) = work.keys.split_at(work.keys.len().min(1));
        let mut first_error = None;
        for (i, chunk) in std::iter::once(probe).chain(rest.chunks(64)).enumerate() {
            let results = join_all(chunk.iter().map(|(k, _)| tier.delete(k))).await;
            let mut failed = None;
            for ((k, stamp), r) in chunk.iter().zip(results) {
                match r {
                    Ok(()) => {
                        rec.key_done(k, *stamp);
                        // Other instances may have refilled their L1 from the tier's older copy
                        // between its return and this delete: tell them again, now that the
                        // tier holds nothing older (the bus deduplicates).
                        self.publish(k.namespace(), InvalidationTarget::Key(k.id().to_owned())).await;
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = failed {
                if i == 0 {
                    return Err(e);
                }
                first_error.get_or_insert(e);
            }
        }
        for (ns, tag, stamp) in work.tags {
            match tier.invalidate_tag(&self.name, ns.as_str(), &tag).await {
                Ok(_) => {
                    rec.tag_done(&ns, &tag, stamp);
                    self.publish(&ns, InvalidationTarget::Tag(tag.clone())).await;
                }
                Err(e) if e.kind() == TierErrorKind::Unsupported => rec.tag_done(&ns, &tag, stamp),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A version for a write at `now`: the clock in milliseconds, shifted to leave room for
    /// 65,536 writes per millisecond, and strictly above every version this process issued
    /// before (a clock stepped back, or a burst past 65,536 per millisecond, never yields a
    /// version below the floor of this process's own earlier writes).
    fn next_version(&self, now: Timestamp) -> u64 {
        let base = now.0.saturating_mul(1 << 16);
        let mut prev = self.seq.load(Ordering::Relaxed);
        loop {
            let next = base.max(prev.saturating_add(1));
            match self.seq.compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    fn weight(&self, key: &K, value: Option<&V>, frame_len: Option<usize>) -> u64 {
        match (&self.weigher, value) {
            (Some(w), Some(v)) => w(key, v),
            _ => frame_len.map_or(std::mem::size_of::<V>() as u64, |n| n as u64),
        }
    }

    fn report_decode_error(&self, tier: &str, e: &CacheError) {
        if let CacheError::Codec(c) = e {
            self.observers.emit(&CacheEvent::CodecRejected { cache: &self.name, tier, error: c });
        }
        self.observers.emit(&CacheEvent::DecodeError { cache: &self.name, tier, error: e });
        tracing::warn!(cache = %self.name, tier, error = %e, "undecodable entry treated as a miss");
    }

    /// Encodes a frame when there are tiers to write it to.
    fn encode_if_needed(&self, skey: &Key, value: Option<&V>, meta: &EntryMeta) -> Result<Option<Bytes>, CacheError> {
        if self.tiers.is_empty() {
            return Ok(None);
        }
        let serializer = self.serializer.as_ref().ok_or_else(|| ConfigError::new("serializer", "missing"))?;
        let meta_section = frame::encode_meta(meta, serializer.id())?;
        let payload = match value {
            Some(v) => serializer.serialize(v)?,
            None => Vec::new(),
        };
        if payload.len() > self.max_value_bytes {
            return Err(CacheError::TooLarge {
                cache: self.name.clone(),
                size: payload.len(),
                limit: self.max_value_bytes,
            });
        }
        let ctx = CodecContext { key: skey, meta_section: &meta_section };
        let (steps, out) = self.pipeline.encode(&ctx, Bytes::from(payload))?;
        Ok(Some(Frame::finish(meta_section, &steps, &out)?))
    }

    /// Decodes a frame read from a tier. Hostile bytes give an error, never a panic.
    fn decode(&self, skey: &Key, bytes: &Bytes) -> Result<(EntryMeta, Option<V>), CacheError> {
        let limit = self.max_value_bytes.saturating_add(64 * 1024);
        if bytes.len() > limit {
            return Err(FrameError::TooLarge { size: bytes.len(), limit }.into());
        }
        let serializer = self.serializer.as_ref().ok_or_else(|| ConfigError::new("serializer", "missing"))?;
        let (frame, meta_len) = Frame::decode(bytes)?;
        if frame.serializer != serializer.id() {
            return Err(SerializeError {
                format: "frame",
                op: "deserialize",
                message: format!(
                    "written with serializer id {}, this cache uses {}",
                    frame.serializer,
                    serializer.id()
                ),
            }
            .into());
        }
        let ctx = CodecContext { key: skey, meta_section: &bytes[..meta_len] };
        let payload = self.pipeline.decode(&ctx, &frame.codecs, frame.payload)?;
        if frame.meta.negative {
            if !payload.is_empty() {
                return Err(FrameError::Invalid("negative entry with a payload").into());
            }
            return Ok((frame.meta, None));
        }
        if payload.len() > self.max_value_bytes {
            return Err(FrameError::TooLarge { size: payload.len(), limit: self.max_value_bytes }.into());
        }
        let value = serializer.deserialize(&payload)?;
        Ok((frame.meta, Some(value)))
    }

    /// Reads the tiers top to bottom. Returns a fresh hit (after filling the upper levels) or,
    /// failing that, the best stale-but-servable entry seen.
    async fn read_tiers(
        &self,
        ns: &Namespace,
        key: &K,
        skey: &Key,
        now: Timestamp,
        newer_than: Option<Timestamp>,
        epoch: u64,
    ) -> (Option<Fallback<V>>, Option<Fallback<V>>) {
        let mut stale: Option<Fallback<V>> = None;
        for (i, tier) in self.tiers.iter().enumerate() {
            if self.recovery[i].blocks(skey) {
                // The tier missed a write or invalidation of this key: not read until replayed.
                self.observers.emit(&CacheEvent::Miss { cache: &self.name, tier: tier.name() });
                continue;
            }
            let bytes = match tier.get(skey).await {
                Ok(Some(b)) => b,
                Ok(None) => {
                    self.observers.emit(&CacheEvent::Miss { cache: &self.name, tier: tier.name() });
                    continue;
                }
                Err(err) => {
                    self.observers.emit(&CacheEvent::TierError { cache: &self.name, error: &err });
                    continue;
                }
            };
            let (meta, value) = match self.decode(skey, &bytes) {
                Ok(d) => d,
                Err(e) => {
                    self.report_decode_error(tier.name(), &e);
                    self.observers.emit(&CacheEvent::Miss { cache: &self.name, tier: tier.name() });
                    continue;
                }
            };
            if !self.admit(i, ns, skey, &meta).await {
                self.observers.emit(&CacheEvent::Miss { cache: &self.name, tier: tier.name() });
                continue;
            }
            let usable = newer_than.is_none_or(|t| meta.fresh_until > t);
            if meta.is_fresh(now) && usable {
                self.observers.emit(&CacheEvent::Hit { cache: &self.name, tier: tier.name() });
                self.floor.raise(skey, meta.version);
                let span = tracing::Span::current();
                span.record("cache.level", tier.name());
                span.record("cache.hit", true);
                let value = value.map(Arc::new);
                let meta = Arc::new(meta);
                if self.epochs.get(ns, key) == epoch {
                    // Not after an invalidation of this key: that would resurrect deleted data.
                    let entry = StoredEntry { meta: (*meta).clone(), frame: bytes.clone() };
                    self.settle_tier_writes(self.tiers[..i].iter().map(|t| t.set(skey, &entry))).await;
                }
                if self.epochs.get(ns, key) == epoch {
                    self.fill_l1(ns, key.clone(), value.clone(), meta.clone(), Some(bytes.len()));
                }
                return (Some(Fallback { value, meta }), stale);
            }
            self.observers.emit(&CacheEvent::Miss { cache: &self.name, tier: tier.name() });
            if meta.is_servable(now) && stale.as_ref().is_none_or(|s| s.meta.fresh_until < meta.fresh_until) {
                stale = Some(Fallback { value: value.map(Arc::new), meta: Arc::new(meta) });
            }
        }
        (None, stale)
    }

    /// The singleflight leader's work: tiers, then the loader with timeouts and fail-safe.
    async fn resolve(
        self: Arc<Self>,
        ns: Namespace,
        key: K,
        load: LoadFn<K, V>,
        newer_than: Option<Timestamp>,
    ) -> LoadResult<V> {
        let epoch = self.epochs.get(&ns, &key);
        let now = self.clock.now();
        let skey = self.storage_key(&ns, &key)?;
        let mut fallback =
            self.l1.as_ref().and_then(|l1| l1.get(&ns, &key, now)).map(|e| Fallback { value: e.value, meta: e.meta });
        if newer_than.is_none()
            && let Some(f) = fallback.as_ref().filter(|f| f.meta.is_fresh(now))
        {
            // Filled by a load that finished while this one was being set up.
            return Ok(f.value.clone());
        }
        let (hit, stale) = self.read_tiers(&ns, &key, &skey, now, newer_than, epoch).await;
        if let Some(hit) = hit {
            return Ok(hit.value);
        }
        if let Some(s) = stale
            && fallback.as_ref().is_none_or(|f| f.meta.fresh_until < s.meta.fresh_until)
        {
            fallback = Some(s);
        }
        let span = tracing::Span::current();
        span.record("cache.level", "loader");
        span.record("cache.hit", false);
        if let (Some((lock, opts)), None) = (&self.lock, newer_than) {
            match lock.try_acquire(&skey, opts.ttl).await {
                Ok(Some(token)) => {
                    // Released when this future ends, however it ends (a cancelled caller must
                    // not leave the fleet waiting for the lock's TTL).
                    let mut held = HeldLock { lock: lock.clone(), key: skey.clone(), token: Some(token) };
                    self.observers.emit(&CacheEvent::LockAcquired { cache: &self.name });
                    // The previous holder may have written the value between our miss and our
                    // acquisition: look once more before loading.
                    let (hit, _) = self.read_tiers(&ns, &key, &skey, self.clock.now(), None, epoch).await;
                    let r = match hit {
                        Some(hit) => Ok(hit.value),
                        None => self.clone().load(ns, key, skey.clone(), load, fallback, epoch).await,
                    };
                    if let Some(token) = held.token.take()
                        && let Err(err) = lock.release(&skey, &token).await
                    {
                        self.observers.emit(&CacheEvent::TierError { cache: &self.name, error: &err });
                    }
                    return r;
                }
                Ok(None) => {
                    if let Some(hit) = self.wait_for_lock_holder(&ns, &key, &skey, opts, epoch).await {
                        return Ok(hit.value);
                    }
                }
                Err(err) => self.observers.emit(&CacheEvent::TierError { cache: &self.name, error: &err }),
            }
        }
        self.load(ns, key, skey, load, fallback, epoch).await
    }

    /// Another process holds the load lock: poll the tiers for the value it will write, up to
    /// `max_wait`.
    async fn wait_for_lock_holder(
        &self,
        ns: &Namespace,
        key: &K,
        skey: &Key,
        opts: &LockOptions,
        epoch: u64,
    ) -> Option<Fallback<V>> {
        let deadline = Instant::now() + opts.max_wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(opts.poll_interval.min(left)).await;
            let (hit, _) = self.read_tiers(ns, key, skey, self.clock.now(), None, epoch).await;
            if hit.is_some() {
                self.observers.emit(&CacheEvent::LockWaited { cache: &self.name, found: true });
                return hit;
            }
        }
        self.observers.emit(&CacheEvent::LockWaited { cache: &self.name, found: false });
        None
    }

    async fn load(
        self: Arc<Self>,
        ns: Namespace,
        key: K,
        skey: Key,
        load: LoadFn<K, V>,
        fallback: Option<Fallback<V>>,
        epoch: u64,
    ) -> LoadResult<V> {
        let started = Instant::now();
        let fut = load(key.clone());
        let this = self.clone();
        let (ns2, key2) = (ns.clone(), key.clone());
        let mut complete: BoxFuture<'static, LoadResult<V>> =
            Box::pin(async move { this.finish_load(ns2, key2, skey, fut.await, started, epoch).await });
        let hard = self.options.hard_timeout;
        if let (Some(soft), Some(fb)) = (self.options.soft_timeout, fallback.as_ref()) {
            match tokio::time::timeout(soft, &mut complete).await {
                Ok(r) => return self.settle(&ns, &key, r, fallback),
                Err(_) => {
                    // Serve stale now; let the load finish in the background (within the hard
                    // timeout) and update the cache.
                    let rest = hard.map(|h| h.saturating_sub(soft));
                    tokio::spawn(async move {
                        match rest {
                            Some(d) => {
                                let _ = tokio::time::timeout(d, complete).await;
                            }
                            None => {
                                let _ = complete.await;
                            }
                        }
                    });
                    self.observers
                        .emit(&CacheEvent::StaleServed { cache: &self.name, reason: StaleReason::SoftTimeout });
                    return Ok(fb.value.clone());
                }
            }
        }
        let r = match hard {
            Some(h) => match tokio::time::timeout(h, complete).await {
                Ok(r) => r,
                Err(_) => {
                    self.observers.emit(&CacheEvent::Load {
                        cache: &self.name,
                        duration: started.elapsed(),
                        outcome: LoadOutcome::Timeout,
                    });
                    let err = CacheError::Timeout { cache: self.name.clone(), timeout_ms: h.as_millis() as u64 };
                    return self.fail_safe(&ns, &key, fallback, StaleReason::HardTimeout, err);
                }
            },
            None => complete.await,
        };
        self.settle(&ns, &key, r, fallback)
    }

    fn settle(&self, ns: &Namespace, key: &K, r: LoadResult<V>, fallback: Option<Fallback<V>>) -> LoadResult<V> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => self.fail_safe(ns, key, fallback, StaleReason::LoaderError, e),
        }
    }

    fn fail_safe(
        &self,
        ns: &Namespace,
        key: &K,
        fallback: Option<Fallback<V>>,
        reason: StaleReason,
        err: CacheError,
    ) -> LoadResult<V> {
        let Some(fb) = fallback else { return Err(err) };
        self.observers.emit(&CacheEvent::StaleServed { cache: &self.name, reason });
        let throttle = self.options.fail_safe_throttle;
        if self.l1.is_some() && !throttle.is_zero() {
            // Treat the stale value as fresh for a moment so a failing source is not hammered.
            let now = self.clock.now();
            let mut meta = (*fb.meta).clone();
            meta.fresh_until = now.saturating_add(throttle).min(meta.expires_at);
            if meta.fresh_until > now {
                self.fill_l1(ns, key.clone(), fb.value.clone(), Arc::new(meta), None);
            }
        }
        Ok(fb.value)
    }

    async fn finish_load(
        self: Arc<Self>,
        ns: Namespace,
        key: K,
        skey: Key,
        r: Result<Option<V>, BoxError>,
        started: Instant,
        epoch: u64,
    ) -> LoadResult<V> {
        let duration = started.elapsed();
        let (value, negative) = match r {
            Ok(Some(v)) => (Some(Arc::new(v)), false),
            Ok(None) => (None, true),
            Err(e) => {
                self.observers.emit(&CacheEvent::Load { cache: &self.name, duration, outcome: LoadOutcome::Error });
                return Err(CacheError::Load { cache: self.name.clone(), source: Arc::from(e) });
            }
        };
        let outcome = if negative { LoadOutcome::NotFound } else { LoadOutcome::Found };
        self.observers.emit(&CacheEvent::Load { cache: &self.name, duration, outcome });
        if negative && self.options.negative_ttl.is_none() {
            return Ok(None);
        }
        if self.epochs.get(&ns, &key) != epoch {
            // Invalidated while loading: hand the value to the waiters, store nothing.
            return Ok(value);
        }
        let now = self.clock.now();
        let meta = new_meta(&self.options, now, duration, negative, self.next_version(now), fastrand::f64());
        let frame = self.encode_if_needed(&skey, value.as_deref(), &meta).unwrap_or_else(|e| {
            // Keep serving from L1; the remote tiers just miss this value.
            tracing::warn!(cache = %self.name, error = %e, "loaded value not written to remote tiers");
            None
        });
        self.store(&ns, key, &skey, value.clone(), Arc::new(meta), frame).await;
        Ok(value)
    }

    async fn store(
        &self,
        ns: &Namespace,
        key: K,
        skey: &Key,
        value: Option<Arc<V>>,
        meta: Arc<EntryMeta>,
        frame: Option<Bytes>,
    ) {
        self.fill_l1(ns, key, value, meta.clone(), frame.as_ref().map(Bytes::len));
        if let Some(frame) = frame {
            // Any frame of this key older than this one is a rollback from now on.
            self.floor.raise(skey, meta.version);
            let entry = StoredEntry { meta: (*meta).clone(), frame };
            let results = join_all(self.tiers.iter().map(|t| t.set(skey, &entry))).await;
            for (i, r) in results.into_iter().enumerate() {
                if let Err(err) = r {
                    // The tier may still hold an older value: remembered and replayed.
                    self.missed(i, &err, Missed::Key(skey));
                }
            }
        }
    }

    /// Inserts into L1 (if there is one), weighing the entry.
    fn fill_l1(&self, ns: &Namespace, key: K, value: Option<Arc<V>>, meta: Arc<EntryMeta>, frame_len: Option<usize>) {
        if let Some(l1) = &self.l1 {
            let w = self.weight(&key, value.as_deref(), frame_len);
            l1.insert(ns, key, value, meta, w);
        }
    }

    /// Runs tier writes concurrently; a failure is counted and the tier skipped, never returned.
    async fn settle_tier_writes<F>(&self, writes: impl IntoIterator<Item = F>)
    where
        F: Future<Output = Result<(), crate::error::TierError>>,
    {
        for r in join_all(writes).await {
            if let Err(err) = r {
                self.observers.emit(&CacheEvent::TierError { cache: &self.name, error: &err });
            }
        }
    }

    fn maybe_refresh_early(
        self: &Arc<Self>,
        ns: &Namespace,
        key: &K,
        meta: &EntryMeta,
        now: Timestamp,
        make_load: impl FnOnce() -> LoadFn<K, V>,
    ) {
        let u = 1.0 - fastrand::f64(); // (0, 1]
        if !should_refresh_early(now, meta.fresh_until, meta.load_cost(), self.options.early_refresh_beta, u) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let fk = (ns.clone(), key.clone());
        if !self.refreshing.lock().insert(fk.clone()) {
            return; // at most one background refresh per key
        }
        self.observers.emit(&CacheEvent::EarlyRefresh { cache: &self.name });
        let this = self.clone();
        let load = make_load();
        let fresh_until = meta.fresh_until;
        handle.spawn(async move {
            let (ns, key) = fk.clone();
            let runner = this.clone();
            let _ =
                this.flights.run(fk.clone(), move || Box::pin(runner.resolve(ns, key, load, Some(fresh_until)))).await;
            this.refreshing.lock().remove(&fk);
        });
    }

    async fn publish(&self, ns: &Namespace, target: InvalidationTarget) {
        let Some(bus) = &self.bus else { return };
        let msg = Invalidation {
            origin: self.instance,
            cache: self.name.to_string(),
            namespace: ns.as_str().to_owned(),
            target,
        };
        if let Err(error) = bus.publish(&msg).await {
            self.observers.emit(&CacheEvent::BusError { cache: &self.name, error: &error });
            // Throttled: during an outage every write fails to publish (the error is counted
            // through the observer either way).
            if self.publish_warned.swap(true, Ordering::Relaxed) {
                tracing::debug!(cache = %self.name, %error, "invalidation not published");
            } else {
                tracing::warn!(cache = %self.name, %error, "invalidation not published (further failures at debug level until one succeeds)");
            }
        } else {
            self.publish_warned.store(false, Ordering::Relaxed);
        }
    }

    fn apply_bus_event(&self, ev: BusEvent) {
        match ev {
            BusEvent::Invalidate(m) if m.origin != self.instance && *m.cache == *self.name => {
                self.observers.emit(&CacheEvent::InvalidationReceived { cache: &self.name });
                let ns = Namespace::new(&m.namespace).ok();
                if let (InvalidationTarget::Tag(tag), Some(ns)) = (&m.target, &ns) {
                    // Also hides entries carrying the tag when read from tiers later. A tag no
                    // local call would accept cannot have been set here: ignore it.
                    if validate_tag(tag).is_ok() {
                        self.apply_tag_invalidation(ns, tag);
                    }
                    return;
                }
                if let (InvalidationTarget::Key(id), Some(ns)) = (&m.target, &ns)
                    && let Ok(k) = Key::with_cache(self.name.clone(), ns.clone(), id)
                {
                    // Another instance wrote this key; its clock may be behind ours, so the floor
                    // is lowered to what we saw up to `MAX_CLOCK_SKEW` ago — never forgotten: an
                    // unauthenticated bus message must not switch rollback detection off (frames
                    // older than that stay refused).
                    let horizon = Timestamp(self.clock.now().0.saturating_sub(MAX_CLOCK_SKEW.as_millis() as u64));
                    self.floor.lower_to(&k, horizon.0.saturating_mul(1 << 16));
                }
                let Some(l1) = &self.l1 else { return };
                match (m.target, ns) {
                    (InvalidationTarget::Key(id), Some(ns)) => match &self.key_hasher {
                        None => match K::from_key_id(&id) {
                            Some(k) => {
                                self.epochs.bump(&ns, &k);
                                l1.remove(&ns, &k);
                            }
                            None => self.resync(),
                        },
                        Some(h) => {
                            self.epochs.bump_all();
                            l1.remove_where(|n, k, _| *n == ns && h(&k.key_id()) == id);
                        }
                    },
                    (InvalidationTarget::Namespace, Some(ns)) => {
                        self.epochs.bump_all();
                        l1.remove_where(|n, _, _| *n == ns);
                    }
                    _ => self.resync(),
                }
            }
            BusEvent::Resync => {
                self.observers.emit(&CacheEvent::Resync { cache: &self.name });
                self.resync();
            }
            BusEvent::Invalidate(_) => {}
        }
    }

    fn resync(&self) {
        self.epochs.bump_all();
        if let Some(l1) = &self.l1 {
            l1.clear();
        }
    }
}

/// A held fleet-wide load lock: released in the background if the future holding it is dropped
/// before it released it.
struct HeldLock {
    lock: Arc<dyn LoadLock>,
    key: Key,
    token: Option<crate::lock::LockToken>,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if let (Some(token), Ok(rt)) = (self.token.take(), tokio::runtime::Handle::try_current()) {
            let (lock, key) = (self.lock.clone(), self.key.clone());
            rt.spawn(async move {
                let _ = lock.release(&key, &token).await;
            });
        }
    }
}

/// Checks a tag: 1–[`frame::MAX_TAG_LEN`] bytes, no control characters.
fn validate_tag(tag: &str) -> Result<(), CacheError> {
    use crate::frame::MAX_TAG_LEN;
    if tag.is_empty() || tag.len() > MAX_TAG_LEN {
        return Err(CacheError::InvalidKey(format!("tag must be 1..={MAX_TAG_LEN} bytes, got {}", tag.len())));
    }
    if tag.chars().any(char::is_control) {
        return Err(CacheError::InvalidKey("tag must not contain control characters".into()));
    }
    Ok(())
}
