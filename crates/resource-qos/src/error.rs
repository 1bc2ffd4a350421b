//! The crate's error type.

use std::time::Duration;

use strata_gpu::GpuError;

/// Everything that can go wrong in `strata-resource-qos`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QosError {
    /// A quantity was zero, negative or unparsable.
    #[error("invalid quantity {input:?} for {resource}: {reason}")]
    InvalidQuantity {
        /// The resource it was given for.
        resource: String,
        /// The text or number given.
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A resource name is not known (neither built in, nor a custom `domain/name`, nor configured
    /// on this manager).
    #[error(
        "unknown resource {0:?}: not one of cpu, memory, nvidia.com/gpu, nvidia.com/mig-<profile>, nvidia.com/gpu.shared, or a configured custom resource"
    )]
    UnknownResource(String),
    /// A namespace, principal or priority-class name given with a request is empty, too long
    /// (over [`MAX_NAME_LEN`](crate::MAX_NAME_LEN) bytes) or contains a control character. The
    /// name itself is not repeated.
    #[error("invalid {what} name: it {reason}")]
    InvalidName {
        /// Which name (`namespace`, `principal`, `priority class`).
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A request is malformed (e.g. request above limit, unequal request and limit of an extended resource).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The manager's configuration is inconsistent.
    #[error("invalid resource manager configuration: {0}")]
    InvalidConfig(String),
    /// The named priority class does not exist.
    #[error("unknown priority class {0:?}")]
    UnknownPriorityClass(String),
    /// The principal may not allocate in the namespace.
    #[error("principal {principal:?} may not allocate in namespace {namespace:?}")]
    Forbidden {
        /// Who asked.
        principal: String,
        /// Where.
        namespace: String,
    },
    /// The namespace's LimitRange rejects the request.
    #[error("LimitRange of namespace {namespace:?} rejects {resource}: {reason}")]
    LimitRangeViolation {
        /// The namespace.
        namespace: String,
        /// The resource.
        resource: String,
        /// Which rule, with the numbers.
        reason: String,
    },
    /// A ResourceQuota of the namespace would be exceeded.
    #[error(
        "quota {quota:?} of namespace {namespace:?} exceeded for {resource}: requested {requested}, used {used}, hard {hard}"
    )]
    QuotaExceeded {
        /// The namespace.
        namespace: String,
        /// The quota's name.
        quota: String,
        /// The resource (`requests.cpu`, `limits.memory`, …).
        resource: String,
        /// Requested amount.
        requested: u64,
        /// Already used.
        used: u64,
        /// Hard limit.
        hard: u64,
    },
    /// The request can never fit: it asks for more than the total capacity.
    #[error("request for {requested} of {resource} exceeds the total capacity {capacity}")]
    ExceedsCapacity {
        /// The resource.
        resource: String,
        /// Requested.
        requested: u64,
        /// Total capacity.
        capacity: u64,
    },
    /// Not enough free capacity right now (returned by `try_allocate`, which does not wait).
    #[error("insufficient {resource} right now")]
    Insufficient {
        /// The first resource that is short.
        resource: String,
    },
    /// The wait queue is full; retry later.
    #[error("resource manager overloaded: wait queue full, retry after {retry_after:?}")]
    Overloaded {
        /// Hint for when to retry.
        retry_after: Duration,
    },
    /// The circuit breaker of a resource is open because admissions keep failing for exhaustion,
    /// and this request does not fit right now (requests that fit are admitted whatever the
    /// breaker's state).
    #[error("circuit breaker for {resource} is open, retry after {retry_after:?}")]
    CircuitOpen {
        /// The resource.
        resource: String,
        /// Hint for when to retry.
        retry_after: Duration,
    },
    /// The request waited for its whole timeout without being admitted.
    #[error("timed out after {waited:?} waiting for {resource}")]
    Timeout {
        /// How long it waited.
        waited: Duration,
        /// A resource that was short when it started waiting.
        resource: String,
    },
    /// The allocation or lease is no longer held (released, expired or preempted and reclaimed).
    #[error("allocation {0} is no longer held")]
    NotHeld(u64),
    /// No lease with this id is held: released, expired, reclaimed, or never issued.
    #[error("lease is not held (released, expired, reclaimed or never issued)")]
    LeaseNotHeld,
    /// The lease is held by another principal than the one renewing or releasing it.
    #[error("lease belongs to another principal")]
    NotLeaseOwner,
    /// The manager was shut down.
    #[error("resource manager shut down")]
    Shutdown,
    /// Reading cgroup, `/proc` or Downward API values failed.
    #[error("capacity discovery failed: {0}")]
    Discovery(String),
    /// The GPU inventory failed.
    #[error("GPU inventory: {0}")]
    Gpu(#[from] GpuError),
}

impl QosError {
    /// Whether the same request may succeed later (capacity, backpressure, breaker, timeout).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Insufficient { .. } | Self::Overloaded { .. } | Self::CircuitOpen { .. } | Self::Timeout { .. }
        ) || matches!(self, Self::Gpu(e) if e.is_retryable())
    }

    /// The retry-after hint carried by [`Overloaded`](Self::Overloaded) and
    /// [`CircuitOpen`](Self::CircuitOpen).
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Overloaded { retry_after } | Self::CircuitOpen { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl From<strata_governance::BreakerConfigError> for QosError {
    fn from(e: strata_governance::BreakerConfigError) -> Self {
        QosError::InvalidConfig(format!("breaker: {e}"))
    }
}
