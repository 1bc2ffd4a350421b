//! Capacity discovery from fixture cgroup files and Downward API variables.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::HashMap;
use std::path::PathBuf;

use strata_resource_qos::{CapacityDiscovery, CapacitySource, QosError, ResourceKind, ResourceManager};

struct Fixture(PathBuf);

impl Fixture {
    fn new(name: &str, files: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!("strata-qos-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (f, content) in files {
            std::fs::write(dir.join(f), content).unwrap();
        }
        Self(dir)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

const MEMINFO: &str = "MemTotal:       16384000 kB\nMemFree:         1000 kB\n";

#[test]
fn cgroup_limits_win() {
    let cg = Fixture::new(
        "cg",
        &[("cpu.max", "250000 100000\n"), ("memory.max", "8589934592\n"), ("memory.high", "6442450944\n")],
    );
    let found = CapacityDiscovery::new()
        .cgroup_dir(&cg.0)
        .env_source(env(&[("CPU_LIMIT", "64"), ("MEMORY_LIMIT", "1")]))
        .discover()
        .unwrap();
    assert_eq!(found.cpu_millis, 2500);
    assert_eq!(found.cpu_source, CapacitySource::Cgroup);
    assert_eq!(found.memory_bytes, 6 << 30, "memory.high below memory.max is the admission capacity");
    assert_eq!(found.memory_max_bytes, Some(8 << 30));
    assert_eq!(found.memory_high_bytes, Some(6 << 30));
    let m = ResourceManager::builder().discovered(found.to_list()).capacity(ResourceKind::Cpu, 1000).build().unwrap();
    assert_eq!(m.usage().capacity.get(&ResourceKind::Cpu), Some(1000), "config overrides discovery");
    assert_eq!(m.usage().capacity.get(&ResourceKind::Memory), Some(6 << 30));
}

#[test]
fn unlimited_cgroup_falls_back_to_downward_api_then_host() {
    let cg = Fixture::new("max", &[("cpu.max", "max 100000\n"), ("memory.max", "max\n"), ("meminfo", MEMINFO)]);
    let found = CapacityDiscovery::new()
        .cgroup_dir(&cg.0)
        .proc_dir(&cg.0)
        .env_source(env(&[("CPU_LIMIT", "3"), ("POD_MEM", "512")]))
        .downward_api_vars("CPU_LIMIT", "POD_MEM")
        .divisors(1000, 1 << 20)
        .discover()
        .unwrap();
    assert_eq!((found.cpu_millis, found.cpu_source), (3000, CapacitySource::DownwardApi));
    assert_eq!((found.memory_bytes, found.memory_source), (512 << 20, CapacitySource::DownwardApi));

    let host = CapacityDiscovery::new()
        .cgroup_dir(cg.0.join("missing"))
        .proc_dir(&cg.0)
        .env_source(env(&[]))
        .discover()
        .unwrap();
    assert_eq!(host.cpu_source, CapacitySource::Host);
    assert!(host.cpu_millis >= 1000);
    assert_eq!((host.memory_bytes, host.memory_source), (16_384_000 * 1024, CapacitySource::Host));
}

#[test]
fn malformed_inputs_are_errors() {
    for (file, content) in
        [("cpu.max", "lots 100000"), ("cpu.max", "0 100000"), ("memory.max", "-5"), ("memory.high", "0")]
    {
        let cg = Fixture::new("bad", &[(file, content)]);
        let r = CapacityDiscovery::new().cgroup_dir(&cg.0).proc_dir(&cg.0).env_source(env(&[])).discover();
        assert!(matches!(r, Err(QosError::Discovery(_))), "{file}={content:?}: {r:?}");
    }
    let cg = Fixture::new("badenv", &[("meminfo", MEMINFO)]);
    let r =
        CapacityDiscovery::new().cgroup_dir(&cg.0).proc_dir(&cg.0).env_source(env(&[("CPU_LIMIT", "two")])).discover();
    assert!(matches!(r, Err(QosError::Discovery(m)) if m.contains("CPU_LIMIT")));
    let r = CapacityDiscovery::new().cgroup_dir(&cg.0).proc_dir(cg.0.join("nope")).env_source(env(&[])).discover();
    assert!(matches!(r, Err(QosError::Discovery(_))), "no host memory source");
}
