//! # strata-security
//!
//! Security for Strata caches: compression and encryption codecs for what leaves the process,
//! key rotation and crypto-shredding, access control, a tamper-evident audit log and PII rules.
//!
//! ## Tour
//! - Codecs (plug into `CacheBuilder::codec`, in this order): [`ZstdCodec`] (id 1, feature
//!   `zstd`, on by default; optional trained [`ZstdDictionary`]; bounded decoding) then
//!   [`AesGcmCodec`] (id 2, AES-256-GCM, random nonce, key id in the frame, associated data
//!   binding cache/namespace/key/metadata; frames without it are refused).
//! - Keys: the [`KeyProvider`] seam; [`Keyring`] (file or environment variable, `id:base64key`
//!   lines, rotation) and [`NamespaceKeyring`] (per-namespace keys, [`NamespaceKeyring::destroy`]
//!   for crypto-shredding); [`Reencryptor`] moves stored frames to the newest key.
//! - Access: [`AccessPolicy`], [`RoleBasedPolicy`] (roles × actions × cache/namespace
//!   [`Pattern`]s), [`SecureCache`] (every call names a [`Principal`], is checked and audited).
//! - Audit: [`AuditSink`], [`AuditRecord`], [`JsonLinesAuditSink`] (hash-chained JSON lines,
//!   [`audit::verify`]), [`correlation`] ids; keys appear only as keyed hashes
//!   ([`HmacKeyIds`], [`hash_key_id`]).
//! - PII: [`PiiPolicy`] refuses caches that do not encrypt or keep entries too long;
//!   [`escape_glob`] keeps hostile key ids from widening Redis `MATCH` patterns.
//!
//! ## Example: compressed, encrypted, access-controlled
//!
//! ```
//! use std::sync::Arc;
//! use strata_cache_core::{Cache, CacheStats, MemoryTier, Postcard};
//! use strata_security::*;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let keys = Arc::new(Keyring::generate()?);
//! let tier = Arc::new(MemoryTier::new("l2"));
//! let cache: Cache<String, String> = Cache::builder("profiles")
//!     .no_l1()
//!     .tier(tier.clone())
//!     .serializer(Postcard)
//!     .codec(Arc::new(ZstdCodec::new(3)?))
//!     .codec(Arc::new(AesGcmCodec::new(keys.clone())?))
//!     .build()
//!     .await?;
//! let policy = RoleBasedPolicy::builder()
//!     .grant("profile-service", [Action::Read, Action::Write], "profiles", "*")
//!     .build()
//!     .unwrap();
//! let audit = Arc::new(MemoryAuditSink::new());
//! let secure = SecureCache::new(cache, Arc::new(policy), audit.clone(), HmacKeyIds::new(&[1; 32])?);
//!
//! let svc = Principal::new("svc-1", ["profile-service"]);
//! let bio = "likes long walks; ".repeat(40);
//! secure.set(&svc, "alice".into(), bio.clone()).await?;
//! assert_eq!(secure.get(&svc, &"alice".to_string()).await?.as_deref(), Some(&bio));
//!
//! // What the tier holds is compressed and encrypted: no plaintext, far smaller than the value.
//! let key = strata_cache_core::Key::new("profiles", strata_cache_core::Namespace::default_namespace(), "alice")?;
//! let stored = tier.raw(&key).unwrap().frame;
//! assert!(stored.len() < bio.len() / 4);
//! assert!(!stored.windows(5).any(|w| w == b"walks"));
//!
//! // Someone without a grant is refused, and every call is audited without the key.
//! let intruder = Principal::new("eve", ["guest"]);
//! assert!(matches!(secure.get(&intruder, &"alice".to_string()).await, Err(SecureError::Denied(_))));
//! let records = audit.records();
//! assert_eq!(records.len(), 3);
//! assert_eq!(records[2].outcome, audit::Outcome::Denied);
//! assert!(records.iter().all(|r| !r.key_hash.as_deref().unwrap_or("").contains("alice")));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

pub mod access;
pub mod audit;
#[cfg(feature = "zstd")]
pub mod compress;
pub mod correlation;
pub mod encrypt;
pub mod glob;
pub mod keyhash;
pub mod keys;
pub mod pii;
pub mod reencrypt;
pub mod secure;

pub use access::{AccessDenied, AccessPolicy, Action, Principal, RoleBasedPolicy, RoleBasedPolicyBuilder};
pub use audit::{
    AuditError, AuditObserver, AuditRecord, AuditSink, JsonLinesAuditSink, MemoryAuditSink, Outcome, VerifyReport,
};
#[cfg(feature = "zstd")]
pub use compress::{ZstdCodec, ZstdDictionary};
pub use encrypt::AesGcmCodec;
pub use glob::{Pattern, PatternError, escape_glob};
pub use keyhash::{HmacKeyIds, hash_key_id};
pub use keys::{DataKey, KEY_LEN, KeyError, KeyId, KeyProvider, Keyring, NamespaceKeyring};
pub use pii::{PiiPolicy, PiiViolation};
pub use reencrypt::{ReencryptError, ReencryptReport, Reencrypted, Reencryptor};
pub use secure::{AuditLevel, SecureCache, SecureError};
