//! Write-through and cache-aside against a memory tier and a test source.
#![allow(clippy::unwrap_used)]
mod common;

use std::sync::Arc;

use common::{MemWriter, cache};
use strata_cache_core::{Key, Namespace, Writer};
use strata_consistency::{CacheAside, ConsistencyError, WritePolicy, WriteThrough};

#[tokio::test]
async fn failing_source_leaves_every_tier_unchanged_and_returns_the_error() {
    let (cache, tier) = cache("wt").await;
    let writer = MemWriter::failing(1);
    let wt = WriteThrough::new(cache.clone(), writer.clone() as Arc<dyn Writer<u64, String>>);
    cache.set(1, "old".into()).await.unwrap();
    let skey = Key::new("wt", Namespace::default_namespace(), "1").unwrap();
    let before = tier.raw(&skey).unwrap();

    let err = wt.set(1, "new".into()).await.unwrap_err();
    assert!(matches!(err, ConsistencyError::Source { .. }), "{err:?}");
    assert!(err.is_retryable());
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("injected source failure"), "{source}");
    // Neither L1 nor the tier changed, and the source has nothing.
    assert_eq!(cache.get(&1).await.unwrap().as_deref().map(String::as_str), Some("old"));
    assert_eq!(tier.raw(&skey).unwrap(), before);
    assert_eq!(writer.get(1), None);

    // A failed delete leaves the cache too.
    writer.fail_next.store(1, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(wt.delete(1).await, Err(ConsistencyError::Source { .. })));
    assert_eq!(cache.get(&1).await.unwrap().as_deref().map(String::as_str), Some("old"));
}

#[tokio::test]
async fn success_writes_source_and_every_tier() {
    let (cache, tier) = cache("wt2").await;
    let writer = MemWriter::new();
    let wt = WriteThrough::new(cache.clone(), writer.clone() as Arc<dyn Writer<u64, String>>);
    let stored = wt.set(5, "five".into()).await.unwrap();
    assert_eq!(*stored, "five");
    assert_eq!(writer.get(5).as_deref(), Some("five"));
    let skey = Key::new("wt2", Namespace::default_namespace(), "5").unwrap();
    assert!(tier.raw(&skey).is_some());
    // The tier's copy decodes to the value: read it with L1 dropped.
    cache.clear_l1();
    assert_eq!(cache.get(&5).await.unwrap().as_deref().map(String::as_str), Some("five"));

    wt.delete(5).await.unwrap();
    assert_eq!(writer.get(5), None);
    assert!(tier.raw(&skey).is_none());
    assert_eq!(cache.get(&5).await.unwrap(), None);
}

#[tokio::test]
async fn cache_aside_writes_the_source_then_invalidates() {
    let (cache, tier) = cache("ca").await;
    let writer = MemWriter::new();
    let ca = CacheAside::new(cache.clone(), writer.clone() as Arc<dyn Writer<u64, String>>);
    cache.set(3, "cached".into()).await.unwrap();
    ca.set(&3, &"fresh".into()).await.unwrap();
    assert_eq!(writer.get(3).as_deref(), Some("fresh"));
    assert_eq!(cache.get(&3).await.unwrap(), None, "the stale copy is gone from every level");
    assert!(tier.is_empty());

    // Source failure: the cached copy stays (the source did not change).
    cache.set(4, "cached".into()).await.unwrap();
    writer.fail_next.store(1, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(ca.set(&4, &"x".into()).await, Err(ConsistencyError::Source { .. })));
    assert_eq!(cache.get(&4).await.unwrap().as_deref().map(String::as_str), Some("cached"));
}

#[tokio::test]
async fn write_policy_dispatches_by_choice() {
    let (cache, _) = cache("wp").await;
    let writer = MemWriter::new();
    let p = WritePolicy::WriteThrough(WriteThrough::new(cache.clone(), writer.clone() as Arc<dyn Writer<u64, String>>));
    assert_eq!(p.name(), "write-through");
    p.set(9, "nine".into()).await.unwrap();
    assert_eq!(writer.get(9).as_deref(), Some("nine"));
    assert_eq!(cache.get(&9).await.unwrap().as_deref().map(String::as_str), Some("nine"));
}

#[tokio::test]
async fn concurrent_writes_to_one_key_leave_source_and_cache_agreeing() {
    let (cache, _) = cache("wt3").await;
    let writer = MemWriter::new();
    let wt = WriteThrough::new(cache.clone(), writer.clone() as Arc<dyn Writer<u64, String>>);
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let wt = wt.clone();
            tokio::spawn(async move { wt.set(1, format!("v{i}")).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let in_source = writer.get(1).unwrap();
    assert_eq!(cache.get(&1).await.unwrap().as_deref(), Some(&in_source));
    // The last source write is the value the cache holds.
    assert_eq!(writer.log.lock().last().unwrap().1, in_source);
}
