//! # strata-resource-qos
//!
//! A resource manager for ML workloads: CPU (millicores), memory (bytes), whole GPUs, MIG
//! slices, time-sliced GPU shares and custom resources, admitted through a Kubernetes-shaped
//! pipeline and handed out as RAII [`Allocation`]s.
//!
//! This crate depends on `strata-gpu` for GPU capacity (the one sideways edge between leaf crates
//! that the design allows): a [`strata_gpu::GpuInventory`] plus a device-plugin configuration
//! (MIG strategy, time-slicing) become `nvidia.com/gpu`, `nvidia.com/mig-<profile>` and
//! `nvidia.com/gpu.shared` capacity.
//!
//! ## Admission pipeline
//! 1. **RBAC** — an [`AccessPolicy`] (the shared contract of `strata-governance`) decides
//!    whether the principal may [`Action::Allocate`] in the namespace.
//! 2. **LimitRange** — defaults for missing requests and limits, then `min`, `max` and
//!    `max_limit_request_ratio`. The [`QosClass`] is derived from the result as Kubernetes does.
//! 3. **ResourceQuota** — summed requests and limits per namespace, per priority-class scope.
//!    A quota denial is final (as in Kubernetes); it does not wait.
//! 4. **Capacity** — what is free, minus what waiters of equal or higher priority wait for. A
//!    request that fits is admitted here, whatever the breakers say.
//! 5. **Circuit breaker** of each resource the request is short of — an open breaker fails fast
//!    with [`QosError::CircuitOpen`] instead of queueing or preempting.
//! 6. **Preemption** when short and the [`PriorityClass`] allows: victims are strictly lower
//!    priority and preemptible, chosen BestEffort → Burstable → Guaranteed, then lowest
//!    priority, then newest, and only if together they make room. They are signalled through
//!    [`Allocation::revoked`] and reclaimed after the grace period if still held.
//! 7. **Wait** in a bounded priority queue until the request's timeout; a full queue answers
//!    [`QosError::Overloaded`] with a retry-after hint.
//!
//! Every decision is sent to a [`ResourceObserver`] and the ones that matter to an [`AuditSink`].
//!
//! ```
//! use std::time::Duration;
//! use strata_resource_qos::{AllocationRequest, PriorityClass, QosClass, ResourceKind, ResourceManager};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let manager = ResourceManager::builder()
//!     .capacity(ResourceKind::Cpu, 8_000)
//!     .capacity(ResourceKind::Memory, 32 << 30)
//!     .capacity(ResourceKind::Gpu, 2)
//!     .priority_class(PriorityClass::new("batch", 100).global_default())
//!     .build()?;
//!
//! let job = manager
//!     .allocate(
//!         AllocationRequest::new("ml", "alice")
//!             .request(ResourceKind::Cpu, 2_000)
//!             .limit(ResourceKind::Cpu, 2_000)
//!             .limit(ResourceKind::Memory, 8 << 30)
//!             .request(ResourceKind::Gpu, 1)
//!             .timeout(Duration::from_secs(1)),
//!     )
//!     .await?;
//! assert_eq!(job.qos(), QosClass::Guaranteed);
//! assert_eq!(manager.usage().used.get(&ResourceKind::Gpu), Some(1));
//! drop(job); // RAII: resources return
//! assert_eq!(manager.usage().used.get(&ResourceKind::Gpu), None);
//! # Ok::<(), strata_resource_qos::QosError>(())
//! # }).unwrap();
//! ```
//!
//! ## Modules at a glance
//! - [`ResourceKind`], [`ResourceList`] — kinds and quantities (`"500m"`, `"2Gi"` parsing).
//! - [`PriorityClass`], [`QosClass`], [`LimitRange`], [`ResourceQuota`], [`NamespacePolicy`].
//! - [`ResourceManager`], [`AllocationRequest`], [`Allocation`], [`LeaseId`] (heartbeat leases).
//! - [`BreakerConfig`] — per-resource circuit breakers.
//! - [`CapacityDiscovery`] — cgroup v2 (`cpu.max`, `memory.max`, `memory.high`), Downward API
//!   environment variables, host fallback.
//! - [`monitor`] — usage sampling, decaying histograms, VPA-style and HPA-style recommendations.
//! - [`ResourceObserver`], and the shared audit contract of `strata-governance`: [`AuditSink`],
//!   [`AuditRecord`] (manager decisions as [`AuditAction`]s), [`MemoryAuditSink`], and the
//!   hash-chained [`JsonLinesAuditSink`] whose log `strata-audit verify` checks. A failing sink
//!   is logged and reported as [`ResourceEvent::AuditFailed`]; the decision stands.
//!
//! ## Concurrency
//! One `parking_lot` mutex guards the accounting; it is never held across an `.await`, and
//! observers and audit sinks are called after it is released. Waiting requests, admissions and
//! [`ResourceManager::spawn_maintenance`] (a task on the caller's runtime) reclaim expired leases
//! and victims past their grace period; there are no hidden threads.
//!
//! ## Semantics worth knowing (deviations from Kubernetes)
//! - Capacity and quota are accounted on **requests**; limits only matter for QoS, LimitRange
//!   and `hard_limits` quotas. Extended resources (GPU, MIG, shares, custom) must have
//!   request = limit.
//! - A quota with `hard_limits` on a resource does not force requests to name that limit (a
//!   missing limit counts as zero); Kubernetes rejects such pods.
//! - A quota denial is immediate; waiters re-check quota when capacity frees.
//! - [`ResourceManager::try_allocate`] never waits and never preempts.
//! - The breaker counts an admission as a success for each requested kind, and `Insufficient`,
//!   `Overloaded` and `Timeout` as failures of the kinds that were short. Exhaustion is
//!   backpressure, so an open breaker never refuses a request that fits; admissions while it is
//!   open count as probes, and `half_open_probes` of them in a row close it.
//!
//! ## Hostile input
//! - Durations are saturating: a timeout, lease TTL, grace period or breaker open time too long
//!   for the clock (up to `Duration::MAX`) means "about thirty years", i.e. no deadline. A zero
//!   lease TTL is refused. Nothing is counted as used before every step that could fail is done.
//! - Namespace, principal and priority-class names must be non-empty, at most [`MAX_NAME_LEN`]
//!   bytes and free of control characters ([`QosError::InvalidName`]); any other Unicode is fine.
//! - A detached lease is addressed by a random 128-bit [`LeaseId`] and may be renewed or released
//!   only by the principal that allocated it ([`QosError::NotLeaseOwner`]).
//!
//! ## Not implemented
//! - GPU resources are counted, not bound: the manager does not choose which device UUID or MIG
//!   instance an allocation gets, and does no topology-aware (NVLink/NUMA) placement.
//! - Capacity, priority classes and namespace policies are fixed when the manager is built (no
//!   runtime update, no re-read of the GPU inventory after build).
//! - LimitRange covers the `Container` type only (no `Pod` or `PersistentVolumeClaim` limits).
//! - Recommendations cover CPU and memory of the process/cgroup as a whole, not per allocation.

mod breaker;
mod capacity;
mod deadline;
mod error;
mod maintenance;
mod manager;
pub mod monitor;
mod name;
mod observe;
mod policy;
mod rbac;
mod resource;

pub use breaker::BreakerConfig;
pub use capacity::{CapacityDiscovery, CapacitySource, DiscoveredCapacity};
pub use error::QosError;
pub use maintenance::MaintenanceTask;
pub use manager::{
    Allocation, AllocationRequest, LeaseId, ManagerConfig, ResourceManager, ResourceManagerBuilder, Revocation,
    UsageSnapshot,
};
pub use name::MAX_NAME_LEN;
pub use observe::{
    AuditAction, AuditError, AuditRecord, AuditSink, BreakerState, JsonLinesAuditSink, MemoryAuditSink, NoopAuditSink,
    NoopObserver, Outcome, ResourceEvent, ResourceObserver,
};
pub use policy::{LimitRange, NamespacePolicy, PreemptionPolicy, PriorityClass, QosClass, QuotaScope, ResourceQuota};
pub use rbac::{AccessDenied, AccessPolicy, Action, AllowAll, Principal, RESOURCES, StaticRbac};
pub use resource::{ResourceKind, ResourceList};
