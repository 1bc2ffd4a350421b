//! Resource-manager metrics (feature `resources`): the `strata_resource_*` families, the
//! [`ResourceObserver`] implementation of [`PrometheusObserver`] and the usage probe read at
//! scrape time.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use strata_resource_qos::{BreakerState, QosClass, ResourceEvent, ResourceObserver, UsageSnapshot};

use super::labels::OTHER;
use super::{Caps, MetricKind, PrometheusObserver, counter_vec, gauge_vec};
use crate::TelemetryError;

/// Buckets (seconds) for admission waits: 1 ms … 60 s.
const WAIT_BUCKETS: &[f64] = &[0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0];

type UsageProbe = Box<dyn Fn() -> UsageSnapshot + Send + Sync>;

/// The families set by resource events.
pub(super) struct ResourceFamilies {
    utilization: GaugeVec,
    allocations: IntCounterVec,
    denials: IntCounter,
    queued: IntCounter,
    wait: Histogram,
    preemptions: IntCounter,
    releases: IntCounter,
    reclaims: IntCounterVec,
    breakers: IntGaugeVec,
    audit_failures: IntCounter,
}

impl ResourceFamilies {
    pub(super) fn new() -> Result<Self, TelemetryError> {
        Ok(Self {
            utilization: GaugeVec::new(
                Opts::new(
                    "strata_resource_utilization_ratio",
                    "Used / capacity per resource: component=allocated (admission accounting) or actual (sampled).",
                ),
                &["resource_type", "component"],
            )?,
            allocations: counter_vec(
                "strata_resource_allocations_total",
                "Allocations admitted by QoS class.",
                &["qos"],
            )?,
            denials: IntCounter::new("strata_resource_denials_total", "Allocation requests refused.")?,
            queued: IntCounter::new("strata_resource_queued_total", "Allocation requests that had to wait.")?,
            wait: Histogram::with_opts(
                HistogramOpts::new(
                    "strata_resource_admission_wait_seconds",
                    "Time admitted requests spent in the wait queue.",
                )
                .buckets(WAIT_BUCKETS.to_vec()),
            )?,
            preemptions: IntCounter::new("strata_resource_preemptions_total", "Allocations preempted.")?,
            releases: IntCounter::new("strata_resource_releases_total", "Allocations released.")?,
            reclaims: counter_vec(
                "strata_resource_reclaims_total",
                "Allocations reclaimed (lease_expired, grace_period_over).",
                &["reason"],
            )?,
            breakers: gauge_vec(
                "strata_resource_breaker_state",
                "Resource circuit breaker state (0 closed, 1 half-open, 2 open).",
                &["resource_type"],
            )?,
            audit_failures: IntCounter::new(
                "strata_resource_audit_failures_total",
                "Resource decisions whose audit record the audit sink refused (logged, not written).",
            )?,
        })
    }

    /// The families to register, in registration order. Utilization is not among them: the
    /// pull collector ([`UsageGauges`]) exports it after refreshing it.
    pub(super) fn collectors(&self) -> Vec<(Box<dyn Collector>, MetricKind)> {
        use MetricKind::{Counter as C, Gauge as G, Histogram as H};
        vec![
            (Box::new(self.allocations.clone()), C),
            (Box::new(self.denials.clone()), C),
            (Box::new(self.queued.clone()), C),
            (Box::new(self.wait.clone()), H),
            (Box::new(self.preemptions.clone()), C),
            (Box::new(self.releases.clone()), C),
            (Box::new(self.reclaims.clone()), C),
            (Box::new(self.breakers.clone()), G),
            (Box::new(self.audit_failures.clone()), C),
        ]
    }
}

/// Gauges read at scrape time from the usage probe ([`PrometheusObserver::watch_resources`]).
pub(super) struct UsageGauges {
    capacity: IntGaugeVec,
    used: IntGaugeVec,
    allocated_ratio: GaugeVec,
    live: IntGauge,
    queue: IntGauge,
    probe: RwLock<Option<UsageProbe>>,
    caps: Arc<Caps>,
}

impl UsageGauges {
    pub(super) fn new(families: &ResourceFamilies, caps: Arc<Caps>) -> Result<Self, TelemetryError> {
        Ok(Self {
            capacity: gauge_vec(
                "strata_resource_capacity",
                "Capacity per resource (resource units).",
                &["resource_type"],
            )?,
            used: gauge_vec(
                "strata_resource_used",
                "Admitted requests per resource (resource units).",
                &["resource_type"],
            )?,
            allocated_ratio: families.utilization.clone(),
            live: IntGauge::new("strata_resource_live_allocations", "Live allocations.")?,
            queue: IntGauge::new("strata_resource_queue_depth", "Allocation requests waiting in the queue.")?,
            probe: RwLock::default(),
            caps,
        })
    }

    /// The descriptors of every family [`collect`](Self::collect) returns.
    pub(super) fn descs(&self) -> Vec<Desc> {
        let mut descs = Vec::new();
        for c in [&self.capacity, &self.used] {
            descs.extend(c.desc().into_iter().cloned());
        }
        descs.extend(self.live.desc().into_iter().cloned());
        descs.extend(self.queue.desc().into_iter().cloned());
        // Utilization is set by events and by the usage probe: this collector exports it
        // after refreshing, so a scrape never sees it before the probe ran.
        descs.extend(self.allocated_ratio.desc().into_iter().cloned());
        descs
    }

    /// Runs the probe (if one is set) and returns the refreshed families.
    pub(super) fn collect(&self) -> Vec<MetricFamily> {
        if let Some(probe) = self.probe.read().as_ref() {
            let snap = probe();
            self.live.set(i64::try_from(snap.allocations).unwrap_or(i64::MAX));
            self.queue.set(i64::try_from(snap.waiters).unwrap_or(i64::MAX));
            for (kind, cap) in snap.capacity.iter() {
                let label = self.caps.resources.admit(&kind.to_string());
                let used = snap.used.get(kind).unwrap_or(0);
                self.capacity.with_label_values(&[&label]).set(i64::try_from(cap).unwrap_or(i64::MAX));
                self.used.with_label_values(&[&label]).set(i64::try_from(used).unwrap_or(i64::MAX));
                let ratio = if cap == 0 { 0.0 } else { used as f64 / cap as f64 };
                self.allocated_ratio.with_label_values(&[&label, "allocated"]).set(ratio);
            }
        }
        let mut out = Vec::new();
        out.extend(self.capacity.collect());
        out.extend(self.used.collect());
        out.extend(self.live.collect());
        out.extend(self.queue.collect());
        out.extend(self.allocated_ratio.collect());
        out
    }
}

impl PrometheusObserver {
    /// Reports resource capacity, usage, live allocations and queue depth at scrape time
    /// (e.g. `move || manager.usage()` for a [`strata_resource_qos::ResourceManager`]).
    pub fn watch_resources(&self, probe: impl Fn() -> UsageSnapshot + Send + Sync + 'static) {
        *self.pull.usage.probe.write() = Some(Box::new(probe));
    }
}

impl ResourceObserver for PrometheusObserver {
    fn on_event(&self, event: &ResourceEvent) {
        let f = &self.f.resources;
        match event {
            ResourceEvent::Admitted { qos, waited, .. } => {
                f.allocations.with_label_values(&[qos_label(*qos)]).inc();
                if *waited > Duration::ZERO {
                    f.wait.observe(waited.as_secs_f64());
                }
            }
            ResourceEvent::Denied { .. } => f.denials.inc(),
            ResourceEvent::Queued { .. } => f.queued.inc(),
            ResourceEvent::Preempted { .. } => f.preemptions.inc(),
            ResourceEvent::Released { .. } => f.releases.inc(),
            ResourceEvent::Reclaimed { reason, .. } => {
                let r = if reason.contains("lease") { "lease_expired" } else { "grace_period_over" };
                f.reclaims.with_label_values(&[r]).inc();
            }
            ResourceEvent::BreakerStateChanged { resource, state } => {
                let label = self.caps.resources.admit(&resource.to_string());
                f.breakers.with_label_values(&[&label]).set(breaker_value(*state));
            }
            ResourceEvent::Utilization { resource, component, ratio } => {
                let label = self.caps.resources.admit(&resource.to_string());
                let component = if matches!(*component, "allocated" | "actual") { component } else { OTHER };
                f.utilization.with_label_values(&[&label, component]).set(*ratio);
            }
            // The error text stays out of the metric (unbounded, may name paths): it is logged.
            ResourceEvent::AuditFailed { .. } => f.audit_failures.inc(),
            _ => {}
        }
    }
}

/// Numeric value of a resource breaker state: closed 0, half-open 1, open 2 (as for tiers).
fn breaker_value(state: BreakerState) -> i64 {
    match state {
        BreakerState::Closed => 0,
        BreakerState::HalfOpen => 1,
        BreakerState::Open => 2,
    }
}

fn qos_label(qos: QosClass) -> &'static str {
    match qos {
        QosClass::Guaranteed => "guaranteed",
        QosClass::Burstable => "burstable",
        QosClass::BestEffort => "best_effort",
    }
}
