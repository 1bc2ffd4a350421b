//! Codecs: reversible byte transforms (compression, encryption, a plugin's) and the ordered
//! pipeline that applies them between the serializer and the frame.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::CodecError;
use crate::frame::CodecStep;
use crate::ids::{self, IdError, IdKind};
use crate::key::Key;

/// What a codec may bind its output to: the cache, the key and the frame's metadata section.
#[derive(Debug, Clone, Copy)]
pub struct CodecContext<'a> {
    /// The key the value is stored under.
    pub key: &'a Key,
    /// The frame's metadata section (header, timestamps, version, tags).
    pub meta_section: &'a [u8],
}

impl CodecContext<'_> {
    /// Associated data binding a value to its cache, namespace, key and metadata:
    /// each part length-prefixed so that no two different contexts give the same bytes.
    pub fn associated_data(&self) -> Vec<u8> {
        let parts: [&[u8]; 4] = [
            self.key.cache().as_bytes(),
            self.key.namespace().as_str().as_bytes(),
            self.key.id().as_bytes(),
            self.meta_section,
        ];
        let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
        for p in parts {
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
            out.extend_from_slice(p);
        }
        out
    }
}

/// The result of [`Codec::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// The codec chose not to transform the input (e.g. too small to compress, or compression
    /// did not save space). Nothing is recorded in the frame.
    Skipped,
    /// The codec transformed the input.
    Applied {
        /// Parameters recorded in the frame for decoding (key id, nonce, dictionary id, ...).
        params: Vec<u8>,
        /// The transformed bytes.
        output: Bytes,
    },
}

/// A reversible byte transform with a one-byte id recorded in the frame.
///
/// Ids follow [the id-range rule](crate::ids): 0–63 are reserved for Strata (1 zstd,
/// 2 AES-256-GCM), third-party codecs use 64–255; [`CodecPipeline::push`] refuses a
/// third-party codec with a reserved id. Decoders must treat their input as hostile: a bad
/// input is a [`CodecError`], never a panic.
///
/// # Implementing a codec
/// A toy codec that XORs every byte with a key and records the key in the frame, in the
/// third-party id range, used by a cache over a [`MemoryTier`](crate::MemoryTier):
///
/// ```
/// use strata_cache_core::plugin::*;
/// use std::sync::Arc;
///
/// struct XorCodec(u8);
///
/// impl Codec for XorCodec {
///     fn id(&self) -> u8 {
///         200 // third-party range: 64-255
///     }
///     fn name(&self) -> &'static str {
///         "xor"
///     }
///     fn encode(&self, _ctx: &CodecContext<'_>, input: Bytes) -> Result<Encoded, CodecError> {
///         if input.is_empty() {
///             return Ok(Encoded::Skipped); // nothing recorded in the frame
///         }
///         let output: Vec<u8> = input.iter().map(|b| b ^ self.0).collect();
///         Ok(Encoded::Applied { params: vec![self.0], output: Bytes::from(output) })
///     }
///     fn decode(&self, _ctx: &CodecContext<'_>, params: &[u8], input: Bytes) -> Result<Bytes, CodecError> {
///         // Hostile input: a typed error, never a panic.
///         let [key] = params else {
///             return Err(CodecError::Invalid { codec: "xor", reason: format!("{} param bytes", params.len()) });
///         };
///         Ok(input.iter().map(|b| b ^ key).collect::<Vec<u8>>().into())
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let l2 = MemoryTier::new("l2");
/// let cache: Cache<u64, String> = Cache::builder("xored")
///     .no_l1()
///     .tier(Arc::new(l2.clone()))
///     .codec(Arc::new(XorCodec(0x5a)))
///     .serializer(Postcard)
///     .build()
///     .await?;
/// cache.set(1, "secret".to_string()).await?;
/// assert_eq!(cache.get(&1).await?.as_deref().map(String::as_str), Some("secret"));
/// // The stored frame holds the XORed bytes, not the serialized value.
/// let key = Key::new("xored", Namespace::default_namespace(), "1")?;
/// let frame = l2.raw(&key).unwrap().frame;
/// assert!(!frame.windows(6).any(|w| w == b"secret"));
///
/// // A codec in Strata's reserved range is refused when the pipeline is built.
/// struct Squatter;
/// impl Codec for Squatter {
///     fn id(&self) -> u8 { 7 }
///     fn name(&self) -> &'static str { "squatter" }
///     fn encode(&self, _: &CodecContext<'_>, _: Bytes) -> Result<Encoded, CodecError> { Ok(Encoded::Skipped) }
///     fn decode(&self, _: &CodecContext<'_>, _: &[u8], i: Bytes) -> Result<Bytes, CodecError> { Ok(i) }
/// }
/// let mut pipeline = CodecPipeline::new();
/// assert!(matches!(pipeline.push(Arc::new(Squatter)), Err(IdError::Reserved { id: 7, .. })));
/// # Ok::<(), CacheError>(())
/// # }).unwrap();
/// ```
pub trait Codec: Send + Sync + 'static {
    /// The id written into frames (see [the id-range rule](crate::ids)).
    fn id(&self) -> u8;
    /// A short name for errors and metrics.
    fn name(&self) -> &'static str;
    /// Whether a frame that lacks this codec must be refused (true for encryption, so that
    /// plaintext planted in a remote tier is never accepted).
    fn required_on_decode(&self) -> bool {
        false
    }
    /// Transforms `input`.
    fn encode(&self, ctx: &CodecContext<'_>, input: Bytes) -> Result<Encoded, CodecError>;
    /// Reverses [`Codec::encode`] given the parameters it recorded.
    fn decode(&self, ctx: &CodecContext<'_>, params: &[u8], input: Bytes) -> Result<Bytes, CodecError>;
}

/// An ordered list of codecs. Encoding applies them in order (serialize → compress → encrypt);
/// decoding undoes the steps recorded in the frame in reverse.
#[derive(Clone, Default)]
pub struct CodecPipeline {
    order: Vec<Arc<dyn Codec>>,
    by_id: HashMap<u8, Arc<dyn Codec>>,
}

impl std::fmt::Debug for CodecPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.order.iter().map(|c| c.name())).finish()
    }
}

impl CodecPipeline {
    /// An empty pipeline (values stored as serialized).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a codec.
    ///
    /// # Errors
    /// [`IdError::Reserved`] when a third-party codec uses an id reserved for Strata (see
    /// [the id-range rule](crate::ids)); [`IdError::Duplicate`] when another codec of the
    /// pipeline already uses its id.
    pub fn push(&mut self, codec: Arc<dyn Codec>) -> Result<(), IdError> {
        ids::check(IdKind::Codec, codec.id(), codec.name())?;
        if let Some(other) = self.by_id.get(&codec.id()) {
            return Err(IdError::Duplicate {
                id: codec.id(),
                first: other.name().to_owned(),
                second: codec.name().to_owned(),
            });
        }
        self.by_id.insert(codec.id(), codec.clone());
        self.order.push(codec);
        Ok(())
    }

    /// The codecs in encoding order.
    pub fn codecs(&self) -> &[Arc<dyn Codec>] {
        &self.order
    }

    /// Whether the pipeline has no codecs.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Applies every codec in order, returning the steps to record and the final bytes.
    pub fn encode(&self, ctx: &CodecContext<'_>, mut data: Bytes) -> Result<(Vec<CodecStep>, Bytes), CodecError> {
        let mut steps = Vec::new();
        for c in &self.order {
            match c.encode(ctx, data.clone())? {
                Encoded::Skipped => {}
                Encoded::Applied { params, output } => {
                    steps.push(CodecStep { id: c.id(), params });
                    data = output;
                }
            }
        }
        Ok((steps, data))
    }

    /// Undoes `steps` (as recorded in a frame) in reverse order.
    pub fn decode(&self, ctx: &CodecContext<'_>, steps: &[CodecStep], mut data: Bytes) -> Result<Bytes, CodecError> {
        for required in self.order.iter().filter(|c| c.required_on_decode()) {
            if !steps.iter().any(|s| s.id == required.id()) {
                return Err(CodecError::MissingRequired(required.name()));
            }
        }
        for step in steps.iter().rev() {
            let codec = self.by_id.get(&step.id).ok_or(CodecError::UnknownCodec(step.id))?;
            data = codec.decode(ctx, &step.params, data)?;
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Namespace;

    /// XOR with a byte taken from params: a toy codec to test the pipeline's ordering.
    struct Xor(u8, bool);
    impl Codec for Xor {
        fn id(&self) -> u8 {
            self.0
        }
        fn name(&self) -> &'static str {
            "xor"
        }
        fn required_on_decode(&self) -> bool {
            self.1
        }
        fn encode(&self, _: &CodecContext<'_>, input: Bytes) -> Result<Encoded, CodecError> {
            Ok(Encoded::Applied {
                params: vec![self.0],
                output: input.iter().map(|b| b ^ self.0).collect::<Vec<_>>().into(),
            })
        }
        fn decode(&self, _: &CodecContext<'_>, params: &[u8], input: Bytes) -> Result<Bytes, CodecError> {
            let k = *params.first().ok_or(CodecError::Invalid { codec: "xor", reason: "no params".into() })?;
            Ok(input.iter().map(|b| b ^ k).collect::<Vec<_>>().into())
        }
    }

    #[test]
    fn pipeline_round_trips_and_refuses_bypass() {
        let key = Key::new("c", Namespace::default_namespace(), "k").unwrap();
        let ctx = CodecContext { key: &key, meta_section: b"m" };
        let mut p = CodecPipeline::new();
        p.push(Arc::new(Xor(70, false))).unwrap();
        p.push(Arc::new(Xor(71, true))).unwrap();
        assert!(matches!(p.push(Arc::new(Xor(70, false))), Err(IdError::Duplicate { id: 70, .. })));
        // Strata's reserved range is refused to a third-party codec.
        assert!(matches!(p.push(Arc::new(Xor(5, false))), Err(IdError::Reserved { id: 5, .. })));
        assert_eq!(p.codecs().len(), 2);
        let (steps, out) = p.encode(&ctx, Bytes::from_static(b"hello")).unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(p.decode(&ctx, &steps, out.clone()).unwrap(), Bytes::from_static(b"hello"));
        // A frame without the required codec is refused.
        assert!(matches!(p.decode(&ctx, &steps[..1], out.clone()), Err(CodecError::MissingRequired("xor"))));
        // Unknown ids are typed errors.
        let bogus = vec![CodecStep { id: 71, params: vec![71] }, CodecStep { id: 99, params: vec![] }];
        assert!(matches!(p.decode(&ctx, &bogus, out), Err(CodecError::UnknownCodec(99))));
    }

    #[test]
    fn associated_data_is_unambiguous() {
        let a = Key::new("c", Namespace::new("ab").unwrap(), "c").unwrap();
        let b = Key::new("c", Namespace::new("a").unwrap(), "bc").unwrap();
        let ad = |k: &Key| CodecContext { key: k, meta_section: b"" }.associated_data();
        assert_ne!(ad(&a), ad(&b));
    }
}
