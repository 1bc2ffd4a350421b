//! The [`ResourceManager`]: admission pipeline, accounting, preemption, wait queue, leases.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use strata_gpu::{DevicePluginConfig, GpuInventory, advertised_resources};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::breaker::Breaker;
use crate::deadline::{FAR_FUTURE, after, millis_saturating};
use crate::observe::{AuditAction, AuditRecord, ResourceEvent};
use crate::policy::NamespacePolicy;
use crate::{
    AccessPolicy, AllowAll, AuditSink, BreakerConfig, BreakerState, NoopAuditSink, NoopObserver, PreemptionPolicy,
    PriorityClass, QosClass, QosError, ResourceKind, ResourceList, ResourceObserver,
};

/// Serializable settings of a [`ResourceManager`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerConfig {
    /// Capacity overrides: each kind named here replaces the discovered or GPU-derived value.
    pub capacity: ResourceList,
    /// Priority classes.
    pub priority_classes: Vec<PriorityClass>,
    /// Per-namespace LimitRange and quotas. Namespaces not listed have neither.
    pub namespaces: BTreeMap<String, NamespacePolicy>,
    /// Wait timeout for requests that name none, in milliseconds.
    pub default_timeout_ms: u64,
    /// Bound of the wait queue; past it requests fail with `Overloaded`.
    pub max_waiters: usize,
    /// Grace period given to preemption victims, in milliseconds.
    pub grace_period_ms: u64,
    /// Per-resource circuit breakers.
    pub breaker: BreakerConfig,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            capacity: ResourceList::new(),
            priority_classes: Vec::new(),
            namespaces: BTreeMap::new(),
            default_timeout_ms: 30_000,
            max_waiters: 1024,
            grace_period_ms: 30_000,
            breaker: BreakerConfig::resources(),
        }
    }
}

/// A request for resources.
///
/// ```
/// use std::time::Duration;
/// use strata_resource_qos::{AllocationRequest, ResourceKind};
/// let req = AllocationRequest::new("ml", "alice")
///     .request(ResourceKind::Cpu, 2000)
///     .limit(ResourceKind::Cpu, 4000)
///     .request(ResourceKind::Gpu, 1)
///     .priority_class("training")
///     .timeout(Duration::from_secs(5));
/// assert_eq!(req.requests().get(&ResourceKind::Gpu), Some(1));
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct AllocationRequest {
    namespace: Arc<str>,
    principal: Arc<str>,
    requests: ResourceList,
    limits: ResourceList,
    priority_class: Option<String>,
    preemptible: bool,
    timeout: Option<Duration>,
    lease_ttl: Option<Duration>,
}

impl AllocationRequest {
    /// A request by `principal` in `namespace`, for nothing yet.
    pub fn new(namespace: impl Into<Arc<str>>, principal: impl Into<Arc<str>>) -> Self {
        Self {
            namespace: namespace.into(),
            principal: principal.into(),
            requests: ResourceList::new(),
            limits: ResourceList::new(),
            priority_class: None,
            preemptible: true,
            timeout: None,
            lease_ttl: None,
        }
    }

    /// Requests `quantity` of `kind` (the amount accounted against capacity and quota).
    pub fn request(mut self, kind: ResourceKind, quantity: u64) -> Self {
        self.requests.set(kind, quantity);
        self
    }

    /// Sets the limit of `kind` (CPU and memory only may differ from the request).
    pub fn limit(mut self, kind: ResourceKind, quantity: u64) -> Self {
        self.limits.set(kind, quantity);
        self
    }

    /// Replaces all requests.
    pub fn requests_list(mut self, list: ResourceList) -> Self {
        self.requests = list;
        self
    }

    /// Replaces all limits.
    pub fn limits_list(mut self, list: ResourceList) -> Self {
        self.limits = list;
        self
    }

    /// Names the priority class (else the global default, else priority 0).
    pub fn priority_class(mut self, name: &str) -> Self {
        self.priority_class = Some(name.to_owned());
        self
    }

    /// Whether higher priorities may preempt this allocation (default `true`).
    pub fn preemptible(mut self, yes: bool) -> Self {
        self.preemptible = yes;
        self
    }

    /// How long `allocate` may wait in the queue (default: the manager's). `Duration::ZERO`
    /// means "admit now or time out"; durations beyond about thirty years (up to
    /// `Duration::MAX`) mean "no deadline".
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Makes the allocation a lease: it must be renewed with a heartbeat within `ttl`, else its
    /// resources are reclaimed. A TTL beyond about thirty years (up to `Duration::MAX`) never
    /// expires in practice; `Duration::ZERO` is refused at admission with
    /// [`QosError::InvalidRequest`].
    pub fn lease(mut self, ttl: Duration) -> Self {
        self.lease_ttl = Some(ttl);
        self
    }

    /// The requests as given.
    #[must_use]
    pub fn requests(&self) -> &ResourceList {
        &self.requests
    }

    /// The limits as given.
    #[must_use]
    pub fn limits(&self) -> &ResourceList {
        &self.limits
    }
}

/// Why an allocation stopped being held while its handle is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// Chosen as a preemption victim; release before the deadline or be reclaimed then.
    Preempted {
        /// When the resources are reclaimed regardless.
        deadline: Instant,
    },
    /// Reclaimed: the lease expired or the grace period passed.
    Reclaimed,
}

const ST_ACTIVE: u8 = 0;
const ST_PREEMPTED: u8 = 1;
const ST_RECLAIMED: u8 = 2;

#[derive(Debug)]
struct HandleShared {
    status: AtomicU8,
    deadline: Mutex<Option<Instant>>,
    notify: Notify,
}

impl HandleShared {
    fn signal(&self, status: u8, deadline: Option<Instant>) {
        if deadline.is_some() {
            *self.deadline.lock() = deadline;
        }
        self.status.store(status, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// Id of a detached lease: 128 random bits from the operating system's generator, so a lease
/// cannot be found by guessing or counting. It is also bound to the principal that allocated it:
/// [`ResourceManager::heartbeat`] and [`ResourceManager::release_lease`] refuse other principals.
///
/// It renders as (and parses from) 32 lowercase hex digits for storage or transport. Treat it
/// like a credential: `Debug` shows only its first four digits, and no error message, audit
/// record or event of this crate contains it.
///
/// ```
/// use strata_resource_qos::LeaseId;
/// let id: LeaseId = "0123456789abcdef0123456789abcdef".parse()?;
/// assert_eq!(id.to_string(), "0123456789abcdef0123456789abcdef");
/// assert_eq!(format!("{id:?}"), "LeaseId(0123…)");
/// assert!("42".parse::<LeaseId>().is_err());
/// # Ok::<(), strata_resource_qos::QosError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(u128);

impl LeaseId {
    fn random() -> Result<Self, QosError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| {
            tracing::error!(error = %e, "the operating system's random number generator failed");
            QosError::InvalidRequest("cannot draw a random lease id: the system random generator failed".into())
        })?;
        Ok(Self(u128::from_le_bytes(bytes)))
    }
}

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::fmt::Debug for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LeaseId({:04x}…)", self.0 >> 112)
    }
}

impl std::str::FromStr for LeaseId {
    type Err = QosError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(QosError::InvalidRequest("a lease id is 32 hex digits".into()));
        }
        u128::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| QosError::InvalidRequest("a lease id is 32 hex digits".into()))
    }
}

impl Serialize for LeaseId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LeaseId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An admitted allocation. Dropping it returns its resources (RAII).
///
/// When preempted, [`revoked`](Allocation::revoked) resolves: stop the work and drop the handle
/// before the grace deadline.
#[derive(Debug)]
#[must_use = "dropping the allocation releases its resources at once"]
pub struct Allocation {
    inner: Arc<Inner>,
    shared: Arc<HandleShared>,
    id: u64,
    qos: QosClass,
    priority: i32,
    requests: ResourceList,
    detached: bool,
}

impl Allocation {
    /// Allocation id: sequential, the one observer events and audit records name. It is not a
    /// capability: a detached lease is addressed by its unguessable [`LeaseId`].
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// QoS class derived at admission.
    #[must_use]
    pub fn qos(&self) -> QosClass {
        self.qos
    }

    /// Priority value.
    #[must_use]
    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// Final (defaulted) requests taken from capacity.
    #[must_use]
    pub fn requests(&self) -> &ResourceList {
        &self.requests
    }

    /// `Some` once preempted or reclaimed.
    #[must_use]
    pub fn revocation(&self) -> Option<Revocation> {
        match self.shared.status.load(Ordering::Acquire) {
            ST_ACTIVE => None,
            ST_PREEMPTED => {
                Some(Revocation::Preempted { deadline: self.shared.deadline.lock().unwrap_or_else(Instant::now) })
            }
            _ => Some(Revocation::Reclaimed),
        }
    }

    /// Resolves when the allocation is preempted or reclaimed (the cancellation signal).
    pub async fn revoked(&self) -> Revocation {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.revocation() {
                return r;
            }
            notified.await;
        }
    }

    /// Renews the lease (no-op success for allocations without a lease).
    ///
    /// # Errors
    /// [`QosError::NotHeld`] when it was already reclaimed.
    pub fn heartbeat(&self) -> Result<(), QosError> {
        self.inner.heartbeat(self.id)
    }

    /// Turns the handle into a detached lease that is not released on drop: it lives until
    /// [`ResourceManager::release_lease`] or until it misses a heartbeat. Only the principal that
    /// made the request may renew or release it.
    ///
    /// # Errors
    /// [`QosError::InvalidRequest`] when the allocation was not made with a lease TTL (it would
    /// leak forever) or no random id could be drawn, [`QosError::NotHeld`] when already
    /// reclaimed. On error the handle is consumed and its resources are released.
    pub fn detach(mut self) -> Result<LeaseId, QosError> {
        let lease = LeaseId::random()?;
        let mut st = self.inner.state.lock();
        let st = &mut *st;
        match st.allocs.get_mut(&self.id) {
            None => return Err(QosError::NotHeld(self.id)),
            Some(r) if r.lease.is_none() => {
                return Err(QosError::InvalidRequest("only allocations with a lease TTL can be detached".into()));
            }
            Some(r) => {
                if st.leases.contains_key(&lease.0) {
                    // 2^-128: refuse rather than hand out an id another lease already has.
                    return Err(QosError::InvalidRequest("random lease id collided; retry".into()));
                }
                r.lease_id = Some(lease.0);
                st.leases.insert(lease.0, self.id);
            }
        }
        self.detached = true;
        Ok(lease)
    }

    /// Releases now (same as dropping).
    pub fn release(self) {}
}

impl Drop for Allocation {
    fn drop(&mut self) {
        if !self.detached {
            self.inner.release(self.id, AuditAction::Released);
        }
    }
}

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

struct Prepared {
    namespace: Arc<str>,
    principal: Arc<str>,
    priority: i32,
    may_preempt: bool,
    preemptible: bool,
    qos: QosClass,
    requests: ResourceList,
    req: Vec<(usize, u64)>,
    lim: Vec<(usize, u64)>,
    quotas: Vec<usize>,
    timeout: Duration,
    lease_ttl: Option<Duration>,
}

struct Record {
    namespace: Arc<str>,
    principal: Arc<str>,
    priority: i32,
    preemptible: bool,
    qos: QosClass,
    req: Vec<(usize, u64)>,
    lim: Vec<(usize, u64)>,
    quotas: Vec<usize>,
    seq: u64,
    lease: Option<(Duration, Instant)>,
    /// Set once detached: the token [`LeaseId`] carries.
    lease_id: Option<u128>,
    terminating: Option<Instant>,
    shared: Arc<HandleShared>,
}

struct Waiter {
    prepared: Prepared,
    tx: oneshot::Sender<Allocation>,
    enqueued: Instant,
    deadline: Instant,
    short: Vec<usize>,
    seq: u64,
}

type WaitKey = (Reverse<i32>, u64);

struct CompiledQuota {
    name: String,
    scope: crate::QuotaScope,
    hard_req: Vec<(usize, u64)>,
    hard_lim: Vec<(usize, u64)>,
}

struct CompiledNamespace {
    limit_range: Option<crate::LimitRange>,
    quotas: Vec<CompiledQuota>,
}

/// Summed requests and limits of one quota, per kind. `u128`: limits are not bounded by
/// capacity, so a sum of `u64` limits must not overflow (that would panic mid-admission).
#[derive(Default)]
struct QuotaUse {
    req: Vec<u128>,
    lim: Vec<u128>,
}

struct State {
    capacity: Vec<u64>,
    used: Vec<u64>,
    terminating: Vec<u64>,
    /// Summed requests of all waiters per kind (`u128`: many waiters may each ask for up to
    /// `u64::MAX` when the capacity is that large).
    waiting_total: Vec<u128>,
    /// Per kind: waiters that were short of it when last looked at.
    blocked: Vec<u32>,
    /// A drain stopped early, so some waiters' `short` may be stale: drain on every release.
    short_stale: bool,
    quota_use: HashMap<Arc<str>, Vec<QuotaUse>>,
    allocs: HashMap<u64, Record, BuildHasherDefault<IdHasher>>,
    /// Detached leases: random token → allocation id.
    leases: HashMap<u128, u64>,
    waiters: BTreeMap<WaitKey, Waiter>,
    waiting_by_prio: BTreeMap<Reverse<i32>, Vec<u128>>,
    waiter_deadlines: BTreeSet<(Instant, u64)>,
    timers: BTreeSet<(Instant, u64)>,
    breakers: Vec<Breaker>,
    next_id: u64,
    seq: u64,
    shutdown: bool,
}

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

enum Admit {
    Fits,
    Short { short: Vec<usize> },
}

/// The resource manager. Cheap to clone (an `Arc`).
///
/// See the crate documentation for the admission pipeline.
#[derive(Clone, Debug)]
pub struct ResourceManager {
    inner: Arc<Inner>,
}

/// Builder for [`ResourceManager`].
#[must_use]
pub struct ResourceManagerBuilder {
    config: ManagerConfig,
    discovered: ResourceList,
    gpu: Option<(Arc<dyn GpuInventory>, DevicePluginConfig)>,
    access: Arc<dyn AccessPolicy>,
    observer: Arc<dyn ResourceObserver>,
    audit: Arc<dyn AuditSink>,
}

impl std::fmt::Debug for ResourceManagerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceManagerBuilder").field("config", &self.config).finish_non_exhaustive()
    }
}

impl ResourceManagerBuilder {
    /// Replaces the whole configuration.
    pub fn config(mut self, config: ManagerConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets capacity discovered from the environment (overridden by [`capacity`](Self::capacity)
    /// and `ManagerConfig::capacity`).
    pub fn discovered(mut self, list: ResourceList) -> Self {
        self.discovered = list;
        self
    }

    /// Overrides the capacity of one kind.
    pub fn capacity(mut self, kind: ResourceKind, quantity: u64) -> Self {
        self.config.capacity.set(kind, quantity);
        self
    }

    /// Adds GPU capacity: what the device plugin would advertise for this inventory and
    /// configuration. The inventory is also kept for monitoring.
    pub fn gpu_inventory(mut self, inventory: Arc<dyn GpuInventory>, plugin: DevicePluginConfig) -> Self {
        self.gpu = Some((inventory, plugin));
        self
    }

    /// Adds a priority class.
    pub fn priority_class(mut self, class: PriorityClass) -> Self {
        self.config.priority_classes.push(class);
        self
    }

    /// Sets a namespace's LimitRange and quotas.
    pub fn namespace(mut self, name: &str, policy: NamespacePolicy) -> Self {
        self.config.namespaces.insert(name.to_owned(), policy);
        self
    }

    /// Sets the access policy (default: allow all).
    pub fn access_policy(mut self, policy: Arc<dyn AccessPolicy>) -> Self {
        self.access = policy;
        self
    }

    /// Sets the observer (default: none).
    pub fn observer(mut self, observer: Arc<dyn ResourceObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Sets the audit sink (default: none).
    pub fn audit_sink(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = sink;
        self
    }

    /// Sets the wait-queue bound.
    pub fn max_waiters(mut self, n: usize) -> Self {
        self.config.max_waiters = n;
        self
    }

    /// Sets the default wait timeout (whole milliseconds; beyond about thirty years means no
    /// deadline).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.config.default_timeout_ms = millis_saturating(timeout);
        self
    }

    /// Sets the preemption grace period (whole milliseconds; beyond about thirty years means
    /// victims are never reclaimed by force).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.config.grace_period_ms = millis_saturating(grace);
        self
    }

    /// Sets the breaker configuration.
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.config.breaker = config;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    /// [`QosError::InvalidConfig`] (duplicate or several default priority classes, bad LimitRange,
    /// quotas on unknown resources, zero capacity, bad breaker settings, a priority-class,
    /// namespace or quota name that is empty, longer than [`MAX_NAME_LEN`](crate::MAX_NAME_LEN)
    /// bytes or holds a control character, duplicate quota names in a namespace, a custom resource
    /// name that is not `domain/name`), [`QosError::Gpu`] when the device-plugin view cannot be
    /// computed.
    pub fn build(self) -> Result<ResourceManager, QosError> {
        let cfg = self.config;
        cfg.breaker.validate()?;
        let mut capacity = self.discovered;
        let mut gpu = None;
        if let Some((inv, plugin)) = self.gpu {
            let snap = inv.refresh().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "GPU inventory refresh failed; using its last snapshot");
                inv.snapshot()
            });
            for (name, count) in advertised_resources(&snap, &plugin)?.counts {
                let kind: ResourceKind = name.parse()?;
                capacity.set(kind, count);
            }
            gpu = Some(inv);
        }
        for (k, q) in cfg.capacity.iter() {
            capacity.set(k.clone(), q);
        }
        if let Some((k, _)) = capacity.iter().find(|(_, q)| *q == 0) {
            return Err(QosError::InvalidConfig(format!("capacity of {k} is zero")));
        }
        for (k, _) in capacity.iter() {
            // `ResourceKind::Custom` can be built directly, bypassing `ResourceKind::custom`.
            if let ResourceKind::Custom(name) = k
                && ResourceKind::custom(name).is_err()
            {
                return Err(QosError::InvalidConfig(format!(
                    "custom resource name {:?} is not of the form domain/name",
                    crate::name::sanitized(name)
                )));
            }
        }
        let kinds: Vec<ResourceKind> = capacity.iter().map(|(k, _)| k.clone()).collect();
        let index: HashMap<ResourceKind, usize> = kinds.iter().cloned().enumerate().map(|(i, k)| (k, i)).collect();

        let mut classes = HashMap::new();
        let mut default_class = None;
        for c in &cfg.priority_classes {
            crate::name::check_config("priority class", &c.name)?;
            if classes.insert(c.name.clone(), c.clone()).is_some() {
                return Err(QosError::InvalidConfig(format!("priority class {} defined twice", c.name)));
            }
            if c.global_default {
                if default_class.is_some() {
                    return Err(QosError::InvalidConfig("more than one global default priority class".into()));
                }
                default_class = Some(c.clone());
            }
        }

        let compile = |list: &ResourceList, what: &str, ns: &str| -> Result<Vec<(usize, u64)>, QosError> {
            list.iter()
                .map(|(k, q)| {
                    index.get(k).map(|&i| (i, q)).ok_or_else(|| {
                        QosError::InvalidConfig(format!("namespace {ns}: {what} names {k}, which has no capacity"))
                    })
                })
                .collect()
        };
        let mut namespaces = HashMap::new();
        let mut quota_use = HashMap::new();
        for (ns, pol) in &cfg.namespaces {
            crate::name::check_config("namespace", ns)?;
            if let Some(lr) = &pol.limit_range {
                lr.validate(ns)?;
            }
            let mut quotas: Vec<CompiledQuota> = Vec::new();
            for q in &pol.quotas {
                crate::name::check_config(&format!("namespace {ns}: quota"), &q.name)?;
                if quotas.iter().any(|c| c.name == q.name) {
                    return Err(QosError::InvalidConfig(format!("namespace {ns}: quota {} defined twice", q.name)));
                }
                if let Some(set) = &q.scope.priority_classes
                    && let Some(c) = set.iter().find(|c| !classes.contains_key(*c))
                {
                    return Err(QosError::InvalidConfig(format!(
                        "namespace {ns}: quota {} is scoped to unknown priority class {c}",
                        q.name
                    )));
                }
                quotas.push(CompiledQuota {
                    name: q.name.clone(),
                    scope: q.scope.clone(),
                    hard_req: compile(&q.hard_requests, "a quota", ns)?,
                    hard_lim: compile(&q.hard_limits, "a quota", ns)?,
                });
            }
            let key: Arc<str> = Arc::from(ns.as_str());
            let uses =
                quotas.iter().map(|_| QuotaUse { req: vec![0; kinds.len()], lim: vec![0; kinds.len()] }).collect();
            quota_use.insert(Arc::clone(&key), uses);
            namespaces.insert(key, CompiledNamespace { limit_range: pol.limit_range.clone(), quotas });
        }
        if cfg.max_waiters == 0 {
            tracing::debug!("max_waiters = 0: every request that cannot be admitted at once fails with Overloaded");
        }
        let n = kinds.len();
        let state = State {
            capacity: capacity.iter().map(|(_, q)| q).collect(),
            used: vec![0; n],
            terminating: vec![0; n],
            waiting_total: vec![0; n],
            blocked: vec![0; n],
            short_stale: false,
            quota_use,
            allocs: HashMap::default(),
            leases: HashMap::new(),
            waiters: BTreeMap::new(),
            waiting_by_prio: BTreeMap::new(),
            waiter_deadlines: BTreeSet::new(),
            timers: BTreeSet::new(),
            breakers: (0..n).map(|_| Breaker::new(&cfg.breaker)).collect(),
            next_id: 1,
            seq: 0,
            shutdown: false,
        };
        let capacity_vec = state.capacity.clone();
        Ok(ResourceManager {
            inner: Arc::new_cyclic(|me| Inner {
                me: me.clone(),
                capacity: capacity_vec,
                kinds,
                classes,
                default_class,
                namespaces,
                observe: self.observer.enabled(),
                auditing: self.audit.enabled(),
                access: self.access,
                observer: self.observer,
                audit: self.audit,
                default_timeout: Duration::from_millis(cfg.default_timeout_ms),
                max_waiters: cfg.max_waiters,
                grace: Duration::from_millis(cfg.grace_period_ms),
                breaker_cfg: cfg.breaker,
                gpu,
                state: Mutex::new(state),
            }),
        })
    }
}

impl ResourceManager {
    /// Starts a builder with default settings and no capacity.
    pub fn builder() -> ResourceManagerBuilder {
        ResourceManagerBuilder {
            config: ManagerConfig::default(),
            discovered: ResourceList::new(),
            gpu: None,
            access: Arc::new(AllowAll),
            observer: Arc::new(NoopObserver),
            audit: Arc::new(NoopAuditSink),
        }
    }

    /// Admits the request, waiting in the priority queue (up to its timeout) when capacity is
    /// short, after preempting lower priorities when its class allows.
    ///
    /// # Errors
    /// Every [`QosError`] of the admission pipeline: `Forbidden`, `UnknownPriorityClass`,
    /// `InvalidQuantity`, `InvalidRequest`, `UnknownResource`, `LimitRangeViolation`,
    /// `QuotaExceeded`, `ExceedsCapacity`, `CircuitOpen`, `Overloaded`, `Timeout`, `Shutdown`.
    pub async fn allocate(&self, request: AllocationRequest) -> Result<Allocation, QosError> {
        use tracing::Instrument;
        // The principal is left out of the span (it may name a person); the namespace is not.
        // A namespace that admission will refuse is not written raw into the span either.
        let namespace: std::borrow::Cow<'_, str> = match crate::name::problem(&request.namespace) {
            None => std::borrow::Cow::Borrowed(&*request.namespace),
            Some(_) => std::borrow::Cow::Owned(crate::name::sanitized(&request.namespace)),
        };
        let span = tracing::info_span!(
            "resource.allocate",
            resource.namespace = %namespace,
            resource.outcome = tracing::field::Empty,
            resource.qos = tracing::field::Empty
        );
        let r = self.allocate_inner(request).instrument(span.clone()).await;
        match &r {
            Ok(a) => {
                span.record("resource.outcome", "admitted");
                span.record("resource.qos", tracing::field::debug(a.qos()));
            }
            Err(e) => {
                span.record("resource.outcome", outcome_of(e));
            }
        }
        r
    }

    #[allow(clippy::too_many_lines)]
    async fn allocate_inner(&self, request: AllocationRequest) -> Result<Allocation, QosError> {
        let inner = &self.inner;
        let prepared = inner.prepare(request)?;
        let now = Instant::now();
        let deadline = after(now, prepared.timeout);
        let mut fx = Effects::default();
        let (rx, mut guard, key, wait_seq) = {
            let mut st = inner.state.lock();
            match inner.admit(&mut st, &prepared, now, true, &mut fx) {
                Err(e) => {
                    drop(st);
                    return Err(inner.deny(&prepared.namespace, &prepared.principal, e, fx));
                }
                Ok(Admit::Fits) => {
                    let a = inner.commit(&mut st, prepared, now, Duration::ZERO, &mut fx);
                    inner.utilization(&st, &mut fx);
                    drop(st);
                    inner.emit(fx);
                    return Ok(a);
                }
                Ok(Admit::Short { short }) => {
                    if st.waiters.len() >= inner.max_waiters {
                        let retry_after = st
                            .waiter_deadlines
                            .first()
                            .map_or(Duration::from_millis(100), |(d, _)| d.saturating_duration_since(now))
                            .max(Duration::from_millis(1));
                        inner.breaker_failures(&mut st, &short, now, &mut fx);
                        drop(st);
                        return Err(inner.deny(
                            &prepared.namespace,
                            &prepared.principal,
                            QosError::Overloaded { retry_after },
                            fx,
                        ));
                    }
                    st.seq += 1;
                    let seq = st.seq;
                    let key = (Reverse(prepared.priority), seq);
                    let (tx, rx) = oneshot::channel();
                    let sums = st
                        .waiting_by_prio
                        .entry(Reverse(prepared.priority))
                        .or_insert_with(|| vec![0; inner.kinds.len()]);
                    for &(k, q) in &prepared.req {
                        sums[k] += u128::from(q);
                    }
                    for &(k, q) in &prepared.req {
                        st.waiting_total[k] += u128::from(q);
                    }
                    st.waiter_deadlines.insert((deadline, seq));
                    if inner.observe {
                        fx.events.push(ResourceEvent::Queued {
                            namespace: prepared.namespace.to_string(),
                            queue_len: st.waiters.len() + 1,
                        });
                    }
                    let ns = Arc::clone(&prepared.namespace);
                    let principal = Arc::clone(&prepared.principal);
                    for &k in &short {
                        st.blocked[k] += 1;
                    }
                    st.waiters.insert(key, Waiter { prepared, tx, enqueued: now, deadline, short, seq });
                    drop(st);
                    // The guard exists before observers run: if one panics, unwinding still takes
                    // the waiter (and what it reserves) out of the queue.
                    let guard = WaitGuard { inner: Arc::clone(inner), key: Some(key) };
                    inner.emit(fx);
                    (rx, guard, key, (seq, ns, principal))
                }
            }
        };
        tokio::pin!(rx);
        loop {
            let next_timer = inner.state.lock().timers.first().map(|(t, _)| *t);
            let wake = next_timer.map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                biased;
                r = &mut rx => {
                    guard.key = None;
                    return r.map_err(|_| QosError::Shutdown);
                }
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    let mut fx = Effects::default();
                    let timed_out = {
                        let mut st = inner.state.lock();
                        if now >= deadline {
                            let w = inner.remove_waiter(&mut st, key);
                            if let Some(w) = &w {
                                inner.breaker_failures(&mut st, &w.short, now, &mut fx);
                                inner.drain(&mut st, now, &mut fx);
                            }
                            Some(w)
                        } else {
                            inner.reap(&mut st, now, &mut fx);
                            None
                        }
                    };
                    match timed_out {
                        None => inner.emit(fx),
                        Some(Some(w)) => {
                            guard.key = None;
                            let resource = w.short.first().map_or_else(String::new, |&k| inner.kinds[k].to_string());
                            let err = QosError::Timeout { waited: now - w.enqueued, resource };
                            return Err(inner.deny(&wait_seq.1, &wait_seq.2, err, fx));
                        }
                        Some(None) => {
                            // Admitted concurrently: the handle is in the channel.
                            guard.key = None;
                            inner.emit(fx);
                            return rx.await.map_err(|_| QosError::Shutdown);
                        }
                    }
                }
            }
        }
    }

    /// Admits the request only if it fits now (never waits, never preempts).
    ///
    /// # Errors
    /// As [`allocate`](Self::allocate), with `Insufficient` instead of waiting.
    pub fn try_allocate(&self, request: AllocationRequest) -> Result<Allocation, QosError> {
        let inner = &self.inner;
        let prepared = inner.prepare(request)?;
        let now = Instant::now();
        let mut fx = Effects::default();
        let mut st = inner.state.lock();
        match inner.admit(&mut st, &prepared, now, false, &mut fx) {
            Ok(Admit::Fits) => {
                let a = inner.commit(&mut st, prepared, now, Duration::ZERO, &mut fx);
                inner.utilization(&st, &mut fx);
                drop(st);
                inner.emit(fx);
                Ok(a)
            }
            Ok(Admit::Short { short }) => {
                inner.breaker_failures(&mut st, &short, now, &mut fx);
                drop(st);
                let resource = short.first().map_or_else(String::new, |&k| inner.kinds[k].to_string());
                Err(inner.deny(&prepared.namespace, &prepared.principal, QosError::Insufficient { resource }, fx))
            }
            Err(e) => {
                drop(st);
                Err(inner.deny(&prepared.namespace, &prepared.principal, e, fx))
            }
        }
    }

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
    /// and ends when the manager is dropped; abort the returned handle to stop it earlier.
    pub fn spawn_maintenance(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period.clamp(Duration::from_millis(1), FAR_FUTURE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                ResourceManager { inner }.reclaim_expired();
            }
        })
    }

    /// Refuses new requests and fails every waiter with [`QosError::Shutdown`]. Live allocations
    /// stay valid until dropped.
    pub fn shutdown(&self) {
        let mut st = self.inner.state.lock();
        st.shutdown = true;
        let waiters = std::mem::take(&mut st.waiters);
        st.waiting_by_prio.clear();
        st.waiter_deadlines.clear();
        st.waiting_total.iter_mut().for_each(|v| *v = 0);
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
            capacity: list(&st.capacity),
            used: list(&st.used),
            allocations: st.allocs.len(),
            waiters: st.waiters.len(),
        }
    }

    /// Summed requests (`.0`) and limits (`.1`) counted against a namespace's quota `quota`.
    #[must_use]
    pub fn quota_usage(&self, namespace: &str, quota: &str) -> Option<(ResourceList, ResourceList)> {
        let ns = self.inner.namespaces.get(namespace)?;
        let qi = ns.quotas.iter().position(|q| q.name == quota)?;
        let st = self.inner.state.lock();
        let u = st.quota_use.get(namespace)?.get(qi)?;
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

struct WaitGuard {
    inner: Arc<Inner>,
    key: Option<WaitKey>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut fx = Effects::default();
            let mut st = self.inner.state.lock();
            if self.inner.remove_waiter(&mut st, key).is_some() {
                self.inner.drain(&mut st, Instant::now(), &mut fx);
            }
            drop(st);
            self.inner.emit(fx);
        }
    }
}

/// Hasher for sequential allocation ids (Fibonacci hashing; ids are not attacker-chosen).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl Inner {
    /// Index of `kind` (kinds are sorted).
    fn kind_index(&self, kind: &ResourceKind) -> Option<usize> {
        self.kinds.binary_search(kind).ok()
    }

    fn prepare(&self, r: AllocationRequest) -> Result<Prepared, QosError> {
        let AllocationRequest {
            namespace,
            principal,
            mut requests,
            mut limits,
            priority_class,
            preemptible,
            timeout,
            lease_ttl,
        } = r;
        for (what, name) in [("namespace", &*namespace), ("principal", &*principal)] {
            if let Err(e) = crate::name::check(what, name) {
                let (ns, who) = (crate::name::sanitized(&namespace), crate::name::sanitized(&principal));
                return Err(self.deny(&ns, &who, e, Effects::default()));
            }
        }
        let fail = |e: QosError| Err(self.deny(&namespace, &principal, e, Effects::default()));
        if !crate::rbac::may_allocate(&*self.access, &principal, &namespace) {
            return fail(QosError::Forbidden { principal: principal.to_string(), namespace: namespace.to_string() });
        }
        if let Some(name) = &priority_class
            && let Err(e) = crate::name::check("priority class", name)
        {
            return fail(e);
        }
        if lease_ttl == Some(Duration::ZERO) {
            return fail(QosError::InvalidRequest("a lease TTL must be positive".into()));
        }
        let class = match &priority_class {
            Some(name) => match self.classes.get(name) {
                Some(c) => Some(c),
                None => return fail(QosError::UnknownPriorityClass(name.clone())),
            },
            None => self.default_class.as_ref(),
        };
        let (priority, may_preempt) =
            class.map_or((0, true), |c| (c.value, c.preemption_policy == PreemptionPolicy::PreemptLowerPriority));
        for (list, what) in [(&requests, "request"), (&limits, "limit")] {
            if let Some((k, _)) = list.iter().find(|(_, q)| *q == 0) {
                return fail(QosError::InvalidQuantity {
                    resource: k.to_string(),
                    input: "0".into(),
                    reason: if what == "request" { "requests must be positive" } else { "limits must be positive" },
                });
            }
        }
        let ns_policy = self.namespaces.get(&*namespace);
        if let Some(lr) = ns_policy.and_then(|n| n.limit_range.as_ref()) {
            if let Err(e) = lr.apply(&namespace, &mut requests, &mut limits) {
                return fail(e);
            }
        } else {
            for (k, l) in limits.iter() {
                if !requests.contains(k) {
                    requests.set(k.clone(), l);
                }
            }
        }
        for (k, l) in limits.iter() {
            let r = requests.get(k).unwrap_or(l);
            if !k.is_compute() && r != l {
                return fail(QosError::InvalidRequest(format!(
                    "{k}: request {r} and limit {l} must be equal for extended resources"
                )));
            }
            if r > l {
                return fail(QosError::InvalidRequest(format!("{k}: request {r} is above limit {l}")));
            }
        }
        let qos = QosClass::derive(&requests, &limits);
        let mut req = Vec::with_capacity(requests.len());
        for (k, q) in requests.iter() {
            match self.kind_index(k) {
                Some(i) => {
                    let cap = self.capacity[i];
                    if q > cap {
                        return fail(QosError::ExceedsCapacity {
                            resource: k.to_string(),
                            requested: q,
                            capacity: cap,
                        });
                    }
                    req.push((i, q));
                }
                None if matches!(k, ResourceKind::Custom(_)) => {
                    // `ResourceKind::Custom` can be built with any text: bound and escape it.
                    return fail(QosError::UnknownResource(crate::name::sanitized(&k.to_string())));
                }
                None => {
                    return fail(QosError::ExceedsCapacity { resource: k.to_string(), requested: q, capacity: 0 });
                }
            }
        }
        let lim: Vec<(usize, u64)> = limits.iter().filter_map(|(k, q)| self.kind_index(k).map(|i| (i, q))).collect();
        let class_name = class.map(|c| c.name.as_str());
        let quotas = ns_policy
            .map(|n| n.quotas.iter().enumerate().filter(|(_, q)| q.scope.matches(class_name)).map(|(i, _)| i).collect())
            .unwrap_or_default();
        Ok(Prepared {
            namespace,
            principal,
            priority,
            may_preempt,
            preemptible,
            qos,
            requests,
            req,
            lim,
            quotas,
            timeout: timeout.unwrap_or(self.default_timeout),
            lease_ttl,
        })
    }

    /// The admission pipeline's locked part: quota → breaker → capacity → preemption.
    fn admit(
        &self,
        st: &mut State,
        p: &Prepared,
        now: Instant,
        may_wait: bool,
        fx: &mut Effects,
    ) -> Result<Admit, QosError> {
        if st.shutdown {
            return Err(QosError::Shutdown);
        }
        if st.timers.first().is_some_and(|(t, _)| *t <= now) {
            self.reap(st, now, fx);
        }
        self.check_quota(&st.quota_use, p)?;
        // Capacity, keeping back what waiters of equal or higher priority are waiting for.
        let mut short = Vec::new();
        for &(k, q) in &p.req {
            if q > self.available_for(st, k, p.priority, false) {
                short.push(k);
            }
        }
        if short.is_empty() {
            // Work that fits is never refused by a breaker: exhaustion is backpressure, and
            // admissions now are evidence that it is over (enough in a row close the breaker).
            return Ok(Admit::Fits);
        }
        // Open breakers of the short resources fail fast instead of queueing or preempting.
        if self.breaker_cfg.enabled {
            for &k in &short {
                let (res, change) = st.breakers[k].check(&self.breaker_cfg, now);
                if let Some(s) = change {
                    self.breaker_event(k, s, fx);
                }
                if let Err(retry_after) = res {
                    return Err(QosError::CircuitOpen { resource: self.kinds[k].to_string(), retry_after });
                }
            }
        }
        // Preempt only when this request can then wait for the victims (queue not full).
        if may_wait && p.may_preempt && st.waiters.len() < self.max_waiters {
            self.preempt(st, p, now, fx);
        }
        Ok(Admit::Short { short })
    }

    fn available_for(&self, st: &State, k: usize, priority: i32, with_terminating: bool) -> u64 {
        let mut avail = st.capacity[k].saturating_sub(st.used[k]);
        if with_terminating {
            avail = avail.saturating_add(st.terminating[k]);
        }
        if st.waiting_total[k] > 0 {
            let mut avail = u128::from(avail);
            for sums in st.waiting_by_prio.range(..=Reverse(priority)).map(|(_, s)| s) {
                avail = avail.saturating_sub(sums[k]);
            }
            // Never above the u64 it started from.
            return u64::try_from(avail).unwrap_or(u64::MAX);
        }
        avail
    }

    fn check_quota(&self, quota_use: &HashMap<Arc<str>, Vec<QuotaUse>>, p: &Prepared) -> Result<(), QosError> {
        if p.quotas.is_empty() {
            return Ok(());
        }
        let (Some(ns), Some(uses)) = (self.namespaces.get(&*p.namespace), quota_use.get(&*p.namespace)) else {
            return Ok(());
        };
        for &qi in &p.quotas {
            let (q, u) = (&ns.quotas[qi], &uses[qi]);
            for (hard, used, mine, what) in
                [(&q.hard_req, &u.req, &p.req, "requests"), (&q.hard_lim, &u.lim, &p.lim, "limits")]
            {
                for &(k, h) in hard {
                    let want = mine.iter().find(|(i, _)| *i == k).map_or(0, |(_, v)| *v);
                    if want > 0 && used[k] + u128::from(want) > u128::from(h) {
                        return Err(QosError::QuotaExceeded {
                            namespace: p.namespace.to_string(),
                            quota: q.name.clone(),
                            resource: format!("{what}.{}", self.kinds[k]),
                            requested: want,
                            used: u64::try_from(used[k]).unwrap_or(u64::MAX),
                            hard: h,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes the resources. Everything that could fail or panic (the handle's back-reference,
    /// the lease deadline, the id) is done before anything is counted, so a failure can never
    /// leave capacity or quota counted for an allocation nobody holds.
    fn commit(&self, st: &mut State, p: Prepared, now: Instant, waited: Duration, fx: &mut Effects) -> Allocation {
        let inner = self.me.upgrade().unwrap_or_else(|| unreachable!("Inner is only used through an Arc"));
        let lease = p.lease_ttl.map(|ttl| (ttl, after(now, ttl)));
        let shared = Arc::new(HandleShared {
            status: AtomicU8::new(ST_ACTIVE),
            deadline: Mutex::new(None),
            notify: Notify::new(),
        });
        let id = st.next_id;
        st.next_id = st.next_id.wrapping_add(1).max(1);
        st.seq = st.seq.wrapping_add(1);
        // Counting starts here: nothing below can fail.
        for &(k, q) in &p.req {
            st.used[k] += q;
        }
        if !p.quotas.is_empty()
            && let Some(uses) = st.quota_use.get_mut(&*p.namespace)
        {
            for &qi in &p.quotas {
                for &(k, q) in &p.req {
                    uses[qi].req[k] += u128::from(q);
                }
                for &(k, q) in &p.lim {
                    uses[qi].lim[k] += u128::from(q);
                }
            }
        }
        if self.breaker_cfg.enabled {
            for &(k, _) in &p.req {
                if let Some(s) = st.breakers[k].on_success(&self.breaker_cfg) {
                    self.breaker_event(k, s, fx);
                }
            }
        }
        if let Some((_, d)) = lease {
            st.timers.insert((d, id));
        }
        if self.observe {
            fx.touched = true;
            fx.events.push(ResourceEvent::Admitted {
                id,
                namespace: p.namespace.to_string(),
                principal: p.principal.to_string(),
                qos: p.qos,
                priority: p.priority,
                requests: p.requests.clone(),
                waited,
            });
        }
        if self.auditing {
            fx.audits.push(crate::observe::audit_record(
                &p.principal,
                &p.namespace,
                AuditAction::Allocated,
                Some(id),
                p.requests.clone(),
                format!("qos={} priority={}", p.qos.as_str(), p.priority),
            ));
        }
        st.allocs.insert(
            id,
            Record {
                namespace: p.namespace,
                principal: p.principal,
                priority: p.priority,
                preemptible: p.preemptible,
                qos: p.qos,
                req: p.req,
                lim: p.lim,
                quotas: p.quotas,
                seq: st.seq,
                lease,
                lease_id: None,
                terminating: None,
                shared: Arc::clone(&shared),
            },
        );
        Allocation { inner, shared, id, qos: p.qos, priority: p.priority, requests: p.requests, detached: false }
    }

    fn utilization(&self, st: &State, fx: &mut Effects) {
        if self.observe && fx.touched {
            for (i, k) in self.kinds.iter().enumerate() {
                fx.events.push(ResourceEvent::Utilization {
                    resource: k.clone(),
                    component: "allocated",
                    ratio: st.used[i] as f64 / st.capacity[i] as f64,
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

    fn emit(&self, fx: Effects) {
        let Effects { events, audits, dropped, .. } = fx;
        drop(dropped);
        for e in &events {
            self.observer.on_event(e);
        }
        crate::observe::record_all(&*self.audit, &*self.observer, &audits);
    }

    /// Picks victims (strictly lower priority, preemptible, holding a short resource) in the
    /// order BestEffort → Burstable → Guaranteed, then lowest priority, then newest; signals them
    /// only if together they cover the shortfall.
    fn preempt(&self, st: &mut State, p: &Prepared, now: Instant, fx: &mut Effects) {
        let mut need: Vec<(usize, u64)> = Vec::new();
        for &(k, q) in &p.req {
            let avail = self.available_for(st, k, p.priority, true);
            if q > avail {
                need.push((k, q - avail));
            }
        }
        if need.is_empty() {
            return; // resources already on their way back from earlier victims
        }
        let mut candidates: Vec<(u8, i32, Reverse<u64>, u64)> = st
            .allocs
            .iter()
            .filter(|(_, r)| {
                r.priority < p.priority
                    && r.preemptible
                    && r.terminating.is_none()
                    && r.req.iter().any(|(k, _)| need.iter().any(|(n, _)| n == k))
            })
            .map(|(id, r)| (r.qos.preemption_rank(), r.priority, Reverse(r.seq), *id))
            .collect();
        candidates.sort_unstable();
        let freed_of = |r: &Record, k: usize| r.req.iter().find(|(i, _)| *i == k).map_or(0, |(_, q)| *q);
        let mut freed: Vec<u64> = vec![0; need.len()];
        let mut chosen = Vec::new();
        for &(_, _, _, id) in &candidates {
            if need.iter().zip(&freed).all(|((_, n), f)| f >= n) {
                break;
            }
            let r = &st.allocs[&id];
            for (j, (k, _)) in need.iter().enumerate() {
                freed[j] += freed_of(r, *k);
            }
            chosen.push(id);
        }
        if !need.iter().zip(&freed).all(|((_, n), f)| f >= n) {
            return; // even every eligible victim would not make room: wait instead
        }
        // Reprieve: give back victims that are not needed, most important first.
        let mut i = chosen.len();
        while i > 0 {
            i -= 1;
            let r = &st.allocs[&chosen[i]];
            let still = need.iter().enumerate().all(|(j, (k, n))| freed[j] - freed_of(r, *k) >= *n);
            if still {
                for (j, (k, _)) in need.iter().enumerate() {
                    freed[j] -= freed_of(r, *k);
                }
                chosen.remove(i);
            }
        }
        let deadline = after(now, self.grace);
        for id in chosen {
            let Some(r) = st.allocs.get_mut(&id) else { continue };
            r.terminating = Some(deadline);
            for &(k, q) in &r.req {
                st.terminating[k] += q;
            }
            r.shared.signal(ST_PREEMPTED, Some(deadline));
            st.timers.insert((deadline, id));
            tracing::debug!(victim = id, victim_priority = r.priority, preemptor_priority = p.priority, "preempting");
            if self.observe {
                fx.events.push(ResourceEvent::Preempted {
                    victim: id,
                    victim_priority: r.priority,
                    preemptor_priority: p.priority,
                    grace: self.grace,
                });
            }
            if self.auditing {
                let list = self.to_list(&r.req);
                fx.audits.push(crate::observe::audit_record(
                    &r.principal,
                    &r.namespace,
                    AuditAction::Preempted { by_priority: p.priority },
                    Some(id),
                    list,
                    format!("preempted by {}/{}; grace {:?}", p.namespace, p.principal, self.grace),
                ));
            }
        }
    }

    fn to_list(&self, v: &[(usize, u64)]) -> ResourceList {
        v.iter().map(|&(k, q)| (self.kinds[k].clone(), q)).collect()
    }

    /// Removes an allocation and returns its resources; `true` if it was held.
    fn release(&self, id: u64, action: AuditAction) -> bool {
        let mut fx = Effects::default();
        let mut st = self.state.lock();
        // Only a release of something a waiter is short of can unblock it.
        let unblocks = st.allocs.get(&id).is_some_and(|r| {
            !st.waiters.is_empty() && (st.short_stale || r.req.iter().any(|&(k, _)| st.blocked[k] > 0))
        });
        let timers_due = !st.timers.is_empty();
        let held = self.remove_alloc(&mut st, id, action, None, &mut fx);
        if held && (unblocks || timers_due) {
            let now = Instant::now();
            if st.timers.first().is_some_and(|(t, _)| *t <= now) {
                self.reap(&mut st, now, &mut fx);
            } else if unblocks {
                self.drain(&mut st, now, &mut fx);
            }
        }
        self.utilization(&st, &mut fx);
        drop(st);
        self.emit(fx);
        held
    }

    fn remove_alloc(
        &self,
        st: &mut State,
        id: u64,
        action: AuditAction,
        reason: Option<&'static str>,
        fx: &mut Effects,
    ) -> bool {
        let Some(r) = st.allocs.remove(&id) else { return false };
        for &(k, q) in &r.req {
            st.used[k] -= q;
        }
        if let Some(t) = r.terminating {
            for &(k, q) in &r.req {
                st.terminating[k] -= q;
            }
            st.timers.remove(&(t, id));
        }
        if let Some((_, d)) = r.lease {
            st.timers.remove(&(d, id));
        }
        if !r.quotas.is_empty()
            && let Some(uses) = st.quota_use.get_mut(&*r.namespace)
        {
            for &qi in &r.quotas {
                for &(k, q) in &r.req {
                    uses[qi].req[k] -= u128::from(q);
                }
                for &(k, q) in &r.lim {
                    uses[qi].lim[k] -= u128::from(q);
                }
            }
        }
        if let Some(token) = r.lease_id {
            st.leases.remove(&token);
        }
        if let Some(reason) = reason {
            r.shared.signal(ST_RECLAIMED, None);
            tracing::info!(allocation = id, reason, "resources reclaimed");
            if self.observe {
                fx.events.push(ResourceEvent::Reclaimed { id, reason });
            }
        } else if self.observe {
            fx.events.push(ResourceEvent::Released { id, requests: self.to_list(&r.req) });
        }
        if self.observe {
            fx.touched = true;
        }
        if self.auditing {
            fx.audits.push(crate::observe::audit_record(
                &r.principal,
                &r.namespace,
                action,
                Some(id),
                self.to_list(&r.req),
                reason.unwrap_or_default().to_owned(),
            ));
        }
        true
    }

    /// Reclaims expired leases and victims past their grace period, then drains the queue.
    fn reap(&self, st: &mut State, now: Instant, fx: &mut Effects) {
        let mut any = false;
        while let Some(&(t, id)) = st.timers.first() {
            if t > now {
                break;
            }
            st.timers.pop_first();
            let reason = match st.allocs.get(&id) {
                Some(r) if r.terminating.is_some_and(|d| d <= now) => "grace period over",
                Some(r) if r.lease.is_some_and(|(_, d)| d <= now) => "lease expired",
                _ => continue,
            };
            any |= self.remove_alloc(st, id, AuditAction::Reclaimed, Some(reason), fx);
        }
        if any || !st.waiters.is_empty() {
            self.drain(st, now, fx);
        }
    }

    /// The allocation behind a detached lease, if `principal` holds it.
    fn owned_lease(&self, principal: &str, lease: LeaseId) -> Result<u64, QosError> {
        let st = self.state.lock();
        let Some(r) = st.leases.get(&lease.0).and_then(|id| st.allocs.get(id).map(|r| (*id, r))) else {
            return Err(QosError::LeaseNotHeld);
        };
        let (id, r) = r;
        if *r.principal == *principal {
            return Ok(id);
        }
        let namespace = Arc::clone(&r.namespace);
        drop(st);
        tracing::warn!(allocation = id, "lease renewal or release by a principal that does not hold it refused");
        let err = QosError::NotLeaseOwner;
        let mut fx = Effects::default();
        // The caller's name is not validated here: record it bounded and escaped.
        let principal = crate::name::sanitized(principal);
        if self.auditing {
            fx.audits.push(crate::observe::audit_record(
                &principal,
                &namespace,
                AuditAction::Denied,
                Some(id),
                ResourceList::new(),
                err.to_string(),
            ));
        }
        if self.observe {
            fx.events.push(ResourceEvent::Denied {
                namespace: namespace.to_string(),
                principal,
                reason: err.to_string(),
            });
        }
        self.emit(fx);
        Err(err)
    }

    fn heartbeat(&self, id: u64) -> Result<(), QosError> {
        let now = Instant::now();
        let mut st = self.state.lock();
        let Some(r) = st.allocs.get_mut(&id) else { return Err(QosError::NotHeld(id)) };
        let Some((ttl, old)) = r.lease else { return Ok(()) };
        if old <= now {
            // Missed: reclaim now rather than resurrect.
            let mut fx = Effects::default();
            self.reap(&mut st, now, &mut fx);
            drop(st);
            self.emit(fx);
            return Err(QosError::NotHeld(id));
        }
        let renewed = after(now, ttl);
        r.lease = Some((ttl, renewed));
        st.timers.remove(&(old, id));
        st.timers.insert((renewed, id));
        Ok(())
    }

    fn remove_waiter(&self, st: &mut State, key: WaitKey) -> Option<Waiter> {
        let w = st.waiters.remove(&key)?;
        self.unaccount_waiter(st, &w);
        Some(w)
    }

    fn unaccount_waiter(&self, st: &mut State, w: &Waiter) {
        let prio = Reverse(w.prepared.priority);
        if let Some(sums) = st.waiting_by_prio.get_mut(&prio) {
            for &(k, q) in &w.prepared.req {
                sums[k] -= u128::from(q);
            }
            if sums.iter().all(|v| *v == 0) {
                st.waiting_by_prio.remove(&prio);
            }
        }
        for &(k, q) in &w.prepared.req {
            st.waiting_total[k] -= u128::from(q);
        }
        for &k in &w.short {
            st.blocked[k] -= 1;
        }
        st.waiter_deadlines.remove(&(w.deadline, w.seq));
    }

    /// Admits waiters in priority order. A waiter that does not fit keeps what it asks for
    /// reserved, so lower-priority waiters cannot starve it; waiters of other resources pass.
    fn drain(&self, st: &mut State, now: Instant, fx: &mut Effects) {
        if st.waiters.is_empty() {
            return;
        }
        let mut avail: Vec<u64> = st.capacity.iter().zip(&st.used).map(|(c, u)| c.saturating_sub(*u)).collect();
        let mut admit = Vec::new();
        let mut stopped_early = false;
        let State { waiters, quota_use, blocked, .. } = &mut *st;
        let total = waiters.len();
        for (n, (key, w)) in waiters.iter_mut().enumerate() {
            // Refresh what this waiter is short of (used to skip pointless drains).
            for &k in &w.short {
                blocked[k] -= 1;
            }
            w.short.clear();
            w.short.extend(w.prepared.req.iter().filter(|&&(k, q)| q > avail[k]).map(|&(k, _)| k));
            if w.short.is_empty() {
                if self.check_quota(quota_use, &w.prepared).is_ok() {
                    admit.push(*key);
                } else {
                    // Quota-blocked: any release of its kinds may unblock it.
                    w.short.extend(w.prepared.req.iter().map(|&(k, _)| k));
                }
            }
            for &k in &w.short {
                blocked[k] += 1;
            }
            for &(k, q) in &w.prepared.req {
                avail[k] = avail[k].saturating_sub(q);
            }
            if avail.iter().all(|v| *v == 0) {
                stopped_early = n + 1 < total;
                break;
            }
        }
        st.short_stale = stopped_early;
        for key in admit {
            let Some(w) = st.waiters.get(&key) else { continue };
            // Quota may have been taken by a waiter admitted just before in this pass.
            if self.check_quota(&st.quota_use, &w.prepared).is_err()
                || w.prepared.req.iter().any(|&(k, q)| st.used[k].checked_add(q).is_none_or(|u| u > st.capacity[k]))
            {
                // Its `short` is empty yet it stays: make the next release drain regardless.
                st.short_stale = true;
                continue;
            }
            let Some(w) = self.remove_waiter(st, key) else { continue };
            let waited = now.saturating_duration_since(w.enqueued);
            let a = self.commit(st, w.prepared, now, waited, fx);
            if let Err(a) = w.tx.send(a) {
                // The waiter gave up at this instant; release after the lock is dropped.
                fx.dropped.push(a);
            }
        }
    }
}

/// A short, data-free name for a refusal (span attributes must not carry principals).
fn outcome_of(e: &QosError) -> &'static str {
    match e {
        QosError::InvalidQuantity { .. }
        | QosError::InvalidName { .. }
        | QosError::UnknownResource(_)
        | QosError::InvalidRequest(_)
        | QosError::UnknownPriorityClass(_) => "invalid",
        QosError::InvalidConfig(_) | QosError::Discovery(_) | QosError::Gpu(_) => "config",
        QosError::Forbidden { .. } => "forbidden",
        QosError::LimitRangeViolation { .. } => "limit_range",
        QosError::QuotaExceeded { .. } => "quota",
        QosError::ExceedsCapacity { .. } | QosError::Insufficient { .. } => "capacity",
        QosError::Overloaded { .. } => "overloaded",
        QosError::CircuitOpen { .. } => "circuit_open",
        QosError::Timeout { .. } => "timeout",
        QosError::NotHeld(_) | QosError::LeaseNotHeld => "not_held",
        QosError::NotLeaseOwner => "not_owner",
        QosError::Shutdown => "shutdown",
        #[allow(unreachable_patterns)]
        _ => "error",
    }
}
