//! The [`ResourceManager`]: admission pipeline, accounting, preemption, wait queue, leases.
//!
//! Files of this folder:
//! - `mod.rs` — [`ResourceManager`]'s queries and controls, the shared `Inner` and its locked
//!   `State`, side effects emitted after the lock.
//! - `builder.rs` — [`ManagerConfig`], [`ResourceManagerBuilder`], policies compiled to indices.
//! - `request.rs` — [`AllocationRequest`] and `prepare`, the unlocked checks that yield a claim.
//! - `admission.rs` — `allocate` / `try_allocate`: quota → breaker → capacity → preemption,
//!   commit, waiting, draining the queue.
//! - `preempt.rs` — choosing and signalling preemption victims.
//! - `allocation.rs` — the [`Allocation`] handle, [`LeaseId`], [`Revocation`]; release, lease
//!   expiry and reclaiming.
//! - `ledger.rs` — `Claim` (what an allocation takes) and `Ledger`: capacity, usage and quota use,
//!   moved only by `charge` / `refund`.
//! - `queue.rs` — `WaitQueue`: waiters in priority order with their totals, moved only by
//!   `push` / `remove`.

mod admission;
mod allocation;
mod builder;
mod ledger;
mod preempt;
mod queue;
mod request;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use strata_gpu::GpuInventory;
use tokio::time::Instant;

pub use self::allocation::{Allocation, LeaseId, Revocation};
use self::builder::CompiledNamespace;
pub use self::builder::{ManagerConfig, ResourceManagerBuilder};
use self::ledger::Ledger;
use self::queue::WaitQueue;
pub use self::request::AllocationRequest;
use crate::breaker::Breaker;
use crate::deadline::FAR_FUTURE;
use crate::observe::{AuditAction, AuditRecord, ResourceEvent};
use crate::{
    AccessPolicy, AuditSink, BreakerConfig, BreakerState, PriorityClass, QosError, ResourceKind, ResourceList,
    ResourceObserver,
};

/// A point-in-time view of the manager's accounting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageSnapshot {
    /// Total capacity.
    pub capacity: ResourceList,
    /// Sum of admitted requests (victims in their grace period included).
    pub used: ResourceList,
    /// Live allocations.
    pub allocations: usize,
    /// Requests waiting in the queue.
    pub waiters: usize,
}

/// Everything that changes after build, behind one lock.
struct State {
    /// Live allocations and what they take from capacity and quotas.
    ledger: Ledger,
    /// Requests waiting for capacity.
    queue: WaitQueue,
    /// Lease expiries and victims' grace deadlines: (when, allocation id).
    timers: BTreeSet<(Instant, u64)>,
    breakers: Vec<Breaker>,
    next_id: u64,
    /// Admission order of allocations (preemption takes the newest first).
    seq: u64,
    shutdown: bool,
}

/// What the manager, its clones and every handle share: settings fixed at build and the state
/// behind one lock.
struct Inner {
    me: Weak<Inner>,
    capacity: Vec<u64>,
    kinds: Vec<ResourceKind>,
    classes: HashMap<String, PriorityClass>,
    default_class: Option<PriorityClass>,
    namespaces: HashMap<Arc<str>, CompiledNamespace>,
    access: Arc<dyn AccessPolicy>,
    observer: Arc<dyn ResourceObserver>,
    audit: Arc<dyn AuditSink>,
    observe: bool,
    auditing: bool,
    default_timeout: Duration,
    max_waiters: usize,
    grace: Duration,
    breaker_cfg: BreakerConfig,
    gpu: Option<Arc<dyn GpuInventory>>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceManager").field("kinds", &self.kinds).finish_non_exhaustive()
    }
}

/// Side effects collected under the lock and performed after it is released.
#[derive(Default)]
struct Effects {
    events: Vec<ResourceEvent>,
    audits: Vec<AuditRecord>,
    dropped: Vec<Allocation>,
    touched: bool,
}

/// The resource manager. Cheap to clone (an `Arc`).
///
/// See the crate documentation for the admission pipeline.
#[derive(Clone, Debug)]
pub struct ResourceManager {
    inner: Arc<Inner>,
}

impl ResourceManager {
    /// Renews a detached lease on behalf of `principal`, who must be the principal that made the
    /// request.
    ///
    /// # Errors
    /// [`QosError::LeaseNotHeld`] when it expired, was released or was never issued;
    /// [`QosError::NotLeaseOwner`] (audited as a denial) when another principal holds it.
    pub fn heartbeat(&self, principal: &str, lease: LeaseId) -> Result<(), QosError> {
        let id = self.inner.owned_lease(principal, lease)?;
        self.inner.heartbeat(id).map_err(|_| QosError::LeaseNotHeld)
    }

    /// Releases a detached lease on behalf of `principal`, who must be the principal that made the
    /// request.
    ///
    /// # Errors
    /// [`QosError::LeaseNotHeld`] when it expired, was already released or was never issued;
    /// [`QosError::NotLeaseOwner`] (audited as a denial) when another principal holds it.
    pub fn release_lease(&self, principal: &str, lease: LeaseId) -> Result<(), QosError> {
        let id = self.inner.owned_lease(principal, lease)?;
        // Allocation ids are never reused, so the lease cannot have changed hands in between.
        if self.inner.release(id, AuditAction::Released) { Ok(()) } else { Err(QosError::LeaseNotHeld) }
    }

    /// Reclaims expired leases and victims past their grace period, then admits waiters that fit.
    /// Waiting requests and every admission do this too; call it (or run
    /// [`spawn_maintenance`](Self::spawn_maintenance)) when nothing else drives the manager.
    pub fn reclaim_expired(&self) {
        let mut fx = Effects::default();
        let mut st = self.inner.state.lock();
        self.inner.reap(&mut st, Instant::now(), &mut fx);
        drop(st);
        self.inner.emit(fx);
    }

    /// Spawns, on the caller's tokio runtime, a task that calls
    /// [`reclaim_expired`](Self::reclaim_expired) every `period`. It holds only a weak reference
    /// and ends when the manager is dropped; dropping or aborting the returned handle stops it
    /// earlier ([`MaintenanceTask::detach`](crate::MaintenanceTask::detach) keeps it running).
    pub fn spawn_maintenance(&self, period: Duration) -> crate::MaintenanceTask {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        crate::MaintenanceTask::new(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period.clamp(Duration::from_millis(1), FAR_FUTURE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                ResourceManager { inner }.reclaim_expired();
            }
        }))
    }

    /// Refuses new requests and fails every waiter with [`QosError::Shutdown`]. Live allocations
    /// stay valid until dropped.
    pub fn shutdown(&self) {
        let mut st = self.inner.state.lock();
        st.shutdown = true;
        let waiters = st.queue.take_all();
        drop(st);
        drop(waiters);
    }

    /// Current capacity, usage and queue length.
    #[must_use]
    pub fn usage(&self) -> UsageSnapshot {
        let st = self.inner.state.lock();
        let list = |v: &[u64]| -> ResourceList {
            v.iter().enumerate().filter(|(_, q)| **q > 0).map(|(i, q)| (self.inner.kinds[i].clone(), *q)).collect()
        };
        UsageSnapshot {
            capacity: list(st.ledger.capacity()),
            used: list(st.ledger.used()),
            allocations: st.ledger.len(),
            waiters: st.queue.len(),
        }
    }

    /// Summed requests (`.0`) and limits (`.1`) counted against a namespace's quota `quota`.
    #[must_use]
    pub fn quota_usage(&self, namespace: &str, quota: &str) -> Option<(ResourceList, ResourceList)> {
        let ns = self.inner.namespaces.get(namespace)?;
        let qi = ns.quotas.iter().position(|q| q.name == quota)?;
        let st = self.inner.state.lock();
        let u = st.ledger.quota_use(namespace, qi)?;
        // Summed limits may pass u64::MAX (limits are not bounded by capacity): saturate.
        let list = |v: &[u128]| -> ResourceList {
            v.iter()
                .enumerate()
                .filter(|(_, q)| **q > 0)
                .map(|(i, q)| (self.inner.kinds[i].clone(), u64::try_from(*q).unwrap_or(u64::MAX)))
                .collect()
        };
        Some((list(&u.req), list(&u.lim)))
    }

    /// State of the breaker of `kind` (`None` for a kind without capacity).
    #[must_use]
    pub fn breaker_state(&self, kind: &ResourceKind) -> Option<BreakerState> {
        let i = self.inner.kind_index(kind)?;
        Some(self.inner.state.lock().breakers[i].state())
    }

    /// The resource kinds this manager accounts.
    #[must_use]
    pub fn kinds(&self) -> &[ResourceKind] {
        &self.inner.kinds
    }

    /// The GPU inventory given to the builder, if any.
    #[must_use]
    pub fn gpu_inventory(&self) -> Option<Arc<dyn GpuInventory>> {
        self.inner.gpu.clone()
    }

    /// The observer given to the builder (the monitor reports through it too).
    #[must_use]
    pub fn observer(&self) -> Arc<dyn ResourceObserver> {
        Arc::clone(&self.inner.observer)
    }
}

impl Inner {
    /// Index of `kind` (kinds are sorted).
    fn kind_index(&self, kind: &ResourceKind) -> Option<usize> {
        self.kinds.binary_search(kind).ok()
    }

    /// Utilization events after an admission or release (when observed).
    fn utilization(&self, st: &State, fx: &mut Effects) {
        if self.observe && fx.touched {
            for (i, k) in self.kinds.iter().enumerate() {
                fx.events.push(ResourceEvent::Utilization {
                    resource: k.clone(),
                    component: "allocated",
                    ratio: st.ledger.used()[i] as f64 / st.ledger.capacity()[i] as f64,
                });
            }
        }
    }

    fn breaker_event(&self, k: usize, state: BreakerState, fx: &mut Effects) {
        tracing::info!(resource = %self.kinds[k], ?state, "circuit breaker state changed");
        if self.observe {
            fx.events.push(ResourceEvent::BreakerStateChanged { resource: self.kinds[k].clone(), state });
        }
    }

    fn breaker_failures(&self, st: &mut State, short: &[usize], now: Instant, fx: &mut Effects) {
        if !self.breaker_cfg.enabled {
            return;
        }
        for &k in short {
            if let Some(s) = st.breakers[k].on_failure(&self.breaker_cfg, now) {
                self.breaker_event(k, s, fx);
            }
        }
    }

    /// Records a denial (observer + audit) and hands the error back.
    fn deny(&self, namespace: &str, principal: &str, err: QosError, mut fx: Effects) -> QosError {
        if self.observe {
            fx.events.push(ResourceEvent::Denied {
                namespace: namespace.to_owned(),
                principal: principal.to_owned(),
                reason: err.to_string(),
            });
        }
        if self.auditing {
            fx.audits.push(crate::observe::audit_record(
                principal,
                namespace,
                AuditAction::Denied,
                None,
                ResourceList::new(),
                err.to_string(),
            ));
        }
        self.emit(fx);
        err
    }

    /// Performs the side effects collected under the lock (call it after releasing the lock).
    fn emit(&self, fx: Effects) {
        let Effects { events, audits, dropped, .. } = fx;
        drop(dropped);
        for e in &events {
            self.observer.on_event(e);
        }
        crate::observe::record_all(&*self.audit, &*self.observer, &audits);
    }

    /// Kind indices back to a [`ResourceList`].
    fn to_list(&self, v: &[(usize, u64)]) -> ResourceList {
        v.iter().map(|&(k, q)| (self.kinds[k].clone(), q)).collect()
    }
}
