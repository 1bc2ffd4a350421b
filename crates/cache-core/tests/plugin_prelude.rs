//! A plugin written against the prelude alone: a `Tier` and a `Codec` (plus a serializer to
//! check the id-range rule) with nothing but `use strata_cache_core::plugin::*;` and `std`, run
//! through a `Cache`.
#![allow(clippy::unwrap_used)] // test helpers

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use strata_cache_core::plugin::*;

/// A tier over a `HashMap`, with a switch that makes every call fail.
#[derive(Default)]
struct MapTier {
    map: Mutex<HashMap<Key, StoredEntry>>,
    down: AtomicBool,
    batches: AtomicU64,
}

impl MapTier {
    fn map(&self) -> Result<MutexGuard<'_, HashMap<Key, StoredEntry>>, TierError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(TierError::new("map", TierErrorKind::Unavailable, "switched off"));
        }
        self.map.lock().map_err(|_| TierError::new("map", TierErrorKind::Other, "poisoned"))
    }

    fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[async_trait]
impl Tier for MapTier {
    fn name(&self) -> &str {
        "map"
    }
    async fn get(&self, key: &Key) -> Result<Option<Bytes>, TierError> {
        Ok(self.map()?.get(key).map(|e| e.frame.clone()))
    }
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>, TierError> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        let map = self.map()?;
        Ok(keys.iter().map(|k| map.get(k).map(|e| e.frame.clone())).collect())
    }
    async fn set(&self, key: &Key, entry: &StoredEntry) -> Result<(), TierError> {
        self.map()?.insert(key.clone(), entry.clone());
        Ok(())
    }
    async fn delete(&self, key: &Key) -> Result<(), TierError> {
        self.map()?.remove(key);
        Ok(())
    }
    async fn health(&self) -> TierHealth {
        if self.down.load(Ordering::SeqCst) {
            TierHealth::Unhealthy("switched off".into())
        } else {
            TierHealth::Healthy
        }
    }
}

/// Reverses the payload; records one parameter byte so that decoding can check it.
struct Reverse;

impl Codec for Reverse {
    fn id(&self) -> u8 {
        201
    }
    fn name(&self) -> &'static str {
        "reverse"
    }
    fn encode(&self, _: &CodecContext<'_>, input: Bytes) -> Result<Encoded, CodecError> {
        let mut out = BytesMut::with_capacity(input.len());
        out.extend(input.iter().rev());
        Ok(Encoded::Applied { params: vec![1], output: out.freeze() })
    }
    fn decode(&self, _: &CodecContext<'_>, params: &[u8], input: Bytes) -> Result<Bytes, CodecError> {
        if params != [1] {
            return Err(CodecError::Invalid { codec: "reverse", reason: "unknown parameters".into() });
        }
        Ok(input.iter().rev().copied().collect::<Vec<u8>>().into())
    }
}

async fn plugin_cache(tier: Arc<MapTier>) -> Cache<u64, String> {
    Cache::builder("plugins")
        .no_l1()
        .tier(tier)
        .codec(Arc::new(Reverse))
        .serializer(Postcard)
        .options(EntryOptions::new(Duration::from_secs(60)))
        .loader(FnLoader::new(|id: u64| async move { Ok(Some(format!("value-{id}"))) }))
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_prelude_only_tier_and_codec_round_trip_through_a_cache() {
    let tier = Arc::new(MapTier::default());
    let cache = plugin_cache(tier.clone()).await;
    assert_eq!(cache.codec_names(), vec!["reverse"]);

    cache.set(1, "hello".to_string()).await.unwrap();
    assert_eq!(tier.len(), 1);
    // What the tier holds is a frame whose payload went through the codec.
    let key = Key::new("plugins", Namespace::default_namespace(), "1").unwrap();
    let frame = tier.map.lock().unwrap()[&key].frame.clone();
    let plain = Serializer::<String>::serialize(&Postcard, &"hello".to_string()).unwrap();
    let reversed: Vec<u8> = plain.iter().rev().copied().collect();
    assert!(frame.windows(reversed.len()).any(|w| w == reversed.as_slice()));
    assert!(!frame.windows(plain.len()).any(|w| w == plain.as_slice()));

    // A second cache over the same tier (another process) decodes it.
    let other = plugin_cache(tier.clone()).await;
    assert_eq!(other.get(&1).await.unwrap().as_deref().map(String::as_str), Some("hello"));

    // Loads are written to the tier; batches use get_many.
    let got = other.get_many(&[1, 2, 3]).await.unwrap();
    let got: Vec<Option<&str>> = got.iter().map(|v| v.as_deref().map(String::as_str)).collect();
    assert_eq!(got, vec![Some("hello"), Some("value-2"), Some("value-3")]);
    assert!(tier.batches.load(Ordering::SeqCst) >= 1);
    assert_eq!(tier.len(), 3);

    other.invalidate(&2).await.unwrap();
    assert_eq!(tier.len(), 2);
}

#[tokio::test]
async fn a_failing_plugin_tier_is_skipped_and_reported() {
    let tier = Arc::new(MapTier::default());
    let cache = plugin_cache(tier.clone()).await;
    tier.down.store(true, Ordering::SeqCst);
    // The tier fails: the cache loads from the source and keeps answering.
    assert_eq!(cache.get_or_load(&5).await.unwrap().as_deref().map(String::as_str), Some("value-5"));
    assert_eq!(cache.health().await, vec![("map".to_string(), TierHealth::Unhealthy("switched off".into()))]);
}

#[tokio::test]
async fn a_breaker_in_front_of_a_plugin_tier_is_reported_by_its_probe() {
    use strata_cache_core::{BreakerConfig, BreakerTier};
    let inner = MapTier::default();
    inner.down.store(true, Ordering::SeqCst);
    let config = BreakerConfig { minimum_calls: 2, sliding_window: 2, ..BreakerConfig::default() };
    let tier = BreakerTier::new(inner, config).unwrap();
    let probe = tier.probe();
    assert_eq!(probe.state(), BreakerState::Closed);
    let key = Key::new("plugins", Namespace::default_namespace(), "1").unwrap();
    for _ in 0..2 {
        assert!(tier.get(&key).await.is_err());
    }
    assert_eq!(probe.state(), BreakerState::Open);
    assert_eq!(tier.get(&key).await.unwrap_err().kind(), TierErrorKind::CircuitOpen);
}

/// A serializer that squats on Strata's reserved id 1 (postcard's).
struct Squatter;

impl Serializer<String> for Squatter {
    fn id(&self) -> u8 {
        1
    }
    fn serialize(&self, value: &String) -> Result<Vec<u8>, SerializeError> {
        Ok(value.as_bytes().to_vec())
    }
    fn deserialize(&self, bytes: &[u8]) -> Result<String, SerializeError> {
        String::from_utf8(bytes.to_vec()).map_err(|e| SerializeError {
            format: "squatter",
            op: "deserialize",
            message: e.to_string(),
        })
    }
}

/// A codec in the reserved range.
struct ReservedCodec;

impl Codec for ReservedCodec {
    fn id(&self) -> u8 {
        63
    }
    fn name(&self) -> &'static str {
        "reserved"
    }
    fn encode(&self, _: &CodecContext<'_>, _: Bytes) -> Result<Encoded, CodecError> {
        Ok(Encoded::Skipped)
    }
    fn decode(&self, _: &CodecContext<'_>, _: &[u8], input: Bytes) -> Result<Bytes, CodecError> {
        Ok(input)
    }
}

#[tokio::test]
async fn third_party_ids_in_the_reserved_range_are_refused_at_build() {
    let serializer = Cache::<u64, String>::builder("ids")
        .tier(Arc::new(MemoryTier::new("l2")))
        .serializer(Squatter)
        .build()
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(&serializer, CacheError::Id(IdError::Reserved { kind: IdKind::Serializer, id: 1, name }) if name == "custom"),
        "{serializer:?}"
    );

    let codec = Cache::<u64, String>::builder("ids")
        .tier(Arc::new(MemoryTier::new("l2")))
        .serializer(Postcard)
        .codec(Arc::new(ReservedCodec))
        .build()
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(codec, CacheError::Id(IdError::Reserved { kind: IdKind::Codec, id: 63, .. })), "{codec:?}");

    let duplicate = Cache::<u64, String>::builder("ids")
        .tier(Arc::new(MemoryTier::new("l2")))
        .serializer(Postcard)
        .codec(Arc::new(Reverse))
        .codec(Arc::new(Reverse))
        .build()
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(duplicate, CacheError::Id(IdError::Duplicate { id: 201, .. })), "{duplicate:?}");

    // Strata's own serializers pass.
    for json in [false, true] {
        let b = Cache::<u64, String>::builder("ids").tier(Arc::new(MemoryTier::new("l2")));
        let b = if json { b.serializer(Json) } else { b.serializer(Postcard) };
        assert!(b.build().await.is_ok());
    }
}

#[test]
fn prelude_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Arc<dyn Tier>>();
    check::<Arc<dyn Codec>>();
    check::<Arc<dyn Serializer<String>>>();
    check::<Arc<dyn Loader<u64, String>>>();
    check::<Arc<dyn Writer<u64, String>>>();
    check::<Arc<dyn InvalidationBus>>();
    check::<Arc<dyn CacheObserver>>();
    check::<Arc<dyn LoadLock>>();
    check::<BreakerProbe>();
    check::<SubscriptionSender>();
    check::<IdError>();
}
