//! The load side: read-through (`get_or_load`, `get_or_load_with`, `warm`), the singleflight
//! leader's work (tiers, fleet-wide lock, loader with timeouts), fail-safe, and early refresh.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::future::BoxFuture;
use tracing::Instrument;

use super::read::TierMiss;
use super::{Cache, Fallback, Inner, LoadFn, LoadResult, Op, WarmReport};
use crate::clock::Timestamp;
use crate::error::{BoxError, CacheError};
use crate::expiry::{new_meta, should_refresh_early};
use crate::key::{CacheKey, Key, Namespace};
use crate::lock::{LoadLock, LockOptions};
use crate::meta::EntryMeta;
use crate::observer::{CacheEvent, LoadOutcome, StaleReason};

impl<K, V> Cache<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    /// Reads through every level, calling the configured loader on a miss.
    pub async fn get_or_load(&self, key: &K) -> LoadResult<V> {
        let make_load = self.configured_loader()?;
        self.read_through(key, make_load).await
    }

    /// Makes load functions calling the configured loader.
    pub(super) fn configured_loader(&self) -> Result<impl FnOnce() -> LoadFn<K, V> + Send + '_, CacheError> {
        let Some(loader) = &self.inner.loader else { return Err(CacheError::NoLoader(self.inner.name.clone())) };
        Ok(move || -> LoadFn<K, V> {
            let loader = loader.clone();
            Box::new(move |k: K| Box::pin(async move { loader.load(&k).await }))
        })
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
        // Boxed so that the future of an L1 hit stays small.
        let slow: BoxFuture<'_, LoadResult<V>> = Box::pin(self.load_below_l1(key, make_load, None));
        slow.await
    }

    /// Read-through below L1 (after an L1 miss was reported): one singleflight per key whose
    /// leader reads the tiers (unless `probed` says what they held) and then loads.
    pub(super) async fn load_below_l1(
        &self,
        key: &K,
        make_load: impl FnOnce() -> LoadFn<K, V> + Send,
        probed: Option<TierMiss<V>>,
    ) -> LoadResult<V> {
        let inner = &self.inner;
        let this = inner.clone();
        let (ns, k) = (self.ns.clone(), key.clone());
        let span = self.span(Op::Get, key);
        let (result, leader) = inner
            .flights
            .run((self.ns.clone(), key.clone()), move || Box::pin(this.resolve(ns, k, make_load(), None, probed)))
            .instrument(span)
            .await;
        if !leader {
            inner.observers.emit(&CacheEvent::Coalesced { cache: &inner.name });
        }
        result
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
    /// The singleflight leader's work: tiers, then the loader with timeouts and fail-safe.
    async fn resolve(
        self: Arc<Self>,
        ns: Namespace,
        key: K,
        load: LoadFn<K, V>,
        newer_than: Option<Timestamp>,
        probed: Option<TierMiss<V>>,
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
        let (hit, stale) = match probed {
            // `get_many` read the tiers for this key just before: no fresh hit there.
            Some(miss) => (None, miss.stale),
            None => self.read_one(&ns, &key, skey.clone(), now, newer_than, epoch).await,
        };
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
                    let (hit, _) = self.read_one(&ns, &key, skey.clone(), self.clock.now(), None, epoch).await;
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
            let (hit, _) = self.read_one(ns, key, skey.clone(), self.clock.now(), None, epoch).await;
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
            let _ = this
                .flights
                .run(fk.clone(), move || Box::pin(runner.resolve(ns, key, load, Some(fresh_until), None)))
                .await;
            this.refreshing.lock().remove(&fk);
        });
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
