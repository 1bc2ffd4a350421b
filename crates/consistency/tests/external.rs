//! The external invalidation adapter: valid, malformed, hostile and unknown-cache messages.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use strata_cache_core::{Cache, EntryOptions};
use strata_consistency::{Applied, ChannelSource, ExternalInvalidator, InvalidationRegistry, MessageError};

async fn users() -> Cache<u64, String> {
    Cache::builder("users").build().await.unwrap()
}

async fn wait_for(h: &strata_consistency::ExternalInvalidatorHandle, received: u64) {
    // A generous deadline: the adapter's speed on a loaded machine is not what is tested.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if h.counts().received + h.counts().source_errors >= received {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("adapter did not process {received} messages: {:?}", h.counts());
}

#[tokio::test]
async fn key_and_tag_messages_invalidate_and_bad_ones_are_counted() {
    let cache = users().await;
    let tenant = cache.in_namespace("tenant-7").unwrap();
    cache.set(42, "alice".into()).await.unwrap();
    cache.set(43, "bob".into()).await.unwrap();
    tenant.set(42, "tenant alice".into()).await.unwrap();
    let tagged = EntryOptions::default().tag("org:9");
    tenant.set_with(1, "t1".into(), &tagged).await.unwrap();
    tenant.set_with(2, "t2".into(), &tagged).await.unwrap();
    tenant.set(3, "untagged".into()).await.unwrap();

    let registry = InvalidationRegistry::new().with_cache(&cache);
    let (tx, source) = ChannelSource::new(16);
    let handle = ExternalInvalidator::spawn(source, registry);

    tx.send(r#"{"cache":"users","namespace":"default","key":"42"}"#).await.unwrap();
    tx.send(r#"{"cache":"users","namespace":"tenant-7","tag":"org:9"}"#).await.unwrap();
    // Hostile or wrong messages: none may stop the task.
    for bad in [
        &b"not json"[..],
        br#"{"cache":"users"}"#,                        // neither key nor tag
        br#"{"cache":"users","key":"1","tag":"t"}"#,    // both
        br#"{"cache":"users","key":"1","extra":true}"#, // unknown field
        br#"{"cache":"users","key":42}"#,               // wrong type
        &[0xff, 0xfe, 0x00][..],
        &vec![b' '; 70 * 1024][..], // too large
    ] {
        tx.send(bad.to_vec()).await.unwrap();
    }
    tx.send(r#"{"cache":"orders","key":"1"}"#).await.unwrap(); // unknown cache
    tx.send(r#"{"cache":"users","namespace":"bad ns!","key":"1"}"#).await.unwrap(); // refused
    tx.send(r#"{"cache":"users","key":"not-a-number"}"#).await.unwrap(); // id does not parse
    tx.send_error("connection reset".into()).await.unwrap();
    tx.send(r#"{"cache":"users","key":"43"}"#).await.unwrap(); // namespace defaults
    wait_for(&handle, 14).await;

    let c = handle.counts();
    assert_eq!(c.received, 13, "{c:?}");
    assert_eq!(c.applied, 3, "{c:?}");
    assert_eq!(c.malformed, 7, "{c:?}");
    assert_eq!(c.unknown_cache, 1, "{c:?}");
    assert_eq!(c.failed, 2, "{c:?}");
    assert_eq!(c.source_errors, 1, "{c:?}");

    assert_eq!(cache.get(&42).await.unwrap(), None);
    assert_eq!(cache.get(&43).await.unwrap(), None);
    assert_eq!(tenant.get(&42).await.unwrap().as_deref().map(String::as_str), Some("tenant alice"));
    assert_eq!(tenant.get(&1).await.unwrap(), None);
    assert_eq!(tenant.get(&2).await.unwrap(), None);
    assert_eq!(tenant.get(&3).await.unwrap().as_deref().map(String::as_str), Some("untagged"));

    // The source ending ends the task.
    drop(tx);
    let final_counts = tokio::time::timeout(Duration::from_secs(60), handle.join()).await.unwrap();
    assert_eq!(final_counts.applied, 3);
}

#[tokio::test]
async fn apply_reports_what_happened() {
    let cache = users().await;
    let registry = InvalidationRegistry::new().with_cache(&cache);
    assert_eq!(registry.apply(br#"{"cache":"users","key":"1"}"#).await.unwrap(), Applied::Key);
    assert_eq!(registry.apply(br#"{"cache":"users","tag":"x"}"#).await.unwrap(), Applied::Tag);
    assert!(matches!(registry.apply(br#"{"cache":"nope","key":"1"}"#).await, Err(MessageError::UnknownCache)));
    // The malformed reason never quotes the input.
    match registry.apply(br#"{"cache":"users","key":12345678}"#).await {
        Err(MessageError::Malformed(reason)) => assert!(!reason.contains("12345678"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn stop_ends_the_task() {
    let (_tx, source) = ChannelSource::new(1);
    let handle = ExternalInvalidator::spawn(source, InvalidationRegistry::new());
    assert!(!handle.is_finished());
    let counts = handle.stop();
    assert_eq!(counts.received, 0);
}

#[tokio::test]
async fn broadcast_sources_are_not_republished_unless_asked() {
    use std::sync::Arc;
    use strata_cache_core::{Clock, LocalBus, SystemClock};
    let bus = Arc::new(LocalBus::new(64));
    let build = || async { Cache::<u64, String>::builder("fleet").bus(bus.clone()).build().await.unwrap() };
    let (here, peer) = (build().await, build().await);
    let meta = Arc::new(strata_cache_core::expiry::new_meta(
        &EntryOptions::default(),
        SystemClock.now(),
        Duration::ZERO,
        false,
        1,
        0.5,
    ));
    // Fill both L1s directly (no bus traffic).
    for c in [&here, &peer] {
        for k in [1, 2] {
            c.l1().unwrap().insert(c.namespace(), k, Some(Arc::new("v".to_string())), meta.clone(), 1);
        }
    }
    let resident = |c: &Cache<u64, String>, k: u64| c.l1().unwrap().get(c.namespace(), &k, SystemClock.now()).is_some();
    assert!(resident(&peer, 1) && resident(&peer, 2));

    // Default (broadcast): only `here` applies it; nothing reaches the peer through the bus.
    let quiet = InvalidationRegistry::new().with_cache(&here);
    quiet.apply(br#"{"cache":"fleet","key":"1"}"#).await.unwrap();
    assert!(!resident(&here, 1));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(resident(&peer, 1), "a broadcast source is not republished");

    // Republish: the peer hears it over the bus.
    let loud = InvalidationRegistry::new().with_cache(&here).republish(true);
    loud.apply(br#"{"cache":"fleet","key":"2"}"#).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while resident(&peer, 2) {
        assert!(tokio::time::Instant::now() < deadline, "republished invalidation did not reach the peer");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The bus delivers in order: had key 1 been republished, the peer would have dropped it
    // before key 2 (so this holds however slowly the bus ran).
    assert!(resident(&peer, 1), "a broadcast source is not republished");
}
