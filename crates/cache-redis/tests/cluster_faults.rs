//! One master of a Redis Cluster (3 masters + 3 replicas) fails: killed (SIGKILL) or hung
//! (SIGSTOP). Only the slots it serves may fall back to the loader; the other two thirds keep
//! being served from Redis, callers see no error, only that master's breaker opens, and after
//! the failover its slots are served from Redis again.
//!
//! Each test runs its own six `redis-server` processes.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use strata_cache_core::{BreakerState, Cache, EntryOptions, FnLoader, Key, Namespace, Postcard, Tier, TierErrorKind};
use strata_cache_redis::{RedisConfig, RedisTier};

const KEYS: u64 = 300;

#[derive(Default)]
struct Counts {
    healthy_reads: AtomicU64,
    healthy_loads: AtomicU64,
    victim_reads: AtomicU64,
    victim_loads: AtomicU64,
    errors: AtomicU64,
}

enum Fault {
    Kill,
    Stop,
}

fn key(id: u64) -> Key {
    Key::new("cf", Namespace::default_namespace(), &id.to_string()).unwrap()
}

async fn one_master_fails(fault: Fault) {
    let Some(mut cluster) = support::throwaway_replicated_cluster(1_500) else { return };
    let config = RedisConfig::cluster(cluster.urls.clone())
        .prefix(support::unique_prefix("cf"))
        .command_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300));
    let tier = RedisTier::new(&config).unwrap();
    let victims: Arc<parking_lot::RwLock<HashSet<u64>>> = Arc::default();
    let counts = Arc::new(Counts::default());
    let loader = {
        let (victims, counts) = (victims.clone(), counts.clone());
        FnLoader::new(move |id: u64| {
            if victims.read().contains(&id) {
                counts.victim_loads.fetch_add(1, Ordering::Relaxed);
            } else {
                counts.healthy_loads.fetch_add(1, Ordering::Relaxed);
            }
            async move { Ok(Some(format!("v{id}"))) }
        })
    };
    // No L1: every read asks Redis, and falls back to the loader only when Redis does not
    // answer.
    let cache: Cache<u64, String> = Cache::builder("cf")
        .no_l1()
        .tier(Arc::new(tier.clone()))
        .serializer(Postcard)
        .options(EntryOptions::new(Duration::from_secs(600)))
        .loader(loader)
        .build()
        .await
        .unwrap();
    for id in 0..KEYS {
        assert_eq!(
            cache.get_or_load(&id).await.unwrap().as_deref().map(String::as_str),
            Some(format!("v{id}").as_str())
        );
    }
    // The tier knows the three masters.
    let end = Instant::now() + Duration::from_secs(60);
    while tier.node_breakers().len() != 3 {
        assert!(Instant::now() < end, "slot map never read: {:?}", tier.node_breakers());
        let _ = tier.get(&key(0)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim = tier.node_of(&key(0)).unwrap();
    {
        let mut v = victims.write();
        for id in 0..KEYS {
            if tier.node_of(&key(id)).as_deref() == Some(victim.as_str()) {
                v.insert(id);
            }
        }
        assert!(!v.is_empty() && v.len() < KEYS as usize, "{} of {KEYS} keys on {victim}", v.len());
    }
    let victim_port: u16 = victim.rsplit_once(':').unwrap().1.parse().unwrap();
    let server = cluster.servers.iter_mut().find(|s| s.port == victim_port).unwrap();
    let (loads_before_h, loads_before_v) =
        (counts.healthy_loads.load(Ordering::Relaxed), counts.victim_loads.load(Ordering::Relaxed));
    assert_eq!(loads_before_h + loads_before_v, KEYS, "every key loaded once, then served by Redis");

    // Readers over every key.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (cache, victims, counts, stop) = (cache.clone(), victims.clone(), counts.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let id = fastrand::u64(0..KEYS);
                    let is_victim = victims.read().contains(&id);
                    match cache.get_or_load(&id).await {
                        Ok(Some(v)) if *v == format!("v{id}") => {}
                        _ => {
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let c = if is_victim { &counts.victim_reads } else { &counts.healthy_reads };
                    c.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let _cont = match fault {
        Fault::Kill => {
            server.kill();
            None
        }
        Fault::Stop => {
            server.signal("STOP");
            Some(support::ContinueOnDrop(server.pid()))
        }
    };
    let (h0, hl0) = (counts.healthy_reads.load(Ordering::Relaxed), counts.healthy_loads.load(Ordering::Relaxed));
    // Until the victim's slots are served again (failover), watch the breakers.
    let (mut victim_opened, mut others_not_closed) = (false, std::collections::BTreeSet::new());
    let end = Instant::now() + Duration::from_secs(60);
    let mut back = false;
    while Instant::now() < end {
        for (node, state) in tier.node_breakers() {
            if node == victim {
                victim_opened |= state == BreakerState::Open;
            } else if state != BreakerState::Closed {
                others_not_closed.insert(format!("{node} {state:?}"));
            }
        }
        // Served from Redis again: a read of every victim key answers (from the promoted
        // replica), without the breaker refusing it.
        if victim_opened && !back {
            let mut all = true;
            let ids: Vec<u64> = victims.read().iter().copied().collect();
            for id in ids {
                match tier.get(&key(id)).await {
                    Ok(Some(_)) => {}
                    Err(e) if e.kind() == TierErrorKind::CircuitOpen => {
                        all = false;
                        break;
                    }
                    _ => {
                        all = false;
                        break;
                    }
                }
            }
            back = all;
        }
        if back {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (h1, hl1) = (counts.healthy_reads.load(Ordering::Relaxed), counts.healthy_loads.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    let (healthy_reads, healthy_fallbacks) = (h1 - h0, hl1 - hl0);
    println!(
        "one master {} ({victim}): healthy-slot reads {healthy_reads}, of which {healthy_fallbacks} fell back to the \
         loader; victim-slot reads {}, loads {}; errors {}; breakers {:?}",
        match fault {
            Fault::Kill => "killed",
            Fault::Stop => "stopped",
        },
        counts.victim_reads.load(Ordering::Relaxed),
        counts.victim_loads.load(Ordering::Relaxed) - loads_before_v,
        counts.errors.load(Ordering::Relaxed),
        tier.node_breakers(),
    );
    assert_eq!(counts.errors.load(Ordering::Relaxed), 0, "errors returned to callers");
    assert!(victim_opened, "the failed master's breaker never opened");
    assert!(others_not_closed.is_empty(), "healthy masters' breakers did not stay closed: {others_not_closed:?}");
    assert!(back, "the failed master's slots were not served from Redis again after the failover");
    assert!(healthy_reads > 0);
    // The healthy two thirds kept being served from Redis (a few reads racing the first
    // failures may fall back; far from the whole-tier fallback of one breaker for all).
    assert!(
        healthy_fallbacks * 20 <= healthy_reads,
        "{healthy_fallbacks} of {healthy_reads} healthy-slot reads fell back to the loader"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_master_costs_only_its_slots() {
    one_master_fails(Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_master_costs_only_its_slots() {
    one_master_fails(Fault::Stop).await;
}
