//! Keyed hashes of key ids (HMAC-SHA256, truncated): what audit records, logs, Redis key names
//! and SQL rows carry instead of a plaintext key id.
//!
//! A plain hash of a guessable id (an email, a user number) is reversible by brute force; a
//! keyed hash is not without the secret.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use strata_cache_core::{ConfigError, Key};
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// The shortest accepted secret, in bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// Bytes of the HMAC kept (hex output is twice as long).
pub const HASH_BYTES: usize = 16;

/// Computes keyed hashes of key ids under one secret.
///
/// ```
/// use strata_security::HmacKeyIds;
/// let ids = HmacKeyIds::new(b"0123456789abcdef-secret")?;
/// let h = ids.hash_id("alice@example.com");
/// assert_eq!(h.len(), 32);
/// assert!(!h.contains("alice"));
/// assert_eq!(h, ids.hash_id("alice@example.com"));
/// # Ok::<(), strata_cache_core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct HmacKeyIds {
    mac: HmacSha256,
    _secret: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for HmacKeyIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacKeyIds").finish_non_exhaustive()
    }
}

impl HmacKeyIds {
    /// A hasher keyed with `secret` (at least [`MIN_SECRET_LEN`] bytes).
    pub fn new(secret: &[u8]) -> Result<Self, ConfigError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError::new(
                "key_hash_secret",
                format!("must be at least {MIN_SECRET_LEN} bytes, got {}", secret.len()),
            ));
        }
        let mac =
            HmacSha256::new_from_slice(secret).map_err(|_| ConfigError::new("key_hash_secret", "unusable HMAC key"))?;
        Ok(Self { mac, _secret: Zeroizing::new(secret.to_vec()) })
    }

    /// The keyed hash of a raw id: 32 lower-case hex characters.
    pub fn hash_id(&self, id: &str) -> String {
        self.hash_parts(&[id.as_bytes()])
    }

    /// The keyed hash of a full key (cache, namespace and id, unambiguously joined).
    pub fn hash_key(&self, key: &Key) -> String {
        self.hash_parts(&[key.cache().as_bytes(), key.namespace().as_str().as_bytes(), key.id().as_bytes()])
    }

    /// The keyed hash of parts: one part is hashed as is (so `hash_parts(&[id])` equals
    /// [`HmacKeyIds::hash_id`]); several are length-prefixed after a `0xff` marker byte, which
    /// no UTF-8 id can start with, so no two inputs collide.
    pub fn hash_parts(&self, parts: &[&[u8]]) -> String {
        let mut mac = self.mac.clone();
        if let [only] = parts {
            mac.update(only);
        } else {
            mac.update(&[0xff]);
            for p in parts {
                mac.update(&(p.len() as u64).to_le_bytes());
                mac.update(p);
            }
        }
        let out = mac.finalize().into_bytes();
        strata_cache_core::text::hex::encode(&out[..HASH_BYTES])
    }
}

/// The keyed hash of a key id (see [`HmacKeyIds`]); for adapters that must not store ids in
/// plaintext (Redis key names, SQL rows). Fails only on a secret shorter than
/// [`MIN_SECRET_LEN`].
pub fn hash_key_id(secret: &[u8], id: &str) -> Result<String, ConfigError> {
    Ok(HmacKeyIds::new(secret)?.hash_id(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_cache_core::Namespace;

    #[test]
    fn keyed_and_stable() {
        let a = HmacKeyIds::new(&[1; 32]).unwrap();
        let b = HmacKeyIds::new(&[2; 32]).unwrap();
        assert_eq!(a.hash_id("x"), a.hash_id("x"));
        assert_ne!(a.hash_id("x"), b.hash_id("x"));
        assert_ne!(a.hash_id("x"), a.hash_id("y"));
        assert_eq!(hash_key_id(&[1; 32], "x").unwrap(), a.hash_id("x"));
        assert!(hash_key_id(b"short", "x").is_err());
        let k1 = Key::new("c", Namespace::new("ab").unwrap(), "c").unwrap();
        let k2 = Key::new("c", Namespace::new("a").unwrap(), "bc").unwrap();
        assert_ne!(a.hash_key(&k1), a.hash_key(&k2));
        assert!(strata_cache_core::text::hex::is_lower_hex(&a.hash_key(&k1), 2 * HASH_BYTES));
    }
}
