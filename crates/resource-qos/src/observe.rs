//! Observability seams: every decision goes to a [`ResourceObserver`] (metrics, tracing) and the
//! ones that matter for accountability to an [`AuditSink`].
//!
//! The audit contract is the shared one of `strata-governance` (re-exported): records are
//! [`AuditRecord`]s naming [`RESOURCES`](crate::RESOURCES) as their target, and a
//! [`JsonLinesAuditSink`] writes a hash-chained log that `strata-audit verify` checks.
//!
//! **A failing sink** does not undo the decision it records: records are written after the
//! manager's lock is released, when the allocation (or denial, release…) has already taken
//! effect. The failure is logged (`tracing::error!`) and reported to the observer as
//! [`ResourceEvent::AuditFailed`], which metrics count; the caller's request still succeeds.
//! Use a sink that cannot fail (or alert on that event) where every allocation must be on
//! record.

use std::time::Duration;

use serde::Serialize;

pub use strata_governance::audit::{
    AuditError, AuditRecord, AuditSink, JsonLinesAuditSink, MemoryAuditSink, NoopAuditSink, Outcome,
};
pub use strata_governance::breaker::BreakerState;
use strata_governance::{Action, RESOURCES};

use crate::{QosClass, ResourceKind, ResourceList};

/// One observable decision or measurement.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ResourceEvent {
    /// An allocation was admitted.
    Admitted {
        /// Allocation id.
        id: u64,
        /// Namespace.
        namespace: String,
        /// Who.
        principal: String,
        /// QoS class.
        qos: QosClass,
        /// Priority value.
        priority: i32,
        /// Requests taken.
        requests: ResourceList,
        /// Time spent waiting in the queue.
        waited: Duration,
    },
    /// A request was refused (RBAC, LimitRange, quota, capacity, backpressure, breaker, timeout).
    Denied {
        /// Namespace.
        namespace: String,
        /// Who.
        principal: String,
        /// The error's message.
        reason: String,
    },
    /// A request started waiting.
    Queued {
        /// Namespace.
        namespace: String,
        /// Waiters in the queue, this one included.
        queue_len: usize,
    },
    /// An allocation was chosen as a preemption victim.
    Preempted {
        /// The victim.
        victim: u64,
        /// The victim's priority.
        victim_priority: i32,
        /// The preemptor's priority.
        preemptor_priority: i32,
        /// Grace period given to the victim.
        grace: Duration,
    },
    /// Resources returned (handle dropped or released).
    Released {
        /// Allocation id.
        id: u64,
        /// Requests returned.
        requests: ResourceList,
    },
    /// A lease missed its heartbeat, or a preempted victim outlived its grace period; its
    /// resources were reclaimed.
    Reclaimed {
        /// Allocation id.
        id: u64,
        /// `lease expired` or `grace period over`.
        reason: &'static str,
    },
    /// A circuit breaker changed state.
    BreakerStateChanged {
        /// The resource.
        resource: ResourceKind,
        /// New state.
        state: BreakerState,
    },
    /// Used / capacity of a resource (emitted after every change in the manager, and by the monitor
    /// for sampled actual usage, e.g. `resource_utilization_ratio{resource_type, component}`).
    Utilization {
        /// The resource.
        resource: ResourceKind,
        /// `allocated` (manager accounting) or `actual` (monitor sample).
        component: &'static str,
        /// 0.0 ..= 1.0 (may exceed 1.0 for actual usage above the allocation).
        ratio: f64,
    },
    /// The audit sink refused a record (it was logged, not written; the decision stands).
    AuditFailed {
        /// The sink's error.
        error: String,
    },
}

/// Receives every [`ResourceEvent`]. Implement it to export metrics (the telemetry crate does).
///
/// Called outside the manager's lock, on the thread that made the decision; keep it cheap.
pub trait ResourceObserver: Send + Sync + 'static {
    /// Called for each event. The default does nothing.
    fn on_event(&self, event: &ResourceEvent) {
        let _ = event;
    }

    /// Whether events should be built at all; return `false` to skip the work.
    fn enabled(&self) -> bool {
        true
    }
}

/// Observer that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopObserver;

impl ResourceObserver for NoopObserver {
    fn enabled(&self) -> bool {
        false
    }
}

/// What a resource audit record is about: the manager's vocabulary, written into the shared
/// [`AuditRecord`] as `action` + `outcome` (+ `detail`):
///
/// | variant | `action` | `outcome` |
/// |---|---|---|
/// | `Allocated` | `allocate` | `allowed` |
/// | `Denied` | `allocate` | `denied` (reason in `detail`) |
/// | `Released` | `release` | `allowed` |
/// | `Preempted` | `preempt` | `allowed` (`by_priority=N; …` in `detail`) |
/// | `Reclaimed` | `reclaim` | `allowed` (reason in `detail`) |
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// Resources allocated.
    Allocated,
    /// Resources released by their holder.
    Released,
    /// Allocation preempted (with the preemptor's priority).
    Preempted {
        /// Priority of the request that preempted it.
        by_priority: i32,
    },
    /// Resources reclaimed from an expired lease or after a preemption grace period.
    Reclaimed,
    /// Request denied (the reason is in `detail`).
    Denied,
}

impl AuditAction {
    /// The shared action and outcome this becomes in an [`AuditRecord`].
    pub fn action_and_outcome(&self) -> (Action, Outcome) {
        match self {
            Self::Allocated => (Action::Allocate, Outcome::Allowed),
            Self::Denied => (Action::Allocate, Outcome::Denied),
            Self::Released => (Action::Release, Outcome::Allowed),
            Self::Preempted { .. } => (Action::Preempt, Outcome::Allowed),
            Self::Reclaimed => (Action::Reclaim, Outcome::Allowed),
        }
    }
}

/// Builds the shared record of a resource decision (time and correlation id stamped now).
pub(crate) fn audit_record(
    principal: &str,
    namespace: &str,
    action: AuditAction,
    allocation: Option<u64>,
    resources: ResourceList,
    detail: String,
) -> AuditRecord {
    let (act, outcome) = action.action_and_outcome();
    let detail = match action {
        AuditAction::Preempted { by_priority } if detail.is_empty() => format!("by_priority={by_priority}"),
        AuditAction::Preempted { by_priority } => format!("by_priority={by_priority}; {detail}"),
        _ => detail,
    };
    let mut record = AuditRecord::now(principal, act, RESOURCES, namespace, None, outcome)
        .with_resources(resources.iter().map(|(k, q)| (k.to_string(), q)));
    record.allocation = allocation;
    if !detail.is_empty() {
        record.detail = Some(detail);
    }
    record
}

/// Writes `records` to `sink`; a failure is logged and reported to `observer` (see the module
/// documentation), never propagated.
pub(crate) fn record_all(sink: &dyn AuditSink, observer: &dyn ResourceObserver, records: &[AuditRecord]) {
    for r in records {
        if let Err(e) = sink.record(r) {
            tracing::error!(error = %e, namespace = %r.namespace, action = %r.action, "resource audit record not written");
            observer.on_event(&ResourceEvent::AuditFailed { error: e.to_string() });
        }
    }
}
