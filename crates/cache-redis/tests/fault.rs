//! Redis dies mid-run and comes back: callers see no error, the breaker opens, and the tier is
//! used again after the restart without rebuilding the cache. Every wait is on a condition with
//! a generous deadline: how fast a busy machine gets there is for the benches.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use strata_cache_core::{
    BreakerConfig, BreakerState, Cache, CacheStats, EntryOptions, FnLoader, L1Config, Postcard, Tier,
};
use strata_cache_redis::raw::deadpool_redis::redis;
use strata_cache_redis::{RedisConfig, RedisTier};

async fn dbsize(url: &str) -> Option<i64> {
    let c = redis::Client::open(url).ok()?;
    let mut conn =
        tokio::time::timeout(Duration::from_secs(10), c.get_multiplexed_async_connection()).await.ok()?.ok()?;
    redis::cmd("DBSIZE").query_async(&mut conn).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_run() {
    let Some(mut server) = support::Server::start(0, false) else { return };
    let url = server.url();
    // Timeouts a starved redis-server or runtime cannot hit by accident: a dead server refuses
    // connections at once, so the outage is seen without them.
    let config =
        RedisConfig::standalone(&url).command_timeout(Duration::from_secs(5)).connect_timeout(Duration::from_secs(5));
    let breaker = BreakerConfig {
        failure_rate_threshold: 0.5,
        minimum_calls: 5,
        sliding_window: 20,
        open_wait: Duration::from_millis(200),
        permitted_half_open_calls: 2,
        enabled: true,
    };
    let tier = Arc::new(RedisTier::new(&config).unwrap().with_breaker(breaker).unwrap());
    let stats = CacheStats::new();
    let cache: Cache<u64, String> = Cache::builder("fault")
        .l1(L1Config::entries(10_000))
        .tier(tier.clone())
        .serializer(Postcard)
        .options(EntryOptions::new(Duration::from_millis(300)).stale_limit(Duration::from_secs(30)))
        .loader(FnLoader::new(|id: u64| async move { Ok(Some(format!("v{id}"))) }))
        .observer(stats.clone())
        .build()
        .await
        .unwrap();

    let (ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    // Traffic runs until the recovery has been seen (the breaker closes on successful probes).
    let stop = Arc::new(AtomicBool::new(false));
    let driver = {
        let (cache, ok, errors, stop) = (cache.clone(), ok.clone(), errors.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut inflight = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (cache, ok, errors) = (cache.clone(), ok.clone(), errors.clone());
                inflight.push(tokio::spawn(async move {
                    let id = fastrand::u64(0..300);
                    match cache.get_or_load(&id).await {
                        Ok(Some(v)) if *v == format!("v{id}") => ok.fetch_add(1, Ordering::Relaxed),
                        _ => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }));
            }
            futures::future::join_all(inflight).await;
        })
    };

    // Mid-run: Redis holds a good part of the 300 ids before the fault.
    let deadline = Instant::now() + Duration::from_secs(60);
    while dbsize(&url).await.unwrap_or(0) < 100 {
        assert!(Instant::now() < deadline, "tier not in use before the fault");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(tier.state(), BreakerState::Closed);
    let port = server.port;
    let mut server = tokio::task::spawn_blocking(move || {
        server.shutdown();
        server
    })
    .await
    .unwrap();
    let killed_at = Instant::now();
    let ok_at_kill = ok.load(Ordering::Relaxed);
    while tier.state() != BreakerState::Open {
        assert!(killed_at.elapsed() < Duration::from_secs(60), "breaker never opened while Redis was down");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(dbsize(&url).await.is_none(), "server on port {port} is down");
    // Callers are served while Redis is down (and none of them gets an error: checked below).
    while ok.load(Ordering::Relaxed) == ok_at_kill {
        assert!(killed_at.elapsed() < Duration::from_secs(60), "no request answered while Redis was down");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let restarted = Instant::now();
    let mut recovered = None;
    while restarted.elapsed() < Duration::from_secs(60) {
        if tier.state() == BreakerState::Closed && dbsize(&url).await.unwrap_or(0) > 0 {
            recovered = Some(restarted.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recovered = recovered.expect("tier not used again after restart");
    // And traffic keeps flowing through it (still without a caller error) for a while.
    while dbsize(&url).await.unwrap_or(0) < 100 {
        assert!(restarted.elapsed() < Duration::from_secs(120), "Redis not refilled after the restart");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    driver.await.unwrap();
    let hits_before = stats.hits("redis");
    // Direct proof the same tier object serves again.
    assert!(
        tier.get(
            &strata_cache_core::Key::new("fault", strata_cache_core::Namespace::default_namespace(), "1").unwrap()
        )
        .await
        .is_ok()
    );
    let total = ok.load(Ordering::Relaxed) + errors.load(Ordering::Relaxed);
    println!(
        "fault run: {total} requests in {:?}, {} errors, breaker recovered {recovered:?} after restart, redis hits {hits_before}",
        started.elapsed(),
        errors.load(Ordering::Relaxed)
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0, "errors returned to callers");
    drop(server);
}
