//! 10,000 mixed jobs on a simulated 8-GPU node with MIG and time-slicing (paused tokio time).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use strata_gpu::{DevicePluginConfig, MigStrategy, ReplicatedResource, SimulatedInventory, TimeSlicing};
use strata_resource_qos::{AllocationRequest, PriorityClass, QosError, ResourceKind, ResourceManager};

struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[derive(Default)]
struct Outcomes {
    admitted: AtomicU64,
    preempted: AtomicU64,
    timed_out: AtomicU64,
    overloaded: AtomicU64,
    breaker: AtomicU64,
    other: AtomicU64,
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_mixed_jobs() {
    let inv = SimulatedInventory::builder()
        .gpus(8, "NVIDIA A100-SXM4-80GB", 80)
        .mig(0, ["3g.40gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb"])
        .mig(1, ["3g.40gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb"])
        .nvlink_all(12)
        .build()
        .unwrap();
    let plugin = DevicePluginConfig {
        mig_strategy: MigStrategy::Mixed,
        time_slicing: Some(TimeSlicing {
            rename_by_default: true,
            fail_requests_greater_than_one: false,
            resources: vec![ReplicatedResource { name: "nvidia.com/mig-1g.10gb".into(), replicas: 2, rename: None }],
        }),
    };
    let m = ResourceManager::builder()
        .gpu_inventory(Arc::new(inv), plugin)
        .capacity(ResourceKind::Cpu, 64_000)
        .capacity(ResourceKind::Memory, 512 << 30)
        .priority_class(PriorityClass::new("batch", 0).global_default())
        .priority_class(PriorityClass::new("training", 100))
        .priority_class(PriorityClass::new("serving", 1000))
        .max_waiters(256)
        .grace_period(Duration::from_millis(20))
        .build()
        .unwrap();
    let cap = m.usage().capacity;
    let mig3: ResourceKind = "nvidia.com/mig-3g.40gb".parse().unwrap();
    let shared: ResourceKind = "nvidia.com/mig-1g.10gb.shared".parse().unwrap();
    assert_eq!(cap.get(&ResourceKind::Gpu), Some(6));
    assert_eq!(cap.get(&mig3), Some(2));
    assert_eq!(cap.get(&shared), Some(16));

    let out = Arc::new(Outcomes::default());
    let mut rng = Lcg(42);
    let mut tasks = Vec::with_capacity(10_000);
    let mut arrival = 0u64;
    for _ in 0..10_000 {
        arrival += rng.next(7); // ms
        let class = ["batch", "training", "serving"][rng.next(3) as usize];
        let mut req = AllocationRequest::new("sim", "sim").priority_class(class).timeout(Duration::from_millis(200));
        req = match rng.next(4) {
            0 => req.request(ResourceKind::Gpu, 1 + rng.next(2)).request(ResourceKind::Cpu, 4_000),
            1 => req.request(mig3.clone(), 1).request(ResourceKind::Cpu, 2_000),
            2 => req.request(shared.clone(), 1).limit(ResourceKind::Cpu, 1_000).limit(ResourceKind::Memory, 4 << 30),
            _ => req.request(ResourceKind::Cpu, 500 + rng.next(4_000)),
        };
        let hold = Duration::from_millis(5 + rng.next(60));
        let (m, out) = (m.clone(), out.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(arrival)).await;
            match m.allocate(req).await {
                Ok(a) => {
                    out.admitted.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        () = tokio::time::sleep(hold) => {}
                        _ = a.revoked() => { out.preempted.fetch_add(1, Ordering::Relaxed); }
                    }
                    drop(a);
                }
                Err(QosError::Timeout { .. }) => _ = out.timed_out.fetch_add(1, Ordering::Relaxed),
                Err(QosError::Overloaded { .. }) => _ = out.overloaded.fetch_add(1, Ordering::Relaxed),
                Err(QosError::CircuitOpen { .. }) => _ = out.breaker.fetch_add(1, Ordering::Relaxed),
                Err(_) => _ = out.other.fetch_add(1, Ordering::Relaxed),
            }
        }));
    }
    // Watch the invariant while the simulation runs.
    let watcher = {
        let m = m.clone();
        tokio::spawn(async move {
            let mut max_seen = 0u64;
            loop {
                let u = m.usage();
                for (k, q) in u.used.iter() {
                    assert!(q <= u.capacity.get(k).unwrap(), "{k} over capacity");
                }
                max_seen = max_seen.max(u.used.get(&ResourceKind::Gpu).unwrap_or(0));
                if u.allocations == 0 && u.waiters == 0 && max_seen > 0 {
                    return max_seen;
                }
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    let max_gpu = watcher.await.unwrap();
    let o = &*out;
    let total = o.admitted.load(Ordering::Relaxed)
        + o.timed_out.load(Ordering::Relaxed)
        + o.overloaded.load(Ordering::Relaxed)
        + o.breaker.load(Ordering::Relaxed);
    println!(
        "admitted {} (preempted {}), timed out {}, overloaded {}, breaker open {}",
        o.admitted.load(Ordering::Relaxed),
        o.preempted.load(Ordering::Relaxed),
        o.timed_out.load(Ordering::Relaxed),
        o.overloaded.load(Ordering::Relaxed),
        o.breaker.load(Ordering::Relaxed)
    );
    assert_eq!(o.other.load(Ordering::Relaxed), 0);
    assert_eq!(total, 10_000);
    assert!(o.admitted.load(Ordering::Relaxed) > 5_000, "most jobs run: {}", o.admitted.load(Ordering::Relaxed));
    assert!(o.preempted.load(Ordering::Relaxed) > 0, "higher priorities preempted some jobs");
    assert_eq!(max_gpu, 6, "whole GPUs were fully used at some point");
    assert!(m.usage().used.is_empty(), "everything returned");
}
