//! Redis benches (L2): (a) an L2 hit through a `Cache` with no L1 and `RedisTier` vs a raw `GET`
//! on the same deadpool pool (p50s and their ratio, target ≤ 1.15×); (b) `get_many` of 100 keys
//! vs 100 sequential single gets (throughput ratio, target ≥ 10×).
//!
//! Uses `STRATA_TEST_REDIS_URL` when set, else starts a throwaway `redis-server`.

use std::hint::black_box;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use strata_cache_core::{Cache, Key, Namespace, Postcard};
use strata_cache_redis::raw::deadpool_redis::redis;
use strata_cache_redis::{RedisConfig, RedisTier};

const KEYS: u64 = 1_000;

struct Server(Option<Child>);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn redis_url() -> Option<(String, Server)> {
    if let Ok(url) = std::env::var("STRATA_TEST_REDIS_URL") {
        return Some((url, Server(None)));
    }
    let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(Some(child));
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(5) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some((format!("redis://127.0.0.1:{port}"), server))
}

fn p50(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let Some((url, _server)) = redis_url() else {
        println!("redis bench: no STRATA_TEST_REDIS_URL and redis-server could not start; skipped");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let prefix = format!("bench{:08x}:", fastrand::u32(..));
    let tier = RedisTier::new(&RedisConfig::standalone(&url).prefix(prefix)).expect("tier");
    let cache: Cache<u64, String> = rt
        .block_on(Cache::builder("bench").no_l1().tier(Arc::new(tier.clone())).serializer(Postcard).build())
        .expect("cache");
    for k in 0..KEYS {
        rt.block_on(cache.set(k, format!("value-{k}"))).expect("set");
    }
    let pool = strata_cache_redis::raw::standalone_pool(&tier).expect("standalone pool").clone();
    let rkeys: Vec<String> = (0..KEYS)
        .map(|k| tier.redis_key(&Key::new("bench", Namespace::default_namespace(), &k.to_string()).expect("key")))
        .collect();
    let raw_get = |k: u64| {
        let pool = pool.clone();
        let rkey = rkeys[k as usize].clone();
        async move {
            let mut c = pool.get().await.expect("conn");
            let v: Option<Vec<u8>> = redis::cmd("GET").arg(rkey).query_async(&mut c).await.expect("GET");
            v
        }
    };

    // (a) p50 of single hits, interleaved so both sides see the same server conditions.
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        i = (i + 7) % KEYS;
        let t = Instant::now();
        let v = rt.block_on(cache.get(&i)).expect("get");
        ours.push(t.elapsed().as_nanos() as f64);
        assert!(v.is_some(), "L2 hit");
        let t = Instant::now();
        let v = rt.block_on(raw_get(i));
        raw.push(t.elapsed().as_nanos() as f64);
        assert!(v.is_some());
    }
    let (po, pr) = (p50(&mut ours), p50(&mut raw));
    println!(
        "\nl2_hit: strata cache (no L1) p50 {:.1} µs, raw GET p50 {:.1} µs, ratio {:.2}x (target <= 1.15x), {} samples each",
        po / 1e3,
        pr / 1e3,
        po / pr,
        ours.len()
    );

    // (b) 100 keys: one get_many vs 100 sequential gets.
    let batch: Vec<u64> = (0..100).map(|k| k * 7 % KEYS).collect();
    let (mut many, mut seq) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        let got = rt.block_on(cache.get_many(&batch)).expect("get_many");
        many.push(t.elapsed().as_nanos() as f64);
        assert!(got.iter().all(Option::is_some));
        let t = Instant::now();
        for k in &batch {
            black_box(rt.block_on(cache.get(k)).expect("get"));
        }
        seq.push(t.elapsed().as_nanos() as f64);
    }
    let (pm, ps) = (p50(&mut many), p50(&mut seq));
    println!(
        "get_many(100): {:.0} µs per batch ({:.0} keys/s); 100 sequential gets: {:.0} µs ({:.0} keys/s); throughput ratio {:.1}x (target >= 10x)\n",
        pm / 1e3,
        100.0 * 1e9 / pm,
        ps / 1e3,
        100.0 * 1e9 / ps,
        ps / pm
    );

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("l2_hit");
    g.bench_function("strata_cache_no_l1_get", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 7) % KEYS;
            black_box(rt.block_on(cache.get(&i)).expect("get"))
        })
    });
    g.bench_function("deadpool_raw_get", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 7) % KEYS;
            black_box(rt.block_on(raw_get(i)))
        })
    });
    g.finish();
    let mut g = c.benchmark_group("l2_batch_100");
    g.bench_function("get_many", |b| b.iter(|| black_box(rt.block_on(cache.get_many(&batch)).expect("get_many"))));
    g.bench_function("sequential_get", |b| {
        b.iter(|| {
            for k in &batch {
                black_box(rt.block_on(cache.get(k)).expect("get"));
            }
        })
    });
    g.finish();
    c.final_summary();
}
