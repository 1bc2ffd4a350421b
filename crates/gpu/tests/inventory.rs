//! Public-API tests of strata-gpu.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;

use proptest::prelude::*;
use strata_gpu::{
    DevicePluginConfig, DriverStatus, GpuError, GpuInventory, Interconnect, InventoryConfig, MigProfile, MigStrategy,
    NvmlInventory, ReplicatedResource, SimulatedInventory, StaticInventory, TimeSlicing, advertised_resources,
};

fn assert_send_sync<T: Send + Sync + 'static>() {}

#[test]
fn public_types_are_send_sync_and_trait_is_object_safe() {
    assert_send_sync::<NvmlInventory>();
    assert_send_sync::<StaticInventory>();
    assert_send_sync::<SimulatedInventory>();
    assert_send_sync::<GpuError>();
    assert_send_sync::<Arc<dyn GpuInventory>>();
    let inv: Arc<dyn GpuInventory> = Arc::new(StaticInventory::empty());
    assert!(inv.snapshot().is_empty());
    assert_eq!(inv.backend(), "static");
}

#[test]
fn nvml_default_init_never_panics() {
    // On a machine without the driver this is empty; with one it lists real GPUs.
    let inv = NvmlInventory::new().expect("init");
    match inv.driver_status() {
        DriverStatus::Unavailable { reason } => {
            assert!(!reason.is_empty());
            assert!(inv.snapshot().is_empty());
        }
        _ => assert!(inv.snapshot().devices.iter().all(|d| d.memory_total_bytes > 0)),
    }
}

const NODE: &str = r#"
nvlink_all = 12

[[gpu]]
name = "NVIDIA A100-SXM4-80GB"
memory_mib = 81920
numa_node = 0
mig = ["3g.40gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb"]

[[gpu]]
name = "NVIDIA A100-SXM4-80GB"
memory_mib = 81920
numa_node = 1
utilization_percent = 40

[[gpu]]
memory_mib = 81920
numa_node = 1

[[link]]
a = 2
b = 1
kind = "pcie_single_switch"
"#;

#[test]
fn static_inventory_from_toml() {
    let inv = StaticInventory::from_toml_str(NODE).unwrap();
    let snap = inv.refresh().unwrap();
    assert_eq!(snap.devices.len(), 3);
    let g0 = &snap.devices[0];
    assert!(g0.mig_enabled);
    assert_eq!(g0.mig_instances.len(), 5);
    assert_eq!(g0.mig_instances[0].profile.to_string(), "3g.40gb");
    assert_eq!(g0.utilization_percent, None, "NVML reports no utilization for MIG GPUs");
    assert_eq!(snap.devices[1].utilization_percent, Some(40));
    assert_eq!(snap.devices[1].numa_node, Some(1));
    assert_eq!(snap.devices[2].name, "Simulated GPU");
    assert_eq!(snap.interconnect(0, 1), Some(Interconnect::NvLink { links: 12 }));
    assert_eq!(snap.interconnect(1, 2), Some(Interconnect::PcieSingleSwitch));
    assert_eq!(snap.interconnect(2, 1), Some(Interconnect::PcieSingleSwitch));
    assert_eq!(snap.links.len(), 3);
    let uuids: std::collections::HashSet<_> = snap.devices.iter().map(|d| d.uuid.clone()).collect();
    assert_eq!(uuids.len(), 3);
    assert_eq!(snap.mean_utilization_percent(), Some(20.0));
}

#[test]
fn static_inventory_rejects_bad_config() {
    let cases = [
        ("[[gpu]]\nmemory_mib = 0\n", "memory_mib must be positive"),
        ("[[gpu]]\nmemory_mib = 10\nmemory_used_mib = 11\n", "exceeds"),
        ("[[gpu]]\nmemory_mib = 81920\nutilization_percent = 101\n", "at most 100"),
        ("[[gpu]]\nmemory_mib = 81920\nmig = [\"4g.40gb\", \"4g.40gb\"]\n", "compute slices"),
        ("[[gpu]]\nmemory_mib = 40960\nmig = [\"3g.40gb\", \"1g.10gb\"]\n", "GiB"),
        ("[[gpu]]\nmemory_mib = 81920\nmig_enabled = false\nmig = [\"1g.10gb\"]\n", "mig_enabled = false"),
        ("[[gpu]]\nuuid = \"GPU-x\"\nmemory_mib = 1\n[[gpu]]\nuuid = \"GPU-x\"\nmemory_mib = 1\n", "duplicate uuid"),
        ("[[gpu]]\nmemory_mib = 1\n[[link]]\na = 0\nb = 3\nkind = \"host_bridge\"\n", "does not exist"),
        ("[[gpu]]\nmemory_mib = 1\n[[link]]\na = 0\nb = 0\nkind = \"host_bridge\"\n", "itself"),
        (
            "[[gpu]]\nmemory_mib = 1\n[[gpu]]\nmemory_mib = 1\n[[link]]\na = 0\nb = 1\nkind = \"nvlink\"\nlinks = 0\n",
            "at least one link",
        ),
        ("nvlink_all = 0\n", "nvlink_all"),
    ];
    for (toml, needle) in cases {
        match StaticInventory::from_toml_str(toml) {
            Err(GpuError::InvalidConfig(m)) => assert!(m.contains(needle), "{toml:?}: {m}"),
            other => panic!("{toml:?}: expected InvalidConfig containing {needle:?}, got {other:?}"),
        }
    }
    for toml in ["[[gpu]]\nmemory_mib = 1\nmig = [\"1g\"]\n", "[[gpu]]\nmemory_mib = 1\nbogus = 1\n", "nope = ["] {
        assert!(matches!(StaticInventory::from_toml_str(toml), Err(GpuError::Parse(_))), "{toml:?}");
    }
}

#[test]
fn simulated_inventory_changes_are_visible() {
    let inv = SimulatedInventory::builder().gpus(2, "H100", 80).numa_node(1, 1).build().unwrap();
    let before = inv.snapshot();
    inv.set_utilization(0, 90).unwrap();
    inv.set_memory_used(1, 1024).unwrap();
    let after = inv.refresh().unwrap();
    assert_eq!(before.devices[0].utilization_percent, Some(0), "old snapshots are unchanged");
    assert_eq!(after.devices[0].utilization_percent, Some(90));
    assert_eq!(after.devices[1].memory_used_bytes, 1024);
    assert_eq!(after.devices[1].numa_node, Some(1));
    assert!(inv.set_utilization(0, 101).is_err());
    assert!(inv.set_utilization(9, 1).is_err());
    assert!(inv.set_memory_used(0, u64::MAX).is_err());
    assert!(SimulatedInventory::builder().gpus(1, "x", 80).mig(0, ["bad"]).build().is_err());
    assert!(SimulatedInventory::builder().gpus(1, "x", 80).mig(3, ["1g.10gb"]).build().is_err());
}

fn node() -> SimulatedInventory {
    SimulatedInventory::builder()
        .gpus(4, "NVIDIA A100-SXM4-80GB", 80)
        .mig(0, ["3g.40gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb"])
        .mig(1, ["1g.10gb"; 7])
        .build()
        .unwrap()
}

#[test]
fn strategy_none_counts_physical_gpus() {
    let ads = advertised_resources(&node().snapshot(), &DevicePluginConfig::default()).unwrap();
    assert_eq!(ads.count("nvidia.com/gpu"), 4);
    assert_eq!(ads.counts.len(), 1);
}

#[test]
fn strategy_mixed_counts_profiles() {
    let cfg = DevicePluginConfig { mig_strategy: MigStrategy::Mixed, time_slicing: None };
    let ads = advertised_resources(&node().snapshot(), &cfg).unwrap();
    assert_eq!(ads.count("nvidia.com/gpu"), 2);
    assert_eq!(ads.count("nvidia.com/mig-1g.10gb"), 11);
    assert_eq!(ads.count("nvidia.com/mig-3g.40gb"), 1);
    assert_eq!(ads.devices.len(), 14);
    assert!(ads.devices.iter().filter(|d| d.resource.starts_with("nvidia.com/mig-")).all(|d| d.id.starts_with("MIG-")));
}

#[test]
fn strategy_single() {
    let cfg = DevicePluginConfig { mig_strategy: MigStrategy::Single, time_slicing: None };
    // No MIG anywhere: falls back to `none`.
    let plain = SimulatedInventory::builder().gpus(3, "x", 80).build().unwrap();
    assert_eq!(advertised_resources(&plain.snapshot(), &cfg).unwrap().count("nvidia.com/gpu"), 3);
    // All MIG with one profile: MIG devices are nvidia.com/gpu.
    let uniform =
        SimulatedInventory::builder().gpus(2, "x", 80).mig(0, ["1g.10gb"; 7]).mig(1, ["1g.10gb"; 7]).build().unwrap();
    let ads = advertised_resources(&uniform.snapshot(), &cfg).unwrap();
    assert_eq!(ads.count("nvidia.com/gpu"), 14);
    // Mixed MIG modes and several profiles are refused as the device plugin does.
    assert!(matches!(advertised_resources(&node().snapshot(), &cfg), Err(GpuError::MigStrategy { .. })));
    let two_profiles = SimulatedInventory::builder().gpus(1, "x", 80).mig(0, ["3g.40gb", "1g.10gb"]).build().unwrap();
    let err = advertised_resources(&two_profiles.snapshot(), &cfg).unwrap_err();
    assert!(err.to_string().contains("one profile"), "{err}");
    let empty_mig = InventoryConfig::from_toml_str("[[gpu]]\nmemory_mib = 81920\nmig_enabled = true\n").unwrap();
    let err = advertised_resources(&empty_mig.to_snapshot().unwrap(), &cfg).unwrap_err();
    assert!(err.to_string().contains("no MIG devices"), "{err}");
}

#[test]
fn time_slicing_multiplies_and_renames() {
    let ts = |rename_by_default, replicas| TimeSlicing {
        rename_by_default,
        fail_requests_greater_than_one: false,
        resources: vec![
            ReplicatedResource { name: "nvidia.com/gpu".into(), replicas, rename: None },
            ReplicatedResource { name: "nvidia.com/mig-1g.10gb".into(), replicas: 2, rename: None },
        ],
    };
    let snap = node().snapshot();
    let cfg = DevicePluginConfig { mig_strategy: MigStrategy::Mixed, time_slicing: Some(ts(false, 4)) };
    let ads = advertised_resources(&snap, &cfg).unwrap();
    assert_eq!(ads.count("nvidia.com/gpu"), 8);
    assert_eq!(ads.count("nvidia.com/mig-1g.10gb"), 22);
    assert_eq!(ads.count("nvidia.com/mig-3g.40gb"), 1);
    assert!(ads.devices.iter().any(|d| d.id.ends_with("::3") && d.replica == Some(3)));

    let cfg = DevicePluginConfig { mig_strategy: MigStrategy::Mixed, time_slicing: Some(ts(true, 4)) };
    let ads = advertised_resources(&snap, &cfg).unwrap();
    assert_eq!(ads.count("nvidia.com/gpu"), 0);
    assert_eq!(ads.count("nvidia.com/gpu.shared"), 8);
    assert_eq!(ads.count("nvidia.com/mig-1g.10gb.shared"), 22);

    let cfg = DevicePluginConfig { mig_strategy: MigStrategy::None, time_slicing: Some(ts(false, 0)) };
    assert!(matches!(advertised_resources(&snap, &cfg), Err(GpuError::InvalidConfig(_))));
}

#[test]
fn device_plugin_config_deserializes() {
    let cfg: DevicePluginConfig = toml::from_str(
        "mig_strategy = \"mixed\"\n[time_slicing]\nrename_by_default = true\n[[time_slicing.resources]]\nname = \"nvidia.com/gpu\"\nreplicas = 3\n",
    )
    .unwrap();
    assert_eq!(cfg.mig_strategy, MigStrategy::Mixed);
    assert_eq!(cfg.time_slicing.unwrap().resources[0].replicas, 3);
}

#[test]
fn mig_profile_rejects_garbage() {
    for bad in ["", "1g", "g.10gb", "1g.gb", "0g.10gb", "1g.0gb", "1x.10gb", "1g.10gb+", "-1g.10gb", "1g.10GB"] {
        assert!(bad.parse::<MigProfile>().is_err(), "{bad:?} parsed");
    }
    let p: MigProfile = "1g.10gb+me".parse().unwrap();
    assert_eq!(p.attributes(), Some("me"));
    assert_eq!(p.to_string(), "1g.10gb+me");
    assert!(MigProfile::new(0, 1).is_err());
}

proptest! {
    #[test]
    fn mig_profile_round_trips(g in 1u32..=8, m in 1u32..=200, me in any::<bool>()) {
        let text = if me { format!("{g}g.{m}gb+me") } else { format!("{g}g.{m}gb") };
        let p: MigProfile = text.parse().unwrap();
        prop_assert_eq!(p.compute_slices(), g);
        prop_assert_eq!(p.memory_gb(), m);
        prop_assert_eq!(p.to_string(), text);
    }

    #[test]
    fn mig_profile_parse_never_panics(s in ".{0,20}") {
        let _ = s.parse::<MigProfile>();
    }

    #[test]
    fn time_slicing_advertises_devices_times_replicas(gpus in 1u32..8, replicas in 1u32..16) {
        let inv = SimulatedInventory::builder().gpus(gpus, "x", 80).build().unwrap();
        let cfg = DevicePluginConfig {
            mig_strategy: MigStrategy::None,
            time_slicing: Some(TimeSlicing {
                resources: vec![ReplicatedResource { name: "nvidia.com/gpu".into(), replicas, rename: None }],
                ..Default::default()
            }),
        };
        let ads = advertised_resources(&inv.snapshot(), &cfg).unwrap();
        prop_assert_eq!(ads.count("nvidia.com/gpu"), u64::from(gpus * replicas));
    }
}
