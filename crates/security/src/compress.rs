//! Compression: [`ZstdCodec`] (codec id 1), with an optional trained [`ZstdDictionary`].
//!
//! Parameters recorded in the frame: `[0]` (no dictionary) or `[1, dictionary id (u32 LE)]`.
//! Values below the size threshold, or that do not shrink, are stored as they are
//! ([`Encoded::Skipped`]: the frame records nothing). Decoding is bounded: a frame that would
//! decompress past the configured limit (a decompression bomb) is a [`CodecError::TooLarge`].

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use strata_cache_core::{Codec, CodecContext, CodecError, ConfigError, DEFAULT_MAX_VALUE_BYTES, Encoded};
use zstd::bulk::{Compressor, Decompressor};

/// Values shorter than this are not compressed by default.
pub const DEFAULT_MIN_SIZE: usize = 256;
/// The default compression level.
pub const DEFAULT_LEVEL: i32 = 3;

const PLAIN: u8 = 0;
const WITH_DICT: u8 = 1;
/// Contexts kept per dictionary for reuse (a zstd context is costly to create).
const POOL_MAX: usize = 32;

/// A zstd dictionary with its id (the id is recorded in frames; decoding needs the same
/// dictionary).
#[derive(Clone)]
pub struct ZstdDictionary {
    id: u32,
    bytes: Arc<[u8]>,
}

impl std::fmt::Debug for ZstdDictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZstdDictionary").field("id", &self.id).field("len", &self.bytes.len()).finish()
    }
}

impl ZstdDictionary {
    /// Wraps a dictionary produced by zstd's trainer (`zstd --train` or
    /// [`ZstdDictionary::train`]); its id is read from its header.
    pub fn from_bytes(bytes: impl Into<Arc<[u8]>>) -> Result<Self, ConfigError> {
        let bytes = bytes.into();
        let id = zstd::zstd_safe::get_dict_id(&bytes).ok_or_else(|| {
            ConfigError::new("compression.dictionary", "not a zstd dictionary (no dictionary id in its header)")
        })?;
        Ok(Self { id: id.get(), bytes })
    }

    /// Trains a dictionary of at most `max_size` bytes from sample values (a few hundred
    /// representative values; zstd needs enough samples, or training fails with an error).
    pub fn train<S: AsRef<[u8]>>(samples: &[S], max_size: usize) -> Result<Self, ConfigError> {
        if samples.is_empty() || max_size < 256 {
            return Err(ConfigError::new(
                "compression.dictionary",
                "training needs at least one sample and a max size of at least 256 bytes",
            ));
        }
        let dict = zstd::dict::from_samples(samples, max_size)
            .map_err(|e| ConfigError::new("compression.dictionary", format!("training failed: {e}")))?;
        Self::from_bytes(dict)
    }

    /// The dictionary id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The dictionary bytes (to store and load on every instance).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A dictionary (or none) with pools of compression and decompression contexts.
struct Contexts {
    dict: Option<ZstdDictionary>,
    level: i32,
    compressors: Mutex<Vec<Compressor<'static>>>,
    decompressors: Mutex<Vec<Decompressor<'static>>>,
}

impl Contexts {
    fn new(dict: Option<ZstdDictionary>, level: i32) -> Self {
        Self { dict, level, compressors: Mutex::new(Vec::new()), decompressors: Mutex::new(Vec::new()) }
    }

    fn err(e: std::io::Error) -> CodecError {
        CodecError::Invalid { codec: ZstdCodec::NAME, reason: e.to_string() }
    }

    fn compress(&self, input: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        let popped = self.compressors.lock().pop();
        let mut c = match popped {
            Some(c) => c,
            None => match &self.dict {
                Some(d) => Compressor::with_dictionary(self.level, &d.bytes).map_err(Self::err)?,
                None => Compressor::new(self.level).map_err(Self::err)?,
            },
        };
        let r = c.compress_to_buffer(input, out).map(|_| ()).map_err(Self::err);
        let mut pool = self.compressors.lock();
        if pool.len() < POOL_MAX {
            pool.push(c);
        }
        r
    }

    fn decompress(&self, input: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        let popped = self.decompressors.lock().pop();
        let mut d = match popped {
            Some(d) => d,
            None => match &self.dict {
                Some(dict) => Decompressor::with_dictionary(&dict.bytes).map_err(Self::err)?,
                None => Decompressor::new().map_err(Self::err)?,
            },
        };
        let r = d.decompress_to_buffer(input, out).map(|_| ()).map_err(Self::err);
        // A context that failed mid-frame is reset by zstd at the next frame start; keep it.
        let mut pool = self.decompressors.lock();
        if pool.len() < POOL_MAX {
            pool.push(d);
        }
        r
    }
}

/// zstd compression.
///
/// ```
/// use bytes::Bytes;
/// use strata_cache_core::{Codec, CodecContext, Encoded, Key, Namespace};
/// use strata_security::ZstdCodec;
///
/// let codec = ZstdCodec::new(3)?;
/// let key = Key::new("c", Namespace::default_namespace(), "k").unwrap();
/// let ctx = CodecContext { key: &key, meta_section: b"" };
/// let json = Bytes::from(r#"{"name":"a","role":"user"},"#.repeat(100));
/// let Encoded::Applied { params, output } = codec.encode(&ctx, json.clone()).unwrap() else { panic!() };
/// assert!(output.len() * 3 < json.len());
/// assert_eq!(codec.decode(&ctx, &params, output).unwrap(), json);
/// // Too small to be worth it: skipped, nothing recorded in the frame.
/// assert_eq!(codec.encode(&ctx, Bytes::from_static(b"tiny")).unwrap(), Encoded::Skipped);
/// # Ok::<(), strata_cache_core::ConfigError>(())
/// ```
pub struct ZstdCodec {
    level: i32,
    min_size: usize,
    max_decoded: usize,
    plain: Contexts,
    current: Option<u32>,
    dicts: HashMap<u32, Contexts>,
}

impl std::fmt::Debug for ZstdCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZstdCodec")
            .field("level", &self.level)
            .field("min_size", &self.min_size)
            .field("max_decoded", &self.max_decoded)
            .field("dictionary", &self.current)
            .finish()
    }
}

impl ZstdCodec {
    /// The codec id written into frames.
    pub const ID: u8 = 1;
    /// The codec's name.
    pub const NAME: &'static str = "zstd";

    /// A codec at `level` (zstd's range, typically 1..=22; negative levels are faster), with the
    /// default threshold ([`DEFAULT_MIN_SIZE`]) and decode limit
    /// ([`DEFAULT_MAX_VALUE_BYTES`]).
    pub fn new(level: i32) -> Result<Self, ConfigError> {
        let range = zstd::compression_level_range();
        if !range.contains(&level) || level == 0 {
            return Err(ConfigError::new(
                "compression.level",
                format!(
                    "zstd level {level} is out of range; use {}..=-1 (fast) or 1..={} (3 is the default)",
                    range.start(),
                    range.end()
                ),
            ));
        }
        Ok(Self {
            level,
            min_size: DEFAULT_MIN_SIZE,
            max_decoded: DEFAULT_MAX_VALUE_BYTES,
            plain: Contexts::new(None, level),
            current: None,
            dicts: HashMap::new(),
        })
    }

    /// Values shorter than `n` bytes are stored uncompressed.
    #[must_use]
    pub fn min_size(mut self, n: usize) -> Self {
        self.min_size = n;
        self
    }

    /// The largest decompressed output accepted (match the cache's `max_value_bytes`).
    pub fn max_decoded_bytes(mut self, n: usize) -> Result<Self, ConfigError> {
        if n == 0 {
            return Err(ConfigError::new("compression.max_decoded_bytes", "must be greater than zero"));
        }
        self.max_decoded = n;
        Ok(self)
    }

    /// Compresses new values with `dict` (it also decodes frames written with it).
    pub fn dictionary(mut self, dict: ZstdDictionary) -> Result<Self, ConfigError> {
        let id = dict.id;
        self = self.decode_dictionary(dict)?;
        self.current = Some(id);
        Ok(self)
    }

    /// Accepts frames written with `dict` without using it for new values (keep retired
    /// dictionaries until their values have expired).
    pub fn decode_dictionary(mut self, dict: ZstdDictionary) -> Result<Self, ConfigError> {
        if self.dicts.contains_key(&dict.id) {
            return Err(ConfigError::new("compression.dictionary", format!("two dictionaries share id {}", dict.id)));
        }
        self.dicts.insert(dict.id, Contexts::new(Some(dict.clone()), self.level));
        Ok(self)
    }

    /// The id of the dictionary used for new values.
    pub fn current_dictionary(&self) -> Option<u32> {
        self.current
    }

    fn invalid(reason: impl Into<String>) -> CodecError {
        CodecError::Invalid { codec: Self::NAME, reason: reason.into() }
    }
}

impl Codec for ZstdCodec {
    fn id(&self) -> u8 {
        Self::ID
    }

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn encode(&self, _ctx: &CodecContext<'_>, input: Bytes) -> Result<Encoded, CodecError> {
        if input.len() < self.min_size.max(1) {
            return Ok(Encoded::Skipped);
        }
        let (ctxs, params) = match self.current.and_then(|id| self.dicts.get(&id).map(|c| (c, id))) {
            Some((c, id)) => {
                let mut p = vec![WITH_DICT];
                p.extend_from_slice(&id.to_le_bytes());
                (c, p)
            }
            None => (&self.plain, vec![PLAIN]),
        };
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(input.len()));
        ctxs.compress(&input, &mut out)?;
        // The frame spends 3 bytes on the step header plus the parameters: only worth it when
        // the output is smaller by more than that.
        if out.len() + 3 + params.len() >= input.len() {
            return Ok(Encoded::Skipped);
        }
        Ok(Encoded::Applied { params, output: Bytes::from(out) })
    }

    fn decode(&self, _ctx: &CodecContext<'_>, params: &[u8], input: Bytes) -> Result<Bytes, CodecError> {
        let ctxs = match params {
            [PLAIN] => &self.plain,
            [WITH_DICT, a, b, c, d] => {
                let id = u32::from_le_bytes([*a, *b, *c, *d]);
                self.dicts.get(&id).ok_or_else(|| {
                    Self::invalid(format!("frame was compressed with dictionary {id}, which this codec does not have"))
                })?
            }
            _ => return Err(Self::invalid("malformed parameters")),
        };
        let size = match zstd::zstd_safe::get_frame_content_size(&input) {
            Ok(Some(n)) => n,
            Ok(None) => return Err(Self::invalid("zstd frame without a content size")),
            Err(_) => return Err(Self::invalid("not a zstd frame")),
        };
        if size > self.max_decoded as u64 {
            return Err(CodecError::TooLarge { codec: Self::NAME, limit: self.max_decoded });
        }
        let size = size as usize;
        let mut out = Vec::with_capacity(size);
        ctxs.decompress(&input, &mut out)?;
        if out.len() != size {
            return Err(Self::invalid("decompressed size differs from the frame header"));
        }
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_cache_core::{Key, Namespace};

    fn ctx_key() -> Key {
        Key::new("c", Namespace::default_namespace(), "k").unwrap()
    }

    #[test]
    fn levels_are_validated() {
        assert!(ZstdCodec::new(3).is_ok());
        assert!(ZstdCodec::new(22).is_ok());
        assert!(ZstdCodec::new(-1).is_ok());
        for bad in [0, 23, 1000, i32::MIN] {
            let e = ZstdCodec::new(bad).unwrap_err();
            assert_eq!(e.field, "compression.level");
        }
        assert!(ZstdCodec::new(3).unwrap().max_decoded_bytes(0).is_err());
    }

    #[test]
    fn incompressible_input_is_skipped() {
        let codec = ZstdCodec::new(3).unwrap();
        let k = ctx_key();
        let ctx = CodecContext { key: &k, meta_section: b"" };
        let mut rng = fastrand::Rng::with_seed(1);
        let noise: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
        assert_eq!(codec.encode(&ctx, Bytes::from(noise)).unwrap(), Encoded::Skipped);
    }

    #[test]
    fn bombs_are_refused() {
        let k = ctx_key();
        let ctx = CodecContext { key: &k, meta_section: b"" };
        let big = Bytes::from(vec![0u8; 1 << 20]);
        let Encoded::Applied { params, output } = ZstdCodec::new(3).unwrap().encode(&ctx, big).unwrap() else {
            panic!()
        };
        assert!(output.len() < 1024);
        let small = ZstdCodec::new(3).unwrap().max_decoded_bytes(64 * 1024).unwrap();
        assert!(matches!(small.decode(&ctx, &params, output), Err(CodecError::TooLarge { limit: 65536, .. })));
    }

    #[test]
    fn dictionaries_round_trip_and_unknown_ids_fail() {
        let samples: Vec<Vec<u8>> = (0..500)
            .map(|i| {
                format!(r#"{{"id":{i},"name":"user-{i}","email":"user{i}@example.com","active":true}}"#).into_bytes()
            })
            .collect();
        let dict = ZstdDictionary::train(&samples, 4096).unwrap();
        let with = ZstdCodec::new(3).unwrap().min_size(16).dictionary(dict.clone()).unwrap();
        let without = ZstdCodec::new(3).unwrap().min_size(16);
        let k = ctx_key();
        let ctx = CodecContext { key: &k, meta_section: b"" };
        let v = Bytes::from(r#"{"id":9001,"name":"user-9001","email":"user9001@example.com","active":true}"#);
        let Encoded::Applied { params, output } = with.encode(&ctx, v.clone()).unwrap() else { panic!() };
        assert_eq!(params[0], WITH_DICT);
        assert_eq!(with.decode(&ctx, &params, output.clone()).unwrap(), v);
        let e = without.decode(&ctx, &params, output).unwrap_err();
        assert!(e.to_string().contains(&format!("dictionary {}", dict.id())), "{e}");
        assert!(ZstdDictionary::from_bytes(vec![1u8, 2, 3]).is_err());
    }
}
