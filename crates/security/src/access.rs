//! Access control: [`RoleBasedPolicy`], an implementation of the [`AccessPolicy`] contract
//! defined (with [`Principal`], [`Action`] and [`AccessDenied`]) in `strata-governance` and
//! re-exported here.

use std::collections::{HashMap, HashSet};

pub use strata_governance::access::{AccessDenied, AccessPolicy, Action, Principal};

use crate::glob::{Pattern, PatternError};

/// One grant of a role: actions on caches and namespaces matching patterns.
#[derive(Debug, Clone)]
struct Grant {
    actions: HashSet<Action>,
    cache: Pattern,
    namespace: Pattern,
}

/// Role-based access control: roles hold grants (actions × cache pattern × namespace pattern);
/// a principal's roles are those it carries plus those bound to its id. Nothing is allowed
/// unless granted; [`Action::Admin`] implies every action.
///
/// ```
/// use strata_security::{AccessPolicy, Action, Principal, RoleBasedPolicy};
/// let policy = RoleBasedPolicy::builder()
///     .grant("tenant-a-reader", [Action::Read], "users", "tenant-a")
///     .grant("ops", [Action::Admin], "*", "*")
///     .bind("alice", "tenant-a-reader")
///     .build()?;
/// let alice = Principal::new("alice", [] as [&str; 0]);
/// assert!(policy.check(&alice, Action::Read, "users", "tenant-a").is_ok());
/// assert!(policy.check(&alice, Action::Read, "users", "tenant-b").is_err());
/// assert!(policy.check(&alice, Action::Write, "users", "tenant-a").is_err());
/// let bob = Principal::new("bob", ["ops"]);
/// assert!(policy.check(&bob, Action::Invalidate, "orders", "anything").is_ok());
/// # Ok::<(), strata_security::PatternError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct RoleBasedPolicy {
    roles: HashMap<String, Vec<Grant>>,
    bindings: HashMap<String, Vec<String>>,
}

/// Builds a [`RoleBasedPolicy`]; patterns are validated by [`RoleBasedPolicyBuilder::build`].
#[derive(Debug, Default)]
#[must_use]
pub struct RoleBasedPolicyBuilder {
    grants: Vec<(String, Vec<Action>, String, String)>,
    bindings: Vec<(String, String)>,
}

impl RoleBasedPolicyBuilder {
    /// Grants `actions` to `role` on caches matching `cache` and namespaces matching
    /// `namespace` (patterns: see [`Pattern`]).
    pub fn grant(
        mut self,
        role: &str,
        actions: impl IntoIterator<Item = Action>,
        cache: &str,
        namespace: &str,
    ) -> Self {
        self.grants.push((role.to_owned(), actions.into_iter().collect(), cache.to_owned(), namespace.to_owned()));
        self
    }

    /// Gives `role` to the principal with id `principal`.
    pub fn bind(mut self, principal: &str, role: &str) -> Self {
        self.bindings.push((principal.to_owned(), role.to_owned()));
        self
    }

    /// Validates every pattern and binding.
    pub fn build(self) -> Result<RoleBasedPolicy, PatternError> {
        let mut policy = RoleBasedPolicy::default();
        for (role, actions, cache, namespace) in self.grants {
            if role.is_empty() {
                return Err(PatternError { pattern: role, reason: "role name must not be empty" });
            }
            if actions.is_empty() {
                return Err(PatternError { pattern: role, reason: "a grant needs at least one action" });
            }
            let grant = Grant {
                actions: actions.into_iter().collect(),
                cache: Pattern::parse(&cache)?,
                namespace: Pattern::parse(&namespace)?,
            };
            policy.roles.entry(role).or_default().push(grant);
        }
        for (principal, role) in self.bindings {
            if !policy.roles.contains_key(&role) {
                return Err(PatternError { pattern: role, reason: "binding names a role that has no grant" });
            }
            policy.bindings.entry(principal).or_default().push(role);
        }
        Ok(policy)
    }
}

impl RoleBasedPolicy {
    /// Starts a builder.
    pub fn builder() -> RoleBasedPolicyBuilder {
        RoleBasedPolicyBuilder::default()
    }

    fn role_allows(&self, role: &str, action: Action, cache: &str, namespace: &str) -> bool {
        self.roles.get(role).is_some_and(|grants| {
            grants.iter().any(|g| {
                (g.actions.contains(&action) || g.actions.contains(&Action::Admin))
                    && g.cache.matches(cache)
                    && g.namespace.matches(namespace)
            })
        })
    }
}

impl AccessPolicy for RoleBasedPolicy {
    fn check(&self, principal: &Principal, action: Action, cache: &str, namespace: &str) -> Result<(), AccessDenied> {
        let bound = self.bindings.get(principal.id()).into_iter().flatten().map(String::as_str);
        if principal.roles().chain(bound).any(|r| self.role_allows(r, action, cache, namespace)) {
            Ok(())
        } else {
            Err(AccessDenied {
                principal: principal.id().to_owned(),
                action,
                cache: cache.to_owned(),
                namespace: namespace.to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_grants_are_refused() {
        assert!(RoleBasedPolicy::builder().grant("r", [Action::Read], "bad pattern", "*").build().is_err());
        assert!(RoleBasedPolicy::builder().grant("r", [Action::Read], "*", "").build().is_err());
        assert!(RoleBasedPolicy::builder().grant("r", [], "*", "*").build().is_err());
        assert!(RoleBasedPolicy::builder().bind("alice", "nope").build().is_err());
    }

    #[test]
    fn prefix_and_single_char_patterns() {
        let p = RoleBasedPolicy::builder().grant("r", [Action::Read, Action::Write], "user?", "eu-*").build().unwrap();
        let who = Principal::new("x", ["r"]);
        assert!(p.check(&who, Action::Read, "users", "eu-west").is_ok());
        assert!(p.check(&who, Action::Write, "users", "eu-").is_ok());
        assert!(p.check(&who, Action::Read, "userss", "eu-west").is_err());
        assert!(p.check(&who, Action::Read, "users", "us-east").is_err());
        assert!(p.check(&who, Action::Invalidate, "users", "eu-west").is_err());
        let e = p.check(&Principal::new("y", ["other"]), Action::Read, "users", "eu-1").unwrap_err();
        assert_eq!(e.to_string(), "access denied: principal `y` may not read in cache `users`, namespace `eu-1`");
    }
}
