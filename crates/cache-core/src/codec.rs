//! Codecs: reversible byte transforms (compression, encryption, a plugin's) and the ordered
//! pipeline that applies them between the serializer and the frame.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::CodecError;
use crate::frame::CodecStep;
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
/// Ids 1–63 are reserved for Strata's codecs (1 zstd, 2 AES-256-GCM); plugins use 64–255.
/// Decoders must treat their input as hostile: a bad input is a [`CodecError`], never a panic.
pub trait Codec: Send + Sync + 'static {
    /// The id written into frames.
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

    /// Appends a codec. Fails if another codec already uses its id.
    pub fn push(&mut self, codec: Arc<dyn Codec>) -> Result<(), crate::error::ConfigError> {
        if let Some(other) = self.by_id.get(&codec.id()) {
            return Err(crate::error::ConfigError::new(
                "codecs",
                format!("codecs `{}` and `{}` share id {}", other.name(), codec.name(), codec.id()),
            ));
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
        assert!(p.push(Arc::new(Xor(70, false))).is_err());
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
