//! The read side: `get`, `get_many`, and the one tier probe both use.
//!
//! [`Inner::read_tiers`] reads a batch of keys (one key for `get` and the loader path) through
//! the tiers top to bottom. Per tier it asks every key still unresolved in one call (`get` for
//! one key, `get_many` for several), then [`Inner::probe`] checks each answer the same way:
//! decode and verify the frame, tag and recovery horizons, freshness floor, strict versions,
//! freshness, and the best stale fallback. Fresh hits are copied into the upper tiers and L1
//! only if the key's epoch did not move before either copy (an invalidation while the read was
//! in flight must not be undone). So the single and the batch path cannot drift apart.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, join_all};
use tracing::Instrument;

use super::{Cache, Fallback, Inner, LoadResult, Op};
use crate::clock::Timestamp;
use crate::codec::CodecContext;
use crate::error::{CacheError, ConfigError, FrameError, SerializeError, TierError, TierErrorKind};
use crate::frame::Frame;
use crate::key::{CacheKey, Key, Namespace};
use crate::meta::EntryMeta;
use crate::observer::{CacheEvent, L1, RejectReason};
use crate::tier::{StoredEntry, Tier};

/// One key's way through the tiers.
pub(super) struct KeyRead<'k, K, V> {
    key: &'k K,
    skey: Key,
    /// The key's epoch before the first tier was read.
    epoch: u64,
    /// The fresh hit, once a tier gave one.
    pub(super) hit: Option<Fallback<V>>,
    /// The best stale-but-servable entry seen so far (for fail-safe).
    pub(super) stale: Option<Fallback<V>>,
}

/// What the tiers held for a key they had no fresh entry for: handed from `get_many`'s batch
/// probe to the loader path, so that the tiers are not read twice.
pub(super) struct TierMiss<V> {
    /// The best stale-but-servable entry seen (for fail-safe).
    pub(super) stale: Option<Fallback<V>>,
}

impl<'k, K, V> KeyRead<'k, K, V> {
    pub(super) fn new(key: &'k K, skey: Key, epoch: u64) -> Self {
        Self { key, skey, epoch, hit: None, stale: None }
    }
}

impl<K, V> Cache<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    /// Reads a fresh value from L1 or the tiers, without calling the loader.
    pub async fn get(&self, key: &K) -> LoadResult<V> {
        if let Some(v) = self.l1_fresh(key, |_, _| {}) {
            return Ok(v);
        }
        // The slow path is boxed so that the future of an L1 hit stays a few words large.
        let span = self.span(Op::Get, key);
        let slow: BoxFuture<'_, LoadResult<V>> = Box::pin(self.get_below_l1(key).instrument(span));
        slow.await
    }

    /// The L1 fast path: a fresh entry's value (reported as a hit), or `None` (reported as an
    /// L1 miss when there is an L1). `on_hit` sees the entry's metadata and the time.
    #[inline]
    pub(super) fn l1_fresh(&self, key: &K, on_hit: impl FnOnce(&EntryMeta, Timestamp)) -> Option<Option<Arc<V>>> {
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
        let (hit, _) = inner.read_one(&self.ns, key, skey, now, None, epoch).await;
        Ok(hit.and_then(|f| f.value))
    }

    /// Reads many keys: L1 first, then each tier with one batched call for the keys still
    /// missing, then the loader (if configured) for the rest, concurrently. Results are in `keys`
    /// order.
    ///
    /// Each key gets exactly what [`Cache::get`] (no loader) or [`Cache::get_or_load`] (loader)
    /// would give it: the tiers are probed by the same code, and misses go through the same
    /// read-through path.
    pub async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<Arc<V>>>, CacheError> {
        let mut out: Vec<Option<Arc<V>>> = vec![None; keys.len()];
        let mut missing = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match self.l1_fresh(k, |_, _| {}) {
                Some(v) => out[i] = v,
                None => missing.push(i),
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let span = Op::GetMany.span(&self.inner.name, &self.ns);
        span.record("cache.keys", missing.len());
        self.get_many_below_l1(keys, missing, out).instrument(span).await
    }

    async fn get_many_below_l1(
        &self,
        keys: &[K],
        missing: Vec<usize>,
        mut out: Vec<Option<Arc<V>>>,
    ) -> Result<Vec<Option<Arc<V>>>, CacheError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        // Epochs before any tier read: a key invalidated while its batch is in flight is neither
        // put in L1 nor copied into the upper tiers.
        let mut reads = Vec::with_capacity(missing.len());
        for &i in &missing {
            let epoch = inner.epochs.get(&self.ns, &keys[i]);
            reads.push(KeyRead::new(&keys[i], inner.storage_key(&self.ns, &keys[i])?, epoch));
        }
        inner.read_tiers(&self.ns, &mut reads, now, None).await;
        let mut unresolved = Vec::new();
        for (&i, r) in missing.iter().zip(reads) {
            match r.hit {
                Some(hit) => out[i] = hit.value,
                None => unresolved.push((i, TierMiss { stale: r.stale })),
            }
        }
        if inner.loader.is_some() && !unresolved.is_empty() {
            // The same read-through as `get_or_load` after its L1 miss, minus the tier read
            // just done.
            let mut loads = Vec::with_capacity(unresolved.len());
            for (i, miss) in unresolved {
                let make_load = self.configured_loader()?;
                loads.push(async move { (i, self.load_below_l1(&keys[i], make_load, Some(miss)).await) });
            }
            for (i, r) in join_all(loads).await {
                out[i] = r?;
            }
        }
        Ok(out)
    }
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    /// [`Inner::read_tiers`] for one key: the fresh hit and the best stale entry seen.
    pub(super) async fn read_one(
        &self,
        ns: &Namespace,
        key: &K,
        skey: Key,
        now: Timestamp,
        newer_than: Option<Timestamp>,
        epoch: u64,
    ) -> (Option<Fallback<V>>, Option<Fallback<V>>) {
        let mut reads = [KeyRead::new(key, skey, epoch)];
        self.read_tiers(ns, &mut reads, now, newer_than).await;
        let [r] = reads;
        (r.hit, r.stale)
    }

    /// Reads the tiers top to bottom for every key of `reads` without a hit yet, filling in
    /// each one's fresh hit (after copying it into the upper levels) and best stale entry.
    /// `newer_than`: a hit must be fresh past this (early refresh).
    pub(super) async fn read_tiers(
        &self,
        ns: &Namespace,
        reads: &mut [KeyRead<'_, K, V>],
        now: Timestamp,
        newer_than: Option<Timestamp>,
    ) {
        for (i, tier) in self.tiers.iter().enumerate() {
            let mut asking = Vec::new();
            for (r, read) in reads.iter().enumerate() {
                if read.hit.is_some() {
                    continue;
                }
                if self.recovery[i].blocks(&read.skey) {
                    // The tier missed a write or invalidation of this key: not read until replayed.
                    self.observers.emit(&CacheEvent::Miss { cache: &self.name, tier: tier.name() });
                    continue;
                }
                asking.push(r);
            }
            if asking.is_empty() {
                continue;
            }
            let Some(answers) = self.fetch(tier.as_ref(), reads, &asking).await else { continue };
            let mut hits = Vec::new();
            for (&r, bytes) in asking.iter().zip(answers) {
                if let Some(hit) = self.probe(i, ns, &mut reads[r], bytes, now, newer_than).await {
                    hits.push((r, hit));
                }
            }
            if hits.is_empty() {
                continue;
            }
            let span = tracing::Span::current();
            span.record("cache.level", tier.name());
            span.record("cache.hit", true);
            // Not after an invalidation of the key: that would resurrect deleted data.
            let fills: Vec<(Key, StoredEntry)> = hits
                .iter()
                .filter(|(r, _)| self.epochs.get(ns, reads[*r].key) == reads[*r].epoch)
                .map(|(r, (meta, _, bytes))| {
                    (reads[*r].skey.clone(), StoredEntry { meta: meta.clone(), frame: bytes.clone() })
                })
                .collect();
            self.fill_upper_tiers(i, &fills).await;
            for (r, (meta, value, bytes)) in hits {
                let read = &mut reads[r];
                let value = value.map(Arc::new);
                let meta = Arc::new(meta);
                if self.epochs.get(ns, read.key) == read.epoch {
                    self.fill_l1(ns, read.key.clone(), value.clone(), meta.clone(), Some(bytes.len()));
                }
                read.hit = Some(Fallback { value, meta });
            }
        }
    }

    /// Asks `tier` for the keys `asking` (indexes into `reads`) in one call. `None` when the
    /// tier failed (reported).
    async fn fetch(
        &self,
        tier: &dyn Tier,
        reads: &[KeyRead<'_, K, V>],
        asking: &[usize],
    ) -> Option<Vec<Option<Bytes>>> {
        let answer = match asking {
            [r] => tier.get(&reads[*r].skey).await.map(|b| vec![b]),
            _ => {
                let batch: Vec<Key> = asking.iter().map(|&r| reads[r].skey.clone()).collect();
                match tier.get_many(&batch).await {
                    Ok(f) if f.len() != batch.len() => Err(TierError::new(
                        tier.name().to_owned(),
                        TierErrorKind::Protocol,
                        format!("get_many returned {} results for {} keys", f.len(), batch.len()),
                    )),
                    other => other,
                }
            }
        };
        match answer {
            Ok(a) => Some(a),
            Err(err) => {
                self.observers.emit(&CacheEvent::TierError { cache: &self.name, error: &err });
                None
            }
        }
    }

    /// Checks what tier `i` answered for one key: decodes and verifies the frame, applies the
    /// horizons and freshness floor ([`Inner::admit`]), and reports a hit or a miss. Returns a
    /// fresh entry (its floor raised); a stale but servable one is kept in `read.stale` instead.
    async fn probe(
        &self,
        i: usize,
        ns: &Namespace,
        read: &mut KeyRead<'_, K, V>,
        bytes: Option<Bytes>,
        now: Timestamp,
        newer_than: Option<Timestamp>,
    ) -> Option<(EntryMeta, Option<V>, Bytes)> {
        let tier = self.tiers[i].name();
        let miss = || self.observers.emit(&CacheEvent::Miss { cache: &self.name, tier });
        let Some(bytes) = bytes else {
            miss();
            return None;
        };
        let (meta, value) = match self.decode(&read.skey, &bytes) {
            Ok(d) => d,
            Err(e) => {
                self.report_decode_error(tier, &e);
                miss();
                return None;
            }
        };
        if !self.admit(i, ns, &read.skey, &meta).await {
            miss();
            return None;
        }
        let usable = newer_than.is_none_or(|t| meta.fresh_until > t);
        if meta.is_fresh(now) && usable {
            self.observers.emit(&CacheEvent::Hit { cache: &self.name, tier });
            self.floor.raise(&read.skey, meta.version);
            return Some((meta, value, bytes));
        }
        miss();
        if meta.is_servable(now) && read.stale.as_ref().is_none_or(|s| s.meta.fresh_until < meta.fresh_until) {
            read.stale = Some(Fallback { value: value.map(Arc::new), meta: Arc::new(meta) });
        }
        None
    }

    /// Copies fresh hits of tier `i` into the tiers above it (one `set`, or one `set_many` per
    /// tier for several); failures are counted, never returned.
    async fn fill_upper_tiers(&self, i: usize, fills: &[(Key, StoredEntry)]) {
        match fills {
            [] => {}
            [(skey, entry)] => self.settle_tier_writes(self.tiers[..i].iter().map(|t| t.set(skey, entry))).await,
            _ => self.settle_tier_writes(self.tiers[..i].iter().map(|t| t.set_many(fills))).await,
        }
    }

    /// Whether a decoded frame of `skey` read from tier `i` may be served: not hidden by a tag
    /// invalidation or by the tier's recovery horizon, not older than the key's freshness
    /// floor, and (strict mode, upper tiers) confirmed by the last tier.
    async fn admit(&self, i: usize, ns: &Namespace, skey: &Key, meta: &EntryMeta) -> bool {
        if self.tags.hides(ns, meta) || self.recovery[i].below_horizon(meta.created) {
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

    fn report_decode_error(&self, tier: &str, e: &CacheError) {
        if let CacheError::Codec(c) = e {
            self.observers.emit(&CacheEvent::CodecRejected { cache: &self.name, tier, error: c });
        }
        self.observers.emit(&CacheEvent::DecodeError { cache: &self.name, tier, error: e });
        tracing::warn!(cache = %self.name, tier, error = %e, "undecodable entry treated as a miss");
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
}
