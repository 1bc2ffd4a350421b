//! Building a [`ResourceManager`]: [`ManagerConfig`], [`ResourceManagerBuilder`], and the
//! policies compiled to kind indices at build time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use strata_gpu::{DevicePluginConfig, GpuInventory, advertised_resources};

use super::ledger::Ledger;
use super::queue::WaitQueue;
use super::{Inner, ResourceManager, State};
use crate::breaker::Breaker;
use crate::deadline::millis_saturating;
use crate::policy::NamespacePolicy;
use crate::{
    AccessPolicy, AllowAll, AuditSink, BreakerConfig, NoopAuditSink, NoopObserver, PriorityClass, QosError,
    ResourceKind, ResourceList, ResourceObserver,
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

/// A namespace quota with its hard amounts as kind indices.
pub(super) struct CompiledQuota {
    pub(super) name: String,
    pub(super) scope: crate::QuotaScope,
    pub(super) hard_req: Vec<(usize, u64)>,
    pub(super) hard_lim: Vec<(usize, u64)>,
}

/// A namespace's policy, compiled.
pub(super) struct CompiledNamespace {
    pub(super) limit_range: Option<crate::LimitRange>,
    pub(super) quotas: Vec<CompiledQuota>,
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
        let mut quota_counts: Vec<(Arc<str>, usize)> = Vec::new();
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
            quota_counts.push((Arc::clone(&key), quotas.len()));
            namespaces.insert(key, CompiledNamespace { limit_range: pol.limit_range.clone(), quotas });
        }
        if cfg.max_waiters == 0 {
            tracing::debug!("max_waiters = 0: every request that cannot be admitted at once fails with Overloaded");
        }
        let n = kinds.len();
        let capacity_vec: Vec<u64> = capacity.iter().map(|(_, q)| q).collect();
        let state = State {
            ledger: Ledger::new(capacity_vec.clone(), quota_counts),
            queue: WaitQueue::new(n),
            timers: BTreeSet::new(),
            breakers: (0..n).map(|_| Breaker::new(&cfg.breaker)).collect(),
            next_id: 1,
            seq: 0,
            shutdown: false,
        };
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
}
