//! Errors of the core crate.
//!
//! One enum per concern, each with the original error kept as `source`. Every error is `Clone`
//! (sources are `Arc`'d) so that the many waiters of one load all receive the same error value.

use std::sync::Arc;

/// A boxed error from user code (loaders, writers, plugins).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A shared error from user code, cloned to every waiter of a load.
pub type SharedError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in a [`Tier`](crate::Tier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TierErrorKind {
    /// The backend could not be reached (connection refused, closed, DNS, ...).
    Unavailable,
    /// The backend did not answer in time.
    Timeout,
    /// The backend refused because it is overloaded (pool exhausted, busy).
    Overloaded,
    /// A circuit breaker in front of the tier is open; the call was not attempted.
    CircuitOpen,
    /// The backend answered with something the tier cannot use.
    Protocol,
    /// The request was invalid for this backend (value too large, bad key).
    InvalidRequest,
    /// The tier does not support this operation (e.g. tag invalidation).
    Unsupported,
    /// Anything else.
    Other,
}

/// An error from a byte-level tier (L2, L3 or a plugin's).
#[derive(Debug, Clone, thiserror::Error)]
#[error("tier `{tier}` failed ({kind:?}): {message}")]
pub struct TierError {
    tier: Arc<str>,
    kind: TierErrorKind,
    message: String,
    #[source]
    source: Option<SharedError>,
}

impl TierError {
    /// A new error for tier `tier`.
    pub fn new(tier: impl Into<Arc<str>>, kind: TierErrorKind, message: impl Into<String>) -> Self {
        Self { tier: tier.into(), kind, message: message.into(), source: None }
    }

    /// Attaches the underlying error.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The tier's name.
    pub fn tier(&self) -> &str {
        &self.tier
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> TierErrorKind {
        self.kind
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            TierErrorKind::Unavailable
                | TierErrorKind::Timeout
                | TierErrorKind::Overloaded
                | TierErrorKind::CircuitOpen
        )
    }
}

/// A frame (the bytes stored in remote tiers) could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than the header announces.
    #[error("frame truncated: needed {needed} more byte(s) at offset {offset}")]
    Truncated {
        /// Where the read started.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// The first bytes are not Strata's magic: this is not a Strata frame.
    #[error("not a Strata frame (bad magic bytes)")]
    BadMagic,
    /// A frame version this build does not understand (written by a newer Strata?).
    #[error("unsupported frame version {0} (this build reads version {1})")]
    UnsupportedVersion(u8, u8),
    /// Flag bits this build does not know are set.
    #[error("unknown frame flags {0:#04x}")]
    UnknownFlags(u8),
    /// The checksum does not match: the bytes were corrupted or truncated.
    #[error("frame checksum mismatch (corrupted or truncated bytes)")]
    Checksum,
    /// Structurally invalid content.
    #[error("invalid frame: {0}")]
    Invalid(&'static str),
    /// The frame (or a part of it) is larger than the configured limit.
    #[error("frame too large: {size} bytes, limit {limit}")]
    TooLarge {
        /// Observed size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// A codec failed to encode or decode.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The frame names a codec id that this pipeline does not have.
    #[error("frame uses codec id {0}, which this cache's pipeline does not know")]
    UnknownCodec(u8),
    /// A codec marked as required (e.g. encryption) is absent from the frame: the bytes were not
    /// written by this cache's pipeline and are refused.
    #[error("frame lacks required codec `{0}` (refusing bytes that bypassed it)")]
    MissingRequired(&'static str),
    /// Authentication failed: the bytes were tampered with, copied from another key, or
    /// decrypted with the wrong key.
    #[error("codec `{codec}`: integrity check failed")]
    Integrity {
        /// The codec's name.
        codec: &'static str,
    },
    /// A key needed by the codec is missing or unusable.
    #[error("codec `{codec}`: key problem: {reason}")]
    Key {
        /// The codec's name.
        codec: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The input is malformed for this codec.
    #[error("codec `{codec}`: invalid input: {reason}")]
    Invalid {
        /// The codec's name.
        codec: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Output would exceed the configured size limit (decompression bombs, oversized values).
    #[error("codec `{codec}`: output exceeds limit of {limit} bytes")]
    TooLarge {
        /// The codec's name.
        codec: &'static str,
        /// The limit.
        limit: usize,
    },
}

/// A value could not be serialized or deserialized.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{format} {op} failed: {message}")]
pub struct SerializeError {
    /// The serializer's name (`postcard`, `json`).
    pub format: &'static str,
    /// `serialize` or `deserialize`.
    pub op: &'static str,
    /// The underlying message.
    pub message: String,
}

/// An invalidation bus failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalidation bus `{bus}`: {message}")]
pub struct BusError {
    /// The bus's name.
    pub bus: String,
    /// What happened.
    pub message: String,
    /// The underlying error.
    #[source]
    pub source: Option<SharedError>,
}

/// Invalid configuration or builder input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {field}: {message}")]
pub struct ConfigError {
    /// The setting that is wrong (a dotted path such as `l1.max_entries`).
    pub field: String,
    /// Why, and what to do.
    pub message: String,
}

impl ConfigError {
    /// A new configuration error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// A breaker setting out of range becomes `breaker.<setting>`.
impl From<strata_governance::BreakerConfigError> for ConfigError {
    fn from(e: strata_governance::BreakerConfigError) -> Self {
        Self::new(format!("breaker.{}", e.field), e.reason)
    }
}

/// The error type of [`Cache`](crate::Cache) operations.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The loader failed and no stale value could be served.
    #[error("loader failed for cache `{cache}`")]
    Load {
        /// The cache's name.
        cache: Arc<str>,
        /// The loader's error, shared by every waiter of the load.
        #[source]
        source: SharedError,
    },
    /// The loader did not finish within the hard timeout and no stale value could be served.
    #[error("loader for cache `{cache}` exceeded its hard timeout of {timeout_ms} ms")]
    Timeout {
        /// The cache's name.
        cache: Arc<str>,
        /// The hard timeout.
        timeout_ms: u64,
    },
    /// A write to the source of truth (the `Writer`) failed; tiers were left unchanged.
    #[error("writer failed for cache `{cache}`")]
    Write {
        /// The cache's name.
        cache: Arc<str>,
        /// The writer's error.
        #[source]
        source: SharedError,
    },
    /// The operation needs a loader but none is configured.
    #[error("cache `{0}` has no loader configured; use get_or_load_with or set a loader")]
    NoLoader(Arc<str>),
    /// The value could not be serialized for the remote tiers.
    #[error(transparent)]
    Serialize(#[from] SerializeError),
    /// A codec refused the bytes (write path: the value; read path: tampered or foreign bytes).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A frame read from a tier is invalid.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A value or key is larger than the configured limit.
    #[error("value for cache `{cache}` is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The cache's name.
        cache: Arc<str>,
        /// Observed size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// An invalid key or namespace.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The request was refused by access control.
    #[error("access denied: {0}")]
    Denied(String),
    /// The caller must slow down (backlog full, queue full).
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// Every tier failed on a write that had nowhere else to go.
    #[error(transparent)]
    Tier(#[from] TierError),
    /// The invalidation bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A codec or serializer id breaks [the id-range rule](crate::ids), or two codecs share
    /// an id.
    #[error(transparent)]
    Id(#[from] crate::ids::IdError),
}

impl CacheError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            CacheError::Load { .. } | CacheError::Timeout { .. } | CacheError::Overloaded(_) => true,
            CacheError::Write { .. } | CacheError::Bus(_) => true,
            CacheError::Tier(e) => e.is_retryable(),
            _ => false,
        }
    }
}
