//! What the NVIDIA Kubernetes device plugin would advertise for an inventory: MIG strategies
//! (`none`, `single`, `mixed`) and time-slicing replicas.
//!
//! - `none`: every physical GPU is one `nvidia.com/gpu`, MIG or not.
//! - `single`: when no GPU has MIG enabled, same as `none`. Otherwise every GPU must have MIG
//!   enabled, with at least one MIG device, all of one profile; each MIG device is one
//!   `nvidia.com/gpu`.
//! - `mixed`: GPUs without MIG are `nvidia.com/gpu`; each MIG device is one
//!   `nvidia.com/mig-<profile>`; a MIG-enabled GPU without MIG devices advertises nothing.
//!
//! Time-slicing then replaces each device of a listed resource by `replicas` devices with ids
//! `<id>::<n>`; with `rename_by_default` (or a per-resource `rename`) the resource is advertised
//! as `<name>.shared` (or the given name). GPUs advertised = devices × replicas.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::GpuError;
use crate::model::GpuSnapshot;

/// Resource name of whole GPUs (and of MIG devices under the `single` strategy).
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Prefix of MIG resource names under the `mixed` strategy (`nvidia.com/mig-1g.10gb`).
pub const MIG_RESOURCE_PREFIX: &str = "nvidia.com/mig-";
/// Suffix added to time-sliced resources when they are renamed by default.
pub const SHARED_SUFFIX: &str = ".shared";

/// The device plugin's `MIG_STRATEGY`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigStrategy {
    /// Ignore MIG: advertise physical GPUs.
    #[default]
    None,
    /// All GPUs MIG-enabled with one profile; MIG devices advertised as `nvidia.com/gpu`.
    Single,
    /// MIG devices advertised per profile as `nvidia.com/mig-<profile>`.
    Mixed,
}

impl fmt::Display for MigStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl MigStrategy {
    /// The configuration spelling (`none`, `single`, `mixed`).
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Single => "single",
            Self::Mixed => "mixed",
        }
    }
}

/// One entry of `sharing.timeSlicing.resources`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicatedResource {
    /// Resource to share, e.g. `nvidia.com/gpu` or `nvidia.com/mig-1g.10gb`.
    pub name: String,
    /// Replicas per device (at least 1).
    pub replicas: u32,
    /// Advertise under this name instead (overrides `rename_by_default`).
    #[serde(default)]
    pub rename: Option<String>,
}

/// `sharing.timeSlicing` of the device plugin's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSlicing {
    /// Advertise shared resources as `<name>.shared`.
    #[serde(default)]
    pub rename_by_default: bool,
    /// Recorded for consumers: requests of more than one shared replica should be refused.
    #[serde(default)]
    pub fail_requests_greater_than_one: bool,
    /// The shared resources.
    #[serde(default)]
    pub resources: Vec<ReplicatedResource>,
}

/// The subset of the device plugin's configuration that decides what is advertised.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicePluginConfig {
    /// MIG strategy.
    #[serde(default)]
    pub mig_strategy: MigStrategy,
    /// Time-slicing, if any.
    #[serde(default)]
    pub time_slicing: Option<TimeSlicing>,
}

/// One device as advertised to the kubelet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertisedDevice {
    /// Resource name, e.g. `nvidia.com/mig-1g.10gb`.
    pub resource: String,
    /// Device id (`GPU-…`, `MIG-…`, or `<uuid>::<replica>` when time-sliced).
    pub id: String,
    /// UUID of the physical GPU it lives on.
    pub gpu_uuid: String,
    /// Replica number when time-sliced.
    pub replica: Option<u32>,
}

/// The resources a node advertises.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertisedResources {
    /// Count per resource name.
    pub counts: BTreeMap<String, u64>,
    /// Every advertised device.
    pub devices: Vec<AdvertisedDevice>,
}

impl AdvertisedResources {
    /// Advertised count of `resource` (0 when absent).
    #[must_use]
    pub fn count(&self, resource: &str) -> u64 {
        self.counts.get(resource).copied().unwrap_or(0)
    }
}

/// Computes what the device plugin would advertise for `snapshot` under `config`.
///
/// ```
/// use strata_gpu::{advertised_resources, DevicePluginConfig, GpuInventory, MigStrategy,
///     ReplicatedResource, SimulatedInventory, TimeSlicing};
/// let inv = SimulatedInventory::builder()
///     .gpus(2, "NVIDIA A100-SXM4-80GB", 80)
///     .mig(0, ["3g.40gb", "1g.10gb", "1g.10gb"])
///     .build()?;
/// let config = DevicePluginConfig {
///     mig_strategy: MigStrategy::Mixed,
///     time_slicing: Some(TimeSlicing {
///         resources: vec![ReplicatedResource { name: "nvidia.com/gpu".into(), replicas: 4, rename: None }],
///         ..Default::default()
///     }),
/// };
/// let ads = advertised_resources(&inv.snapshot(), &config)?;
/// assert_eq!(ads.count("nvidia.com/gpu"), 4); // GPU 1, four replicas
/// assert_eq!(ads.count("nvidia.com/mig-1g.10gb"), 2);
/// assert_eq!(ads.count("nvidia.com/mig-3g.40gb"), 1);
/// # Ok::<(), strata_gpu::GpuError>(())
/// ```
///
/// # Errors
/// [`GpuError::MigStrategy`] when `single` is asked for a node the device plugin would refuse
/// (mixed MIG modes, a MIG GPU without MIG devices, several profiles);
/// [`GpuError::InvalidConfig`] for zero replicas, an empty or duplicated time-slicing name.
pub fn advertised_resources(
    snapshot: &GpuSnapshot,
    config: &DevicePluginConfig,
) -> Result<AdvertisedResources, GpuError> {
    let mut base: Vec<AdvertisedDevice> = Vec::new();
    let whole = |d: &crate::GpuDevice| AdvertisedDevice {
        resource: GPU_RESOURCE.to_owned(),
        id: d.uuid.clone(),
        gpu_uuid: d.uuid.clone(),
        replica: None,
    };
    let any_mig = snapshot.devices.iter().any(|d| d.mig_enabled);
    match config.mig_strategy {
        MigStrategy::None => base.extend(snapshot.devices.iter().map(whole)),
        MigStrategy::Single if !any_mig => base.extend(snapshot.devices.iter().map(whole)),
        MigStrategy::Single => {
            let refuse = |reason: String| Err(GpuError::MigStrategy { strategy: "single", reason });
            if let Some(d) = snapshot.devices.iter().find(|d| !d.mig_enabled) {
                return refuse(format!("all GPUs must have MIG enabled, GPU {} does not", d.index));
            }
            if let Some(d) = snapshot.devices.iter().find(|d| d.mig_instances.is_empty()) {
                return refuse(format!("GPU {} has MIG enabled but no MIG devices", d.index));
            }
            let mut profiles: Vec<String> =
                snapshot.devices.iter().flat_map(|d| d.mig_instances.iter().map(|m| m.profile.to_string())).collect();
            profiles.sort();
            profiles.dedup();
            if profiles.len() > 1 {
                return refuse(format!("all MIG devices must have one profile, found {}", profiles.join(", ")));
            }
            for d in &snapshot.devices {
                base.extend(d.mig_instances.iter().map(|m| AdvertisedDevice {
                    resource: GPU_RESOURCE.to_owned(),
                    id: m.uuid.clone(),
                    gpu_uuid: d.uuid.clone(),
                    replica: None,
                }));
            }
        }
        MigStrategy::Mixed => {
            for d in &snapshot.devices {
                if d.mig_enabled {
                    base.extend(d.mig_instances.iter().map(|m| AdvertisedDevice {
                        resource: format!("{MIG_RESOURCE_PREFIX}{}", m.profile),
                        id: m.uuid.clone(),
                        gpu_uuid: d.uuid.clone(),
                        replica: None,
                    }));
                } else {
                    base.push(whole(d));
                }
            }
        }
    }

    let devices = match &config.time_slicing {
        None => base,
        Some(ts) => {
            let mut seen = std::collections::HashSet::new();
            for r in &ts.resources {
                if r.name.is_empty() {
                    return Err(GpuError::InvalidConfig("time-slicing resource with an empty name".into()));
                }
                if r.replicas == 0 {
                    return Err(GpuError::InvalidConfig(format!(
                        "time-slicing {}: replicas must be at least 1",
                        r.name
                    )));
                }
                if !seen.insert(r.name.as_str()) {
                    return Err(GpuError::InvalidConfig(format!("time-slicing {}: listed twice", r.name)));
                }
            }
            let mut out = Vec::new();
            for dev in base {
                match ts.resources.iter().find(|r| r.name == dev.resource) {
                    None => out.push(dev),
                    Some(r) => {
                        let name = match (&r.rename, ts.rename_by_default) {
                            (Some(n), _) => n.clone(),
                            (None, true) => format!("{}{SHARED_SUFFIX}", r.name),
                            (None, false) => r.name.clone(),
                        };
                        out.extend((0..r.replicas).map(|i| AdvertisedDevice {
                            resource: name.clone(),
                            id: format!("{}::{i}", dev.id),
                            gpu_uuid: dev.gpu_uuid.clone(),
                            replica: Some(i),
                        }));
                    }
                }
            }
            out
        }
    };
    let mut counts = BTreeMap::new();
    for d in &devices {
        *counts.entry(d.resource.clone()).or_insert(0u64) += 1;
    }
    Ok(AdvertisedResources { counts, devices })
}
