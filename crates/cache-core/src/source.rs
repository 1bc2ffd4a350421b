//! The source of truth: [`Loader`] (read on miss) and [`Writer`] (persist on write).

use std::future::Future;
use std::marker::PhantomData;

use async_trait::async_trait;

use crate::error::BoxError;

/// Loads values from the source of truth on a cache miss.
///
/// `Ok(None)` means "not found" (cached negatively when the cache has a negative TTL).
#[async_trait]
pub trait Loader<K, V>: Send + Sync + 'static {
    /// Loads one key.
    async fn load(&self, key: &K) -> Result<Option<V>, BoxError>;
}

/// Persists writes to the source of truth (used by write-through and write-behind policies).
#[async_trait]
pub trait Writer<K, V>: Send + Sync + 'static
where
    K: Sync,
    V: Sync,
{
    /// Writes one value.
    async fn write(&self, key: &K, value: &V) -> Result<(), BoxError>;

    /// Writes a batch; the default writes one at a time.
    async fn write_many(&self, items: &[(K, V)]) -> Result<(), BoxError> {
        for (k, v) in items {
            self.write(k, v).await?;
        }
        Ok(())
    }

    /// Deletes a key from the source.
    async fn delete(&self, key: &K) -> Result<(), BoxError>;
}

/// A [`Loader`] from an async closure.
///
/// ```
/// use strata_cache_core::{FnLoader, Loader};
/// let loader = FnLoader::new(|k: u64| async move { Ok::<_, strata_cache_core::BoxError>(Some(k * 2)) });
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// assert_eq!(loader.load(&21).await.unwrap(), Some(42));
/// # });
/// ```
pub struct FnLoader<F, K, V> {
    f: F,
    _p: PhantomData<fn(K) -> V>,
}

impl<F, K, V> FnLoader<F, K, V> {
    /// Wraps `f`.
    pub fn new(f: F) -> Self {
        Self { f, _p: PhantomData }
    }
}

#[async_trait]
impl<F, Fut, K, V> Loader<K, V> for FnLoader<F, K, V>
where
    F: Fn(K) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<V>, BoxError>> + Send + 'static,
    K: Clone + Send + Sync + 'static,
    V: Send + 'static,
{
    async fn load(&self, key: &K) -> Result<Option<V>, BoxError> {
        (self.f)(key.clone()).await
    }
}
