//! The multi-level cache engine: L1 → tiers → loader, with singleflight, XFetch early refresh,
//! fail-safe, negative caching and distributed invalidation.
//!
//! The rooms of [`Cache`]:
//! - `mod.rs`: the [`Cache`] handle, the shared `Inner` state, accessors, storage keys.
//! - `builder.rs`: [`CacheDefaults`] (the type-independent settings) and [`CacheBuilder`].
//! - `read.rs`: `get`, `get_many` and the one tier probe both use (decode, verify, horizons,
//!   freshness floor, epochs before and after, stale fallback, spans, events).
//! - `load.rs`: read-through, the singleflight leader (fleet lock, loader timeouts), fail-safe,
//!   early refresh.
//! - `write.rs`: `set`, single-key invalidation, encoding, versions, storing in every level.
//! - `tags.rs`: the `TagRegistry` and tag invalidation.
//! - `epochs.rs`: striped invalidation epochs (an invalidated read or load stores nothing).
//! - `bus.rs`: the bus listener, publishing, applying other instances' invalidations.
//! - `replay.rs`: recording what a failing tier missed and replaying it.
//! - `op.rs`: the `Op` enum that names each traced operation and opens its span.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use parking_lot::Mutex;

use crate::bus::{InstanceId, InvalidationBus};
use crate::clock::Clock;
use crate::codec::CodecPipeline;
use crate::error::{BoxError, CacheError};
use crate::freshness::FreshnessFloor;
use crate::key::{CacheKey, Key, Namespace};
use crate::l1::L1Cache;
use crate::lock::{LoadLock, LockOptions};
use crate::meta::EntryMeta;
use crate::observer::Observers;
use crate::options::EntryOptions;
use crate::recovery::TierRecovery;
use crate::serializer::Serializer;
use crate::singleflight::SingleFlight;
use crate::source::Loader;
use crate::tier::{Tier, TierHealth};

mod builder;
mod bus;
mod epochs;
mod load;
mod op;
mod read;
mod replay;
mod tags;
mod write;

pub use builder::{CacheBuilder, CacheDefaults};
use epochs::Epochs;
use op::Op;
use tags::TagRegistry;

/// The result of a read: the value, `None` for "not found".
pub type LoadResult<V> = Result<Option<Arc<V>>, CacheError>;

/// A one-shot load function (the configured [`Loader`] or a caller's closure).
type LoadFn<K, V> = Box<dyn FnOnce(K) -> BoxFuture<'static, Result<Option<V>, BoxError>> + Send>;

/// A weigher for L1 entries: the value's approximate size in bytes.
pub type Weigher<K, V> = Arc<dyn Fn(&K, &V) -> u64 + Send + Sync>;

/// Maps a key id to the id remote tiers store (e.g. a keyed hash, so that personal data never
/// appears in Redis key names or SQL rows).
pub type KeyIdHasher = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// The default largest serialized value (16 MiB).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;

/// A value (or "not found") with its metadata: a hit, or a stale entry kept for fail-safe.
struct Fallback<V> {
    value: Option<Arc<V>>,
    meta: Arc<EntryMeta>,
}

/// The state every clone of a [`Cache`] shares.
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
    publish_warned: AtomicBool,
    lock: Option<(Arc<dyn LoadLock>, LockOptions)>,
    key_hasher: Option<KeyIdHasher>,
    /// When each tag was last invalidated: older entries carrying it are misses.
    tags: TagRegistry,
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

    /// A span for an operation on `key` below L1 (`cache.level` and `cache.hit` are recorded
    /// by the read path). The key appears only as its fingerprint.
    fn span(&self, op: Op, key: &K) -> tracing::Span {
        let span = op.span(&self.inner.name, &self.ns);
        if !span.is_disabled()
            && let Ok(k) = self.inner.storage_key(&self.ns, key)
        {
            span.record("cache.key_hash", k.log_hash().as_str());
        }
        span
    }
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    /// The key remote tiers store `key` under (hashed ids when configured).
    pub(super) fn storage_key(&self, ns: &Namespace, key: &K) -> Result<Key, CacheError> {
        match &self.key_hasher {
            None => Key::with_cache(self.name.clone(), ns.clone(), &key.key_id()),
            Some(h) => Key::with_cache(self.name.clone(), ns.clone(), &h(&key.key_id())),
        }
    }
}
