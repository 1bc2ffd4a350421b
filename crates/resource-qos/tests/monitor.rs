//! The monitoring loop on paused tokio time with a scripted sampler.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_gpu::SimulatedInventory;
use strata_resource_qos::monitor::{
    Monitor, MonitorConfig, MonitorEvent, ProcessSampler, ScalingTarget, UsageSample, UsageSampler,
};
use strata_resource_qos::{QosError, ResourceEvent, ResourceKind, ResourceManager, ResourceObserver};

struct Scripted(AtomicU64);
impl UsageSampler for Scripted {
    fn sample(&self) -> Result<UsageSample, QosError> {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        // CPU 100..=1000 m cycling, memory 1 GiB.
        Ok(UsageSample {
            cpu_millis: Some(100.0 * ((n % 10) + 1) as f64),
            memory_bytes: Some(1 << 30),
            gpu_utilization_percent: Some(50.0),
        })
    }
}

#[derive(Default)]
struct Ratios(Mutex<Vec<(ResourceKind, f64)>>);
impl ResourceObserver for Ratios {
    fn on_event(&self, e: &ResourceEvent) {
        if let ResourceEvent::Utilization { resource, component: "actual", ratio } = e {
            self.0.lock().unwrap().push((resource.clone(), *ratio));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn spawned_loop_publishes_recommendations_and_replicas() {
    let ratios = Arc::new(Ratios::default());
    let m = ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 2000)
        .capacity(ResourceKind::Memory, 4 << 30)
        .observer(ratios.clone())
        .build()
        .unwrap();
    let config = MonitorConfig {
        interval: Duration::from_secs(1),
        scaling: Some(ScalingTarget { current_replicas: 2, target_cpu_millis_per_replica: 100.0, tolerance: 0.1 }),
        ..MonitorConfig::default()
    };
    let handle = Monitor::new(m, Arc::new(Scripted(AtomicU64::new(0))), config).spawn();
    let mut rx = handle.subscribe();
    let mut last_recs = None;
    let mut last_desired = None;
    let mut samples = 0;
    while samples < 20 {
        match rx.recv().await.unwrap() {
            MonitorEvent::Sample(_) => samples += 1,
            MonitorEvent::Recommendations(r) => last_recs = Some(r),
            MonitorEvent::DesiredReplicas { desired, .. } => last_desired = Some(desired),
        }
    }
    handle.stop().await;
    let recs = last_recs.unwrap();
    let cpu = recs.iter().find(|r| r.resource == ResourceKind::Cpu).unwrap().target;
    // p90 of 100..=1000 is ~900 (bucket upper bound), + 15 %.
    assert!((1000..=1120).contains(&cpu), "cpu target {cpu}");
    let mem = recs.iter().find(|r| r.resource == ResourceKind::Memory).unwrap().target;
    assert!(((1u64 << 30)..=(1u64 << 30) * 125 / 100).contains(&mem), "memory target {mem}");
    // The loop stopped at the 20th sample; the last decision seen is the 19th's:
    // 900 m over 2 replicas = 450 per replica vs 100 target → ceil(2 × 4.5) = 9.
    assert_eq!(last_desired, Some(9));
    let r = ratios.0.lock().unwrap();
    assert!(r.iter().any(|(k, v)| *k == ResourceKind::Gpu && (*v - 0.5).abs() < 1e-9));
    assert!(r.iter().any(|(k, v)| *k == ResourceKind::Memory && (*v - 0.25).abs() < 1e-9));
}

#[tokio::test]
async fn process_sampler_reads_this_process_and_gpu_inventory() {
    let inv = SimulatedInventory::builder().gpus(2, "x", 80).build().unwrap();
    inv.set_utilization(0, 30).unwrap();
    inv.set_utilization(1, 70).unwrap();
    let sampler = ProcessSampler::new().gpu_inventory(Arc::new(inv));
    let first = sampler.sample().unwrap();
    assert_eq!(first.cpu_millis, None, "CPU needs two samples");
    assert_eq!(first.gpu_utilization_percent, Some(50.0));
    if std::path::Path::new("/proc/self/status").exists() {
        assert!(first.memory_bytes.unwrap() > 0);
        std::thread::sleep(Duration::from_millis(20));
        let second = sampler.sample().unwrap();
        assert!(second.cpu_millis.unwrap() >= 0.0);
    }
    // A cgroup fixture takes precedence.
    let dir = std::env::temp_dir().join(format!("strata-qos-sampler-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("memory.current"), "123456\n").unwrap();
    std::fs::write(dir.join("cpu.stat"), "usage_usec 1000\nuser_usec 600\n").unwrap();
    let s = ProcessSampler::new().cgroup_dir(&dir).sample().unwrap();
    assert_eq!(s.memory_bytes, Some(123_456));
    std::fs::remove_dir_all(&dir).unwrap();
}
