//! Observability seams: every decision goes to a [`ResourceObserver`] (metrics, tracing) and the
//! ones that matter for accountability to an [`AuditSink`].

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use crate::{QosClass, ResourceKind, ResourceList};

/// State of a per-resource circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum BreakerState {
    /// Admissions flow.
    Closed,
    /// Admissions needing the resource fail fast.
    Open,
    /// A few probe admissions are let through.
    HalfOpen,
}

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

/// What an audit record is about.
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

/// One audit record: who did what with which resources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Who.
    pub principal: String,
    /// Where.
    pub namespace: String,
    /// What happened.
    pub action: AuditAction,
    /// Allocation id, if one exists.
    pub allocation: Option<u64>,
    /// Resources involved (requests).
    pub resources: ResourceList,
    /// Free text (denial reason, …).
    pub detail: String,
}

impl AuditRecord {
    pub(crate) fn now(
        principal: &str,
        namespace: &str,
        action: AuditAction,
        allocation: Option<u64>,
        resources: ResourceList,
        detail: String,
    ) -> Self {
        let timestamp_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Self {
            timestamp_ms,
            principal: principal.to_owned(),
            namespace: namespace.to_owned(),
            action,
            allocation,
            resources,
            detail,
        }
    }
}

/// Receives audit records.
pub trait AuditSink: Send + Sync + 'static {
    /// Records one entry. Must not block for long; it runs outside the manager's lock.
    fn record(&self, record: &AuditRecord);

    /// Whether records should be built at all.
    fn enabled(&self) -> bool {
        true
    }
}

/// Discards every record (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopAuditSink;

impl AuditSink for NoopAuditSink {
    fn record(&self, _record: &AuditRecord) {}
    fn enabled(&self) -> bool {
        false
    }
}

/// Keeps records in memory (oldest dropped past `capacity`).
#[derive(Debug)]
pub struct MemoryAuditSink {
    capacity: usize,
    records: Mutex<std::collections::VecDeque<AuditRecord>>,
}

impl MemoryAuditSink {
    /// Keeps at most `capacity` records.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), records: Mutex::new(Default::default()) }
    }

    /// A copy of the records, oldest first.
    #[must_use]
    pub fn records(&self) -> Vec<AuditRecord> {
        self.records.lock().iter().cloned().collect()
    }
}

impl AuditSink for MemoryAuditSink {
    fn record(&self, record: &AuditRecord) {
        let mut r = self.records.lock();
        if r.len() == self.capacity {
            r.pop_front();
        }
        r.push_back(record.clone());
    }
}

/// Writes one JSON object per line to a writer (a file, stdout, a buffer).
pub struct JsonLinesAuditSink<W: Write + Send + 'static> {
    writer: Mutex<W>,
}

impl<W: Write + Send + 'static> std::fmt::Debug for JsonLinesAuditSink<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLinesAuditSink").finish_non_exhaustive()
    }
}

impl<W: Write + Send + 'static> JsonLinesAuditSink<W> {
    /// Wraps `writer`.
    pub fn new(writer: W) -> Self {
        Self { writer: Mutex::new(writer) }
    }

    /// Returns the writer.
    pub fn into_inner(self) -> W {
        self.writer.into_inner()
    }
}

impl<W: Write + Send + 'static> AuditSink for JsonLinesAuditSink<W> {
    fn record(&self, record: &AuditRecord) {
        let mut w = self.writer.lock();
        let res =
            serde_json::to_writer(&mut *w, record).map_err(std::io::Error::from).and_then(|()| w.write_all(b"\n"));
        if let Err(e) = res {
            tracing::warn!(error = %e, "audit record could not be written");
        }
    }
}
