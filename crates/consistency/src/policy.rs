//! Cache-aside and write-through, and [`WritePolicy`], the per-cache choice among the three.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use strata_cache_core::{Cache, CacheKey, Writer};

use crate::error::ConsistencyError;
use crate::stripes::Stripes;
use crate::write_behind::WriteBehind;

/// Cache-aside: the application writes the source, then drops the cached copy so the next read
/// loads the new value.
///
/// [`CacheAside::set`] / [`CacheAside::delete`] are the two steps in the right order (source
/// first, then [`Cache::invalidate`], which also tells other instances through the bus). The
/// cache never holds a value the source has not accepted. If the source write fails, the cache
/// is untouched.
pub struct CacheAside<K, V> {
    cache: Cache<K, V>,
    writer: Arc<dyn Writer<K, V>>,
}

impl<K, V> Clone for CacheAside<K, V> {
    fn clone(&self) -> Self {
        Self { cache: self.cache.clone(), writer: self.writer.clone() }
    }
}

impl<K, V> std::fmt::Debug for CacheAside<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheAside").field("cache", &self.cache).finish()
    }
}

impl<K: CacheKey, V: Send + Sync + 'static> CacheAside<K, V> {
    /// Wraps a cache and its source writer.
    pub fn new(cache: Cache<K, V>, writer: Arc<dyn Writer<K, V>>) -> Self {
        Self { cache, writer }
    }

    /// The cache.
    pub fn cache(&self) -> &Cache<K, V> {
        &self.cache
    }

    /// Writes the source, then invalidates the key in every level.
    pub async fn set(&self, key: &K, value: &V) -> Result<(), ConsistencyError> {
        self.writer.write(key, value).await.map_err(|e| source_error(&self.cache, e))?;
        invalidate_after_write(&self.cache, key).await
    }

    /// Deletes from the source, then invalidates the key in every level.
    pub async fn delete(&self, key: &K) -> Result<(), ConsistencyError> {
        self.writer.delete(key).await.map_err(|e| source_error(&self.cache, e))?;
        invalidate_after_write(&self.cache, key).await
    }
}

/// Invalidates `key` after the source changed (the helper behind cache-aside; use it directly
/// when the application writes the source itself).
pub async fn invalidate_after_write<K: CacheKey, V: Send + Sync + 'static>(
    cache: &Cache<K, V>,
    key: &K,
) -> Result<(), ConsistencyError> {
    cache.invalidate(key).await?;
    Ok(())
}

fn source_error<K, V>(cache: &Cache<K, V>, e: strata_cache_core::BoxError) -> ConsistencyError
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    ConsistencyError::Source { cache: Arc::from(cache.name()), source: Arc::from(e) }
}

/// Write-through: [`WriteThrough::set`] writes the source first and then every cache level
/// ([`Cache::set`]). A failed source write returns [`ConsistencyError::Source`] and leaves the
/// cache unchanged.
///
/// Writes to one key through the same `WriteThrough` are serialized (striped locks), so the
/// source and the cache see them in the same order. Each write runs as its own task: a caller
/// that stops waiting cannot leave the source written and the cache stale.
pub struct WriteThrough<K, V> {
    inner: Arc<WtInner<K, V>>,
}

struct WtInner<K, V> {
    cache: Cache<K, V>,
    writer: Arc<dyn Writer<K, V>>,
    stripes: Stripes,
}

impl<K, V> Clone for WriteThrough<K, V> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<K, V> std::fmt::Debug for WriteThrough<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteThrough").field("cache", &self.inner.cache).finish()
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> WriteThrough<K, V> {
    /// Wraps a cache and its source writer.
    pub fn new(cache: Cache<K, V>, writer: Arc<dyn Writer<K, V>>) -> Self {
        Self { inner: Arc::new(WtInner { cache, writer, stripes: Stripes::new() }) }
    }

    /// The cache.
    pub fn cache(&self) -> &Cache<K, V> {
        &self.inner.cache
    }

    /// Writes the source, then the cache. On a source error nothing in the cache changes.
    pub async fn set(&self, key: K, value: V) -> Result<Arc<V>, ConsistencyError> {
        let inner = self.inner.clone();
        let name = Arc::from(inner.cache.name());
        run_task(name, async move {
            let _g = inner.stripes.lock(&key).await;
            inner.writer.write(&key, &value).await.map_err(|e| source_error(&inner.cache, e))?;
            Ok(inner.cache.set(key, value).await?)
        })
        .await
    }

    /// Deletes from the source, then invalidates the key in every level. On a source error
    /// nothing in the cache changes.
    pub async fn delete(&self, key: K) -> Result<(), ConsistencyError> {
        let inner = self.inner.clone();
        let name = Arc::from(inner.cache.name());
        run_task(name, async move {
            let _g = inner.stripes.lock(&key).await;
            inner.writer.delete(&key).await.map_err(|e| source_error(&inner.cache, e))?;
            Ok(inner.cache.invalidate(&key).await?)
        })
        .await
    }
}

/// Runs `fut` as its own task (it completes even if the caller stops waiting); a panic in the
/// writer becomes a source error.
async fn run_task<T: Send + 'static>(
    cache: Arc<str>,
    fut: impl Future<Output = Result<T, ConsistencyError>> + Send + 'static,
) -> Result<T, ConsistencyError> {
    match tokio::spawn(fut).await {
        Ok(r) => r,
        Err(e) => Err(ConsistencyError::Source { cache, source: Arc::new(e) }),
    }
}

/// The write policy of one cache, chosen at configuration time.
pub enum WritePolicy<K, V> {
    /// Source first, then invalidate ([`CacheAside`]).
    CacheAside(CacheAside<K, V>),
    /// Source first, then every cache level ([`WriteThrough`]).
    WriteThrough(WriteThrough<K, V>),
    /// Cache now, source later through a journal ([`WriteBehind`]).
    WriteBehind(WriteBehind<K, V>),
}

impl<K, V> Clone for WritePolicy<K, V> {
    fn clone(&self) -> Self {
        match self {
            WritePolicy::CacheAside(p) => WritePolicy::CacheAside(p.clone()),
            WritePolicy::WriteThrough(p) => WritePolicy::WriteThrough(p.clone()),
            WritePolicy::WriteBehind(p) => WritePolicy::WriteBehind(p.clone()),
        }
    }
}

impl<K, V> std::fmt::Debug for WritePolicy<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WritePolicy::CacheAside(p) => p.fmt(f),
            WritePolicy::WriteThrough(p) => p.fmt(f),
            WritePolicy::WriteBehind(p) => p.fmt(f),
        }
    }
}

impl<K, V> WritePolicy<K, V>
where
    K: CacheKey + Serialize + DeserializeOwned,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Writes `value` per the policy.
    pub async fn set(&self, key: K, value: V) -> Result<(), ConsistencyError> {
        match self {
            WritePolicy::CacheAside(p) => p.set(&key, &value).await,
            WritePolicy::WriteThrough(p) => p.set(key, value).await.map(|_| ()),
            WritePolicy::WriteBehind(p) => p.set(key, value).await.map(|_| ()),
        }
    }

    /// Deletes `key` per the policy.
    pub async fn delete(&self, key: K) -> Result<(), ConsistencyError> {
        match self {
            WritePolicy::CacheAside(p) => p.delete(&key).await,
            WritePolicy::WriteThrough(p) => p.delete(key).await,
            WritePolicy::WriteBehind(p) => p.delete(key).await,
        }
    }

    /// The policy's name: `cache-aside`, `write-through` or `write-behind`.
    pub fn name(&self) -> &'static str {
        match self {
            WritePolicy::CacheAside(_) => "cache-aside",
            WritePolicy::WriteThrough(_) => "write-through",
            WritePolicy::WriteBehind(_) => "write-behind",
        }
    }
}
