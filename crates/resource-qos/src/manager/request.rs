//! A request for resources, and its checked form: [`AllocationRequest`] → [`Prepared`].
//!
//! [`Inner::prepare`] runs the unlocked part of admission (names, access, priority class,
//! LimitRange defaults, request ≤ limit ≤ capacity) and yields the [`Claim`] the ledger charges.

use std::sync::Arc;
use std::time::Duration;

use super::ledger::Claim;
use super::{Effects, Inner};
use crate::{PreemptionPolicy, QosClass, QosError, ResourceKind, ResourceList};

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
    pub(super) namespace: Arc<str>,
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

/// A request that passed the unlocked checks: its claim plus what admission still needs.
pub(super) struct Prepared {
    pub(super) claim: Claim,
    /// Its priority class may preempt lower priorities.
    pub(super) may_preempt: bool,
    /// Final (defaulted) requests, as the handle reports them.
    pub(super) requests: ResourceList,
    /// How long it may wait in the queue.
    pub(super) timeout: Duration,
    pub(super) lease_ttl: Option<Duration>,
}

impl Inner {
    /// The unlocked checks of admission; denials are recorded (observer + audit).
    pub(super) fn prepare(&self, r: AllocationRequest) -> Result<Prepared, QosError> {
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
            claim: Claim { namespace, principal, priority, preemptible, qos, req, lim, quotas },
            may_preempt,
            requests,
            timeout: timeout.unwrap_or(self.default_timeout),
            lease_ttl,
        })
    }
}
