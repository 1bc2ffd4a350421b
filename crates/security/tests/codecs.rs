//! Codec round trips (alone and in a pipeline) and hostile bytes through a real `Cache` over a
//! `MemoryTier`: tampering, truncation, wrong keys, values copied between keys, unknown key
//! ids, planted plaintext, rotation with re-encryption, crypto-shredding.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use strata_cache_core::frame::Frame;
use strata_cache_core::{
    Cache, CacheStats, Codec, CodecContext, CodecError, CodecPipeline, EntryOptions, Key, MemoryTier, Namespace,
    Postcard, StoredEntry,
};
use strata_security::{
    AesGcmCodec, AuditObserver, AuditRecord, DataKey, KeyId, KeyProvider, Keyring, MemoryAuditSink, NamespaceKeyring,
    Outcome, Reencrypted, Reencryptor, ZstdCodec, ZstdDictionary,
};

fn key(ns: &str, id: &str) -> Key {
    Key::new("c", Namespace::new(ns).unwrap(), id).unwrap()
}

fn pipeline(keys: Arc<dyn KeyProvider>) -> CodecPipeline {
    let mut p = CodecPipeline::new();
    p.push(Arc::new(ZstdCodec::new(3).unwrap().min_size(32))).unwrap();
    p.push(Arc::new(AesGcmCodec::new(keys).unwrap())).unwrap();
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn zstd_round_trips(data in proptest::collection::vec(any::<u8>(), 0..4096), repeat in 1usize..8, level in 1i32..=9) {
        let codec = ZstdCodec::new(level).unwrap().min_size(16);
        let k = key("default", "k");
        let ctx = CodecContext { key: &k, meta_section: b"m" };
        let input = Bytes::from(data.repeat(repeat));
        match codec.encode(&ctx, input.clone()).unwrap() {
            // Four or more copies of 32+ bytes always shrink by far more than the overhead.
            strata_cache_core::Encoded::Skipped => prop_assert!(repeat < 4 || data.len() < 32),
            strata_cache_core::Encoded::Applied { params, output } => {
                prop_assert!(output.len() < input.len());
                prop_assert_eq!(codec.decode(&ctx, &params, output).unwrap(), input);
            }
        }
    }

    #[test]
    fn aes_round_trips(data in proptest::collection::vec(any::<u8>(), 0..4096), id in "[a-z0-9]{1,20}", meta in proptest::collection::vec(any::<u8>(), 0..64)) {
        let codec = AesGcmCodec::new(Arc::new(Keyring::generate().unwrap())).unwrap();
        let k = key("ns", &id);
        let ctx = CodecContext { key: &k, meta_section: &meta };
        let strata_cache_core::Encoded::Applied { params, output } = codec.encode(&ctx, Bytes::from(data.clone())).unwrap() else {
            panic!("AES is never skipped");
        };
        prop_assert_eq!(output.len(), data.len() + 16);
        prop_assert_eq!(codec.decode(&ctx, &params, output).unwrap(), Bytes::from(data));
    }

    #[test]
    fn pipeline_round_trips_and_detects_any_flip(data in "[a-z ]{0,64}", repeat in 1usize..50, at in any::<usize>(), flip in 1u8..=255) {
        let p = pipeline(Arc::new(Keyring::generate().unwrap()));
        let k = key("ns", "id");
        let ctx = CodecContext { key: &k, meta_section: b"meta" };
        let input = Bytes::from(data.repeat(repeat));
        let (steps, out) = p.encode(&ctx, input.clone()).unwrap();
        prop_assert!(steps.iter().any(|s| s.id == AesGcmCodec::ID));
        prop_assert_eq!(steps.last().map(|s| s.id), Some(AesGcmCodec::ID), "encryption runs last");
        prop_assert_eq!(p.decode(&ctx, &steps, out.clone()).unwrap(), input);
        let mut bad = out.to_vec();
        let i = at % bad.len();
        bad[i] ^= flip;
        let tampered = p.decode(&ctx, &steps, Bytes::from(bad));
        prop_assert!(matches!(tampered, Err(CodecError::Integrity { .. })), "{:?}", tampered);
    }
}

struct Fixture {
    cache: Cache<String, String>,
    tier: MemoryTier,
    stats: Arc<CacheStats>,
    audit: Arc<MemoryAuditSink>,
}

impl Fixture {
    /// The audited rejections so far (each also a counted decode error).
    fn rejected(&self) -> Vec<AuditRecord> {
        self.audit.records().into_iter().filter(|r| r.outcome == Outcome::Rejected).collect()
    }
}

async fn encrypted_cache(provider: Arc<dyn KeyProvider>) -> Fixture {
    let tier = MemoryTier::new("l2");
    let stats = CacheStats::new();
    let audit = Arc::new(MemoryAuditSink::new());
    let cache = Cache::builder("c")
        .no_l1()
        .observer(AuditObserver::new(audit.clone()))
        .tier(Arc::new(tier.clone()))
        .serializer(Postcard)
        .codec(Arc::new(ZstdCodec::new(3).unwrap()))
        .codec(Arc::new(AesGcmCodec::new(provider).unwrap()))
        .options(EntryOptions::new(Duration::from_secs(60)))
        .observer(stats.clone())
        .build()
        .await
        .unwrap();
    Fixture { cache, tier, stats, audit }
}

fn skey(id: &str) -> Key {
    key("default", id)
}

#[tokio::test]
async fn swapped_ciphertext_between_keys_is_a_miss_and_a_decode_error() {
    let f = encrypted_cache(Arc::new(Keyring::generate().unwrap())).await;
    f.cache.set("a".into(), "value of a".into()).await.unwrap();
    f.cache.set("b".into(), "value of b".into()).await.unwrap();
    let a_bytes = f.tier.raw(&skey("a")).unwrap();
    f.tier.put_raw(&skey("b"), a_bytes);
    let before = f.stats.decode_errors();
    assert_eq!(f.cache.get(&"b".into()).await.unwrap(), None);
    assert_eq!(f.stats.decode_errors(), before + 1);
    let rejected = f.rejected();
    assert_eq!(rejected.len(), 1, "the refused frame is audited");
    assert_eq!((rejected[0].cache.as_str(), rejected[0].key_hash.as_deref()), ("c", None));
    assert!(rejected[0].detail.as_deref().unwrap().contains("tier l2"), "{:?}", rejected[0].detail);
    assert_eq!(f.cache.get(&"a".into()).await.unwrap().as_deref(), Some(&"value of a".to_string()));
}

#[tokio::test]
async fn tampered_and_truncated_frames_are_misses() {
    let f = encrypted_cache(Arc::new(Keyring::generate().unwrap())).await;
    f.cache.set("a".into(), "x".repeat(1000)).await.unwrap();
    let orig = f.tier.raw(&skey("a")).unwrap();
    let mut errors = f.stats.decode_errors();
    let len = orig.frame.len();
    for (i, cut) in [(0usize, None), (len / 2, None), (len - 5, None), (0, Some(len - 1)), (0, Some(10))] {
        let mut v = orig.frame.to_vec();
        match cut {
            Some(c) => v.truncate(c),
            None => v[i] ^= 0x40,
        }
        f.tier.put_raw(&skey("a"), StoredEntry { meta: orig.meta.clone(), frame: Bytes::from(v) });
        assert_eq!(f.cache.get(&"a".into()).await.unwrap(), None);
        errors += 1;
        assert_eq!(f.stats.decode_errors(), errors);
        assert_eq!(f.rejected().len() as u64, errors, "every refused frame is audited");
    }
    // Tampering that keeps the CRC valid (recomputed) is caught by AES-GCM.
    let (mut frame, _) = Frame::decode(&orig.frame).unwrap();
    frame.meta.expires_at = strata_cache_core::Timestamp(frame.meta.expires_at.0 + 86_400_000);
    let forged = frame.encode().unwrap();
    f.tier.put_raw(&skey("a"), StoredEntry { meta: frame.meta.clone(), frame: forged });
    assert_eq!(f.cache.get(&"a".into()).await.unwrap(), None);
    assert_eq!(f.stats.decode_errors(), errors + 1);
}

#[tokio::test]
async fn planted_plaintext_is_refused() {
    let f = encrypted_cache(Arc::new(Keyring::generate().unwrap())).await;
    // A frame a plaintext cache would write: no codecs at all.
    let plain: Cache<String, String> =
        Cache::builder("c").no_l1().tier(Arc::new(f.tier.clone())).serializer(Postcard).build().await.unwrap();
    plain.set("p".into(), "planted".into()).await.unwrap();
    let (frame, _) = Frame::decode(&f.tier.raw(&skey("p")).unwrap().frame).unwrap();
    assert!(frame.codecs.is_empty());
    let before = f.stats.decode_errors();
    assert_eq!(f.cache.get(&"p".into()).await.unwrap(), None);
    assert_eq!(f.stats.decode_errors(), before + 1);
}

#[tokio::test]
async fn wrong_key_and_unknown_key_id_are_misses() {
    let ring = Keyring::new();
    ring.insert(DataKey::new(KeyId(1), &[1; 32]).unwrap()).unwrap();
    let writer = encrypted_cache(Arc::new(ring)).await;
    writer.cache.set("a".into(), "secret".into()).await.unwrap();

    // Same id, different material.
    let wrong = Keyring::new();
    wrong.insert(DataKey::new(KeyId(1), &[2; 32]).unwrap()).unwrap();
    let reader = encrypted_cache(Arc::new(wrong)).await;
    reader.tier.put_raw(&skey("a"), writer.tier.raw(&skey("a")).unwrap());
    assert_eq!(reader.cache.get(&"a".into()).await.unwrap(), None);
    assert_eq!(reader.stats.decode_errors(), 1);

    // A keyring that lacks id 1.
    let other = Keyring::new();
    other.insert(DataKey::new(KeyId(5), &[1; 32]).unwrap()).unwrap();
    let reader = encrypted_cache(Arc::new(other)).await;
    reader.tier.put_raw(&skey("a"), writer.tier.raw(&skey("a")).unwrap());
    assert_eq!(reader.cache.get(&"a".into()).await.unwrap(), None);
    assert_eq!(reader.stats.decode_errors(), 1);
}

#[tokio::test]
async fn missing_or_invalid_key_fails_the_build() {
    let e = AesGcmCodec::new(Arc::new(Keyring::new())).unwrap_err();
    assert!(e.to_string().contains("no current encryption key"), "{e}");
    let e = AesGcmCodec::from_env("STRATA_TEST_SURELY_UNSET_KEYS_VAR").unwrap_err();
    assert!(e.to_string().contains("STRATA_TEST_SURELY_UNSET_KEYS_VAR"), "{e}");
    let as_cache_error: strata_cache_core::CacheError = e.into();
    assert!(matches!(as_cache_error, strata_cache_core::CacheError::Config(_)));
}

#[tokio::test]
async fn rotation_then_reencrypt_lets_the_old_key_go() {
    let ring = Arc::new(Keyring::generate().unwrap());
    let f = encrypted_cache(ring.clone()).await;
    for i in 0..10 {
        f.cache.set(format!("k{i}"), format!("value {i} ").repeat(50)).await.unwrap();
    }
    assert_eq!(ring.rotate().unwrap(), KeyId(2));
    // New writes use key 2; old values still decrypt with key 1.
    f.cache.set("new".into(), "fresh".into()).await.unwrap();
    let key_of = |id: &str| {
        let (frame, _) = Frame::decode(&f.tier.raw(&skey(id)).unwrap().frame).unwrap();
        let step = frame.codecs.iter().find(|s| s.id == AesGcmCodec::ID).unwrap().clone();
        AesGcmCodec::parse_params(&step.params).unwrap().0
    };
    assert_eq!(key_of("new"), KeyId(2));
    assert_eq!(key_of("k3"), KeyId(1));
    assert!(f.cache.get(&"k3".into()).await.unwrap().is_some());

    let re = Reencryptor::new(pipeline_for(&ring), ring.clone()).unwrap();
    let keys: Vec<Key> = (0..10).map(|i| skey(&format!("k{i}"))).chain([skey("new"), skey("gone")]).collect();
    let report = re.reencrypt_tier(&f.tier, &keys).await.unwrap();
    assert_eq!((report.rewritten, report.unchanged, report.missing, report.failed), (10, 1, 1, 0));
    assert!(matches!(
        re.reencrypt_frame(&skey("k3"), &f.tier.raw(&skey("k3")).unwrap().frame),
        Ok(Reencrypted::Unchanged)
    ));
    ring.remove(KeyId(1)).unwrap();
    for i in 0..10 {
        assert_eq!(key_of(&format!("k{i}")), KeyId(2));
        assert_eq!(f.cache.get(&format!("k{i}")).await.unwrap().as_deref(), Some(&format!("value {i} ").repeat(50)));
    }
    assert_eq!(f.stats.decode_errors(), 0);
}

fn pipeline_for(ring: &Arc<Keyring>) -> CodecPipeline {
    let mut p = CodecPipeline::new();
    p.push(Arc::new(ZstdCodec::new(3).unwrap())).unwrap();
    p.push(Arc::new(AesGcmCodec::new(ring.clone()).unwrap())).unwrap();
    p
}

#[tokio::test]
async fn destroying_a_namespace_key_shreds_its_data() {
    let keys = Arc::new(NamespaceKeyring::new());
    let f = encrypted_cache(keys.clone()).await;
    let a = f.cache.in_namespace("tenant-a").unwrap();
    let b = f.cache.in_namespace("tenant-b").unwrap();
    a.set("x".into(), "a's data".into()).await.unwrap();
    b.set("x".into(), "b's data".into()).await.unwrap();
    assert!(keys.destroy("tenant-a"));
    assert_eq!(a.get(&"x".into()).await.unwrap(), None, "shredded data reads as a miss");
    assert_eq!(f.stats.decode_errors(), 1);
    assert_eq!(b.get(&"x".into()).await.unwrap().as_deref(), Some(&"b's data".to_string()));
    // The raw frame is still in the tier, and no key in the ring opens it.
    let raw = f.tier.raw(&key("tenant-a", "x")).unwrap().frame;
    let codec = AesGcmCodec::new(keys.clone()).unwrap();
    let (frame, meta_len) = Frame::decode(&raw).unwrap();
    let ctx = CodecContext { key: &key("tenant-a", "x"), meta_section: &raw[..meta_len] };
    let step = frame.codecs.iter().find(|s| s.id == AesGcmCodec::ID).unwrap();
    assert!(matches!(codec.decode(&ctx, &step.params, frame.payload.clone()), Err(CodecError::Key { .. })));
    // The namespace can be used again, under a new key.
    a.set("y".into(), "after".into()).await.unwrap();
    assert_eq!(a.get(&"y".into()).await.unwrap().as_deref(), Some(&"after".to_string()));
}

#[tokio::test]
async fn compressed_dictionary_frames_need_their_dictionary() {
    let samples: Vec<String> =
        (0..400).map(|i| format!(r#"{{"user":{i},"plan":"pro","country":"DE","tags":["a","b"]}}"#)).collect();
    let dict = ZstdDictionary::train(&samples, 2048).unwrap();
    let tier = MemoryTier::new("l2");
    let stats = CacheStats::new();
    let build = |codec: ZstdCodec, stats: Arc<CacheStats>| {
        Cache::<u32, String>::builder("c")
            .no_l1()
            .tier(Arc::new(tier.clone()))
            .serializer(Postcard)
            .codec(Arc::new(codec.min_size(16)))
            .observer(stats)
            .build()
    };
    let with = build(ZstdCodec::new(3).unwrap().dictionary(dict).unwrap(), CacheStats::new()).await.unwrap();
    let without = build(ZstdCodec::new(3).unwrap(), stats.clone()).await.unwrap();
    with.set(1, samples[1].clone()).await.unwrap();
    assert_eq!(with.get(&1).await.unwrap().as_deref(), Some(&samples[1]));
    assert_eq!(without.get(&1).await.unwrap(), None);
    assert_eq!(stats.decode_errors(), 1);
}
