//! Inventories that do not talk to a driver: [`StaticInventory`] (from configuration, e.g. TOML)
//! and [`SimulatedInventory`] (built in code, mutable, for tests and simulations).

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::model::{GIB, GpuDevice, GpuLink, GpuSnapshot, Interconnect, MigInstance, MigProfile};
use crate::{GpuError, GpuInventory};

/// Compute slices of the MIG-capable GPUs (A100, H100, H200): seven GPU slices.
pub const MAX_MIG_COMPUTE_SLICES: u32 = 7;

const MIB: u64 = 1024 * 1024;

/// Configuration of a static inventory, deserializable from TOML or JSON.
///
/// ```toml
/// nvlink_all = 12          # optional: every pair is NVLink-connected with 12 links
///
/// [[gpu]]
/// name = "NVIDIA A100-SXM4-80GB"
/// memory_mib = 81920
/// numa_node = 0
/// mig = ["3g.40gb", "1g.10gb", "1g.10gb"]   # enables MIG mode
///
/// [[link]]
/// a = 0
/// b = 1
/// kind = "pcie_single_switch"
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryConfig {
    /// The GPUs, in index order.
    #[serde(default, rename = "gpu")]
    pub gpus: Vec<GpuConfig>,
    /// Explicit pairwise links (override `nvlink_all` for their pair).
    #[serde(default, rename = "link")]
    pub links: Vec<LinkConfig>,
    /// When set, every pair not listed in `links` is NVLink-connected with this many links.
    #[serde(default)]
    pub nvlink_all: Option<u32>,
}

/// One GPU of an [`InventoryConfig`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuConfig {
    /// UUID; generated (`GPU-00000000-0000-0000-0000-<index>`) when absent.
    #[serde(default)]
    pub uuid: Option<String>,
    /// Marketing name.
    #[serde(default = "default_gpu_name")]
    pub name: String,
    /// Total memory in MiB (must be positive).
    pub memory_mib: u64,
    /// Memory in use in MiB.
    #[serde(default)]
    pub memory_used_mib: u64,
    /// Utilization in percent (0..=100).
    #[serde(default)]
    pub utilization_percent: Option<u32>,
    /// NUMA node.
    #[serde(default)]
    pub numa_node: Option<u32>,
    /// MIG mode; defaults to enabled when `mig` is non-empty.
    #[serde(default)]
    pub mig_enabled: Option<bool>,
    /// MIG devices to report, by profile (e.g. `"1g.10gb"`).
    #[serde(default)]
    pub mig: Vec<MigProfile>,
}

fn default_gpu_name() -> String {
    "Simulated GPU".to_owned()
}

/// A pairwise link of an [`InventoryConfig`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkConfig {
    /// One GPU index.
    pub a: u32,
    /// The other GPU index.
    pub b: u32,
    /// The connection (`kind = "nvlink"` with `links = N`, or `"pcie_single_switch"`, …).
    #[serde(flatten)]
    pub interconnect: Interconnect,
}

impl InventoryConfig {
    /// Parses a TOML document.
    ///
    /// # Errors
    /// [`GpuError::Parse`] for malformed TOML, unknown fields or bad MIG profile names.
    pub fn from_toml_str(text: &str) -> Result<Self, GpuError> {
        toml::from_str(text).map_err(|e| GpuError::Parse(Box::new(e)))
    }

    /// Validates the configuration and builds the snapshot it describes.
    ///
    /// # Errors
    /// [`GpuError::InvalidConfig`] naming the offending GPU or link: zero memory, more memory in
    /// use than installed, utilization over 100 %, MIG profiles that exceed the GPU's seven
    /// compute slices or its memory, MIG profiles with MIG disabled, duplicate UUIDs, links to
    /// unknown GPUs or to themselves, duplicate links, NVLink with zero links.
    pub fn to_snapshot(&self) -> Result<GpuSnapshot, GpuError> {
        let bad = |m: String| Err(GpuError::InvalidConfig(m));
        let mut devices = Vec::with_capacity(self.gpus.len());
        let mut uuids = HashSet::new();
        for (i, g) in self.gpus.iter().enumerate() {
            let index = u32::try_from(i).map_err(|_| GpuError::InvalidConfig("too many GPUs".into()))?;
            if g.memory_mib == 0 {
                return bad(format!("gpu {index}: memory_mib must be positive"));
            }
            if g.memory_used_mib > g.memory_mib {
                return bad(format!("gpu {index}: memory_used_mib exceeds memory_mib"));
            }
            if g.utilization_percent.is_some_and(|u| u > 100) {
                return bad(format!("gpu {index}: utilization_percent must be at most 100"));
            }
            let mig_enabled = g.mig_enabled.unwrap_or(!g.mig.is_empty());
            if !mig_enabled && !g.mig.is_empty() {
                return bad(format!("gpu {index}: MIG devices listed but mig_enabled = false"));
            }
            let memory_total_bytes = g.memory_mib * MIB;
            let slices: u32 = g.mig.iter().map(MigProfile::compute_slices).sum();
            if slices > MAX_MIG_COMPUTE_SLICES {
                return bad(format!(
                    "gpu {index}: MIG profiles use {slices} compute slices, at most {MAX_MIG_COMPUTE_SLICES} exist"
                ));
            }
            let mig_mem: u64 = g.mig.iter().map(MigProfile::memory_bytes).sum();
            if mig_mem > memory_total_bytes {
                return bad(format!(
                    "gpu {index}: MIG profiles need {} GiB but the GPU has {} MiB",
                    mig_mem / GIB,
                    g.memory_mib
                ));
            }
            let uuid = g.uuid.clone().unwrap_or_else(|| format!("GPU-00000000-0000-0000-0000-{index:012x}"));
            if !uuids.insert(uuid.clone()) {
                return bad(format!("gpu {index}: duplicate uuid {uuid}"));
            }
            let mig_instances = g
                .mig
                .iter()
                .enumerate()
                .map(|(j, p)| MigInstance {
                    index: j as u32,
                    uuid: format!("MIG-00000000-0000-0000-{index:04x}-{j:012x}"),
                    profile: p.clone(),
                    memory_total_bytes: p.memory_bytes(),
                    memory_used_bytes: 0,
                })
                .collect();
            devices.push(GpuDevice {
                index,
                uuid,
                name: g.name.clone(),
                memory_total_bytes,
                memory_used_bytes: g.memory_used_mib * MIB,
                // NVML reports no utilization for MIG-enabled GPUs; keep the simulation faithful.
                utilization_percent: if mig_enabled { None } else { Some(g.utilization_percent.unwrap_or(0)) },
                mig_enabled,
                mig_instances,
                numa_node: g.numa_node,
                pci_bus_id: None,
            });
        }
        let n = devices.len() as u32;
        let mut links: Vec<GpuLink> = Vec::new();
        for l in &self.links {
            let (a, b) = if l.a <= l.b { (l.a, l.b) } else { (l.b, l.a) };
            if a == b {
                return bad(format!("link {a}-{b}: a GPU cannot link to itself"));
            }
            if b >= n {
                return bad(format!("link {a}-{b}: GPU {b} does not exist ({n} GPUs)"));
            }
            if matches!(l.interconnect, Interconnect::NvLink { links: 0 }) {
                return bad(format!("link {a}-{b}: an NVLink connection needs at least one link"));
            }
            if links.iter().any(|x| x.a == a && x.b == b) {
                return bad(format!("link {a}-{b}: listed twice"));
            }
            links.push(GpuLink { a, b, interconnect: l.interconnect });
        }
        if let Some(k) = self.nvlink_all {
            if k == 0 {
                return bad("nvlink_all must be at least 1".into());
            }
            for a in 0..n {
                for b in a + 1..n {
                    if !links.iter().any(|x| x.a == a && x.b == b) {
                        links.push(GpuLink { a, b, interconnect: Interconnect::NvLink { links: k } });
                    }
                }
            }
        }
        links.sort_by_key(|l| (l.a, l.b));
        Ok(GpuSnapshot { devices, links })
    }
}

/// An inventory fixed at construction from an [`InventoryConfig`]; `refresh` returns the same view.
///
/// ```
/// use strata_gpu::{GpuInventory, StaticInventory};
/// let inv = StaticInventory::from_toml_str(r#"
///     [[gpu]]
///     memory_mib = 81920
///     mig = ["3g.40gb", "1g.10gb"]
/// "#)?;
/// assert_eq!(inv.snapshot().devices[0].mig_instances.len(), 2);
/// # Ok::<(), strata_gpu::GpuError>(())
/// ```
#[derive(Debug)]
pub struct StaticInventory {
    snapshot: Arc<GpuSnapshot>,
}

impl StaticInventory {
    /// Builds the inventory from a configuration.
    ///
    /// # Errors
    /// See [`InventoryConfig::to_snapshot`].
    pub fn from_config(config: &InventoryConfig) -> Result<Self, GpuError> {
        Ok(Self { snapshot: Arc::new(config.to_snapshot()?) })
    }

    /// Parses and builds the inventory from TOML.
    ///
    /// # Errors
    /// See [`InventoryConfig::from_toml_str`] and [`InventoryConfig::to_snapshot`].
    pub fn from_toml_str(text: &str) -> Result<Self, GpuError> {
        Self::from_config(&InventoryConfig::from_toml_str(text)?)
    }

    /// An inventory with no GPUs.
    #[must_use]
    pub fn empty() -> Self {
        Self { snapshot: Arc::new(GpuSnapshot::default()) }
    }
}

impl GpuInventory for StaticInventory {
    fn snapshot(&self) -> Arc<GpuSnapshot> {
        Arc::clone(&self.snapshot)
    }

    fn refresh(&self) -> Result<Arc<GpuSnapshot>, GpuError> {
        Ok(self.snapshot())
    }

    fn backend(&self) -> &'static str {
        "static"
    }
}

/// A mutable, simulated inventory for tests and simulations: build it in code, then change
/// utilization and memory use as the simulated workload runs.
///
/// ```
/// use strata_gpu::{GpuInventory, SimulatedInventory};
/// let inv = SimulatedInventory::builder()
///     .gpus(8, "NVIDIA A100-SXM4-80GB", 80)
///     .mig(0, ["3g.40gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb"])
///     .nvlink_all(12)
///     .build()?;
/// inv.set_utilization(1, 75)?;
/// assert_eq!(inv.refresh()?.devices[1].utilization_percent, Some(75));
/// # Ok::<(), strata_gpu::GpuError>(())
/// ```
#[derive(Debug)]
pub struct SimulatedInventory {
    snapshot: RwLock<Arc<GpuSnapshot>>,
}

/// Builder for [`SimulatedInventory`].
#[derive(Debug, Default)]
#[must_use]
pub struct SimulatedInventoryBuilder {
    config: InventoryConfig,
    errors: Vec<GpuError>,
}

impl SimulatedInventoryBuilder {
    /// Adds `count` identical GPUs with `memory_gib` GiB each.
    pub fn gpus(mut self, count: u32, name: &str, memory_gib: u64) -> Self {
        for _ in 0..count {
            self.config.gpus.push(GpuConfig {
                uuid: None,
                name: name.to_owned(),
                memory_mib: memory_gib * 1024,
                memory_used_mib: 0,
                utilization_percent: None,
                numa_node: None,
                mig_enabled: None,
                mig: Vec::new(),
            });
        }
        self
    }

    /// Enables MIG on GPU `index` with the given profiles (errors are reported by `build`).
    pub fn mig<I, S>(mut self, index: u32, profiles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let parsed: Result<Vec<MigProfile>, GpuError> = profiles.into_iter().map(|p| p.as_ref().parse()).collect();
        match (parsed, self.config.gpus.get_mut(index as usize)) {
            (Ok(p), Some(g)) => {
                g.mig_enabled = Some(true);
                g.mig = p;
            }
            (Err(e), _) => self.errors.push(e),
            (Ok(_), None) => self.errors.push(GpuError::InvalidConfig(format!("mig: GPU {index} does not exist"))),
        }
        self
    }

    /// Sets the NUMA node of GPU `index`.
    pub fn numa_node(mut self, index: u32, node: u32) -> Self {
        match self.config.gpus.get_mut(index as usize) {
            Some(g) => g.numa_node = Some(node),
            None => self.errors.push(GpuError::InvalidConfig(format!("numa_node: GPU {index} does not exist"))),
        }
        self
    }

    /// Connects every pair of GPUs with `links` NVLink links.
    pub fn nvlink_all(mut self, links: u32) -> Self {
        self.config.nvlink_all = Some(links);
        self
    }

    /// Sets the connection between two GPUs.
    pub fn link(mut self, a: u32, b: u32, interconnect: Interconnect) -> Self {
        self.config.links.push(LinkConfig { a, b, interconnect });
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    /// The first bad MIG profile or missing GPU given to the builder, else
    /// [`InventoryConfig::to_snapshot`]'s errors.
    pub fn build(mut self) -> Result<SimulatedInventory, GpuError> {
        if !self.errors.is_empty() {
            return Err(self.errors.swap_remove(0));
        }
        SimulatedInventory::from_config(&self.config)
    }
}

impl SimulatedInventory {
    /// Starts a builder.
    pub fn builder() -> SimulatedInventoryBuilder {
        SimulatedInventoryBuilder::default()
    }

    /// Builds the simulated inventory from a configuration.
    ///
    /// # Errors
    /// See [`InventoryConfig::to_snapshot`].
    pub fn from_config(config: &InventoryConfig) -> Result<Self, GpuError> {
        Ok(Self { snapshot: RwLock::new(Arc::new(config.to_snapshot()?)) })
    }

    fn update(&self, index: u32, f: impl FnOnce(&mut GpuDevice) -> Result<(), GpuError>) -> Result<(), GpuError> {
        let mut guard = self.snapshot.write();
        let mut snap = GpuSnapshot::clone(&guard);
        let dev = snap
            .devices
            .iter_mut()
            .find(|d| d.index == index)
            .ok_or_else(|| GpuError::InvalidConfig(format!("GPU {index} does not exist")))?;
        f(dev)?;
        *guard = Arc::new(snap);
        Ok(())
    }

    /// Sets GPU `index`'s utilization (0..=100 %).
    ///
    /// # Errors
    /// [`GpuError::InvalidConfig`] for an unknown GPU or a value over 100.
    pub fn set_utilization(&self, index: u32, percent: u32) -> Result<(), GpuError> {
        if percent > 100 {
            return Err(GpuError::InvalidConfig(format!("utilization {percent} % is over 100 %")));
        }
        self.update(index, |d| {
            d.utilization_percent = Some(percent);
            Ok(())
        })
    }

    /// Sets GPU `index`'s memory in use.
    ///
    /// # Errors
    /// [`GpuError::InvalidConfig`] for an unknown GPU or more than the GPU's memory.
    pub fn set_memory_used(&self, index: u32, bytes: u64) -> Result<(), GpuError> {
        self.update(index, |d| {
            if bytes > d.memory_total_bytes {
                return Err(GpuError::InvalidConfig(format!("GPU {index}: {bytes} bytes in use exceeds its memory")));
            }
            d.memory_used_bytes = bytes;
            Ok(())
        })
    }
}

impl GpuInventory for SimulatedInventory {
    fn snapshot(&self) -> Arc<GpuSnapshot> {
        Arc::clone(&self.snapshot.read())
    }

    fn refresh(&self) -> Result<Arc<GpuSnapshot>, GpuError> {
        Ok(self.snapshot())
    }

    fn backend(&self) -> &'static str {
        "simulated"
    }
}
