//! A synthetic workload behind the admin server: a cache (L1 + an in-memory "l2" behind a
//! circuit breaker + a slow loader) read with a skewed key distribution, and a resource manager
//! with simulated GPUs taking and returning allocations. Prints the admin address and serves
//! until killed (or for `--seconds N`).
//!
//! `cargo run -p strata-telemetry --example admin_demo -- --port 9464`

use std::sync::Arc;
use std::time::Duration;

use strata_cache_core::{BreakerConfig, BreakerTier, Cache, EntryOptions, FnLoader, L1Config, MemoryTier, Postcard};
use strata_gpu::{DevicePluginConfig, GpuInventory, MigStrategy, SimulatedInventory};
use strata_resource_qos::{AllocationRequest, ResourceKind, ResourceManager};
use strata_telemetry::PrometheusObserver;
use strata_telemetry::admin::{self, AdminState, CacheHealth, CacheTopology, ResourceTopology};

fn arg(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = arg("--port").unwrap_or(0);
    let metrics = PrometheusObserver::new()?;

    let l2 = MemoryTier::new("l2");
    let config = BreakerConfig {
        failure_rate_threshold: 0.5,
        minimum_calls: 10,
        sliding_window: 20,
        open_wait: Duration::from_secs(3),
        permitted_half_open_calls: 2,
        enabled: true,
    };
    let l2_breaker = Arc::new(BreakerTier::with_observer(l2.clone(), config, metrics.clone())?);
    let cache: Cache<u64, String> = Cache::builder("products")
        .l1(L1Config::entries(8_000))
        .tier(l2_breaker.clone())
        .serializer(Postcard)
        .options(EntryOptions::new(Duration::from_secs(20)))
        .loader(FnLoader::new(|id: u64| async move {
            tokio::time::sleep(Duration::from_micros(200 + fastrand::u64(0..3_000))).await;
            Ok(Some(format!("product-{id}")))
        }))
        .observer(metrics.clone())
        .build()
        .await?;
    metrics.watch_cache(&cache);
    let probe = l2_breaker.probe();
    metrics.watch_breaker("l2", move || Some(probe.state()));

    let gpus = SimulatedInventory::builder().gpus(2, "NVIDIA A100-SXM4-80GB", 80).build()?;
    let inventory: Arc<dyn GpuInventory> = Arc::new(gpus);
    let manager = ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 16_000)
        .capacity(ResourceKind::Memory, 64 << 30)
        .gpu_inventory(inventory, DevicePluginConfig { mig_strategy: MigStrategy::None, time_slicing: None })
        .observer(metrics.clone())
        .build()?;
    let m = manager.clone();
    metrics.watch_resources(move || m.usage());

    let state = AdminState::new(metrics.clone())
        .health_source(Arc::new(CacheHealth::new(cache.clone(), Some(metrics.clone()))))
        .topology_source(Arc::new(CacheTopology::new(cache.clone())))
        .topology_source(Arc::new(ResourceTopology::new(manager.clone())))
        .topology_source(Arc::new(|| {
            admin::Topology::from_serialize(&serde_json::json!({"backplane": {"kind": "local (demo)"}}))
                .unwrap_or_default()
        }));
    let (addr, server) = admin::serve(([127, 0, 0, 1], port as u16).into(), state).await?;
    println!("admin listening on http://{addr}/dashboard");

    // Cache readers: Zipf-like skew (squares of uniform draws favour small ids).
    for _ in 0..2 {
        let c = cache.clone();
        tokio::spawn(async move {
            loop {
                for _ in 0..200 {
                    let u = fastrand::f64();
                    let k = (u * u * 20_000.0) as u64;
                    let _ = c.get_or_load(&k).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    // L2 outages every 20 s for 5 s (the breaker opens, then recovers).
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(15)).await;
            l2.set_failing(true);
            tokio::time::sleep(Duration::from_secs(5)).await;
            l2.set_failing(false);
        }
    });
    // Resource jobs.
    let mgr = manager.clone();
    tokio::spawn(async move {
        loop {
            let req = AllocationRequest::new("ml", "demo")
                .request(ResourceKind::Cpu, 1_000 + fastrand::u64(0..3_000))
                .request(ResourceKind::Memory, 4 << 30)
                .request(ResourceKind::Gpu, fastrand::u64(0..2))
                .timeout(Duration::from_millis(200));
            if let Ok(job) = mgr.allocate(req).await {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(500 + fastrand::u64(0..2_500))).await;
                    drop(job);
                });
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });

    match arg("--seconds") {
        Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
        None => std::future::pending::<()>().await,
    }
    server.abort();
    Ok(())
}
