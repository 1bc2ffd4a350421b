//! Who may allocate where: the shared [`AccessPolicy`] contract (defined in
//! `strata-governance`, re-exported here) and two implementations, [`AllowAll`] and
//! [`StaticRbac`].
//!
//! The manager asks `policy.check(&principal, Action::Allocate, RESOURCES, namespace)`; the
//! principal carries only its id (the request names no roles). Any other action is refused by
//! [`StaticRbac`], so the same policy object cannot be mistaken for a cache policy that grants
//! reads.

use std::collections::{HashMap, HashSet};

pub use strata_governance::access::{AccessDenied, AccessPolicy, Action, Principal, RESOURCES};

/// Whether `policy` lets `principal` allocate in `namespace` (the admission's first step).
pub(crate) fn may_allocate(policy: &dyn AccessPolicy, principal: &str, namespace: &str) -> bool {
    policy.check(&Principal::id_only(principal), Action::Allocate, RESOURCES, namespace).is_ok()
}

/// Allows everything (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl AccessPolicy for AllowAll {
    fn check(
        &self,
        _principal: &Principal,
        _action: Action,
        _cache: &str,
        _namespace: &str,
    ) -> Result<(), AccessDenied> {
        Ok(())
    }
}

/// Static bindings of principals to namespaces (`"*"` binds every namespace): a bound
/// principal may [`Action::Allocate`] there, nothing else.
///
/// ```
/// use strata_resource_qos::{AccessPolicy, Action, Principal, RESOURCES, StaticRbac};
/// let rbac = StaticRbac::new().bind("alice", "ml").bind("ops", "*");
/// let (alice, ops) = (Principal::id_only("alice"), Principal::id_only("ops"));
/// assert!(rbac.check(&alice, Action::Allocate, RESOURCES, "ml").is_ok());
/// assert!(rbac.check(&alice, Action::Allocate, RESOURCES, "prod").is_err());
/// assert!(rbac.check(&ops, Action::Allocate, RESOURCES, "prod").is_ok());
/// assert!(rbac.check(&ops, Action::Read, RESOURCES, "prod").is_err());
/// ```
#[derive(Clone, Debug, Default)]
pub struct StaticRbac {
    bindings: HashMap<String, HashSet<String>>,
}

impl StaticRbac {
    /// No bindings: everything denied.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows `principal` in `namespace` (or `"*"`).
    #[must_use]
    pub fn bind(mut self, principal: &str, namespace: &str) -> Self {
        self.bindings.entry(principal.to_owned()).or_default().insert(namespace.to_owned());
        self
    }
}

impl AccessPolicy for StaticRbac {
    fn check(&self, principal: &Principal, action: Action, cache: &str, namespace: &str) -> Result<(), AccessDenied> {
        let bound = self.bindings.get(principal.id()).is_some_and(|ns| ns.contains(namespace) || ns.contains("*"));
        if action == Action::Allocate && bound {
            Ok(())
        } else {
            Err(AccessDenied::new(principal, action, cache, namespace))
        }
    }
}
