//! [`NvmlInventory`]: the inventory read from the NVIDIA driver through NVML (`nvml-wrapper`).
//!
//! `libnvidia-ml.so` is loaded at run time. When it cannot be loaded (no NVIDIA driver on this
//! machine) the inventory is empty and a `tracing` warning says so; nothing panics.
//!
//! Without the `nvml` feature nothing of NVML is compiled: [`NvmlInventory`] is then always
//! the empty inventory, with [`DriverStatus::Unavailable`] and a warning that names the feature.

#[cfg(feature = "nvml")]
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;

#[cfg(feature = "nvml")]
use nvml_wrapper::Nvml;
#[cfg(all(feature = "nvml", target_os = "linux"))]
use nvml_wrapper::enum_wrappers::device::TopologyLevel;
#[cfg(feature = "nvml")]
use nvml_wrapper::error::NvmlError;
use parking_lot::RwLock;

use crate::model::GpuSnapshot;
#[cfg(feature = "nvml")]
use crate::model::{GpuDevice, GpuLink, Interconnect, MigInstance, MigProfile};
use crate::{GpuError, GpuInventory};

/// NVML's `NVML_NVLINK_MAX_LINKS` (18 on Hopper).
#[cfg(feature = "nvml")]
const NVLINK_MAX_LINKS: u32 = 18;
/// NVML's `NVML_DEVICE_MIG_ENABLE`.
#[cfg(feature = "nvml")]
const MIG_ENABLED: u32 = 1;

/// Whether the NVIDIA driver could be used.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DriverStatus {
    /// NVML initialised; devices are read from the driver.
    Available,
    /// No usable driver: the library could not be loaded or the kernel driver is not loaded.
    /// The inventory is empty.
    Unavailable {
        /// Why, as NVML reported it.
        reason: String,
    },
}

/// The GPU inventory read from NVML.
///
/// [`NvmlInventory::new`] never fails because the driver is missing: that case yields an empty
/// inventory whose [`driver_status`](NvmlInventory::driver_status) says why, and logs a warning.
/// Built without the `nvml` feature it is always that empty inventory.
/// Each [`refresh`](GpuInventory::refresh) re-reads devices, memory, utilization, MIG devices
/// (`mig_device_by_index`), NUMA nodes, NVLink peers and `topology_common_ancestor` for each pair.
///
/// ```
/// use strata_gpu::{GpuInventory, NvmlInventory};
/// // On a machine without the driver this is an empty inventory, not an error.
/// let inv = NvmlInventory::with_library_path("/nonexistent/libnvidia-ml.so.1")?;
/// assert!(inv.snapshot().is_empty());
/// # Ok::<(), strata_gpu::GpuError>(())
/// ```
pub struct NvmlInventory {
    #[cfg(feature = "nvml")]
    nvml: Option<Nvml>,
    status: DriverStatus,
    snapshot: RwLock<Arc<GpuSnapshot>>,
}

impl std::fmt::Debug for NvmlInventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlInventory").field("status", &self.status).finish_non_exhaustive()
    }
}

impl NvmlInventory {
    /// Loads NVML from the default library name and reads the devices once.
    ///
    /// # Errors
    /// [`GpuError::Nvml`] when NVML loads but initialising or the first read fails for a reason
    /// other than a missing driver (e.g. insufficient permissions). A missing driver is not an error.
    pub fn new() -> Result<Self, GpuError> {
        #[cfg(feature = "nvml")]
        {
            Self::from_init(Nvml::init())
        }
        #[cfg(not(feature = "nvml"))]
        {
            Ok(Self::not_compiled())
        }
    }

    /// Like [`new`](Self::new) but loads the NVML library from `path`.
    ///
    /// # Errors
    /// As for [`new`](Self::new).
    pub fn with_library_path(path: impl AsRef<OsStr>) -> Result<Self, GpuError> {
        #[cfg(feature = "nvml")]
        {
            Self::from_init(Nvml::builder().lib_path(path.as_ref()).init())
        }
        #[cfg(not(feature = "nvml"))]
        {
            let _ = path;
            Ok(Self::not_compiled())
        }
    }

    /// The empty inventory of a build without NVML support, with a warning that says so.
    #[cfg(not(feature = "nvml"))]
    fn not_compiled() -> Self {
        let reason = "NVML support not compiled in: strata-gpu was built without its `nvml` feature".to_owned();
        tracing::warn!(
            error = %reason,
            "no NVIDIA driver used: the GPU inventory is empty (enable the `nvml` feature of strata-gpu, \
             or `gpu` of strata, to read GPUs)"
        );
        Self { status: DriverStatus::Unavailable { reason }, snapshot: RwLock::default() }
    }

    #[cfg(feature = "nvml")]
    fn from_init(init: Result<Nvml, NvmlError>) -> Result<Self, GpuError> {
        match init {
            Ok(nvml) => {
                let inv = Self {
                    nvml: Some(nvml),
                    status: DriverStatus::Available,
                    snapshot: RwLock::new(Arc::new(GpuSnapshot::default())),
                };
                inv.refresh()?;
                Ok(inv)
            }
            Err(e @ (NvmlError::LibloadingError(_) | NvmlError::DriverNotLoaded | NvmlError::LibraryNotFound)) => {
                let reason = e.to_string();
                tracing::warn!(
                    error = %reason,
                    "no NVIDIA driver here: NVML could not be initialised; the GPU inventory is empty"
                );
                Ok(Self { nvml: None, status: DriverStatus::Unavailable { reason }, snapshot: Default::default() })
            }
            Err(e) => Err(GpuError::nvml("init", e)),
        }
    }

    /// Whether the driver is in use, or why not.
    #[must_use]
    pub fn driver_status(&self) -> &DriverStatus {
        &self.status
    }

    #[cfg(feature = "nvml")]
    fn read(nvml: &Nvml) -> Result<GpuSnapshot, GpuError> {
        let count = nvml.device_count().map_err(|e| GpuError::nvml("device_count", e))?;
        let mut devices = Vec::with_capacity(count as usize);
        for index in 0..count {
            let dev = nvml.device_by_index(index).map_err(|e| GpuError::nvml("device_by_index", e))?;
            let uuid = dev.uuid().map_err(|e| GpuError::nvml("uuid", e))?;
            let name = dev.name().map_err(|e| GpuError::nvml("name", e))?;
            let mem = dev.memory_info().map_err(|e| GpuError::nvml("memory_info", e))?;
            let mig_enabled = match dev.mig_mode() {
                Ok(m) => m.current == MIG_ENABLED,
                Err(NvmlError::NotSupported) => false,
                Err(e) => return Err(GpuError::nvml("mig_mode", e)),
            };
            let mut mig_instances = Vec::new();
            if mig_enabled {
                let max = dev.mig_device_count().map_err(|e| GpuError::nvml("mig_device_count", e))?;
                for j in 0..max {
                    let mig = match dev.mig_device_by_index(j) {
                        Ok(m) => m,
                        // Unpopulated slots report NotFound / InvalidArg.
                        Err(NvmlError::NotFound | NvmlError::InvalidArg) => continue,
                        Err(e) => return Err(GpuError::nvml("mig_device_by_index", e)),
                    };
                    let attrs = mig.attributes().map_err(|e| GpuError::nvml("attributes", e))?;
                    // The device plugin names profiles `<slices>g.<ceil(MB / 1024)>gb`.
                    let gb = u32::try_from(attrs.memory_size_mb.div_ceil(1024)).unwrap_or(u32::MAX);
                    let profile = MigProfile::new(attrs.gpu_instance_slice_count, gb)?;
                    let mmem = mig.memory_info().map_err(|e| GpuError::nvml("memory_info", e))?;
                    mig_instances.push(MigInstance {
                        index: j,
                        uuid: mig.uuid().map_err(|e| GpuError::nvml("uuid", e))?,
                        profile,
                        memory_total_bytes: mmem.total,
                        memory_used_bytes: mmem.used,
                    });
                }
            }
            devices.push(GpuDevice {
                index,
                uuid,
                name,
                memory_total_bytes: mem.total,
                memory_used_bytes: mem.used,
                utilization_percent: dev.utilization_rates().ok().map(|u| u.gpu),
                mig_enabled,
                mig_instances,
                numa_node: dev.numa_node_id().ok(),
                pci_bus_id: dev.pci_info().ok().map(|p| p.bus_id),
            });
        }
        let links = Self::topology(nvml, &devices)?;
        Ok(GpuSnapshot { devices, links })
    }

    #[cfg(feature = "nvml")]
    fn topology(nvml: &Nvml, devices: &[GpuDevice]) -> Result<Vec<GpuLink>, GpuError> {
        let by_bus: BTreeMap<String, u32> =
            devices.iter().filter_map(|d| d.pci_bus_id.as_ref().map(|b| (b.to_ascii_lowercase(), d.index))).collect();
        let mut nvlinks: BTreeMap<(u32, u32), u32> = BTreeMap::new();
        for d in devices {
            let dev = nvml.device_by_index(d.index).map_err(|e| GpuError::nvml("device_by_index", e))?;
            for link in 0..NVLINK_MAX_LINKS {
                let l = dev.link_wrapper_for(link);
                if !l.is_active().unwrap_or(false) {
                    continue;
                }
                if let Ok(remote) = l.remote_pci_info()
                    && let Some(&peer) = by_bus.get(&remote.bus_id.to_ascii_lowercase())
                    && peer != d.index
                {
                    // Each link is seen from both ends; count it from the lower index only.
                    if d.index < peer {
                        *nvlinks.entry((d.index, peer)).or_default() += 1;
                    }
                }
            }
        }
        let mut links = Vec::new();
        for a in devices {
            for b in devices.iter().filter(|b| b.index > a.index) {
                let interconnect = if let Some(&n) = nvlinks.get(&(a.index, b.index)) {
                    Some(Interconnect::NvLink { links: n })
                } else {
                    common_ancestor(nvml, a.index, b.index)?
                };
                if let Some(interconnect) = interconnect {
                    links.push(GpuLink { a: a.index, b: b.index, interconnect });
                }
            }
        }
        Ok(links)
    }
}

/// PCIe/NUMA relation of two GPUs through `topology_common_ancestor` (Linux only in NVML).
#[cfg(all(feature = "nvml", target_os = "linux"))]
fn common_ancestor(nvml: &Nvml, a: u32, b: u32) -> Result<Option<Interconnect>, GpuError> {
    let da = nvml.device_by_index(a).map_err(|e| GpuError::nvml("device_by_index", e))?;
    let db = nvml.device_by_index(b).map_err(|e| GpuError::nvml("device_by_index", e))?;
    match da.topology_common_ancestor(db) {
        Ok(level) => Ok(Some(match level {
            TopologyLevel::Internal => Interconnect::Internal,
            TopologyLevel::Single => Interconnect::PcieSingleSwitch,
            TopologyLevel::Multiple => Interconnect::PcieMultipleSwitches,
            TopologyLevel::HostBridge => Interconnect::HostBridge,
            TopologyLevel::Node => Interconnect::SameNumaNode,
            TopologyLevel::System => Interconnect::CrossNuma,
        })),
        Err(NvmlError::NotSupported) => Ok(None),
        Err(e) => Err(GpuError::nvml("topology_common_ancestor", e)),
    }
}

/// NVML reports PCIe topology on Linux only.
#[cfg(all(feature = "nvml", not(target_os = "linux")))]
fn common_ancestor(_nvml: &Nvml, _a: u32, _b: u32) -> Result<Option<Interconnect>, GpuError> {
    Ok(None)
}

impl GpuInventory for NvmlInventory {
    fn snapshot(&self) -> Arc<GpuSnapshot> {
        Arc::clone(&self.snapshot.read())
    }

    fn refresh(&self) -> Result<Arc<GpuSnapshot>, GpuError> {
        #[cfg(feature = "nvml")]
        if let Some(nvml) = &self.nvml {
            let snap = Arc::new(Self::read(nvml)?);
            *self.snapshot.write() = Arc::clone(&snap);
            return Ok(snap);
        }
        Ok(self.snapshot())
    }

    fn backend(&self) -> &'static str {
        "nvml"
    }
}
