//! The Redis backplane against real Redis: two caches, resync after a killed subscriber
//! connection, undecodable messages, two OS processes, the raw channel source, a cluster.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use strata_cache_core::{
    BusEvent, Cache, CacheStats, Clock, EntryOptions, FnLoader, InstanceId, Invalidation, InvalidationBus,
    InvalidationTarget, Namespace, Postcard, Subscription, SystemClock,
};
use strata_cache_redis::raw::deadpool_redis::redis;
use strata_cache_redis::raw::deadpool_redis::redis::Value;
use strata_cache_redis::{PubSubMode, RedisBus, RedisChannelSource, RedisConfig, RedisTier, keys};

/// A cache with its own L1 and bus; the loader reads the "source of truth" key `src:<id>`.
async fn cache(config: &RedisConfig, src_url: &str, stats: Arc<CacheStats>) -> (Cache<u64, String>, RedisBus) {
    let bus = RedisBus::new(config).unwrap();
    let client = redis::Client::open(src_url).unwrap();
    let prefix = config.prefix.clone();
    let cache = Cache::builder("users")
        .tier(Arc::new(RedisTier::new(config).unwrap()))
        .serializer(Postcard)
        .options(EntryOptions::new(Duration::from_secs(60)))
        .loader(FnLoader::new(move |id: u64| {
            let client = client.clone();
            let prefix = prefix.clone();
            async move {
                let mut c = client.get_multiplexed_async_connection().await?;
                let v: Option<String> = redis::cmd("GET").arg(format!("{prefix}src:{id}")).query_async(&mut c).await?;
                Ok(v)
            }
        }))
        .bus(Arc::new(bus.clone()))
        .observer(stats)
        .build()
        .await
        .unwrap();
    (cache, bus)
}

fn l1_value(c: &Cache<u64, String>, id: u64) -> Option<String> {
    let e = c.l1().unwrap().get(&Namespace::default_namespace(), &id, SystemClock.now())?;
    e.value.as_deref().cloned()
}

/// Polls `f` until it holds or `deadline` passes. Deadlines are generous (60 s): what is tested
/// is that the condition is reached, not how fast a busy machine gets there.
async fn poll_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    f()
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_caches_invalidate_each_other_and_resync_after_kill() {
    let Some(server) = support::Server::start(0, false) else { return };
    let url = server.url();
    let config = RedisConfig::standalone(&url).prefix(support::unique_prefix("bus"));
    let mut conn = raw(&url).await;
    let _: () =
        redis::cmd("SET").arg(format!("{}src:1", config.prefix)).arg("v1").query_async(&mut conn).await.unwrap();
    let (sa, sb) = (CacheStats::new(), CacheStats::new());
    let (a, bus_a) = cache(&config, &url, sa.clone()).await;
    let (b, bus_b) = cache(&config, &url, sb.clone()).await;

    assert_eq!(b.get_or_load(&1).await.unwrap().as_deref(), Some(&"v1".to_owned()));
    assert_eq!(l1_value(&b, 1).as_deref(), Some("v1"));

    // A write on A drops B's L1 copy; A keeps its own (own message ignored).
    let t = Instant::now();
    a.set(1, "v2".into()).await.unwrap();
    assert!(
        poll_until(Duration::from_secs(60), || l1_value(&b, 1).is_none()).await,
        "B still has v1 after {:?}",
        t.elapsed()
    );
    assert_eq!(b.get(&1).await.unwrap().as_deref(), Some(&"v2".to_owned()), "B reads the new value from Redis");
    assert!(poll_until(Duration::from_secs(60), || bus_a.stats().received() >= 1).await, "A received its own message");
    assert_eq!(l1_value(&a, 1).as_deref(), Some("v2"), "A ignored its own invalidation");
    assert_eq!(sa.invalidations_received(), 0);
    assert_eq!(sb.invalidations_received(), 1);

    // An undecodable message is counted and skipped.
    let _: i64 =
        redis::cmd("PUBLISH").arg(bus_b.channel()).arg(b"\x07garbage".as_slice()).query_async(&mut conn).await.unwrap();
    assert!(poll_until(Duration::from_secs(60), || bus_b.stats().undecodable() >= 1).await);

    // Kill every pub/sub connection: B reconnects, counts a resync, clears its L1.
    for i in 10..20 {
        b.set(i, format!("x{i}")).await.unwrap();
    }
    assert!(b.l1().unwrap().len() >= 10);
    let resyncs_before = bus_b.stats().resyncs();
    let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut conn).await.unwrap();
    assert!(killed >= 2, "killed {killed}");
    assert!(
        poll_until(Duration::from_secs(60), || bus_b.stats().resyncs() > resyncs_before).await,
        "no resync after the kill"
    );
    assert!(poll_until(Duration::from_secs(60), || b.l1().unwrap().is_empty()).await, "B's L1 cleared on resync");
    assert!(sb.resyncs() >= 1);

    // Later invalidations still arrive.
    assert_eq!(b.get_or_load(&1).await.unwrap().as_deref(), Some(&"v2".to_owned()));
    assert!(poll_until(Duration::from_secs(60), || bus_a.stats().resyncs() >= 1).await, "A re-subscribed too");
    a.set(1, "v3".into()).await.unwrap();
    assert!(poll_until(Duration::from_secs(60), || l1_value(&b, 1).is_none()).await, "invalidation after resync");
    assert_eq!(b.get(&1).await.unwrap().as_deref(), Some(&"v3".to_owned()));
}

const CHILD_ENV_URL: &str = "STRATA_BUS_CHILD_URL";
const CHILD_ENV_PREFIX: &str = "STRATA_BUS_CHILD_PREFIX";

/// The second process of `two_processes_share_invalidations` (run only by re-execution).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of two_processes_share_invalidations"]
async fn child_bus_process() {
    if !support::is_child() {
        return;
    }
    let url = std::env::var(CHILD_ENV_URL).unwrap();
    let config = RedisConfig::standalone(&url).prefix(std::env::var(CHILD_ENV_PREFIX).unwrap());
    let (b, _bus) = cache(&config, &url, CacheStats::new()).await;
    assert_eq!(b.get_or_load(&1).await.unwrap().as_deref(), Some(&"v1".to_owned()));
    println!("READY");
    assert!(poll_until(Duration::from_secs(60), || l1_value(&b, 1).is_none()).await, "never invalidated");
    let seen_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
    assert_eq!(b.get(&1).await.unwrap().as_deref(), Some(&"v2".to_owned()));
    println!("SEEN {seen_ms}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_invalidations() {
    let Some(redis) = support::standalone() else { return };
    let config = RedisConfig::standalone(&redis.url).prefix(support::unique_prefix("proc"));
    let mut conn = raw(&redis.url).await;
    let _: () =
        redis::cmd("SET").arg(format!("{}src:1", config.prefix)).arg("v1").query_async(&mut conn).await.unwrap();
    let (a, _bus) = cache(&config, &redis.url, CacheStats::new()).await;
    let mut child = support::spawn_child(
        "child_bus_process",
        &[(CHILD_ENV_URL, redis.url.clone()), (CHILD_ENV_PREFIX, config.prefix.clone())],
    );
    let mut lines = support::ChildLines::new(&mut child);
    lines.wait("READY", Duration::from_secs(90));
    a.set(1, "v2".into()).await.unwrap();
    let set_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
    let seen_ms: u128 = lines.wait("SEEN", Duration::from_secs(90)).parse().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "child failed");
    // How fast is for the benches; reported for information only.
    println!("other process saw the invalidation {} ms after the write", seen_ms.saturating_sub(set_ms));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_source_yields_raw_payloads() {
    let Some(redis) = support::standalone() else { return };
    let config = RedisConfig::standalone(&redis.url);
    let channel = format!("{}events", support::unique_prefix("chan"));
    let mut source = RedisChannelSource::subscribe(&config, &channel, PubSubMode::Classic).await.unwrap();
    let mut conn = raw(&redis.url).await;
    for p in [b"users:42".as_slice(), b"\xff\x00binary"] {
        let n: i64 = redis::cmd("PUBLISH").arg(&channel).arg(p).query_async(&mut conn).await.unwrap();
        assert_eq!(n, 1);
    }
    let got = tokio::time::timeout(Duration::from_secs(60), source.next()).await.unwrap().unwrap();
    assert_eq!(got, b"users:42");
    let stats = source.stats().clone();
    let mut stream = Box::pin(source.into_stream());
    let got = tokio::time::timeout(Duration::from_secs(60), stream.next()).await.unwrap().unwrap();
    assert_eq!(got, b"\xff\x00binary");
    assert_eq!(stats.received(), 2);
    assert!(RedisChannelSource::subscribe(&config, "x", PubSubMode::Sharded).await.is_err(), "sharded needs a cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_backplane_uses_sharded_pubsub_and_resyncs() {
    // Its own cluster: killing every pub/sub connection of a shared one would break the
    // subscriptions of tests running at the same time (sharded_overflow_drops_and_resyncs).
    let Some(cluster) = support::throwaway_cluster() else { return };
    let src = cluster.urls[0].clone();
    let config = RedisConfig::cluster(cluster.urls.clone()).prefix(support::unique_prefix("cbus"));
    let cc = redis::cluster::ClusterClient::new(cluster.urls.clone()).unwrap();
    let mut conn = cc.get_async_connection().await.unwrap();
    // The source key is read with a standalone client: keep it on whichever node owns it.
    let src_key = format!("{}src:1", config.prefix);
    let _: () = redis::cmd("SET").arg(&src_key).arg("v1").query_async(&mut conn).await.unwrap();
    let (sa, sb) = (CacheStats::new(), CacheStats::new());
    let (a, bus_a) = cluster_cache(&config, sa.clone()).await;
    let (b, bus_b) = cluster_cache(&config, sb.clone()).await;
    let _ = src;
    assert!(bus_a.is_sharded().await.unwrap(), "Redis 7 cluster → sharded pub/sub");
    assert_eq!(b.get_or_load(&1).await.unwrap().as_deref(), Some(&"v1".to_owned()));
    a.set(1, "v2".into()).await.unwrap();
    assert!(poll_until(Duration::from_secs(60), || l1_value(&b, 1).is_none()).await, "sharded invalidation");
    assert_eq!(b.get(&1).await.unwrap().as_deref(), Some(&"v2".to_owned()));

    let before = bus_b.stats().resyncs();
    for s in &cluster.urls {
        let mut c = raw(s).await;
        let _: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut c).await.unwrap();
    }
    assert!(poll_until(Duration::from_secs(60), || bus_b.stats().resyncs() > before).await, "cluster resync");
    assert!(poll_until(Duration::from_secs(60), || bus_a.stats().resyncs() > 0).await);
    assert_eq!(b.get_or_load(&1).await.unwrap().as_deref(), Some(&"v2".to_owned()));
    // Let both subscribers settle on their new connections, then check delivery again.
    a.set(1, "v3".into()).await.unwrap();
    assert!(poll_until(Duration::from_secs(60), || l1_value(&b, 1).is_none()).await, "invalidation after resync");
}

async fn cluster_cache(config: &RedisConfig, stats: Arc<CacheStats>) -> (Cache<u64, String>, RedisBus) {
    let bus = RedisBus::new(config).unwrap();
    let cache = Cache::builder("users")
        .tier(Arc::new(RedisTier::new(config).unwrap()))
        .serializer(Postcard)
        .options(EntryOptions::new(Duration::from_secs(60)))
        .loader(FnLoader::new(|_id: u64| async move { Ok(Some("v1".to_owned())) }))
        .bus(Arc::new(bus.clone()))
        .observer(stats)
        .build()
        .await
        .unwrap();
    (cache, bus)
}

fn invalidation(id: u64) -> Invalidation {
    Invalidation {
        origin: InstanceId(7),
        cache: "users".into(),
        namespace: "default".into(),
        target: InvalidationTarget::Key(id.to_string()),
    }
}

/// The next event within `within`.
async fn next_event(sub: &mut Subscription, within: Duration) -> Option<BusEvent> {
    tokio::time::timeout(within, sub.recv()).await.ok().flatten()
}

/// Waits for a `Resync`, skipping invalidations.
async fn wait_resync(sub: &mut Subscription, within: Duration) -> bool {
    let end = Instant::now() + within;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match next_event(sub, left).await {
            Some(BusEvent::Resync) => return true,
            Some(BusEvent::Invalidate(_)) => {}
            None => return false,
        }
    }
    false
}

/// Publishes `invalidation(id)` (retrying failures) until `sub` receives it.
async fn publish_until_received(bus: &RedisBus, sub: &mut Subscription, id: u64, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if bus.publish(&invalidation(id)).await.is_ok() {
            while let Some(ev) = next_event(sub, Duration::from_millis(300)).await {
                if ev == BusEvent::Invalidate(invalidation(id)) {
                    return true;
                }
            }
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    false
}

/// Moving the channel's hash slot to another node makes Redis 7 unsubscribe the sharded
/// subscriber (`SUNSUBSCRIBE` push): it must resync and re-subscribe on the new owner rather
/// than silently stop receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_subscriber_resyncs_when_its_slot_moves() {
    let Some(cluster) = support::throwaway_cluster() else { return };
    let config = RedisConfig::cluster(cluster.urls.clone());
    let channel = format!("{}inv", support::unique_prefix("move"));
    let bus = RedisBus::with_channel(&config, channel.clone(), PubSubMode::Sharded).unwrap();
    let mut sub = bus.subscribe().await.unwrap();
    assert!(publish_until_received(&bus, &mut sub, 1, Duration::from_secs(60)).await, "delivery before the move");
    assert_eq!(bus.stats().resyncs(), 0);

    // Who owns the channel's slot, and the other masters' ids.
    let slot = keys::slot(channel.as_bytes());
    let mut ids = Vec::new();
    for url in &cluster.urls {
        let id: String = redis::cmd("CLUSTER").arg("MYID").query_async(&mut raw(url).await).await.unwrap();
        ids.push(id);
    }
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut raw(&cluster.urls[0]).await).await.unwrap();
    let owner_id = nodes
        .lines()
        .find(|l| {
            l.split_whitespace().skip(8).any(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
            })
        })
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let owner = ids.iter().position(|i| *i == owner_id).unwrap();
    let target = (owner + 1) % ids.len();
    // The new owner first, the old owner last (that is where the subscription is dropped).
    let order = [target, (owner + 2) % ids.len(), owner];
    for i in order {
        let r: String = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&ids[target])
            .query_async(&mut raw(&cluster.urls[i]).await)
            .await
            .unwrap();
        assert_eq!(r, "OK");
    }

    assert!(wait_resync(&mut sub, Duration::from_secs(60)).await, "no resync after the slot moved");
    assert!(bus.stats().resyncs() >= 1);
    assert!(
        publish_until_received(&bus, &mut sub, 2, Duration::from_secs(60)).await,
        "no delivery from the slot's new owner"
    );
    let n: Vec<Value> = redis::cmd("PUBSUB")
        .arg("SHARDNUMSUB")
        .arg(&channel)
        .query_async(&mut raw(&cluster.urls[target]).await)
        .await
        .unwrap();
    assert_eq!(n.get(1), Some(&Value::Int(1)), "subscribed on the new owner: {n:?}");
}

/// Sums `rejected_calls` of `INFO` over the nodes.
async fn rejected_info_calls(urls: &[String]) -> u64 {
    let mut total = 0;
    for url in urls {
        let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut raw(url).await).await.unwrap();
        total += stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_info:"))
            .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("rejected_calls=")))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

async fn acl_all(urls: &[String], rule: &[&str]) {
    for url in urls {
        let _: () = redis::cmd("ACL").arg("SETUSER").arg(rule).query_async(&mut raw(url).await).await.unwrap();
    }
}

/// `PubSubMode::Auto` on a cluster whose version cannot be read (the ACL user may not run
/// `INFO`) never guesses: publish fails (asking at most once a second), the subscriber does not
/// fall back to classic pub/sub; once `INFO` is allowed both settle on sharded pub/sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_does_not_guess_when_the_version_is_unknown() {
    let Some(cluster) = support::throwaway_cluster() else { return };
    let user = format!("u{:08x}", fastrand::u32(..));
    acl_all(&cluster.urls, &[&user, "on", ">pw", "~*", "&*", "+@all", "-info"]).await;
    let urls: Vec<String> =
        cluster.urls.iter().map(|u| u.replace("redis://", &format!("redis://{user}:pw@"))).collect();
    let config = RedisConfig::cluster(urls).prefix(support::unique_prefix("auto"));
    let bus = RedisBus::new(&config).unwrap();

    let before = rejected_info_calls(&cluster.urls).await;
    let started = Instant::now();
    for i in 0..20 {
        let e = bus.publish(&invalidation(i)).await.unwrap_err();
        assert!(e.message.contains("cannot determine the Redis version"), "{e}");
    }
    let probes_window = started.elapsed();
    let rejected = rejected_info_calls(&cluster.urls).await - before;
    let n = cluster.urls.len() as u64;
    assert!(rejected >= 1, "the version was asked for");
    assert!(
        rejected <= n * (2 + probes_window.as_secs()),
        "20 publishes in {probes_window:?} asked INFO {rejected} times: the failure is not remembered"
    );
    assert!(bus.is_sharded().await.is_err());
    assert_eq!(bus.stats().published(), 0);

    // The subscriber keeps retrying instead of subscribing with classic pub/sub.
    let mut sub = bus.subscribe().await.unwrap();
    assert!(poll_until(Duration::from_secs(60), || bus.stats().disconnects() >= 2).await, "subscriber retries");
    for url in &cluster.urls {
        let n: Vec<Value> =
            redis::cmd("PUBSUB").arg("NUMSUB").arg(bus.channel()).query_async(&mut raw(url).await).await.unwrap();
        assert_eq!(n.get(1), Some(&Value::Int(0)), "fell back to classic pub/sub: {n:?}");
    }

    // Once the version can be read, everything settles on sharded pub/sub.
    acl_all(&cluster.urls, &[&user, "+info"]).await;
    assert!(wait_resync(&mut sub, Duration::from_secs(60)).await, "subscribed (with a resync) once INFO works");
    assert!(publish_until_received(&bus, &mut sub, 99, Duration::from_secs(60)).await);
    assert!(bus.is_sharded().await.unwrap());
}

/// A consumer that stops reading makes sharded pushes pile up to a bound; beyond it they are
/// dropped and a `Resync` tells the cache to clear its L1. The subscription itself stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_overflow_drops_and_resyncs() {
    let Some(cluster) = support::cluster() else { return };
    let config = RedisConfig::cluster(cluster.urls.clone());
    let channel = format!("{}inv", support::unique_prefix("overflow"));
    let bus = RedisBus::with_channel(&config, channel, PubSubMode::Sharded).unwrap();
    let mut sub = bus.subscribe().await.unwrap();
    assert!(publish_until_received(&bus, &mut sub, 0, Duration::from_secs(60)).await);
    // Not reading: 1024 wait in the subscription, 1024 in the push queue, the rest is dropped.
    let total = 3000u64;
    for i in 1..=total {
        bus.publish(&invalidation(i)).await.unwrap();
    }
    let (mut invalidations, mut resync_after) = (0u64, None);
    // Until the Resync, wait as long as a busy machine needs; after it, a pause ends the drain.
    loop {
        let within = if resync_after.is_some() { Duration::from_millis(500) } else { Duration::from_secs(60) };
        let Some(ev) = next_event(&mut sub, within).await else { break };
        match ev {
            BusEvent::Invalidate(_) => invalidations += 1,
            BusEvent::Resync => resync_after = resync_after.or(Some(invalidations)),
        }
    }
    let resync_after = resync_after.expect("a Resync was emitted");
    assert!(resync_after >= 1024, "resync after the queued messages ({resync_after})");
    assert!(invalidations < total, "{invalidations} of {total} delivered: nothing was dropped?");
    // Each overflow episode resyncs once; while the publisher keeps going the pump can drain a
    // little and overflow again, so there may be more than one episode (seen on a loaded CI run).
    assert!(bus.stats().resyncs() >= 1, "the overflow was reported as a resync");
    assert_eq!(bus.stats().disconnects(), 0, "no reconnect needed");
    // Still subscribed.
    assert!(publish_until_received(&bus, &mut sub, total + 1, Duration::from_secs(60)).await);
}
