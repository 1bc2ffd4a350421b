//! `cargo xtask demo`: a realistic workload through the facade, with the admin dashboard.
//!
//! Zipf-distributed keys (s = 1.0 over 20,000 keys) from 32 concurrent clients, 200,000 requests
//! by default, against a slow loader standing in for a database (2 ms per call, plus 5 % of
//! calls at 20 ms). Prints progress every second and ends with a table: requests, hit ratio per
//! tier, loader calls, p50/p99 latency.
//!
//! Levels: L1 (2,000 entries) → L2 Redis when `STRATA_REDIS_URL` / `[redis]` is configured →
//! L3 SQL: the configured `[sql]`, or by default an embedded SQLite file in the temp directory.
//! The admin endpoint (`/dashboard`, `/metrics`, `/health`, `/topology`) listens on
//! `STRATA_ADMIN_LISTEN` (default `127.0.0.1:0`) and its address is printed. Off loopback it
//! needs `STRATA_ADMIN_TOKEN`; the dashboard then takes the token from `#token=...` or asks.
//!
//! Beside the cache, a resource manager over a simulated inventory (4 GPUs) admits a stream of
//! small training jobs, so the dashboard's resource panel has something to show.
//!
//! Flags: `--requests N` (default 200000), `--linger SECS` (keep serving the dashboard after the
//! workload; default 0), `--serve` (keep serving it until Ctrl-C), `--rate N` (requests per
//! second in total, default unlimited). Latencies are shown in the unit that fits (ns, µs, ms).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};
use strata::config::{AdminSettings, SqlSettings};
use strata::gpu::{DevicePluginConfig, SimulatedInventory};
use strata::resource_qos::{AllocationRequest, PriorityClass, ResourceKind, ResourceManager};
use strata::telemetry::PrometheusObserver;
use strata::telemetry::admin::{self, AdminState, CacheHealth, CacheTopology, ResourceTopology};
use strata::{BoxError, CacheStats, FnLoader, Strata, StrataConfig};

const CLIENTS: u64 = 32;
const KEYS: u64 = 20_000;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Product {
    id: u64,
    name: String,
    price_cents: u64,
    tags: Vec<String>,
}

struct Args {
    requests: u64,
    linger: Duration,
    serve: bool,
    rate: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { requests: 200_000, linger: Duration::ZERO, serve: false, rate: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or_else(|| format!("{name} needs a value"))?;
            v.parse().map_err(|e| format!("{name} {v:?}: {e}"))
        };
        if flag == "--serve" {
            a.serve = true;
            continue;
        }
        match flag.as_str() {
            "--requests" => a.requests = value("--requests")?.max(CLIENTS),
            "--linger" => a.linger = Duration::from_secs(value("--linger")?),
            "--rate" => a.rate = Some(value("--rate")?.max(1)),
            other => {
                return Err(format!("unknown flag {other:?} (use --requests N, --linger SECS, --serve, --rate N)"));
            }
        }
    }
    Ok(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = StrataConfig::from_env()?;
    let mut temp_db = None;
    if config.sql.is_none() {
        let path = std::env::temp_dir().join(format!("strata-demo-{}.db", std::process::id()));
        config.sql = Some(SqlSettings {
            url: format!("sqlite://{}?mode=rwc", path.display()),
            table: None,
            sweep_interval: None,
            max_connections: None,
            acquire_timeout: None,
        });
        temp_db = Some(path);
    }
    // Loopback by default; `[admin]` / `STRATA_ADMIN_*` can change the address, the allowed hosts
    // and set a token (required off loopback).
    let (admin_addr, admin_config) =
        config.admin.get_or_insert_with(|| AdminSettings::new("127.0.0.1:0")).admin_config()?;
    let requests = args.requests;
    println!("Strata demo: {requests} requests, {CLIENTS} clients, Zipf(s=1.0) over {KEYS} keys");

    let stats = CacheStats::new();
    let metrics = PrometheusObserver::new()?;
    let strata = Strata::builder().config(config).observer(stats.clone()).observer(metrics.clone()).connect().await?;
    println!("  L1: 2000 entries");
    for (name, desc) in &strata.topology().tiers {
        println!("  {name}: {desc}");
    }
    if strata.config().redis.is_none() {
        println!("  (no Redis configured: set STRATA_REDIS_URL=redis://127.0.0.1:6379 to add L2)");
    }
    if let Some(bus) = &strata.topology().bus {
        println!("  backplane: {bus}");
    }

    let loader_calls = Arc::new(AtomicU64::new(0));
    let calls = loader_calls.clone();
    let products = strata
        .cache::<u64, Product>("products")
        .l1(strata::L1Config::entries(2_000))
        .options(
            strata::EntryOptions::new(Duration::from_secs(30)).jitter(Duration::from_secs(5)).early_refresh_beta(1.0),
        )
        .loader(FnLoader::new(move |id: u64| {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                // A database: 2 ms typical, 20 ms for one call in twenty.
                let delay = if n.is_multiple_of(20) { 20 } else { 2 };
                tokio::time::sleep(Duration::from_millis(delay)).await;
                Ok::<_, BoxError>(Some(Product {
                    id,
                    name: format!("product #{id}"),
                    price_cents: 100 + id % 10_000,
                    tags: vec!["demo".into()],
                }))
            }
        }))
        .build()
        .await?;

    metrics.watch_cache(&products);
    for (tier, probe) in strata.breakers() {
        let p = probe.clone();
        metrics.watch_breaker(tier, move || Some(p.state()));
    }
    // A resource manager on a simulated 4-GPU node, fed by a stream of jobs.
    let inventory = SimulatedInventory::builder().gpus(4, "simulated H100 80GB", 80).nvlink_all(18).build()?;
    let manager = ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 16_000)
        .capacity(ResourceKind::Memory, 64 << 30)
        .gpu_inventory(Arc::new(inventory), DevicePluginConfig::default())
        .priority_class(PriorityClass::new("batch", 100).global_default())
        .observer(metrics.clone())
        .build()?;
    {
        let m = manager.clone();
        metrics.watch_resources(move || m.usage());
    }
    let admitted = Arc::new(AtomicU64::new(0));
    let jobs = {
        let (manager, admitted) = (manager.clone(), admitted.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                n += 1;
                let req = AllocationRequest::new("training", "demo")
                    .request(ResourceKind::Cpu, 2_000)
                    .request(ResourceKind::Memory, 8 << 30)
                    .request(ResourceKind::Gpu, 1 + n % 2)
                    .timeout(Duration::from_millis(200));
                if let Ok(job) = manager.allocate(req).await {
                    admitted.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(300 + 97 * (n % 7))).await;
                        drop(job);
                    });
                }
                tokio::time::sleep(Duration::from_millis(120)).await;
            }
        })
    };

    let topo = strata.topology().clone();
    let state = AdminState::new(metrics.clone())
        .health_source(Arc::new(CacheHealth::new(products.clone(), Some(metrics.clone()))))
        .topology_source(Arc::new(CacheTopology::new(products.clone())))
        .topology_source(Arc::new(ResourceTopology::new(manager.clone())))
        .topology_source(Arc::new(move || {
            admin::Topology::from_serialize(&serde_json::json!({
                "backends": topo.tiers.iter().map(|(n, d)| serde_json::json!({"name": n, "description": d})).collect::<Vec<_>>(),
                "backplane": topo.bus.as_ref().map(|b| serde_json::json!({"kind": "redis-pubsub", "description": b})),
            }))
            .unwrap_or_default()
        }));
    let token_required = admin_config.has_token();
    let (addr, server) = admin::serve_with(admin_addr, state, admin_config).await?;
    println!("  dashboard: http://{addr}/dashboard   (metrics: http://{addr}/metrics)");
    if token_required {
        // The token itself is never printed: the operator already has it.
        println!("  (admin token required: open http://{addr}/dashboard#token=<token>, or type it into the page)");
    }
    println!();

    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let per_client_gap = args.rate.map(|r| Duration::from_secs_f64(CLIENTS as f64 / r as f64));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (products, done) = (products.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c);
            let zipf = Zipf::new(KEYS as f64, 1.0).map_err(|e| e.to_string())?;
            let mut lat = Vec::with_capacity((requests / CLIENTS) as usize);
            for _ in 0..requests / CLIENTS {
                let key = zipf.sample(&mut rng) as u64;
                let t = Instant::now();
                let p = products.get_or_load(&key).await.map_err(|e| e.to_string())?;
                lat.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                if p.map(|p| p.id) != Some(key) {
                    return Err(format!("wrong value for key {key}"));
                }
                done.fetch_add(1, Ordering::Relaxed);
                if let Some(gap) = per_client_gap {
                    tokio::time::sleep(gap.saturating_sub(t.elapsed())).await;
                }
            }
            Ok::<_, String>(lat)
        }));
    }
    let progress = {
        let (done, stats) = (done.clone(), stats.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let n = done.load(Ordering::Relaxed);
                let hits = stats.hits("l1");
                println!(
                    "  [{:>4.1}s] {n:>7} requests  L1 hit ratio {:>5.1}%  loader calls {}",
                    started.elapsed().as_secs_f64(),
                    100.0 * hits as f64 / n.max(1) as f64,
                    stats.loads()
                );
            }
        })
    };
    let mut lat = Vec::with_capacity(requests as usize);
    for c in clients {
        lat.extend(c.await??);
    }
    progress.abort();
    let elapsed = started.elapsed();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let total = lat.len() as u64;
    let l1_hits = stats.hits("l1");

    println!("\n  ┌──────────────────────────┬──────────────┐");
    let row = |k: &str, v: String| println!("  │ {k:<24} │ {v:>12} │");
    row("requests", total.to_string());
    row("elapsed", format!("{:.2} s", elapsed.as_secs_f64()));
    row("throughput", format!("{:.0}/s", total as f64 / elapsed.as_secs_f64()));
    row("L1 hit ratio", format!("{:.2} %", 100.0 * l1_hits as f64 / total as f64));
    for tier in products.tier_names() {
        let (h, m) = (stats.hits(&tier), stats.misses(&tier));
        row(&format!("{tier} hit ratio"), format!("{:.2} %", 100.0 * h as f64 / (h + m).max(1) as f64));
    }
    row("tier errors", stats.tier_errors().to_string());
    row("coalesced waiters", stats.coalesced().to_string());
    row("loader calls", loader_calls.load(Ordering::Relaxed).to_string());
    row("L1 evictions", stats.evictions().to_string());
    row("p50 latency", latency(pct(0.50)));
    row("p99 latency", latency(pct(0.99)));
    row("p99.9 latency", latency(pct(0.999)));
    row("GPU jobs admitted", admitted.load(Ordering::Relaxed).to_string());
    println!("  └──────────────────────────┴──────────────┘");

    if args.serve {
        // Ctrl-C ends the process (there is nothing left to flush): remove the temporary SQLite
        // files now; on Unix the open database keeps working until then.
        remove_temp_db(temp_db.as_deref());
        println!("\n  serving the dashboard at http://{addr}/dashboard until you press Ctrl-C");
        std::future::pending::<()>().await;
    }
    if !args.linger.is_zero() {
        println!("  serving the dashboard at http://{addr}/dashboard for {} more seconds", args.linger.as_secs());
        tokio::time::sleep(args.linger).await;
    } else {
        println!("\n  (the dashboard stopped with the demo: `cargo xtask demo --serve` keeps it up until Ctrl-C)");
    }
    server.abort();
    jobs.abort();
    remove_temp_db(temp_db.as_deref());
    Ok(())
}

fn remove_temp_db(path: Option<&std::path::Path>) {
    if let Some(p) = path {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
        }
    }
}

/// A latency in nanoseconds, in the unit that fits: `850 ns`, `12.3 µs`, `4.56 ms`, `1.20 s`.
fn latency(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::latency;

    #[test]
    fn latencies_use_the_unit_that_fits() {
        assert_eq!(latency(0), "0 ns");
        assert_eq!(latency(850), "850 ns");
        assert_eq!(latency(999), "999 ns");
        assert_eq!(latency(1_000), "1.0 µs");
        assert_eq!(latency(12_345), "12.3 µs");
        assert_eq!(latency(999_949), "999.9 µs");
        assert_eq!(latency(4_560_000), "4.56 ms");
        assert_eq!(latency(1_200_000_000), "1.20 s");
        assert_eq!(latency(u64::MAX), "18446744073.71 s");
    }
}
