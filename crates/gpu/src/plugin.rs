//! The front door for GPU inventory plugins: `use strata_gpu::plugin::*;` brings the
//! [`GpuInventory`] trait, the model types a snapshot is made of, the error type, and what it
//! takes to check an inventory against the device plugin's view ([`advertised_resources`]).
//!
//! [`GpuInventory`]'s documentation opens with a complete implementation that compiles and
//! runs as a doctest using only this prelude (and `std`).

pub use crate::GpuInventory;
pub use crate::device_plugin::{
    AdvertisedDevice, AdvertisedResources, DevicePluginConfig, GPU_RESOURCE, MigStrategy, TimeSlicing,
    advertised_resources,
};
pub use crate::error::GpuError;
pub use crate::model::{GIB, GpuDevice, GpuLink, GpuSnapshot, Interconnect, MigInstance, MigProfile};
