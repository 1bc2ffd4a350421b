//! Keys: a cache name, a namespace and an id.
//!
//! Cache and namespace names are restricted to `[A-Za-z0-9_.-]` (1–64 chars) so that the
//! `cache:namespace:id` layout used by remote tiers is unambiguous: the id comes last and may
//! hold any UTF-8 (up to [`MAX_KEY_ID_LEN`] bytes).

use std::fmt;
use std::sync::Arc;

use crate::error::CacheError;

/// The longest accepted key id, in bytes.
pub const MAX_KEY_ID_LEN: usize = 4096;
/// The longest accepted cache or namespace name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// The namespace used when the caller does not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Checks a cache or namespace name: 1–64 chars of `[A-Za-z0-9_.-]`.
pub fn validate_name(what: &str, name: &str) -> Result<(), CacheError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(CacheError::InvalidKey(format!(
            "{what} name must be 1..={MAX_NAME_LEN} bytes, got {}",
            name.len()
        )));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(CacheError::InvalidKey(format!("{what} name may only contain [A-Za-z0-9_.-], found {c:?}")));
    }
    Ok(())
}

/// A namespace name, validated once and cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(Arc<str>);

impl Namespace {
    /// Validates and wraps a namespace name.
    pub fn new(name: &str) -> Result<Self, CacheError> {
        validate_name("namespace", name)?;
        Ok(Self(Arc::from(name)))
    }

    /// The default namespace.
    pub fn default_namespace() -> Self {
        Self(Arc::from(DEFAULT_NAMESPACE))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A fully qualified key as byte-level tiers see it.
///
/// Its [`Debug`] form does not print the id (ids may be personal data); use
/// [`Key::fingerprint`] in logs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    cache: Arc<str>,
    namespace: Namespace,
    id: Arc<str>,
}

impl Key {
    /// Builds a key, validating the cache name and the id length.
    pub fn new(cache: &str, namespace: Namespace, id: &str) -> Result<Self, CacheError> {
        validate_name("cache", cache)?;
        Self::with_cache(Arc::from(cache), namespace, id)
    }

    /// Builds a key for an already-validated cache name.
    pub(crate) fn with_cache(cache: Arc<str>, namespace: Namespace, id: &str) -> Result<Self, CacheError> {
        if id.len() > MAX_KEY_ID_LEN {
            return Err(CacheError::InvalidKey(format!("key id is {} bytes, limit {MAX_KEY_ID_LEN}", id.len())));
        }
        Ok(Self { cache, namespace, id: Arc::from(id) })
    }

    /// The cache's name.
    pub fn cache(&self) -> &str {
        &self.cache
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The id within the namespace (may be sensitive; do not log it).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `cache:namespace:id`, the canonical storage form (unambiguous since names cannot contain `:`).
    pub fn storage_key(&self) -> String {
        let mut s = String::with_capacity(self.cache.len() + self.namespace.0.len() + self.id.len() + 2);
        s.push_str(&self.cache);
        s.push(':');
        s.push_str(&self.namespace.0);
        s.push(':');
        s.push_str(&self.id);
        s
    }

    /// A short, stable, non-reversible fingerprint for logs and span attributes (FNV-1a 64 of the
    /// storage key). It is not a keyed hash: use the security crate's keyed hash where ids are
    /// guessable personal data.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for part in [self.cache.as_bytes(), b":", self.namespace.0.as_bytes(), b":", self.id.as_bytes()] {
            for b in part {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }
}

impl Key {
    /// [`Key::fingerprint`] as 16 hex digits: the form used in logs and span attributes.
    pub fn log_hash(&self) -> String {
        format!("{:016x}", self.fingerprint())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("cache", &&*self.cache)
            .field("namespace", &self.namespace)
            .field("id_fingerprint", &format_args!("{:016x}", self.fingerprint()))
            .finish()
    }
}

/// A type usable as a typed cache key: hashable, cloneable, and with a stable string form for
/// remote tiers and invalidation messages.
///
/// Implemented for every type that is `Display + FromStr` (strings, integers, UUIDs, your own
/// composite keys): `Display` must be injective and `FromStr` must parse it back, so that an
/// invalidation received as a string finds the typed L1 entry.
pub trait CacheKey: std::hash::Hash + Eq + Clone + Send + Sync + 'static {
    /// The id stored in remote tiers.
    fn key_id(&self) -> String;
    /// Parses an id produced by [`CacheKey::key_id`].
    fn from_key_id(id: &str) -> Option<Self>;
}

impl<T> CacheKey for T
where
    T: fmt::Display + std::str::FromStr + std::hash::Hash + Eq + Clone + Send + Sync + 'static,
{
    fn key_id(&self) -> String {
        self.to_string()
    }
    fn from_key_id(id: &str) -> Option<Self> {
        id.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(Namespace::new("tenant-1.eu_west").is_ok());
        for bad in ["", "a:b", "a b", "ä", &"x".repeat(65)] {
            assert!(matches!(Namespace::new(bad), Err(CacheError::InvalidKey(_))), "{bad:?}");
        }
        assert!(Key::new("bad:cache", Namespace::default_namespace(), "k").is_err());
        assert!(Key::new("c", Namespace::default_namespace(), &"k".repeat(MAX_KEY_ID_LEN + 1)).is_err());
    }

    #[test]
    fn storage_key_and_debug_hide_id() {
        let k = Key::new("users", Namespace::new("eu").unwrap(), "alice@example.com").unwrap();
        assert_eq!(k.storage_key(), "users:eu:alice@example.com");
        let dbg = format!("{k:?}");
        assert!(!dbg.contains("alice"), "{dbg}");
        let k2 = Key::new("users", Namespace::new("eu").unwrap(), "bob").unwrap();
        assert_ne!(k.fingerprint(), k2.fingerprint());
    }
}
