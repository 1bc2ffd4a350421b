//! Access control: the one [`AccessPolicy`] contract, with [`Principal`], [`Action`] and
//! [`AccessDenied`].
//!
//! A policy answers "may this principal do this action on this target, in this namespace?"
//! with `Ok(())` or an [`AccessDenied`] that says what was refused. The target is a cache name
//! for cache operations and [`RESOURCES`] for the resource manager.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The target named by resource-manager checks and audit records (where cache operations name
/// the cache).
pub const RESOURCES: &str = "resources";

/// What a principal wants to do (or, in an audit record, what happened).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Read values (`get`, `get_or_load`).
    Read,
    /// Write values (`set`).
    Write,
    /// Invalidate keys or tags.
    Invalidate,
    /// Everything, including administrative operations (implies every other action).
    Admin,
    /// Allocate resources in a namespace (the resource manager's admission).
    Allocate,
    /// Return resources (a holder released its allocation).
    Release,
    /// Take resources from a lower-priority allocation.
    Preempt,
    /// Take back resources whose lease expired or whose grace period ended.
    Reclaim,
}

impl Action {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Invalidate => "invalidate",
            Action::Admin => "admin",
            Action::Allocate => "allocate",
            Action::Release => "release",
            Action::Preempt => "preempt",
            Action::Reclaim => "reclaim",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is asking: an id and the roles the authentication layer vouched for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    id: Arc<str>,
    roles: Arc<[Arc<str>]>,
}

impl Principal {
    /// A principal with roles.
    pub fn new<R: AsRef<str>>(id: &str, roles: impl IntoIterator<Item = R>) -> Self {
        Self { id: Arc::from(id), roles: roles.into_iter().map(|r| Arc::from(r.as_ref())).collect() }
    }

    /// A principal known only by its id (no roles).
    pub fn id_only(id: &str) -> Self {
        Self::new(id, [] as [&str; 0])
    }

    /// The principal's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The roles it carries.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.roles.iter().map(|r| &**r)
    }
}

/// A request was refused by the access policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("access denied: principal `{principal}` may not {action} in cache `{cache}`, namespace `{namespace}`")]
pub struct AccessDenied {
    /// The principal's id.
    pub principal: String,
    /// The action refused.
    pub action: Action,
    /// The target: a cache, or [`RESOURCES`].
    pub cache: String,
    /// The namespace.
    pub namespace: String,
}

impl AccessDenied {
    /// The denial of `action` by `principal` on `cache`/`namespace`.
    pub fn new(principal: &Principal, action: Action, cache: &str, namespace: &str) -> Self {
        Self { principal: principal.id().to_owned(), action, cache: cache.to_owned(), namespace: namespace.to_owned() }
    }
}

/// Decides whether a principal may perform an action on a target (a cache, or [`RESOURCES`])
/// and namespace. The one access contract of Strata: the security crate's role-based policy and
/// the resource manager's policies implement it.
///
/// ```
/// use strata_governance::{AccessDenied, AccessPolicy, Action, Principal};
///
/// /// Lets everyone read, nobody do anything else.
/// struct ReadOnly;
/// impl AccessPolicy for ReadOnly {
///     fn check(&self, who: &Principal, action: Action, cache: &str, ns: &str) -> Result<(), AccessDenied> {
///         if action == Action::Read { Ok(()) } else { Err(AccessDenied::new(who, action, cache, ns)) }
///     }
/// }
/// let alice = Principal::id_only("alice");
/// assert!(ReadOnly.check(&alice, Action::Read, "users", "eu").is_ok());
/// let denied = ReadOnly.check(&alice, Action::Write, "users", "eu").unwrap_err();
/// assert_eq!(denied.to_string(), "access denied: principal `alice` may not write in cache `users`, namespace `eu`");
/// ```
pub trait AccessPolicy: Send + Sync + 'static {
    /// `Ok(())` when allowed.
    fn check(&self, principal: &Principal, action: Action, cache: &str, namespace: &str) -> Result<(), AccessDenied>;
}
