//! The public types can be shared across tasks and threads.
#![allow(dead_code)]

use strata_consistency::*;

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>() {}

#[test]
fn public_types_are_send_and_sync() {
    send_sync::<WriteBehind<u64, String>>();
    send_sync::<WriteThrough<u64, String>>();
    send_sync::<CacheAside<u64, String>>();
    send_sync::<WritePolicy<u64, String>>();
    send_sync::<WriteBehindConfig>();
    send_sync::<WriteBehindConfigBuilder>();
    send_sync::<ConsistencyError>();
    send_sync::<InvalidationRegistry>();
    send_sync::<ExternalInvalidatorHandle>();
    send_sync::<ChannelSender>();
    send::<ChannelSource>();
    send_sync::<ReplayReport>();
}

#[test]
fn write_behind_futures_are_send() {
    fn assert_send<F: std::future::Future + Send>(_: F) {}
    let _ = |wb: WriteBehind<u64, String>| {
        assert_send(async move {
            let _ = wb.set(1, "v".into()).await;
            let _ = wb.delete(1).await;
            let _ = wb.flush().await;
            let _ = wb.shutdown().await;
        })
    };
}
