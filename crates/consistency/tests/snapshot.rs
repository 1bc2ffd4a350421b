//! L1 snapshot save / warm round trip, and bad snapshot files.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::Duration;

use strata_cache_core::{Cache, CacheStats, EntryOptions, FnLoader};
use strata_consistency::{ConsistencyError, save_hot_keys, warm_from_snapshot};

async fn loading_cache(loads: Arc<AtomicUsize>) -> Cache<u64, String> {
    Cache::builder("snap")
        .loader(FnLoader::new(move |k: u64| {
            let loads = loads.clone();
            async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok((!k.is_multiple_of(10)).then(|| format!("user-{k}")))
            }
        }))
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn saved_hot_keys_warm_a_fresh_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hot.snap");
    let first = loading_cache(Arc::new(AtomicUsize::new(0))).await;
    for k in 1..=40u64 {
        first.set(k, format!("user-{k}")).await.unwrap();
    }
    assert_eq!(save_hot_keys(&first, &path, 1000).await.unwrap(), 40);
    assert_eq!(save_hot_keys(&first, &path, 25).await.unwrap(), 25, "limit respected, file replaced");
    save_hot_keys(&first, &path, 1000).await.unwrap();
    // No temporary files left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let loads = Arc::new(AtomicUsize::new(0));
    let stats = CacheStats::new();
    let second: Cache<u64, String> = Cache::builder("snap")
        .observer(stats.clone())
        // "Not found" answers are cached too, so the warm covers them.
        .options(EntryOptions::default().negative_ttl(Duration::from_secs(60)))
        .loader(FnLoader::new({
            let loads = loads.clone();
            move |k: u64| {
                let loads = loads.clone();
                async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok((!k.is_multiple_of(10)).then(|| format!("user-{k}")))
                }
            }
        }))
        .build()
        .await
        .unwrap();
    let warm = warm_from_snapshot(&second, &path, 4).await.unwrap();
    assert!(!warm.missing);
    assert_eq!(warm.keys, 40);
    assert_eq!(warm.unparsable, 0);
    assert_eq!(warm.report.loaded, 36);
    assert_eq!(warm.report.not_found, 4);
    assert_eq!(loads.load(Ordering::SeqCst), 40);
    // Now served from L1 without loading.
    for k in 1..=40u64 {
        let v = second.get_or_load(&k).await.unwrap();
        assert_eq!(v.as_deref().cloned(), (k % 10 != 0).then(|| format!("user-{k}")));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 40);
    assert_eq!(stats.hits("l1"), 40);
}

#[tokio::test]
async fn missing_snapshot_is_an_empty_report() {
    let dir = tempfile::tempdir().unwrap();
    let cache = loading_cache(Arc::new(AtomicUsize::new(0))).await;
    let warm = warm_from_snapshot(&cache, dir.path().join("nope.snap"), 4).await.unwrap();
    assert!(warm.missing);
    assert_eq!(warm.keys, 0);
    assert_eq!(warm.report.loaded, 0);
}

#[tokio::test]
async fn corrupt_snapshots_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hot.snap");
    let cache = loading_cache(Arc::new(AtomicUsize::new(0))).await;
    for k in 1..=5u64 {
        cache.set(k, "v".into()).await.unwrap();
    }
    save_hot_keys(&cache, &path, 100).await.unwrap();
    let good = std::fs::read(&path).unwrap();

    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let truncated = good[..good.len() - 3].to_vec();
    let cases: [(&str, Vec<u8>); 4] = [
        ("checksum", flipped),
        ("truncated", truncated),
        ("magic", b"garbage garbage garbage garbage".to_vec()),
        ("short", b"STRJ".to_vec()),
    ];
    for (what, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        match warm_from_snapshot(&cache, &path, 2).await {
            Err(ConsistencyError::SnapshotCorrupt { path: p, reason }) => {
                assert_eq!(p, path, "{what}");
                assert!(!reason.is_empty());
            }
            other => panic!("{what}: expected SnapshotCorrupt, got {other:?}"),
        }
    }

    // A snapshot of another cache is refused.
    let other: Cache<u64, String> = Cache::builder("other").build().await.unwrap();
    std::fs::write(&path, &good).unwrap();
    assert!(matches!(warm_from_snapshot(&other, &path, 2).await, Err(ConsistencyError::SnapshotCorrupt { .. })));
}

#[tokio::test]
async fn caches_with_hashed_key_ids_refuse_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pii.snap");
    let hasher: strata_cache_core::KeyIdHasher = Arc::new(|id: &str| format!("h{}", id.len()));
    let cache = Cache::<String, String>::builder("pii")
        .tier(Arc::new(strata_cache_core::MemoryTier::new("l2")))
        .serializer(strata_cache_core::Postcard)
        .key_id_hasher(hasher)
        .build()
        .await
        .unwrap();
    cache.set("alice@example.com".into(), "x".into()).await.unwrap();
    let err = save_hot_keys(&cache, &path, 10).await.unwrap_err();
    assert!(matches!(err, ConsistencyError::Config(_)), "{err}");
    assert!(!path.exists(), "nothing written");
}
