//! [`SecureCache`]: a [`Cache`] whose every operation names a [`Principal`], is checked by an
//! [`AccessPolicy`] and recorded by an [`AuditSink`].

use std::future::Future;
use std::sync::Arc;

use strata_cache_core::{BoxError, Cache, CacheError, CacheKey};

use crate::access::{AccessDenied, AccessPolicy, Action, Principal};
use crate::audit::{AuditError, AuditRecord, AuditSink, Outcome};
use crate::keyhash::HmacKeyIds;

/// The error of [`SecureCache`] operations.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SecureError {
    /// The policy refused the request (it was audited as denied).
    #[error(transparent)]
    Denied(#[from] AccessDenied),
    /// The audit record could not be written, so the operation was not performed.
    #[error("operation refused because it could not be audited: {0}")]
    Audit(#[from] AuditError),
    /// The cache operation failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

impl From<SecureError> for CacheError {
    fn from(e: SecureError) -> Self {
        match e {
            SecureError::Denied(d) => CacheError::Denied(d.to_string()),
            SecureError::Audit(a) => CacheError::Denied(format!("audit unavailable: {a}")),
            SecureError::Cache(c) => c,
        }
    }
}

/// Which allowed requests are audited (denials always are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditLevel {
    /// Every request, reads included (the default; what PII caches need).
    #[default]
    All,
    /// Writes and invalidations, not reads.
    Changes,
    /// Denials only.
    DenialsOnly,
}

/// A [`Cache`] behind access control and audit. Cheap to clone.
///
/// Each call checks the policy first: a denial returns [`SecureError::Denied`] and writes a
/// `denied` audit record; an allowed call writes an `allowed` record (per [`AuditLevel`])
/// *before* touching the cache, and is refused if that record cannot be written (fail closed).
/// Keys appear in records only as keyed hashes ([`HmacKeyIds`]).
///
/// ```
/// use std::sync::Arc;
/// use strata_cache_core::Cache;
/// use strata_security::{Action, HmacKeyIds, MemoryAuditSink, Principal, RoleBasedPolicy, SecureCache, SecureError};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let cache: Cache<u64, String> = Cache::builder("users").build().await?;
/// let policy = RoleBasedPolicy::builder().grant("reader", [Action::Read], "users", "default").build().unwrap();
/// let audit = Arc::new(MemoryAuditSink::new());
/// let secure = SecureCache::new(cache, Arc::new(policy), audit.clone(), HmacKeyIds::new(&[7; 32])?);
/// let reader = Principal::new("alice", ["reader"]);
/// assert_eq!(secure.get(&reader, &1).await.unwrap(), None);
/// assert!(matches!(secure.set(&reader, 1, "x".into()).await, Err(SecureError::Denied(_))));
/// assert_eq!(audit.records().len(), 2);
/// # Ok::<(), strata_cache_core::CacheError>(())
/// # }).unwrap();
/// ```
pub struct SecureCache<K, V> {
    cache: Cache<K, V>,
    policy: Arc<dyn AccessPolicy>,
    audit: Arc<dyn AuditSink>,
    hasher: HmacKeyIds,
    level: AuditLevel,
}

impl<K, V> Clone for SecureCache<K, V> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            policy: self.policy.clone(),
            audit: self.audit.clone(),
            hasher: self.hasher.clone(),
            level: self.level,
        }
    }
}

impl<K, V> std::fmt::Debug for SecureCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureCache").field("cache", &self.cache).field("level", &self.level).finish_non_exhaustive()
    }
}

impl<K, V> SecureCache<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    /// Wraps `cache`.
    pub fn new(
        cache: Cache<K, V>,
        policy: Arc<dyn AccessPolicy>,
        audit: Arc<dyn AuditSink>,
        key_hasher: HmacKeyIds,
    ) -> Self {
        Self { cache, policy, audit, hasher: key_hasher, level: AuditLevel::All }
    }

    /// Sets which allowed requests are audited.
    #[must_use]
    pub fn audit_level(mut self, level: AuditLevel) -> Self {
        self.level = level;
        self
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        self.cache.name()
    }

    /// The namespace this handle works in.
    pub fn namespace(&self) -> &str {
        self.cache.namespace().as_str()
    }

    /// A handle on another namespace (checks happen per call, against that namespace).
    pub fn in_namespace(&self, ns: &str) -> Result<Self, CacheError> {
        Ok(Self { cache: self.cache.in_namespace(ns)?, ..self.clone() })
    }

    fn key_hash(&self, id: &str) -> String {
        self.hasher.hash_parts(&[self.cache.name().as_bytes(), self.namespace().as_bytes(), id.as_bytes()])
    }

    /// Checks the policy and writes the audit record.
    fn authorize(&self, principal: &Principal, action: Action, key_hash: Option<String>) -> Result<(), SecureError> {
        let (cache, ns) = (self.cache.name(), self.namespace());
        match self.policy.check(principal, action, cache, ns) {
            Ok(()) => {
                let audited = match self.level {
                    AuditLevel::All => true,
                    AuditLevel::Changes => action != Action::Read,
                    AuditLevel::DenialsOnly => false,
                };
                if audited {
                    self.audit.record(&AuditRecord::now(
                        principal.id(),
                        action,
                        cache,
                        ns,
                        key_hash,
                        Outcome::Allowed,
                    ))?;
                }
                Ok(())
            }
            Err(denied) => {
                let rec = AuditRecord::now(principal.id(), action, cache, ns, key_hash, Outcome::Denied);
                if let Err(e) = self.audit.record(&rec) {
                    tracing::error!(cache, error = %e, "denial could not be audited");
                }
                Err(denied.into())
            }
        }
    }

    /// [`Cache::get`] for `principal` (needs [`Action::Read`]).
    pub async fn get(&self, principal: &Principal, key: &K) -> Result<Option<Arc<V>>, SecureError> {
        self.authorize(principal, Action::Read, Some(self.key_hash(&key.key_id())))?;
        Ok(self.cache.get(key).await?)
    }

    /// [`Cache::get_or_load`] for `principal` (needs [`Action::Read`]).
    pub async fn get_or_load(&self, principal: &Principal, key: &K) -> Result<Option<Arc<V>>, SecureError> {
        self.authorize(principal, Action::Read, Some(self.key_hash(&key.key_id())))?;
        Ok(self.cache.get_or_load(key).await?)
    }

    /// [`Cache::get_or_load_with`] for `principal` (needs [`Action::Read`]).
    pub async fn get_or_load_with<F, Fut>(
        &self,
        principal: &Principal,
        key: &K,
        load: F,
    ) -> Result<Option<Arc<V>>, SecureError>
    where
        F: FnOnce(K) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, BoxError>> + Send + 'static,
    {
        self.authorize(principal, Action::Read, Some(self.key_hash(&key.key_id())))?;
        Ok(self.cache.get_or_load_with(key, load).await?)
    }

    /// [`Cache::set`] for `principal` (needs [`Action::Write`]).
    pub async fn set(&self, principal: &Principal, key: K, value: V) -> Result<Arc<V>, SecureError> {
        self.authorize(principal, Action::Write, Some(self.key_hash(&key.key_id())))?;
        Ok(self.cache.set(key, value).await?)
    }

    /// [`Cache::invalidate`] for `principal` (needs [`Action::Invalidate`]).
    pub async fn invalidate(&self, principal: &Principal, key: &K) -> Result<(), SecureError> {
        self.authorize(principal, Action::Invalidate, Some(self.key_hash(&key.key_id())))?;
        Ok(self.cache.invalidate(key).await?)
    }

    /// [`Cache::invalidate_tag`] for `principal` (needs [`Action::Invalidate`]); the record
    /// carries the tag's keyed hash.
    pub async fn invalidate_tag(&self, principal: &Principal, tag: &str) -> Result<(), SecureError> {
        let tag_hash = self.hasher.hash_parts(&[b"tag", self.cache.name().as_bytes(), tag.as_bytes()]);
        self.authorize(principal, Action::Invalidate, Some(tag_hash))?;
        Ok(self.cache.invalidate_tag(tag).await?)
    }
}
