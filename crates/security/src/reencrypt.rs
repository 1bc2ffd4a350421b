//! Key rotation, the second half: re-encrypt stored frames under the newest key so that old
//! keys can be retired.
//!
//! Rotation steps: add the new key to the keyring (new writes use it at once; old keys keep
//! decrypting) → run [`Reencryptor::reencrypt_tier`] over the keys of each tier → remove the old
//! key from the keyring.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use strata_cache_core::frame::Frame;
use strata_cache_core::{
    CodecContext, CodecError, CodecPipeline, EntryMeta, FrameError, Key, StoredEntry, Tier, TierError,
};

use crate::encrypt::AesGcmCodec;
use crate::keys::{KeyError, KeyProvider};

/// Re-encrypting one frame failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ReencryptError {
    /// The stored bytes are not a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A codec refused the bytes (tampered, or encrypted with a key no longer available).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The provider has no current key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The frame is not encrypted (not written through the encryption codec).
    #[error("frame is not encrypted")]
    NotEncrypted,
    /// A tier call failed.
    #[error(transparent)]
    Tier(#[from] TierError),
}

/// What [`Reencryptor::reencrypt_frame`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reencrypted {
    /// Already under the current key: nothing to do.
    Unchanged,
    /// The frame re-encrypted under the current key, with its (unchanged) metadata.
    Rewritten {
        /// Metadata for the tier's `set`.
        meta: EntryMeta,
        /// The new frame.
        frame: Bytes,
    },
}

/// Counts from [`Reencryptor::reencrypt_tier`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReencryptReport {
    /// Keys looked up.
    pub scanned: usize,
    /// Frames rewritten under the current key.
    pub rewritten: usize,
    /// Frames already under the current key.
    pub unchanged: usize,
    /// Keys absent from the tier (expired, evicted).
    pub missing: usize,
    /// Frames that changed between read and write (a concurrent write won; left alone).
    pub raced: usize,
    /// Frames that could not be re-encrypted (undecodable, unknown key); left alone.
    pub failed: usize,
}

/// Re-encrypts frames with the same codec pipeline as the cache that wrote them.
#[derive(Clone)]
pub struct Reencryptor {
    pipeline: CodecPipeline,
    provider: Arc<dyn KeyProvider>,
}

impl std::fmt::Debug for Reencryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reencryptor").field("pipeline", &self.pipeline).finish_non_exhaustive()
    }
}

impl Reencryptor {
    /// `pipeline` must be the cache's codec pipeline (same codecs, same order) and contain an
    /// [`AesGcmCodec`] on `provider`.
    pub fn new(pipeline: CodecPipeline, provider: Arc<dyn KeyProvider>) -> Result<Self, KeyError> {
        provider.validate()?;
        Ok(Self { pipeline, provider })
    }

    /// Decodes `bytes` (stored under `key`) with the pipeline and, unless it is already under
    /// the namespace's current key, encodes it again: same metadata, same serializer, new
    /// nonce, current key.
    pub fn reencrypt_frame(&self, key: &Key, bytes: &Bytes) -> Result<Reencrypted, ReencryptError> {
        let (frame, meta_len) = Frame::decode(bytes)?;
        let step = frame.codecs.iter().find(|s| s.id == AesGcmCodec::ID).ok_or(ReencryptError::NotEncrypted)?;
        let (key_id, _) = AesGcmCodec::parse_params(&step.params)?;
        let current = self.provider.current(key.namespace().as_str())?;
        if key_id == current.id() {
            return Ok(Reencrypted::Unchanged);
        }
        let meta_section = &bytes[..meta_len];
        let ctx = CodecContext { key, meta_section };
        let plain = self.pipeline.decode(&ctx, &frame.codecs, frame.payload.clone())?;
        let (steps, out) = self.pipeline.encode(&ctx, plain)?;
        let new = Frame::finish(BytesMut::from(meta_section), &steps, &out)?;
        Ok(Reencrypted::Rewritten { meta: frame.meta, frame: new })
    }

    /// Re-encrypts the frames of `keys` in `tier`. Each frame is re-read just before the write
    /// and left alone if it changed meanwhile (the window is narrow, not closed: run rotations
    /// when a concurrent write to the same key is unlikely, or rely on its newer value being
    /// written again). Failures are counted, not fatal.
    pub async fn reencrypt_tier(&self, tier: &dyn Tier, keys: &[Key]) -> Result<ReencryptReport, TierError> {
        let mut report = ReencryptReport::default();
        for key in keys {
            report.scanned += 1;
            let Some(bytes) = tier.get(key).await? else {
                report.missing += 1;
                continue;
            };
            match self.reencrypt_frame(key, &bytes) {
                Ok(Reencrypted::Unchanged) => report.unchanged += 1,
                Ok(Reencrypted::Rewritten { meta, frame }) => {
                    if tier.get(key).await?.as_ref() != Some(&bytes) {
                        report.raced += 1;
                        continue;
                    }
                    tier.set(key, &StoredEntry { meta, frame }).await?;
                    report.rewritten += 1;
                }
                Err(e) => {
                    tracing::warn!(tier = tier.name(), key = %format_args!("{:016x}", key.fingerprint()), error = %e, "frame not re-encrypted");
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }
}
