//! The crate's error type.

use std::error::Error as StdError;

/// Everything that can go wrong in `strata-gpu`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// A MIG profile string could not be parsed (expected e.g. `1g.10gb` or `1g.10gb+me`).
    #[error("invalid MIG profile {input:?}: {reason} (expected e.g. \"1g.10gb\" or \"3g.40gb\")")]
    InvalidMigProfile {
        /// The text that was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A static inventory or device-plugin configuration is inconsistent.
    #[error("invalid GPU configuration: {0}")]
    InvalidConfig(String),
    /// A TOML document could not be parsed into an inventory configuration.
    #[error("could not parse GPU inventory configuration: {0}")]
    Parse(#[source] Box<dyn StdError + Send + Sync>),
    /// The MIG strategy cannot be applied to this node's GPUs (mirrors the device plugin's refusal).
    #[error("MIG strategy {strategy} cannot be applied: {reason}")]
    MigStrategy {
        /// The strategy that was asked for.
        strategy: &'static str,
        /// Why the device plugin would refuse it.
        reason: String,
    },
    /// An NVML call failed.
    #[error("NVML call {operation} failed: {source}")]
    Nvml {
        /// The NVML operation, e.g. `device_by_index`.
        operation: &'static str,
        /// The original NVML error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

impl GpuError {
    /// Whether retrying the same call later might succeed (only NVML runtime failures qualify).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Nvml { .. })
    }

    #[cfg(feature = "nvml")]
    pub(crate) fn nvml(operation: &'static str, source: impl StdError + Send + Sync + 'static) -> Self {
        Self::Nvml { operation, source: Box::new(source) }
    }
}
