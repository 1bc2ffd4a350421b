//! Admission policies: priority classes, QoS classes, LimitRanges and ResourceQuotas, modelled on
//! their Kubernetes namesakes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{QosError, ResourceKind, ResourceList};

/// Whether a priority class may preempt lower priorities (Kubernetes `preemptionPolicy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PreemptionPolicy {
    /// May preempt strictly lower-priority, preemptible allocations.
    #[default]
    PreemptLowerPriority,
    /// Never preempts; still queues ahead of lower priorities.
    Never,
}

/// A named priority (Kubernetes `PriorityClass`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorityClass {
    /// Name used in requests.
    pub name: String,
    /// Higher is more important.
    pub value: i32,
    /// Used for requests that name no class (at most one class may set this).
    #[serde(default)]
    pub global_default: bool,
    /// Whether it may preempt.
    #[serde(default)]
    pub preemption_policy: PreemptionPolicy,
}

impl PriorityClass {
    /// A class with `value`, preempting, not the default.
    #[must_use]
    pub fn new(name: &str, value: i32) -> Self {
        Self { name: name.to_owned(), value, global_default: false, preemption_policy: PreemptionPolicy::default() }
    }

    /// Marks it as the global default.
    #[must_use]
    pub fn global_default(mut self) -> Self {
        self.global_default = true;
        self
    }

    /// Sets the preemption policy.
    #[must_use]
    pub fn preemption_policy(mut self, policy: PreemptionPolicy) -> Self {
        self.preemption_policy = policy;
        self
    }
}

/// Quality-of-service class, derived as Kubernetes does from CPU and memory requests and limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum QosClass {
    /// No CPU or memory requests or limits: first to be preempted.
    BestEffort,
    /// Anything between.
    Burstable,
    /// CPU and memory limits set and equal to the requests: last to be preempted.
    Guaranteed,
}

impl QosClass {
    /// Derives the class from final (defaulted) requests and limits.
    ///
    /// ```
    /// use strata_resource_qos::{QosClass, ResourceList};
    /// let r = ResourceList::new().cpu_millis(500).memory_bytes(1 << 30);
    /// assert_eq!(QosClass::derive(&r, &r), QosClass::Guaranteed);
    /// assert_eq!(QosClass::derive(&r, &ResourceList::new()), QosClass::Burstable);
    /// assert_eq!(QosClass::derive(&ResourceList::new(), &ResourceList::new()), QosClass::BestEffort);
    /// ```
    #[must_use]
    pub fn derive(requests: &ResourceList, limits: &ResourceList) -> Self {
        let compute = [ResourceKind::Cpu, ResourceKind::Memory];
        if compute.iter().all(|k| requests.get(k).is_none() && limits.get(k).is_none()) {
            return Self::BestEffort;
        }
        let guaranteed = compute.iter().all(|k| match (requests.get(k), limits.get(k)) {
            (Some(r), Some(l)) => r == l,
            _ => false,
        });
        if guaranteed { Self::Guaranteed } else { Self::Burstable }
    }

    /// Preemption order: lower goes first.
    #[must_use]
    pub fn preemption_rank(&self) -> u8 {
        match self {
            Self::BestEffort => 0,
            Self::Burstable => 1,
            Self::Guaranteed => 2,
        }
    }

    /// `BestEffort`, `Burstable` or `Guaranteed`.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::BestEffort => "BestEffort",
            Self::Burstable => "Burstable",
            Self::Guaranteed => "Guaranteed",
        }
    }
}

/// Per-allocation constraints of a namespace (Kubernetes `LimitRange` of type `Container`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRange {
    /// Limits applied where the request names none.
    #[serde(default)]
    pub default_limits: ResourceList,
    /// Requests applied where the request names none (falls back to `default_limits`).
    #[serde(default)]
    pub default_requests: ResourceList,
    /// Minimum request per kind (a request must then name the kind).
    #[serde(default)]
    pub min: ResourceList,
    /// Maximum limit per kind (a request must then have a limit for the kind).
    #[serde(default)]
    pub max: ResourceList,
    /// Maximum `limit / request` per kind.
    #[serde(default)]
    pub max_limit_request_ratio: BTreeMap<ResourceKind, f64>,
}

impl LimitRange {
    /// Checks that the range itself is consistent.
    pub(crate) fn validate(&self, namespace: &str) -> Result<(), QosError> {
        for (k, min) in self.min.iter() {
            if let Some(max) = self.max.get(k)
                && min > max
            {
                return Err(QosError::InvalidConfig(format!("namespace {namespace}: LimitRange min {k} > max")));
            }
        }
        for (k, r) in &self.max_limit_request_ratio {
            if !r.is_finite() || *r < 1.0 {
                return Err(QosError::InvalidConfig(format!(
                    "namespace {namespace}: maxLimitRequestRatio for {k} must be a finite number >= 1"
                )));
            }
        }
        for list in [&self.default_limits, &self.default_requests, &self.min, &self.max] {
            if let Some((k, _)) = list.iter().find(|(_, q)| *q == 0) {
                return Err(QosError::InvalidConfig(format!("namespace {namespace}: LimitRange {k} is zero")));
            }
        }
        Ok(())
    }

    /// Applies defaults and checks min, max and ratio, as the Kubernetes LimitRanger does.
    ///
    /// # Errors
    /// [`QosError::LimitRangeViolation`].
    pub fn apply(
        &self,
        namespace: &str,
        requests: &mut ResourceList,
        limits: &mut ResourceList,
    ) -> Result<(), QosError> {
        let violation = |k: &ResourceKind, reason: String| QosError::LimitRangeViolation {
            namespace: namespace.to_owned(),
            resource: k.to_string(),
            reason,
        };
        // API defaulting first: a limit given without a request makes the request.
        for (k, l) in limits.iter() {
            if !requests.contains(k) {
                requests.set(k.clone(), l);
            }
        }
        for (k, d) in self.default_limits.iter() {
            if !limits.contains(k) {
                limits.set(k.clone(), d);
            }
        }
        for (k, d) in self.default_requests.iter() {
            if !requests.contains(k) {
                requests.set(k.clone(), d);
            }
        }
        // `defaultRequest` itself defaults to `default`.
        for (k, l) in limits.iter() {
            if !requests.contains(k) {
                requests.set(k.clone(), l);
            }
        }
        for (k, min) in self.min.iter() {
            match requests.get(k) {
                None => return Err(violation(k, format!("minimum is {min} but no request is given"))),
                Some(r) if r < min => return Err(violation(k, format!("request {r} is below the minimum {min}"))),
                Some(_) => {}
            }
        }
        for (k, max) in self.max.iter() {
            match limits.get(k) {
                None => return Err(violation(k, format!("maximum is {max} but no limit is given"))),
                Some(l) if l > max => return Err(violation(k, format!("limit {l} is above the maximum {max}"))),
                Some(_) => {}
            }
            if let Some(r) = requests.get(k)
                && r > max
            {
                return Err(violation(k, format!("request {r} is above the maximum {max}")));
            }
        }
        for (k, ratio) in &self.max_limit_request_ratio {
            match (requests.get(k), limits.get(k)) {
                (Some(r), Some(l)) => {
                    let actual = l as f64 / r as f64;
                    if actual > *ratio {
                        return Err(violation(k, format!("limit/request ratio {actual:.3} exceeds {ratio}")));
                    }
                }
                (_, None) => return Err(violation(k, format!("maxLimitRequestRatio {ratio} needs a limit"))),
                (None, Some(_)) => {}
            }
        }
        Ok(())
    }
}

/// Which allocations a quota counts (Kubernetes `scopeSelector` on `PriorityClass`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaScope {
    /// Only allocations whose (resolved) priority class is one of these; `None` counts all.
    #[serde(default)]
    pub priority_classes: Option<Vec<String>>,
}

impl QuotaScope {
    pub(crate) fn matches(&self, class: Option<&str>) -> bool {
        match &self.priority_classes {
            None => true,
            Some(set) => class.is_some_and(|c| set.iter().any(|s| s == c)),
        }
    }
}

/// Hard caps on the sum of a namespace's allocations (Kubernetes `ResourceQuota`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceQuota {
    /// Name, for errors and audit.
    pub name: String,
    /// Caps on summed requests (`requests.cpu`, `requests.nvidia.com/gpu`, …).
    #[serde(default)]
    pub hard_requests: ResourceList,
    /// Caps on summed limits (`limits.cpu`, `limits.memory`); allocations must then set the limit.
    #[serde(default)]
    pub hard_limits: ResourceList,
    /// Which allocations count.
    #[serde(default)]
    pub scope: QuotaScope,
}

/// Policies of one namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespacePolicy {
    /// Per-allocation defaults and bounds.
    #[serde(default)]
    pub limit_range: Option<LimitRange>,
    /// Quotas; an allocation counts against every quota whose scope matches it.
    #[serde(default)]
    pub quotas: Vec<ResourceQuota>,
}
