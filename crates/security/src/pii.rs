//! PII policy: caches holding personal data must encrypt what leaves the process and must not
//! keep it longer than allowed.

use std::time::Duration;

use strata_cache_core::{Cache, CacheBuilder, CacheError, CacheKey, ConfigError, EntryOptions};
use zeroize::Zeroizing;

use crate::encrypt::AesGcmCodec;
use crate::keyhash::HmacKeyIds;

/// A cache violates its PII policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PiiViolation {
    /// The cache's codec pipeline does not encrypt.
    #[error("cache `{cache}` holds PII but does not encrypt values at rest (add AesGcmCodec; codecs: {codecs:?})")]
    NotEncrypted {
        /// The cache.
        cache: String,
        /// Its codecs, in order.
        codecs: Vec<&'static str>,
    },
    /// Remote tiers would store key ids in plaintext (build through [`PiiPolicy::build`], or
    /// give the builder [`PiiPolicy::key_id_hasher`]).
    #[error(
        "cache `{cache}` holds PII but stores plaintext key ids in its remote tiers (use PiiPolicy::build or key_id_hasher)"
    )]
    PlaintextKeys {
        /// The cache.
        cache: String,
    },
    /// Entries may live longer than allowed.
    #[error(
        "cache `{cache}` keeps entries up to {lifetime:?} (ttl + jitter + stale limit), over the PII limit of {max:?}"
    )]
    TtlTooLong {
        /// The cache.
        cache: String,
        /// The longest lifetime its options allow.
        lifetime: Duration,
        /// The policy's limit.
        max: Duration,
    },
}

impl From<PiiViolation> for CacheError {
    fn from(v: PiiViolation) -> Self {
        CacheError::Config(ConfigError::new("pii", v.to_string()))
    }
}

/// The rules for a cache holding personal data: values encrypted at rest (the pipeline includes
/// [`AesGcmCodec`]), entries gone after at most `max_ttl` (fresh TTL + jitter + stale limit, and
/// the negative TTL), and key ids hashed with `key_hash_secret` wherever they would be stored or
/// logged ([`PiiPolicy::key_ids`]; [`PiiPolicy::build`] installs it as the key-id hasher).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use strata_cache_core::{Cache, EntryOptions, MemoryTier, Postcard};
/// use strata_security::{AesGcmCodec, Keyring, PiiPolicy};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let policy = PiiPolicy::new(Duration::from_secs(3600), b"a-secret-of-16+-bytes")?;
/// let plain = Cache::<u64, String>::builder("people").tier(Arc::new(MemoryTier::new("l2"))).serializer(Postcard);
/// assert!(policy.build(plain).await.is_err()); // not encrypted
/// let codec = AesGcmCodec::new(Arc::new(Keyring::generate()?))?;
/// let ok = Cache::<u64, String>::builder("people")
///     .tier(Arc::new(MemoryTier::new("l2")))
///     .serializer(Postcard)
///     .codec(Arc::new(codec))
///     .options(EntryOptions::new(Duration::from_secs(600)).stale_limit(Duration::from_secs(600)));
/// let cache = policy.build(ok).await?;
/// # let _ = cache;
/// # Ok::<(), strata_cache_core::CacheError>(())
/// # }).unwrap();
/// ```
pub struct PiiPolicy {
    /// The longest an entry may be kept (fresh or stale).
    pub max_ttl: Duration,
    key_hash_secret: Zeroizing<Vec<u8>>,
    key_ids: HmacKeyIds,
}

impl std::fmt::Debug for PiiPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiiPolicy").field("max_ttl", &self.max_ttl).finish_non_exhaustive()
    }
}

impl PiiPolicy {
    /// A policy; the secret must be at least
    /// [`MIN_SECRET_LEN`](crate::keyhash::MIN_SECRET_LEN) bytes.
    pub fn new(max_ttl: Duration, key_hash_secret: &[u8]) -> Result<Self, ConfigError> {
        if max_ttl.is_zero() {
            return Err(ConfigError::new("pii.max_ttl", "must be greater than zero"));
        }
        let key_ids = HmacKeyIds::new(key_hash_secret)?;
        Ok(Self { max_ttl, key_hash_secret: Zeroizing::new(key_hash_secret.to_vec()), key_ids })
    }

    /// The keyed hasher for key ids (audit records, Redis key names, SQL rows).
    pub fn key_ids(&self) -> &HmacKeyIds {
        &self.key_ids
    }

    /// The keyed hash as the engine's key-id mapper: remote tiers (Redis key names, SQL rows)
    /// and bus messages then carry `HMAC(secret, id)` instead of the id.
    pub fn key_id_hasher(&self) -> strata_cache_core::KeyIdHasher {
        let ids = self.key_ids.clone();
        std::sync::Arc::new(move |id: &str| ids.hash_id(id))
    }

    /// The key-hash secret (to configure adapters that hash ids themselves).
    pub fn key_hash_secret(&self) -> &[u8] {
        &self.key_hash_secret
    }

    /// The longest an entry written with `options` may be served.
    pub fn lifetime(options: &EntryOptions) -> Duration {
        let positive = options.ttl.saturating_add(options.jitter).saturating_add(options.stale_limit);
        positive.max(options.negative_ttl.unwrap_or(Duration::ZERO))
    }

    /// Checks a built cache against the policy.
    pub fn check<K, V>(&self, cache: &Cache<K, V>) -> Result<(), PiiViolation>
    where
        K: CacheKey,
        V: Send + Sync + 'static,
    {
        let codecs = cache.codec_names();
        if !codecs.contains(&AesGcmCodec::NAME) {
            return Err(PiiViolation::NotEncrypted { cache: cache.name().to_owned(), codecs });
        }
        if !cache.tier_names().is_empty() && !cache.hashes_key_ids() {
            return Err(PiiViolation::PlaintextKeys { cache: cache.name().to_owned() });
        }
        let lifetime = Self::lifetime(cache.options());
        if lifetime > self.max_ttl {
            return Err(PiiViolation::TtlTooLong { cache: cache.name().to_owned(), lifetime, max: self.max_ttl });
        }
        Ok(())
    }

    /// Builds the cache and checks it; a violation is a configuration error and the cache is
    /// dropped.
    pub async fn build<K, V>(&self, builder: CacheBuilder<K, V>) -> Result<Cache<K, V>, CacheError>
    where
        K: CacheKey,
        V: Send + Sync + 'static,
    {
        let cache = builder.key_id_hasher(self.key_id_hasher()).build().await?;
        self.check(&cache)?;
        Ok(cache)
    }
}
