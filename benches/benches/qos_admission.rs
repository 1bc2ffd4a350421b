//! Admission throughput and latency of `strata-resource-qos`, measured against
//! `tokio::sync::Semaphore` in the same run.
//!
//! - `allocate_release_uncontended`: `try_allocate` + drop of a CPU request on an idle manager
//!   (target ≥ 1M ops/s).
//! - `allocate_release_with_1000_waiters`: the same while 1,000 GPU requests wait in the queue
//!   (target p99 < 50 µs; the p99 is measured separately and printed).
//! - `tokio_semaphore_try_acquire_release`: the raw peer.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strata_resource_qos::{AllocationRequest, BreakerConfig, ResourceKind, ResourceManager};
use tokio::sync::Semaphore;

fn manager() -> ResourceManager {
    ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 1_000_000)
        .capacity(ResourceKind::Memory, 1 << 40)
        .capacity(ResourceKind::Gpu, 8)
        .max_waiters(2_000)
        .breaker(BreakerConfig { enabled: false, ..BreakerConfig::default() })
        .build()
        .expect("valid manager")
}

struct Names {
    ns: Arc<str>,
    principal: Arc<str>,
}

impl Names {
    fn cpu_request(&self) -> AllocationRequest {
        AllocationRequest::new(Arc::clone(&self.ns), Arc::clone(&self.principal)).request(ResourceKind::Cpu, 100)
    }
}

fn one(m: &ResourceManager, names: &Names) {
    let a = m.try_allocate(names.cpu_request()).expect("fits");
    drop(black_box(a));
}

/// Parks 1,000 waiters (each wants a GPU and 100m CPU) behind a manager whose GPUs are all taken.
fn with_waiters(
    rt: &tokio::runtime::Runtime,
    m: &ResourceManager,
) -> (strata_resource_qos::Allocation, Vec<tokio::task::JoinHandle<()>>) {
    let hog = m.try_allocate(AllocationRequest::new("bench", "hog").request(ResourceKind::Gpu, 8)).expect("GPUs free");
    let mut tasks = Vec::with_capacity(1_000);
    for _ in 0..1_000 {
        let m = m.clone();
        tasks.push(rt.spawn(async move {
            let r = AllocationRequest::new("bench", "waiter")
                .request(ResourceKind::Gpu, 1)
                .request(ResourceKind::Cpu, 100)
                .timeout(Duration::from_secs(3_600));
            let _ = m.allocate(r).await;
        }));
    }
    while m.usage().waiters < 1_000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    (hog, tasks)
}

fn ops_per_sec(iters: u64, f: impl Fn()) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    iters as f64 / start.elapsed().as_secs_f64()
}

fn p99_micros(samples: usize, f: impl Fn()) -> (f64, f64) {
    let mut v: Vec<Duration> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort_unstable();
    let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e6;
    (pct(0.5), pct(0.99))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let names = Names { ns: Arc::from("bench"), principal: Arc::from("bench") };
    let sem = Semaphore::new(1_000_000);
    let sem_op = || drop(black_box(sem.try_acquire_many(100).expect("permits")));

    // Summary printed once, with the ratio to the semaphore.
    let idle = manager();
    let strata = ops_per_sec(2_000_000, || one(&idle, &names));
    let tokio_sem = ops_per_sec(2_000_000, sem_op);
    println!(
        "qos_admission summary: strata allocate+release {:.2} M ops/s, tokio Semaphore {:.2} M ops/s, ratio strata/semaphore = {:.3}",
        strata / 1e6,
        tokio_sem / 1e6,
        strata / tokio_sem
    );

    let mut g = c.benchmark_group("qos_admission");
    g.throughput(Throughput::Elements(1));
    g.bench_function("allocate_release_uncontended", |b| b.iter(|| one(&idle, &names)));
    g.bench_function("tokio_semaphore_try_acquire_release", |b| b.iter(sem_op));

    let busy = manager();
    let (hog, tasks) = with_waiters(&rt, &busy);
    let (p50, p99) = p99_micros(200_000, || one(&busy, &names));
    println!("qos_admission summary: with 1,000 waiters: admission+release p50 {p50:.2} µs, p99 {p99:.2} µs");
    g.bench_function("allocate_release_with_1000_waiters", |b| b.iter(|| one(&busy, &names)));
    g.finish();

    busy.shutdown();
    drop(hog);
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
