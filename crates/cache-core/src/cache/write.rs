//! The write side: `set`, single-key invalidation, and how an entry is encoded, versioned and
//! stored in (or deleted from) every level.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use tracing::Instrument;

use super::{Cache, Inner, Op};
use crate::bus::InvalidationTarget;
use crate::clock::Timestamp;
use crate::codec::CodecContext;
use crate::error::{CacheError, ConfigError};
use crate::expiry::new_meta;
use crate::frame::{self, Frame};
use crate::key::{CacheKey, Key, Namespace};
use crate::meta::EntryMeta;
use crate::options::EntryOptions;
use crate::recovery::{Missed, TierRecovery};
use crate::tier::StoredEntry;

impl<K, V> Cache<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    /// Writes a value with the cache's default options: L1, every tier, then publishes an
    /// invalidation so other instances drop their L1 copy. Nothing changes if the value cannot
    /// be encoded.
    pub async fn set(&self, key: K, value: V) -> Result<Arc<V>, CacheError> {
        self.set_with(key, value, &self.inner.options.clone()).await
    }

    /// Like [`Cache::set`] with explicit options.
    pub async fn set_with(&self, key: K, value: V, options: &EntryOptions) -> Result<Arc<V>, CacheError> {
        let span = self.span(Op::Set, &key);
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
        let span = self.span(Op::Invalidate, key);
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

    /// Drops every L1 entry of this cache (all namespaces); tiers are untouched.
    pub fn clear_l1(&self) {
        self.inner.epochs.bump_all();
        if let Some(l1) = &self.inner.l1 {
            l1.clear();
        }
    }
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    /// A version for a write at `now`: the clock in milliseconds, shifted to leave room for
    /// 65,536 writes per millisecond, and strictly above every version this process issued
    /// before (a clock stepped back, or a burst past 65,536 per millisecond, never yields a
    /// version below the floor of this process's own earlier writes).
    pub(super) fn next_version(&self, now: Timestamp) -> u64 {
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

    /// Encodes a frame when there are tiers to write it to.
    pub(super) fn encode_if_needed(
        &self,
        skey: &Key,
        value: Option<&V>,
        meta: &EntryMeta,
    ) -> Result<Option<Bytes>, CacheError> {
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

    /// Writes an entry to L1 and every tier; a tier that fails remembers the key for replay.
    pub(super) async fn store(
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

    /// An L1 entry's weight: the weigher's, else the frame's size, else the value type's.
    fn weight(&self, key: &K, value: Option<&V>, frame_len: Option<usize>) -> u64 {
        match (&self.weigher, value) {
            (Some(w), Some(v)) => w(key, v),
            _ => frame_len.map_or(std::mem::size_of::<V>() as u64, |n| n as u64),
        }
    }

    /// Inserts into L1 (if there is one), weighing the entry.
    pub(super) fn fill_l1(
        &self,
        ns: &Namespace,
        key: K,
        value: Option<Arc<V>>,
        meta: Arc<EntryMeta>,
        frame_len: Option<usize>,
    ) {
        if let Some(l1) = &self.l1 {
            let w = self.weight(&key, value.as_deref(), frame_len);
            l1.insert(ns, key, value, meta, w);
        }
    }

    /// Deletes `skey` from every tier; a tier that fails remembers it for replay, one that
    /// succeeds forgets what it had pending for the key.
    pub(super) async fn delete_tiers(&self, skey: &Key) {
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
}
