//! The source of truth: [`Loader`] (read on miss) and [`Writer`] (persist on write).

use std::future::Future;
use std::marker::PhantomData;

use async_trait::async_trait;

use crate::error::BoxError;

/// Loads values from the source of truth on a cache miss.
///
/// `Ok(None)` means "not found" (cached negatively when the cache has a negative TTL).
/// An `Err` is the loader's own error, boxed: the cache serves a stale value if it may, or
/// returns [`CacheError::Load`](crate::CacheError::Load) with it as the source. For a closure,
/// [`FnLoader`] saves writing the trait.
///
/// # Implementing a loader
/// A loader over a `HashMap` standing for a database, counting its calls:
///
/// ```
/// use strata_cache_core::plugin::*;
/// use std::collections::HashMap;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// struct Users {
///     rows: HashMap<u64, String>,
///     calls: AtomicU64,
/// }
///
/// #[async_trait]
/// impl Loader<u64, String> for Users {
///     async fn load(&self, id: &u64) -> Result<Option<String>, BoxError> {
///         self.calls.fetch_add(1, Ordering::Relaxed);
///         if *id == 0 {
///             return Err("id 0 is not a user id".into());
///         }
///         Ok(self.rows.get(id).cloned())
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let users = std::sync::Arc::new(Users { rows: HashMap::from([(1, "alice".to_string())]), calls: AtomicU64::new(0) });
/// let cache: Cache<u64, String> = Cache::builder("users").loader(users.clone()).build().await?;
/// assert_eq!(cache.get_or_load(&1).await?.as_deref().map(String::as_str), Some("alice"));
/// assert_eq!(cache.get_or_load(&1).await?.as_deref().map(String::as_str), Some("alice"));
/// assert_eq!(users.calls.load(Ordering::Relaxed), 1, "the second read is an L1 hit");
/// assert_eq!(cache.get_or_load(&2).await?, None);
/// assert!(matches!(cache.get_or_load(&0).await, Err(CacheError::Load { .. })));
/// # Ok::<(), CacheError>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait Loader<K, V>: Send + Sync + 'static {
    /// Loads one key.
    async fn load(&self, key: &K) -> Result<Option<V>, BoxError>;
}

/// Persists writes to the source of truth (used by write-through and write-behind policies).
///
/// # Implementing a writer
/// A writer over a shared `HashMap` standing for a database, with a [`Loader`] reading the same
/// rows: write through the writer, invalidate the cached copy, and the next read loads the new
/// value.
///
/// ```
/// use strata_cache_core::plugin::*;
/// use std::collections::HashMap;
/// use std::sync::{Arc, Mutex};
///
/// type Rows = Arc<Mutex<HashMap<u64, String>>>;
///
/// struct RowWriter(Rows);
///
/// fn poisoned<T>(_: T) -> BoxError {
///     "rows lock poisoned".into()
/// }
///
/// #[async_trait]
/// impl Writer<u64, String> for RowWriter {
///     async fn write(&self, id: &u64, value: &String) -> Result<(), BoxError> {
///         self.0.lock().map_err(poisoned)?.insert(*id, value.clone());
///         Ok(())
///     }
///     async fn write_many(&self, items: &[(u64, String)]) -> Result<(), BoxError> {
///         // One transaction for the batch.
///         self.0.lock().map_err(poisoned)?.extend(items.iter().cloned());
///         Ok(())
///     }
///     async fn delete(&self, id: &u64) -> Result<(), BoxError> {
///         self.0.lock().map_err(poisoned)?.remove(id);
///         Ok(())
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let rows: Rows = Arc::default();
/// let writer = RowWriter(rows.clone());
/// let source = rows.clone();
/// let cache: Cache<u64, String> = Cache::builder("notes")
///     .loader(FnLoader::new(move |id: u64| {
///         let rows = source.clone();
///         async move { Ok(rows.lock().map_err(poisoned)?.get(&id).cloned()) }
///     }))
///     .build()
///     .await?;
///
/// writer.write_many(&[(1, "draft".to_string()), (2, "todo".to_string())]).await.unwrap();
/// assert_eq!(cache.get_or_load(&1).await?.as_deref().map(String::as_str), Some("draft"));
/// writer.write(&1, &"final".to_string()).await.unwrap();
/// cache.invalidate(&1).await?;
/// assert_eq!(cache.get_or_load(&1).await?.as_deref().map(String::as_str), Some("final"));
/// writer.delete(&2).await.unwrap();
/// assert_eq!(cache.get_or_load(&2).await?, None);
/// # Ok::<(), CacheError>(())
/// # }).unwrap();
/// ```
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

/// A shared loader is a loader: [`CacheBuilder::loader`](crate::CacheBuilder::loader) takes
/// `Arc<L>` and `Arc<dyn Loader<K, V>>` as well as a plain value (the caller keeps a handle, e.g.
/// to count calls).
#[async_trait]
impl<K: Sync + 'static, V: 'static, L: Loader<K, V> + ?Sized> Loader<K, V> for std::sync::Arc<L> {
    async fn load(&self, key: &K) -> Result<Option<V>, BoxError> {
        (**self).load(key).await
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
