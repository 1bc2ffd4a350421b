//! Encryption at rest: [`AesGcmCodec`] (AES-256-GCM, codec id 2).
//!
//! Parameters recorded in the frame: `[1 (format), key id (u32 LE), nonce (12 bytes)]`; the
//! payload is `ciphertext || tag (16 bytes)`. The associated data is
//! [`CodecContext::associated_data`]: cache, namespace, key id and the frame's metadata section,
//! so a value copied under another key, or with an edited expiry, fails to decrypt.

use std::sync::Arc;

use aes_gcm::aead::{Aead, Payload};
use bytes::Bytes;
use rand::Rng as _;
use strata_cache_core::{Codec, CodecContext, CodecError, Encoded};

use crate::keys::{KeyError, KeyId, KeyProvider};

const FORMAT: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const PARAMS_LEN: usize = 1 + 4 + NONCE_LEN;

/// AES-256-GCM with a random 96-bit nonce per value and the key id in the frame.
///
/// [`Codec::required_on_decode`] is true: a frame without this codec's step (plaintext planted
/// in a tier) is refused by the pipeline.
///
/// ```
/// use std::sync::Arc;
/// use strata_security::{AesGcmCodec, Keyring};
/// let codec = AesGcmCodec::new(Arc::new(Keyring::generate()?))?;
/// assert_eq!(AesGcmCodec::ID, 2);
/// // An empty keyring is refused when the codec is built, not on the first write.
/// assert!(AesGcmCodec::new(Arc::new(Keyring::new())).is_err());
/// # Ok::<(), strata_security::KeyError>(())
/// ```
pub struct AesGcmCodec {
    provider: Arc<dyn KeyProvider>,
}

impl std::fmt::Debug for AesGcmCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AesGcmCodec").finish_non_exhaustive()
    }
}

impl AesGcmCodec {
    /// The codec id written into frames.
    pub const ID: u8 = 2;
    /// The codec's name (as listed by `Cache::codec_names`).
    pub const NAME: &'static str = "aes-256-gcm";

    /// A codec on `provider`. Fails when the provider has no current key (so a cache configured
    /// for encryption with a missing or invalid key fails at startup with a clear error).
    pub fn new(provider: Arc<dyn KeyProvider>) -> Result<Self, KeyError> {
        provider.validate()?;
        Ok(Self { provider })
    }

    /// A codec on a [`Keyring`](crate::Keyring) read from environment variable `var`.
    pub fn from_env(var: &str) -> Result<Self, KeyError> {
        Self::new(Arc::new(crate::keys::Keyring::from_env(var)?))
    }

    /// The key provider.
    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.provider
    }

    /// Parses this codec's parameters: the key id and nonce.
    pub fn parse_params(params: &[u8]) -> Result<(KeyId, [u8; NONCE_LEN]), CodecError> {
        let invalid = |reason: &str| CodecError::Invalid { codec: Self::NAME, reason: reason.to_owned() };
        if params.len() != PARAMS_LEN {
            return Err(invalid("parameters must be 17 bytes (format, key id, nonce)"));
        }
        if params[0] != FORMAT {
            return Err(invalid("unknown parameter format"));
        }
        let mut id = [0u8; 4];
        id.copy_from_slice(&params[1..5]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&params[5..]);
        Ok((KeyId(u32::from_le_bytes(id)), nonce))
    }
}

impl Codec for AesGcmCodec {
    fn id(&self) -> u8 {
        Self::ID
    }

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn required_on_decode(&self) -> bool {
        true
    }

    fn encode(&self, ctx: &CodecContext<'_>, input: Bytes) -> Result<Encoded, CodecError> {
        let key = self
            .provider
            .current(ctx.key.namespace().as_str())
            .map_err(|e| CodecError::Key { codec: Self::NAME, reason: e.to_string() })?;
        let nonce: [u8; NONCE_LEN] = rand::rng().random();
        let aad = ctx.associated_data();
        let out = key
            .cipher()
            .encrypt(&nonce.into(), Payload { msg: &input, aad: &aad })
            .map_err(|_| CodecError::Invalid { codec: Self::NAME, reason: "plaintext too long for AES-GCM".into() })?;
        let mut params = Vec::with_capacity(PARAMS_LEN);
        params.push(FORMAT);
        params.extend_from_slice(&key.id().0.to_le_bytes());
        params.extend_from_slice(&nonce);
        Ok(Encoded::Applied { params, output: Bytes::from(out) })
    }

    fn decode(&self, ctx: &CodecContext<'_>, params: &[u8], input: Bytes) -> Result<Bytes, CodecError> {
        let (id, nonce) = Self::parse_params(params)?;
        if input.len() < TAG_LEN {
            return Err(CodecError::Invalid { codec: Self::NAME, reason: "ciphertext shorter than its tag".into() });
        }
        let ns = ctx.key.namespace().as_str();
        let key = self.provider.get(ns, id).ok_or_else(|| CodecError::Key {
            codec: Self::NAME,
            reason: format!("key id {id} is not available for namespace `{ns}` (unknown, retired or destroyed)"),
        })?;
        let aad = ctx.associated_data();
        let plain = key
            .cipher()
            .decrypt(&nonce.into(), Payload { msg: &input, aad: &aad })
            .map_err(|_| CodecError::Integrity { codec: Self::NAME })?;
        Ok(Bytes::from(plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{DataKey, Keyring};
    use strata_cache_core::{Key, Namespace};

    fn key(id: &str) -> Key {
        Key::new("c", Namespace::new("ns").unwrap(), id).unwrap()
    }

    #[test]
    fn round_trip_and_binding() {
        let codec = AesGcmCodec::new(Arc::new(Keyring::generate().unwrap())).unwrap();
        let (a, b) = (key("a"), key("b"));
        let ctx_a = CodecContext { key: &a, meta_section: b"meta" };
        let Encoded::Applied { params, output } = codec.encode(&ctx_a, Bytes::from_static(b"secret")).unwrap() else {
            panic!("encryption is never skipped")
        };
        assert_eq!(params.len(), PARAMS_LEN);
        assert!(!output.windows(6).any(|w| w == b"secret"));
        assert_eq!(codec.decode(&ctx_a, &params, output.clone()).unwrap(), Bytes::from_static(b"secret"));
        // Another key, or other metadata: integrity failure.
        let ctx_b = CodecContext { key: &b, meta_section: b"meta" };
        assert!(matches!(codec.decode(&ctx_b, &params, output.clone()), Err(CodecError::Integrity { .. })));
        let ctx_m = CodecContext { key: &a, meta_section: b"metb" };
        assert!(matches!(codec.decode(&ctx_m, &params, output.clone()), Err(CodecError::Integrity { .. })));
        // Unknown key id: a key error, not an integrity error.
        let mut p = params.clone();
        p[1..5].copy_from_slice(&99u32.to_le_bytes());
        assert!(matches!(codec.decode(&ctx_a, &p, output.clone()), Err(CodecError::Key { .. })));
        // Malformed parameters and short input.
        assert!(matches!(codec.decode(&ctx_a, &params[..5], output), Err(CodecError::Invalid { .. })));
        assert!(matches!(codec.decode(&ctx_a, &params, Bytes::from_static(b"short")), Err(CodecError::Invalid { .. })));
    }

    #[test]
    fn wrong_key_material_fails_integrity() {
        let one = Keyring::new();
        one.insert(DataKey::new(KeyId(1), &[1; 32]).unwrap()).unwrap();
        let other = Keyring::new();
        other.insert(DataKey::new(KeyId(1), &[2; 32]).unwrap()).unwrap();
        let (c1, c2) = (AesGcmCodec::new(Arc::new(one)).unwrap(), AesGcmCodec::new(Arc::new(other)).unwrap());
        let k = key("a");
        let ctx = CodecContext { key: &k, meta_section: b"" };
        let Encoded::Applied { params, output } = c1.encode(&ctx, Bytes::from_static(b"x")).unwrap() else { panic!() };
        assert!(matches!(c2.decode(&ctx, &params, output), Err(CodecError::Integrity { .. })));
    }
}
