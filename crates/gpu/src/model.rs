//! The data an inventory reports: devices, MIG instances and their profiles, topology.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::GpuError;

/// Bytes in one GiB; MIG profile memory sizes (`10gb`) are GiB-rounded as NVIDIA names them.
pub const GIB: u64 = 1024 * 1024 * 1024;

/// A MIG GPU-instance profile such as `1g.10gb` (one compute slice, 10 GB) or `1g.10gb+me`.
///
/// The text form is the one NVIDIA uses in `nvidia-smi` and in the device plugin's resource names
/// (`nvidia.com/mig-1g.10gb`). Parsing is strict: `Ng.Mgb` with `N, M > 0`, optionally followed by
/// `+attribute` (e.g. `+me` for media extensions).
///
/// ```
/// use strata_gpu::MigProfile;
/// let p: MigProfile = "3g.40gb".parse()?;
/// assert_eq!((p.compute_slices(), p.memory_gb()), (3, 40));
/// assert_eq!(p.to_string(), "3g.40gb");
/// assert!("0g.10gb".parse::<MigProfile>().is_err());
/// # Ok::<(), strata_gpu::GpuError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MigProfile {
    compute_slices: u32,
    memory_gb: u32,
    attributes: Option<Arc<str>>,
}

impl MigProfile {
    /// A profile with `compute_slices` GPU slices and `memory_gb` GB of memory.
    ///
    /// # Errors
    /// [`GpuError::InvalidMigProfile`] when either number is zero.
    pub fn new(compute_slices: u32, memory_gb: u32) -> Result<Self, GpuError> {
        if compute_slices == 0 || memory_gb == 0 {
            return Err(GpuError::InvalidMigProfile {
                input: format!("{compute_slices}g.{memory_gb}gb"),
                reason: "slice count and memory must be positive",
            });
        }
        Ok(Self { compute_slices, memory_gb, attributes: None })
    }

    /// Number of GPU (compute) slices, the `N` in `Ng.Mgb`.
    #[must_use]
    pub fn compute_slices(&self) -> u32 {
        self.compute_slices
    }

    /// Memory in GB, the `M` in `Ng.Mgb`.
    #[must_use]
    pub fn memory_gb(&self) -> u32 {
        self.memory_gb
    }

    /// Memory in bytes (`memory_gb` GiB).
    #[must_use]
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_gb) * GIB
    }

    /// Optional attribute suffix without the `+` (e.g. `me`).
    #[must_use]
    pub fn attributes(&self) -> Option<&str> {
        self.attributes.as_deref()
    }
}

impl fmt::Display for MigProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}g.{}gb", self.compute_slices, self.memory_gb)?;
        if let Some(a) = &self.attributes {
            write!(f, "+{a}")?;
        }
        Ok(())
    }
}

impl FromStr for MigProfile {
    type Err = GpuError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| GpuError::InvalidMigProfile { input: s.to_owned(), reason };
        let (base, attributes) = match s.split_once('+') {
            Some((b, a)) => {
                if a.is_empty() || !a.chars().all(|c| c.is_ascii_alphanumeric() || c == '+') {
                    return Err(err("attribute suffix must be alphanumeric"));
                }
                (b, Some(Arc::<str>::from(a)))
            }
            None => (s, None),
        };
        let (g, mem) = base.split_once('.').ok_or_else(|| err("missing '.' between slices and memory"))?;
        let g = g.strip_suffix('g').ok_or_else(|| err("slice count must end in 'g'"))?;
        let mem = mem.strip_suffix("gb").ok_or_else(|| err("memory must end in 'gb'"))?;
        let parse = |t: &str| -> Result<u32, GpuError> {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("expected a decimal number"));
            }
            t.parse::<u32>().map_err(|_| err("number out of range"))
        };
        let (compute_slices, memory_gb) = (parse(g)?, parse(mem)?);
        if compute_slices == 0 || memory_gb == 0 {
            return Err(err("slice count and memory must be positive"));
        }
        Ok(Self { compute_slices, memory_gb, attributes })
    }
}

impl TryFrom<String> for MigProfile {
    type Error = GpuError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<MigProfile> for String {
    fn from(value: MigProfile) -> Self {
        value.to_string()
    }
}

/// One MIG device (a GPU instance with its compute instance) carved out of a physical GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigInstance {
    /// Index of the MIG device on its parent GPU.
    pub index: u32,
    /// MIG device UUID (`MIG-…`).
    pub uuid: String,
    /// Its profile, e.g. `1g.10gb`.
    pub profile: MigProfile,
    /// Memory of the instance in bytes.
    pub memory_total_bytes: u64,
    /// Memory in use in bytes.
    pub memory_used_bytes: u64,
}

/// One physical GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDevice {
    /// NVML index (0-based, stable for one boot).
    pub index: u32,
    /// GPU UUID (`GPU-…`).
    pub uuid: String,
    /// Marketing name, e.g. `NVIDIA A100-SXM4-80GB`.
    pub name: String,
    /// Total framebuffer memory in bytes.
    pub memory_total_bytes: u64,
    /// Framebuffer memory in use in bytes.
    pub memory_used_bytes: u64,
    /// GPU (SM) utilization in percent over the last sample period; `None` when not reported
    /// (NVML does not report it for MIG-enabled GPUs).
    pub utilization_percent: Option<u32>,
    /// Whether MIG mode is currently enabled.
    pub mig_enabled: bool,
    /// MIG devices configured on this GPU (empty when MIG is off).
    pub mig_instances: Vec<MigInstance>,
    /// NUMA node the GPU is attached to, when known.
    pub numa_node: Option<u32>,
    /// PCI bus id (`00000000:07:00.0`), when known.
    pub pci_bus_id: Option<String>,
}

impl GpuDevice {
    /// Fraction of memory in use, 0.0 ..= 1.0 (0.0 when the total is unknown).
    #[must_use]
    pub fn memory_used_ratio(&self) -> f64 {
        if self.memory_total_bytes == 0 { 0.0 } else { self.memory_used_bytes as f64 / self.memory_total_bytes as f64 }
    }
}

/// How two GPUs are connected, nearest first (NVML's `TopologyLevel` plus NVLink).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Interconnect {
    /// Direct NVLink connection with this many active links.
    #[serde(rename = "nvlink")]
    NvLink {
        /// Number of active NVLink links between the pair.
        links: u32,
    },
    /// On the same board (e.g. the two dies of a K80).
    Internal,
    /// Behind a single PCIe switch.
    PcieSingleSwitch,
    /// Behind multiple PCIe switches, without crossing a host bridge.
    PcieMultipleSwitches,
    /// Under the same PCIe host bridge.
    HostBridge,
    /// Same NUMA node, possibly different host bridges.
    SameNumaNode,
    /// Across NUMA nodes (through the CPU interconnect).
    CrossNuma,
}

impl Interconnect {
    /// A rank for "how close" (lower is closer): NVLink with more links ranks lower.
    #[must_use]
    pub fn rank(&self) -> u32 {
        match self {
            Self::NvLink { links } => 100u32.saturating_sub(*links),
            Self::Internal => 200,
            Self::PcieSingleSwitch => 300,
            Self::PcieMultipleSwitches => 400,
            Self::HostBridge => 500,
            Self::SameNumaNode => 600,
            Self::CrossNuma => 700,
        }
    }
}

/// The relation between a pair of GPUs (by index, `a < b`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuLink {
    /// Lower GPU index.
    pub a: u32,
    /// Higher GPU index.
    pub b: u32,
    /// How they are connected.
    pub interconnect: Interconnect,
}

/// A point-in-time view of a node's GPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuSnapshot {
    /// Physical GPUs, ordered by index.
    pub devices: Vec<GpuDevice>,
    /// Pairwise topology (one entry per known pair, `a < b`).
    pub links: Vec<GpuLink>,
}

impl GpuSnapshot {
    /// Whether there are no GPUs.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The device with NVML index `index`.
    #[must_use]
    pub fn device(&self, index: u32) -> Option<&GpuDevice> {
        self.devices.iter().find(|d| d.index == index)
    }

    /// How GPUs `a` and `b` are connected, if known (order does not matter).
    #[must_use]
    pub fn interconnect(&self, a: u32, b: u32) -> Option<Interconnect> {
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        self.links.iter().find(|l| l.a == a && l.b == b).map(|l| l.interconnect)
    }

    /// Mean GPU utilization in percent over the devices that report one (`None` if none do).
    #[must_use]
    pub fn mean_utilization_percent(&self) -> Option<f64> {
        let v: Vec<u32> = self.devices.iter().filter_map(|d| d.utilization_percent).collect();
        if v.is_empty() { None } else { Some(v.iter().map(|&u| f64::from(u)).sum::<f64>() / v.len() as f64) }
    }
}
