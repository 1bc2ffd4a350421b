//! # strata-gpu
//!
//! GPU inventory for Strata's resource manager: which GPUs a node has, their memory and
//! utilization, MIG mode and MIG devices with their profiles (`1g.10gb`, `3g.40gb`, …), NUMA
//! nodes, and how each pair is connected (NVLink, PCIe switch, host bridge, NUMA).
//!
//! ## Tour
//! - [`GpuInventory`] — the seam: `snapshot()` (last view) and `refresh()` (read again). It is
//!   `Send + Sync + 'static` and object safe, so `Arc<dyn GpuInventory>` works.
//! - [`NvmlInventory`] — reads the driver through NVML (`nvml-wrapper`, `libnvidia-ml.so` loaded
//!   at run time; feature `nvml`, on by default). No driver, or a build without `nvml` → an
//!   empty inventory and a `tracing` warning that says which, never a panic.
//! - [`StaticInventory`] — fixed, from an [`InventoryConfig`] (TOML/JSON via serde).
//! - [`SimulatedInventory`] — built in code and mutable (utilization, memory), for tests.
//! - [`advertised_resources`] — what the NVIDIA k8s device plugin would advertise for an
//!   inventory under a [`MigStrategy`] (`none` / `single` / `mixed`) and optional
//!   [`TimeSlicing`] (devices × replicas).
//!
//! ```
//! use std::sync::Arc;
//! use strata_gpu::{advertised_resources, DevicePluginConfig, GpuInventory, MigStrategy, StaticInventory};
//!
//! let inv: Arc<dyn GpuInventory> = Arc::new(StaticInventory::from_toml_str(r#"
//!     nvlink_all = 12
//!     [[gpu]]
//!     name = "NVIDIA A100-SXM4-80GB"
//!     memory_mib = 81920
//!     mig = ["3g.40gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb"]
//!     [[gpu]]
//!     name = "NVIDIA A100-SXM4-80GB"
//!     memory_mib = 81920
//! "#)?);
//! let snap = inv.refresh()?;
//! assert_eq!(snap.devices.len(), 2);
//! assert!(snap.interconnect(0, 1).is_some());
//!
//! let config = DevicePluginConfig { mig_strategy: MigStrategy::Mixed, time_slicing: None };
//! let ads = advertised_resources(&snap, &config)?;
//! assert_eq!(ads.count("nvidia.com/gpu"), 1);
//! assert_eq!(ads.count("nvidia.com/mig-1g.10gb"), 4);
//! # Ok::<(), strata_gpu::GpuError>(())
//! ```
//!
//! ## Not implemented
//! DCGM metrics, vGPU, MPS sharing and MIG reconfiguration are out of scope; the NVML path is
//! tested only for the "no driver" case (CI has no GPU).

mod device_plugin;
mod error;
mod model;
mod nvml;
mod static_inventory;

use std::sync::Arc;

pub use device_plugin::{
    AdvertisedDevice, AdvertisedResources, DevicePluginConfig, GPU_RESOURCE, MIG_RESOURCE_PREFIX, MigStrategy,
    ReplicatedResource, SHARED_SUFFIX, TimeSlicing, advertised_resources,
};
pub use error::GpuError;
pub use model::{GIB, GpuDevice, GpuLink, GpuSnapshot, Interconnect, MigInstance, MigProfile};
pub use nvml::{DriverStatus, NvmlInventory};
pub use static_inventory::{
    GpuConfig, InventoryConfig, LinkConfig, MAX_MIG_COMPUTE_SLICES, SimulatedInventory, SimulatedInventoryBuilder,
    StaticInventory,
};

/// A source of GPU information for one node.
///
/// Implementations keep the last [`GpuSnapshot`] and replace it on [`refresh`](Self::refresh);
/// readers get an `Arc` and never block a refresh for long.
pub trait GpuInventory: Send + Sync + 'static {
    /// The last known view (empty before the first successful refresh).
    fn snapshot(&self) -> Arc<GpuSnapshot>;

    /// Reads the devices again and returns the new view.
    ///
    /// # Errors
    /// [`GpuError::Nvml`] (or an implementation's error) when reading fails; the previous
    /// snapshot stays in place.
    fn refresh(&self) -> Result<Arc<GpuSnapshot>, GpuError>;

    /// A short name of the backend (`nvml`, `static`, `simulated`, …) for logs.
    fn backend(&self) -> &'static str {
        "custom"
    }
}

impl<T: GpuInventory + ?Sized> GpuInventory for Arc<T> {
    fn snapshot(&self) -> Arc<GpuSnapshot> {
        (**self).snapshot()
    }
    fn refresh(&self) -> Result<Arc<GpuSnapshot>, GpuError> {
        (**self).refresh()
    }
    fn backend(&self) -> &'static str {
        (**self).backend()
    }
}
