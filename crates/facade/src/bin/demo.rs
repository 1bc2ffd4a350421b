//! `cargo xtask demo`: a realistic workload through the facade.
//!
//! Zipf-distributed keys (s = 1.0 over 20,000 keys) from 32 concurrent clients, 200,000 requests,
//! against a slow loader standing in for a database (2 ms per call, plus 5 % of calls
//! at 20 ms). Prints progress every second and ends with a table: requests, hit ratio per tier,
//! loader calls, p50/p99 latency.
//!
//! Tiers: L1 always. The L2 Redis and L3 SQLite tiers are added here as their crates land
//! (issues #3 and #4); until then a configured `STRATA_REDIS_URL` / `[sql]` is reported and not
//! used.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};
use strata::{BoxError, CacheStats, FnLoader, Strata, StrataConfig};

const REQUESTS: u64 = 200_000;
const CLIENTS: u64 = 32;
const KEYS: u64 = 20_000;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Product {
    id: u64,
    name: String,
    price_cents: u64,
    tags: Vec<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = StrataConfig::from_env()?;
    println!("Strata demo: {REQUESTS} requests, {CLIENTS} clients, Zipf(s=1.0) over {KEYS} keys");
    match &config.redis {
        Some(_) => println!("  L2 redis: configured, but the Redis tier is not in this build yet (issue #3): not used"),
        None => println!("  L2 redis: not configured (set STRATA_REDIS_URL)"),
    }
    if config.sql.is_some() {
        println!("  L3 sql:   configured, but the SQL tier is not in this build yet (issue #4): not used");
    }

    let stats = CacheStats::new();
    let strata = Strata::builder().config(config).observer(stats.clone()).build();
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
                let delay = if n % 20 == 0 { 20 } else { 2 };
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
    println!("  cache: {products:?}\n");

    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (products, done) = (products.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c);
            let zipf = Zipf::new(KEYS as f64, 1.0).map_err(|e| e.to_string())?;
            let mut lat = Vec::with_capacity((REQUESTS / CLIENTS) as usize);
            for _ in 0..REQUESTS / CLIENTS {
                let key = zipf.sample(&mut rng) as u64;
                let t = Instant::now();
                let p = products.get_or_load(&key).await.map_err(|e| e.to_string())?;
                lat.push(t.elapsed().as_micros() as u64);
                if p.map(|p| p.id) != Some(key) {
                    return Err(format!("wrong value for key {key}"));
                }
                done.fetch_add(1, Ordering::Relaxed);
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
    let mut lat = Vec::with_capacity(REQUESTS as usize);
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
    row("coalesced waiters", stats.coalesced().to_string());
    row("loader calls", loader_calls.load(Ordering::Relaxed).to_string());
    row("L1 evictions", stats.evictions().to_string());
    row("p50 latency", format!("{} µs", pct(0.50)));
    row("p99 latency", format!("{} µs", pct(0.99)));
    row("p99.9 latency", format!("{} µs", pct(0.999)));
    println!("  └──────────────────────────┴──────────────┘");
    Ok(())
}
