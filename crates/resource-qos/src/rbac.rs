//! Who may allocate where: the [`AccessPolicy`] seam and a static role-binding implementation.

use std::collections::{HashMap, HashSet};

/// Decides whether `principal` may allocate in `namespace`. First step of admission.
pub trait AccessPolicy: Send + Sync + 'static {
    /// `true` to allow.
    fn may_allocate(&self, principal: &str, namespace: &str) -> bool;
}

/// Allows everything (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl AccessPolicy for AllowAll {
    fn may_allocate(&self, _principal: &str, _namespace: &str) -> bool {
        true
    }
}

/// Static bindings of principals to namespaces (`"*"` binds every namespace).
///
/// ```
/// use strata_resource_qos::{AccessPolicy, StaticRbac};
/// let rbac = StaticRbac::new().bind("alice", "ml").bind("ops", "*");
/// assert!(rbac.may_allocate("alice", "ml"));
/// assert!(!rbac.may_allocate("alice", "prod"));
/// assert!(rbac.may_allocate("ops", "prod"));
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
    fn may_allocate(&self, principal: &str, namespace: &str) -> bool {
        self.bindings.get(principal).is_some_and(|ns| ns.contains(namespace) || ns.contains("*"))
    }
}
