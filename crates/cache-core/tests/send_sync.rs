//! Public types are Send + Sync (tokio's tests/async_send_sync.rs idea).

use strata_cache_core::*;

fn is_send_sync<T: Send + Sync>() {}
fn is_static<T: 'static>() {}

#[test]
fn public_types_are_send_sync() {
    is_send_sync::<Cache<String, Vec<u8>>>();
    is_send_sync::<CacheBuilder<u64, String>>();
    is_send_sync::<L1Cache<String, String>>();
    is_send_sync::<CacheError>();
    is_send_sync::<TierError>();
    is_send_sync::<Key>();
    is_send_sync::<EntryMeta>();
    is_send_sync::<EntryOptions>();
    is_send_sync::<CodecPipeline>();
    is_send_sync::<CacheStats>();
    is_send_sync::<LocalBus>();
    is_send_sync::<MemoryTier>();
    is_send_sync::<ManualClock>();
    is_send_sync::<SingleFlight<u64, u64>>();
    // Plugin traits are object safe and usable as Arc<dyn Trait>.
    is_send_sync::<std::sync::Arc<dyn Tier>>();
    is_send_sync::<std::sync::Arc<dyn Codec>>();
    is_send_sync::<std::sync::Arc<dyn Serializer<String>>>();
    is_send_sync::<std::sync::Arc<dyn Loader<u64, String>>>();
    is_send_sync::<std::sync::Arc<dyn Writer<u64, String>>>();
    is_send_sync::<std::sync::Arc<dyn InvalidationBus>>();
    is_send_sync::<std::sync::Arc<dyn CacheObserver>>();
    is_send_sync::<std::sync::Arc<dyn Clock>>();
    is_static::<Cache<String, String>>();
}

#[test]
fn futures_are_send() {
    fn is_send<T: Send>(_: &T) {}
    let cache: Option<Cache<u64, String>> = None;
    if let Some(c) = cache {
        is_send(&c.get_or_load(&1));
        is_send(&c.get(&1));
        is_send(&c.set(1, String::new()));
        is_send(&c.get_many(&[1]));
        is_send(&c.invalidate(&1));
    }
}
