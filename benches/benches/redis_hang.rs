//! A Redis that hangs (issue 11): cache throughput with the bus on while the Redis process is
//! stopped (SIGSTOP), against the same load with no Redis at all. Target: after the hang's first
//! second, at least half of the no-Redis baseline.
//!
//! The workload is the one of `crates/cache-redis/tests/hang.rs` (which checks correctness and
//! prints one ratio, but asserts no real-time figure): 16 tasks on a 2-thread runtime, each
//! looping over reads (`get_or_load`, 3 in 4) and writes (`set`, 1 in 4) of 500 ids, through L1,
//! the Redis tier behind the default breaker, and the Redis bus. Each round measures:
//!
//! 1. the baseline: tier and bus pointed at a loopback port nobody listens on;
//! 2. healthy: a bench-owned `redis-server` (free loopback port, `--save "" --appendonly no`);
//! 3. hung: the same server after `kill -STOP`, measured from the hang's first second on.
//!
//! Prints every round and the median ratio hung/baseline with `PASS`/`MISS` against the target.
//! It is a measurement: a miss does not make it exit non-zero. The server is continued and
//! killed on exit, on panic too (a guard). Skipped (with a line saying so) when `redis-server`
//! cannot start.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_cache_core::{BreakerConfig, Cache, EntryOptions, FnLoader, L1Config, Postcard};
use strata_cache_redis::{RedisBus, RedisConfig, RedisTier};

const ROUNDS: usize = 4;
const WORKERS: usize = 16;
const IDS: u64 = 500;
/// Warm-up of each load before its window.
const WARM_UP: Duration = Duration::from_millis(500);
const BASELINE_WINDOW: Duration = Duration::from_secs(2);
const HEALTHY_WINDOW: Duration = Duration::from_secs(1);
/// The hang's first second is not measured (the target starts there).
const HANG_GRACE: Duration = Duration::from_secs(1);
const HANG_WINDOW: Duration = Duration::from_secs(4);
const TARGET: f64 = 0.5;

/// A free loopback port (nobody listens on it once the probe is dropped).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local addr").port()
}

/// The bench's own `redis-server`; on drop (also while unwinding from a panic) it is continued,
/// in case it was stopped, then killed and reaped.
struct OwnedRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl OwnedRedis {
    fn start() -> Option<Self> {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("strata-redis-hang-bench-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = Self { child, port, dir };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `kill -SIG PID` on this bench's own server.
    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(&pid).status().is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {pid} failed");
    }
}

impl Drop for OwnedRedis {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-CONT").arg(self.child.id().to_string()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The "database" the loaders read and the writers update.
type Source = Arc<Mutex<HashMap<u64, String>>>;

/// L1, the Redis tier behind the default breaker (as the facade builds it) and the Redis bus.
async fn instance(config: &RedisConfig, source: &Source) -> (Cache<u64, String>, RedisBus) {
    let bus = RedisBus::new(config).expect("bus");
    let tier = RedisTier::new(config).expect("tier").with_breaker(BreakerConfig::default()).expect("breaker");
    let src = source.clone();
    let loader = FnLoader::new(move |id: u64| {
        let v = src.lock().expect("source").get(&id).cloned().unwrap_or_else(|| format!("v{id}"));
        async move { Ok(Some(v)) }
    });
    let cache = Cache::builder("hang-bench")
        .l1(L1Config::entries(100_000))
        .tier(Arc::new(tier))
        .serializer(Postcard)
        .options(EntryOptions::new(Duration::from_secs(600)))
        .loader(loader)
        .bus(Arc::new(bus.clone()))
        .build()
        .await
        .expect("cache");
    (cache, bus)
}

/// `WORKERS` tasks looping over reads (3 in 4) and writes (1 in 4); counts completed operations
/// and errors returned to callers.
struct Load {
    ops: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(cache: &Cache<u64, String>, source: &Source) -> Self {
        let ops = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..WORKERS as u64)
            .map(|w| {
                let (cache, source) = (cache.clone(), source.clone());
                let (ops, errors, stop) = (ops.clone(), errors.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut i = w;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let id = 1000 + fastrand::u64(0..IDS);
                        let ok = if i.is_multiple_of(4) {
                            let v = format!("w{i}");
                            source.lock().expect("source").insert(id, v.clone());
                            cache.set(id, v).await.is_ok()
                        } else {
                            matches!(cache.get_or_load(&id).await, Ok(Some(_)))
                        };
                        let counter = if ok { &ops } else { &errors };
                        counter.fetch_add(1, Ordering::Relaxed);
                        // An L1 hit or a fast-failing tier never yields: let the timers run.
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        Self { ops, errors, stop, tasks }
    }

    /// Completed operations per second over the next `d`.
    async fn rate_over(&self, d: Duration) -> f64 {
        let (c0, t0) = (self.ops.load(Ordering::Relaxed), Instant::now());
        tokio::time::sleep(d).await;
        (self.ops.load(Ordering::Relaxed) - c0) as f64 / t0.elapsed().as_secs_f64()
    }

    /// Stops the tasks; returns the errors callers saw.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load task");
        }
        self.errors.load(Ordering::Relaxed)
    }
}

struct Round {
    baseline: f64,
    healthy: f64,
    hung: f64,
    errors: u64,
    deferred: u64,
}

async fn round(server: &OwnedRedis, n: usize) -> Round {
    let prefix = format!("hangbench{}r{n}{:08x}:", std::process::id(), fastrand::u32(..));
    let source: Source = Arc::new(Mutex::new(HashMap::new()));

    // (1) No Redis: tier and bus on a port nobody listens on.
    let dead = RedisConfig::standalone(format!("redis://127.0.0.1:{}", free_port())).prefix(prefix.clone());
    let (cache, _bus) = instance(&dead, &source).await;
    let load = Load::start(&cache, &source);
    tokio::time::sleep(WARM_UP).await;
    let baseline = load.rate_over(BASELINE_WINDOW).await;
    let mut errors = load.stop().await;
    drop(cache);

    // (2) Healthy Redis.
    let config = RedisConfig::standalone(server.url()).prefix(prefix);
    let (cache, bus) = instance(&config, &source).await;
    let load = Load::start(&cache, &source);
    tokio::time::sleep(WARM_UP).await;
    let healthy = load.rate_over(HEALTHY_WINDOW).await;

    // (3) The same load while Redis hangs, from the hang's first second on.
    server.signal("STOP");
    tokio::time::sleep(HANG_GRACE).await;
    let hung = load.rate_over(HANG_WINDOW).await;
    errors += load.stop().await;
    server.signal("CONT");
    let deferred = bus.stats().deferred();
    drop(cache);
    // Let the server and the dropped instance's connections settle before the next round.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Round { baseline, healthy, hung, errors, deferred }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) { (v[m - 1] + v[m]) / 2.0 } else { v[m] }
}

fn main() {
    let Some(server) = OwnedRedis::start() else {
        println!("redis_hang bench: redis-server could not start; skipped");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let started = Instant::now();
    let mut ratios = Vec::with_capacity(ROUNDS);
    println!(
        "\nredis_hang: {WORKERS} tasks, 3 reads : 1 write over {IDS} ids, L1 + Redis tier (breaker) + Redis bus, \
         2 runtime threads; hung window {HANG_WINDOW:?} after a {HANG_GRACE:?} grace"
    );
    for n in 1..=ROUNDS {
        let r = rt.block_on(round(&server, n));
        let ratio = r.hung / r.baseline;
        ratios.push(ratio);
        println!(
            "round {n}: no-Redis baseline {:.0} ops/s, healthy {:.0} ops/s, hung {:.0} ops/s; \
             hung/baseline {ratio:.2}, hung/healthy {:.2}; caller errors {}, bus deferred {}",
            r.baseline,
            r.healthy,
            r.hung,
            r.hung / r.healthy,
            r.errors,
            r.deferred
        );
    }
    let m = median(ratios);
    let verdict = if m >= TARGET { "PASS" } else { "MISS" };
    println!(
        "median hung/baseline over {ROUNDS} rounds: {m:.2} (target >= {TARGET}): {verdict}; total {:.1} s\n",
        started.elapsed().as_secs_f64()
    );
    drop(rt);
    drop(server);
}
