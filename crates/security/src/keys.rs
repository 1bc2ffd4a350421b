//! Encryption keys: [`DataKey`], the [`KeyProvider`] seam, a [`Keyring`] loaded from a file or
//! an environment variable, and [`NamespaceKeyring`] (one key set per namespace, so that
//! destroying a namespace's keys crypto-shreds its data).
//!
//! Key material never appears in `Debug` output or error messages: errors name the line and the
//! problem, never the text of the key.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use aes_gcm::{Aes256Gcm, KeyInit};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use parking_lot::RwLock;
use strata_cache_core::key::DEFAULT_NAMESPACE;
use strata_cache_core::{CacheError, ConfigError};
use zeroize::Zeroizing;

/// Length of an AES-256 key, in bytes.
pub const KEY_LEN: usize = 32;

/// Identifies a key inside a keyring; recorded in every encrypted frame so that old keys can
/// still decrypt after rotation. Id 0 is reserved (never valid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A problem with key material or a keyring.
///
/// Messages never contain key material (nor the text of a line that failed to parse).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A keyring text (file or environment variable) could not be parsed.
    #[error("keyring `{source_name}`, entry {line}: {reason}")]
    Parse {
        /// Where the text came from (a path or `env:NAME`).
        source_name: String,
        /// The 1-based entry (line) number.
        line: usize,
        /// What is wrong (never the key itself).
        reason: String,
    },
    /// A keyring file could not be read.
    #[error("keyring file `{path}`: {message}")]
    Io {
        /// The path.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The environment variable holding the keyring is not set (or not UTF-8).
    #[error("environment variable `{0}` is not set or not valid UTF-8; it must hold `id:base64key` entries")]
    EnvMissing(String),
    /// Key material of the wrong length.
    #[error("key {id} must be {KEY_LEN} bytes, got {len}")]
    WrongLength {
        /// The key id.
        id: KeyId,
        /// The length given.
        len: usize,
    },
    /// Id 0 was used.
    #[error("key id 0 is reserved; use 1..=4294967295")]
    ZeroId,
    /// The same id was given twice.
    #[error("duplicate key id {0}")]
    DuplicateId(KeyId),
    /// The keyring has no key to encrypt new values with.
    #[error("no current encryption key for namespace `{namespace}`: configure at least one key")]
    NoCurrentKey {
        /// The namespace asked for.
        namespace: String,
    },
    /// The id is not in the keyring.
    #[error("key id {0} is not in the keyring")]
    UnknownId(KeyId),
    /// The namespace's keys were destroyed (crypto-shredding); nothing can be encrypted or
    /// decrypted for it.
    #[error("the keys of namespace `{0}` were destroyed")]
    Destroyed(String),
    /// The current key cannot be removed.
    #[error("key {0} is the current key; make another key current before removing it")]
    KeyIsCurrent(KeyId),
    /// The system random number generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),
}

impl From<KeyError> for ConfigError {
    fn from(e: KeyError) -> Self {
        ConfigError::new("encryption.keys", e.to_string())
    }
}

impl From<KeyError> for CacheError {
    fn from(e: KeyError) -> Self {
        CacheError::Config(e.into())
    }
}

/// One AES-256 key with its id. The key schedule is expanded once, here.
///
/// The material is zeroized on drop; `Debug` shows the id only.
pub struct DataKey {
    id: KeyId,
    material: Zeroizing<[u8; KEY_LEN]>,
    cipher: Aes256Gcm,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl DataKey {
    /// A key from raw material (exactly [`KEY_LEN`] bytes).
    pub fn new(id: KeyId, material: &[u8]) -> Result<Self, KeyError> {
        if id.0 == 0 {
            return Err(KeyError::ZeroId);
        }
        let arr: [u8; KEY_LEN] = material.try_into().map_err(|_| KeyError::WrongLength { id, len: material.len() })?;
        let material = Zeroizing::new(arr);
        let cipher =
            Aes256Gcm::new_from_slice(&material[..]).map_err(|_| KeyError::WrongLength { id, len: material.len() })?;
        Ok(Self { id, material, cipher })
    }

    /// A fresh random key from the operating system's generator.
    pub fn generate(id: KeyId) -> Result<Self, KeyError> {
        let material = generate_material()?;
        Self::new(id, &material[..])
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The raw material (handle with care: never log it).
    pub fn material(&self) -> &[u8; KEY_LEN] {
        &self.material
    }

    /// The keyring line for this key (`id:base64`), for provisioning tools.
    pub fn to_line(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}:{}", self.id, B64.encode(&self.material[..])))
    }

    pub(crate) fn cipher(&self) -> &Aes256Gcm {
        &self.cipher
    }
}

/// Fresh random key material from the operating system's generator.
pub fn generate_material() -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let mut m = Zeroizing::new([0u8; KEY_LEN]);
    getrandom::fill(&mut m[..]).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(m)
}

/// Where the encryption codec gets its keys.
///
/// Keys are looked up per namespace so that a provider may keep one key set per namespace (see
/// [`NamespaceKeyring`]); a plain [`Keyring`] ignores the namespace. Implementations must be
/// cheap: `current` runs on every encode and `get` on every decode.
pub trait KeyProvider: Send + Sync + 'static {
    /// The key new values of `namespace` are encrypted with (the newest one).
    fn current(&self, namespace: &str) -> Result<Arc<DataKey>, KeyError>;

    /// The key with `id` for `namespace`, if it still exists (old keys keep decrypting after a
    /// rotation; destroyed ones do not).
    fn get(&self, namespace: &str, id: KeyId) -> Option<Arc<DataKey>>;

    /// Checks that the provider can encrypt (called by
    /// [`AesGcmCodec::new`](crate::AesGcmCodec::new)). The default asks for the default
    /// namespace's current key.
    fn validate(&self) -> Result<(), KeyError> {
        self.current(DEFAULT_NAMESPACE).map(|_| ())
    }
}

#[derive(Default)]
struct KeySet {
    keys: BTreeMap<KeyId, Arc<DataKey>>,
    current: Option<KeyId>,
}

impl KeySet {
    fn current(&self) -> Option<Arc<DataKey>> {
        self.current.and_then(|id| self.keys.get(&id).cloned())
    }
}

/// A set of keys with one current key: new values are encrypted with the current key, every key
/// in the ring decrypts.
///
/// Text format (file or environment variable): one `id:base64key` entry per line (entries in an
/// environment variable may also be separated by `,`), `#` comments and blank lines ignored; the
/// current key is the one marked with a leading `*`, or else the highest id.
///
/// ```
/// use strata_security::{KeyId, KeyProvider, Keyring};
/// let text = "# rotated 2025-01\n1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n2:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n";
/// let ring = Keyring::parse(text, "example")?;
/// assert_eq!(ring.current("any")?.id(), KeyId(2));
/// assert!(ring.get("any", KeyId(1)).is_some());
/// # Ok::<(), strata_security::KeyError>(())
/// ```
pub struct Keyring {
    set: RwLock<KeySet>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.set.read();
        f.debug_struct("Keyring").field("ids", &s.keys.keys().collect::<Vec<_>>()).field("current", &s.current).finish()
    }
}

impl Default for Keyring {
    fn default() -> Self {
        Self::new()
    }
}

impl Keyring {
    /// An empty keyring (it cannot encrypt until a key is inserted).
    pub fn new() -> Self {
        Self { set: RwLock::new(KeySet::default()) }
    }

    /// A keyring holding one freshly generated key with id 1 (tests, examples, ephemeral
    /// caches whose tiers need not survive a restart).
    pub fn generate() -> Result<Self, KeyError> {
        let ring = Self::new();
        ring.insert(DataKey::generate(KeyId(1))?)?;
        Ok(ring)
    }

    /// Parses the text format described on [`Keyring`]; `source_name` names the origin in
    /// errors. An empty text gives a [`KeyError::NoCurrentKey`].
    pub fn parse(text: &str, source_name: &str) -> Result<Self, KeyError> {
        let err = |line: usize, reason: &str| KeyError::Parse {
            source_name: source_name.to_owned(),
            line,
            reason: reason.to_owned(),
        };
        let mut set = KeySet::default();
        let mut marked: Option<KeyId> = None;
        for (i, raw) in text.split(['\n', ',']).enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (is_marked, line) = match line.strip_prefix('*') {
                Some(rest) => (true, rest.trim_start()),
                None => (false, line),
            };
            let Some((id_text, key_text)) = line.split_once(':') else {
                return Err(err(line_no, "expected `id:base64key` (missing `:`)"));
            };
            let id_text = id_text.trim();
            if id_text.is_empty() || id_text.len() > 10 || !id_text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(line_no, "key id must be a decimal integer in 1..=4294967295"));
            }
            let id = id_text
                .parse::<u32>()
                .map(KeyId)
                .map_err(|_| err(line_no, "key id must be a decimal integer in 1..=4294967295"))?;
            if id.0 == 0 {
                return Err(err(line_no, "key id 0 is reserved"));
            }
            let decoded = Zeroizing::new(
                B64.decode(key_text.trim().as_bytes()).map_err(|_| err(line_no, "key is not valid standard base64"))?,
            );
            let key = DataKey::new(id, &decoded).map_err(|e| err(line_no, &e.to_string()))?;
            if set.keys.contains_key(&id) {
                return Err(err(line_no, &format!("duplicate key id {id}")));
            }
            if is_marked {
                if marked.is_some() {
                    return Err(err(line_no, "more than one key is marked current with `*`"));
                }
                marked = Some(id);
            }
            set.keys.insert(id, Arc::new(key));
        }
        set.current = marked.or_else(|| set.keys.keys().next_back().copied());
        if set.current.is_none() {
            return Err(KeyError::NoCurrentKey { namespace: format!("(keyring `{source_name}` is empty)") });
        }
        Ok(Self { set: RwLock::new(set) })
    }

    /// Reads a keyring file. On Unix, a file readable by group or others is logged as a warning.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| KeyError::Io { path: shown.clone(), message: e.to_string() })?,
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(md) = std::fs::metadata(path)
                && md.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(path = %shown, "keyring file is readable by group or others; chmod 600 it");
            }
        }
        Self::parse(&text, &shown)
    }

    /// Reads a keyring from an environment variable (entries separated by newlines or `,`).
    pub fn from_env(var: &str) -> Result<Self, KeyError> {
        let text = Zeroizing::new(std::env::var(var).map_err(|_| KeyError::EnvMissing(var.to_owned()))?);
        Self::parse(&text, &format!("env:{var}"))
    }

    /// Adds a key. It becomes current when its id is higher than the current one's (rotation:
    /// insert the new key, then re-encrypt, then [`Keyring::remove`] the old one).
    pub fn insert(&self, key: DataKey) -> Result<(), KeyError> {
        let mut s = self.set.write();
        let id = key.id();
        if s.keys.contains_key(&id) {
            return Err(KeyError::DuplicateId(id));
        }
        s.keys.insert(id, Arc::new(key));
        if s.current.is_none_or(|c| id > c) {
            s.current = Some(id);
        }
        Ok(())
    }

    /// Generates a new key with the next id and makes it current; returns its id.
    pub fn rotate(&self) -> Result<KeyId, KeyError> {
        let mut s = self.set.write();
        let next = s.keys.keys().next_back().map_or(Some(1), |k| k.0.checked_add(1)).ok_or(KeyError::ZeroId)?;
        let key = DataKey::generate(KeyId(next))?;
        s.keys.insert(KeyId(next), Arc::new(key));
        s.current = Some(KeyId(next));
        Ok(KeyId(next))
    }

    /// Makes `id` the current key.
    pub fn set_current(&self, id: KeyId) -> Result<(), KeyError> {
        let mut s = self.set.write();
        if !s.keys.contains_key(&id) {
            return Err(KeyError::UnknownId(id));
        }
        s.current = Some(id);
        Ok(())
    }

    /// Removes a retired key (values still encrypted with it become unreadable). The current
    /// key cannot be removed.
    pub fn remove(&self, id: KeyId) -> Result<(), KeyError> {
        let mut s = self.set.write();
        if s.current == Some(id) {
            return Err(KeyError::KeyIsCurrent(id));
        }
        s.keys.remove(&id).map(|_| ()).ok_or(KeyError::UnknownId(id))
    }

    /// The current key's id.
    pub fn current_id(&self) -> Option<KeyId> {
        self.set.read().current
    }

    /// Every key id, ascending.
    pub fn ids(&self) -> Vec<KeyId> {
        self.set.read().keys.keys().copied().collect()
    }
}

impl KeyProvider for Keyring {
    fn current(&self, namespace: &str) -> Result<Arc<DataKey>, KeyError> {
        self.set.read().current().ok_or_else(|| KeyError::NoCurrentKey { namespace: namespace.to_owned() })
    }

    fn get(&self, _namespace: &str, id: KeyId) -> Option<Arc<DataKey>> {
        self.set.read().keys.get(&id).cloned()
    }
}

impl<P: KeyProvider + ?Sized> KeyProvider for Arc<P> {
    fn current(&self, namespace: &str) -> Result<Arc<DataKey>, KeyError> {
        (**self).current(namespace)
    }
    fn get(&self, namespace: &str, id: KeyId) -> Option<Arc<DataKey>> {
        (**self).get(namespace, id)
    }
    fn validate(&self) -> Result<(), KeyError> {
        (**self).validate()
    }
}

/// One key set per namespace, generated on first use, for crypto-shredding:
/// [`NamespaceKeyring::destroy`] drops (and zeroizes) every key of a namespace, after which its
/// values in every tier are undecryptable (reads are misses counted as decode errors).
///
/// Keys live in this process's memory: share one `NamespaceKeyring` between the caches of a
/// process, and use a provider backed by your KMS for a fleet (it implements [`KeyProvider`]
/// the same way). Ids keep increasing across a destroy, so a namespace that is used again gets
/// keys that never match the destroyed ones.
#[derive(Default)]
pub struct NamespaceKeyring {
    sets: RwLock<HashMap<String, KeySet>>,
    /// Per destroyed namespace: the highest id ever issued.
    destroyed: RwLock<HashMap<String, u32>>,
}

impl fmt::Debug for NamespaceKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamespaceKeyring").field("namespaces", &self.sets.read().len()).finish()
    }
}

impl NamespaceKeyring {
    /// An empty keyring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Generates a new current key for `namespace` (older ones keep decrypting); returns its id.
    pub fn rotate(&self, namespace: &str) -> Result<KeyId, KeyError> {
        let mut sets = self.sets.write();
        let floor = self.destroyed.read().get(namespace).copied().unwrap_or(0);
        let set = sets.entry(namespace.to_owned()).or_default();
        let last = set.keys.keys().next_back().map_or(floor, |k| k.0.max(floor));
        let id = KeyId(last.checked_add(1).ok_or(KeyError::ZeroId)?);
        set.keys.insert(id, Arc::new(DataKey::generate(id)?));
        set.current = Some(id);
        Ok(id)
    }

    /// Destroys every key of `namespace`; returns whether it had any. Its stored values can no
    /// longer be decrypted by anyone holding only this keyring.
    pub fn destroy(&self, namespace: &str) -> bool {
        let removed = self.sets.write().remove(namespace);
        match removed {
            Some(set) => {
                let last = set.keys.keys().next_back().map_or(0, |k| k.0);
                let mut d = self.destroyed.write();
                let e = d.entry(namespace.to_owned()).or_default();
                *e = (*e).max(last);
                true
            }
            None => false,
        }
    }

    /// The namespaces that currently have keys.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.sets.read().keys().cloned().collect();
        v.sort();
        v
    }
}

impl KeyProvider for NamespaceKeyring {
    fn current(&self, namespace: &str) -> Result<Arc<DataKey>, KeyError> {
        if let Some(k) = self.sets.read().get(namespace).and_then(KeySet::current) {
            return Ok(k);
        }
        self.rotate(namespace)?;
        self.sets
            .read()
            .get(namespace)
            .and_then(KeySet::current)
            .ok_or_else(|| KeyError::NoCurrentKey { namespace: namespace.to_owned() })
    }

    fn get(&self, namespace: &str, id: KeyId) -> Option<Arc<DataKey>> {
        self.sets.read().get(namespace).and_then(|s| s.keys.get(&id).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: u32, byte: u8) -> String {
        format!("{id}:{}", B64.encode([byte; KEY_LEN]))
    }

    #[test]
    fn parses_and_picks_newest_or_marked() {
        let text = format!("# c\n\n{}\n{}\n", line(1, 1), line(7, 7));
        let ring = Keyring::parse(&text, "t").unwrap();
        assert_eq!(ring.current_id(), Some(KeyId(7)));
        assert_eq!(ring.ids(), vec![KeyId(1), KeyId(7)]);
        let text = format!("*{}, {}", line(1, 1), line(7, 7));
        assert_eq!(Keyring::parse(&text, "t").unwrap().current_id(), Some(KeyId(1)));
    }

    #[test]
    fn invalid_keyrings_are_typed_errors_without_material() {
        let secretish = B64.encode([0x5a; 16]);
        let cases = [
            (format!("1:{secretish}"), "must be 32 bytes"),
            ("1:not*base64!".to_string(), "not valid standard base64"),
            (format!("{}\n{}", line(3, 1), line(3, 2)), "duplicate key id 3"),
            (format!("0:{}", B64.encode([1u8; 32])), "reserved"),
            (B64.encode([1u8; 32]), "missing `:`"),
            (format!("x:{}", B64.encode([1u8; 32])), "decimal integer"),
            (format!("*{}\n*{}", line(1, 1), line(2, 2)), "more than one"),
        ];
        for (text, want) in cases {
            let e = Keyring::parse(&text, "t").unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(want), "{msg} should contain {want}");
            assert!(!msg.contains(&secretish) && !msg.contains(&B64.encode([1u8; 32])), "{msg} leaks material");
        }
        assert!(matches!(Keyring::parse("# nothing\n", "t"), Err(KeyError::NoCurrentKey { .. })));
    }

    #[test]
    fn rotation_keeps_old_keys() {
        let ring = Keyring::generate().unwrap();
        assert_eq!(ring.rotate().unwrap(), KeyId(2));
        assert_eq!(ring.current("x").unwrap().id(), KeyId(2));
        assert!(ring.get("x", KeyId(1)).is_some());
        assert_eq!(ring.remove(KeyId(2)), Err(KeyError::KeyIsCurrent(KeyId(2))));
        assert_eq!(ring.set_current(KeyId(9)), Err(KeyError::UnknownId(KeyId(9))));
        ring.remove(KeyId(1)).unwrap();
        assert!(ring.get("x", KeyId(1)).is_none());
        assert!(!format!("{:?}", ring.current("x").unwrap()).contains("material"));
    }

    #[test]
    fn namespace_keys_are_separate_and_destroyable() {
        let ring = NamespaceKeyring::new();
        let a = ring.current("a").unwrap();
        let b = ring.current("b").unwrap();
        assert_ne!(a.material(), b.material());
        assert_eq!(ring.current("a").unwrap().id(), a.id());
        assert!(ring.destroy("a"));
        assert!(ring.get("a", a.id()).is_none());
        let again = ring.current("a").unwrap();
        assert!(again.id() > a.id(), "ids keep increasing past a destroy");
        assert!(ring.get("b", b.id()).is_some());
    }
}
