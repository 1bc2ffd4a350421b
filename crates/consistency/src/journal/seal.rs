//! Sealing: journal and dead-letter records passed through a codec pipeline (the cache's
//! encryption, compression, ...) so that keys and values are not stored in plaintext.
//!
//! A sealed body is
//!
//! ```text
//! steps: u8 | (codec id: u8 | params_len: u16 LE | params) * steps | output
//! ```
//!
//! where `output` is the pipeline's result for the plaintext
//!
//! ```text
//! op: u8 (1 put, 2 delete) | key_len: u32 LE | key | value (empty for a delete)
//! ```
//!
//! The codecs see a [`CodecContext`] whose key is `(cache, namespace, "write-behind")` (so the
//! cache's namespace picks the data key, as for its remote tiers) and whose metadata section is
//! a domain tag followed by a number: the record's sequence number in the journal, the line's
//! timestamp in the dead-letter file. An encrypting codec binds its output to both, so a sealed
//! body moved to another sequence number, another cache or the other file does not open.
//!
//! On replay sealed records are opened and plaintext ones are refused when
//! the pipeline has a codec required on decode (unless plaintext replay is allowed).
//!
//! Opening treats the body as hostile: a malformed body, an unknown codec, a missing required
//! codec (plaintext planted in the journal), a wrong key or a tampered byte is a
//! [`CodecError`], never a panic.

use std::path::PathBuf;

use bytes::Bytes;
use strata_cache_core::frame::CodecStep;
use strata_cache_core::{CacheError, CodecContext, CodecError, CodecPipeline, Key, Namespace};

use super::Replayed;
use crate::error::ConsistencyError;

/// The key id in the codec context of sealed records (never a cache key).
const CONTEXT_ID: &str = "write-behind";
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

/// What a sealed body belongs to (bound into the seal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Domain {
    /// A journal data record; the number is its sequence number.
    Journal,
    /// A dead-letter line; the number is its timestamp (ms).
    DeadLetter,
}

impl Domain {
    fn tag(self) -> &'static [u8] {
        match self {
            Domain::Journal => b"strata-journal/2",
            Domain::DeadLetter => b"strata-dead-letter/2",
        }
    }
}

fn invalid(reason: &str) -> CodecError {
    CodecError::Invalid { codec: "journal-seal", reason: reason.to_owned() }
}

/// A put or delete as plaintext bytes: the key and, for a put, the value.
pub(crate) fn encode_op(key: &[u8], value: Option<&[u8]>) -> Result<Vec<u8>, CodecError> {
    let klen = u32::try_from(key.len()).map_err(|_| invalid("key longer than 4 GiB"))?;
    let mut out = Vec::with_capacity(1 + 4 + key.len() + value.map_or(0, <[u8]>::len));
    out.push(if value.is_some() { OP_PUT } else { OP_DELETE });
    out.extend_from_slice(&klen.to_le_bytes());
    out.extend_from_slice(key);
    if let Some(v) = value {
        out.extend_from_slice(v);
    }
    Ok(out)
}

/// The key and (for a put) the value of bytes made by [`encode_op`].
pub(crate) fn decode_op(plain: &[u8]) -> Result<(&[u8], Option<&[u8]>), CodecError> {
    let (&op, rest) = plain.split_first().ok_or_else(|| invalid("empty operation"))?;
    if rest.len() < 4 {
        return Err(invalid("operation without key length"));
    }
    let mut l = [0u8; 4];
    l.copy_from_slice(&rest[..4]);
    let klen = u32::from_le_bytes(l) as usize;
    let rest = &rest[4..];
    if klen > rest.len() {
        return Err(invalid("key length past the operation"));
    }
    let (key, value) = rest.split_at(klen);
    match op {
        OP_PUT => Ok((key, Some(value))),
        OP_DELETE if value.is_empty() => Ok((key, None)),
        OP_DELETE => Err(invalid("delete with a value")),
        _ => Err(invalid("unknown operation")),
    }
}

/// Seals and opens record bodies with a codec pipeline.
pub(crate) struct Sealer {
    pipeline: CodecPipeline,
    key: Key,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("codecs", &self.pipeline).finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer for the journal of cache `cache` in `namespace`.
    pub(crate) fn new(pipeline: CodecPipeline, cache: &str, namespace: Namespace) -> Result<Self, CacheError> {
        Ok(Self { pipeline, key: Key::new(cache, namespace, CONTEXT_ID)? })
    }

    /// Whether there is any codec (otherwise records are written in plaintext).
    pub(crate) fn is_active(&self) -> bool {
        !self.pipeline.is_empty()
    }

    /// Whether the pipeline has a codec that must be present when opening (encryption): then
    /// plaintext records are not accepted in place of sealed ones.
    pub(crate) fn requires_seal(&self) -> bool {
        self.pipeline.codecs().iter().any(|c| c.required_on_decode())
    }

    fn meta(domain: Domain, n: u64) -> Vec<u8> {
        let mut m = domain.tag().to_vec();
        m.extend_from_slice(&n.to_le_bytes());
        m
    }

    /// Seals `plain` for `domain` and number `n`.
    pub(crate) fn seal(&self, domain: Domain, n: u64, plain: &[u8]) -> Result<Vec<u8>, CodecError> {
        let meta = Self::meta(domain, n);
        let ctx = CodecContext { key: &self.key, meta_section: &meta };
        let (steps, output) = self.pipeline.encode(&ctx, Bytes::copy_from_slice(plain))?;
        let count = u8::try_from(steps.len()).map_err(|_| invalid("more than 255 codec steps"))?;
        let params: usize = steps.iter().map(|s| 3 + s.params.len()).sum();
        let mut out = Vec::with_capacity(1 + params + output.len());
        out.push(count);
        for s in &steps {
            let plen = u16::try_from(s.params.len()).map_err(|_| invalid("codec parameters over 64 KiB"))?;
            out.push(s.id);
            out.extend_from_slice(&plen.to_le_bytes());
            out.extend_from_slice(&s.params);
        }
        out.extend_from_slice(&output);
        Ok(out)
    }

    /// Opens a body sealed for `domain` and number `n`.
    pub(crate) fn open(&self, domain: Domain, n: u64, body: &[u8]) -> Result<Vec<u8>, CodecError> {
        let (&count, mut rest) = body.split_first().ok_or_else(|| invalid("empty sealed body"))?;
        let mut steps = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            if rest.len() < 3 {
                return Err(invalid("codec step truncated"));
            }
            let id = rest[0];
            let plen = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
            rest = &rest[3..];
            if plen > rest.len() {
                return Err(invalid("codec parameters past the body"));
            }
            let (params, tail) = rest.split_at(plen);
            steps.push(CodecStep { id, params: params.to_vec() });
            rest = tail;
        }
        let meta = Self::meta(domain, n);
        let ctx = CodecContext { key: &self.key, meta_section: &meta };
        let plain = self.pipeline.decode(&ctx, &steps, Bytes::copy_from_slice(rest))?;
        Ok(plain.to_vec())
    }
}

/// A data record found by the journal scan, before it is opened.
pub(super) enum Found {
    /// A plaintext put (`value` is `Some`) or delete.
    Plain { key: Vec<u8>, value: Option<Vec<u8>> },
    /// A sealed body.
    Sealed(Vec<u8>),
}

/// A found data record and where it was.
pub(super) struct FoundRecord {
    pub(super) seq: u64,
    pub(super) body: Found,
    pub(super) segment: PathBuf,
}

/// Opens the records to replay: sealed ones with `sealer`, plaintext ones as they are unless
/// the sealer requires encryption and `replay_plaintext` is off. Every record is tried, so the
/// error counts all that cannot be replayed.
pub(super) fn open_records(
    found: Vec<FoundRecord>,
    sealer: &Sealer,
    replay_plaintext: bool,
) -> Result<Vec<Replayed>, ConsistencyError> {
    let refuse_plain = sealer.requires_seal() && !replay_plaintext;
    let mut out = Vec::with_capacity(found.len());
    let mut unreadable: Option<(PathBuf, u64, CodecError)> = None;
    let mut unreadable_n = 0usize;
    let mut plain: Option<PathBuf> = None;
    let mut plain_n = 0usize;
    for r in found {
        match r.body {
            Found::Plain { .. } if refuse_plain => {
                plain_n += 1;
                plain.get_or_insert(r.segment);
            }
            Found::Plain { key, value } => out.push(Replayed { seq: r.seq, key, value, segment: r.segment }),
            Found::Sealed(body) => {
                let opened = sealer.open(Domain::Journal, r.seq, &body).and_then(|p| {
                    let (key, value) = decode_op(&p)?;
                    Ok((key.to_vec(), value.map(<[u8]>::to_vec)))
                });
                match opened {
                    Ok((key, value)) => out.push(Replayed { seq: r.seq, key, value, segment: r.segment }),
                    Err(e) => {
                        unreadable_n += 1;
                        unreadable.get_or_insert((r.segment, r.seq, e));
                    }
                }
            }
        }
    }
    if let Some((segment, seq, source)) = unreadable {
        return Err(ConsistencyError::JournalUnreadable { segment, seq, records: unreadable_n, source });
    }
    if let Some(segment) = plain {
        return Err(ConsistencyError::JournalPlaintext { segment, records: plain_n });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use strata_cache_core::{Codec, Encoded};

    use super::*;

    /// Adds a keyed checksum byte and XORs: enough to test binding and refusal, no crypto.
    struct ToyCipher(u8);
    impl Codec for ToyCipher {
        fn id(&self) -> u8 {
            90
        }
        fn name(&self) -> &'static str {
            "toy-cipher"
        }
        fn required_on_decode(&self) -> bool {
            true
        }
        fn encode(&self, ctx: &CodecContext<'_>, input: Bytes) -> Result<Encoded, CodecError> {
            let ad = ctx.associated_data();
            let sum = ad.iter().chain(input.iter()).fold(self.0, |a, b| a.wrapping_mul(31).wrapping_add(*b));
            let mut out: Vec<u8> = input.iter().map(|b| b ^ self.0).collect();
            out.push(sum);
            Ok(Encoded::Applied { params: vec![1], output: out.into() })
        }
        fn decode(&self, ctx: &CodecContext<'_>, _: &[u8], input: Bytes) -> Result<Bytes, CodecError> {
            let (&sum, body) = input.split_last().ok_or(CodecError::Integrity { codec: "toy-cipher" })?;
            let plain: Vec<u8> = body.iter().map(|b| b ^ self.0).collect();
            let ad = ctx.associated_data();
            let want = ad.iter().chain(plain.iter()).fold(self.0, |a, b| a.wrapping_mul(31).wrapping_add(*b));
            if want != sum {
                return Err(CodecError::Integrity { codec: "toy-cipher" });
            }
            Ok(plain.into())
        }
    }

    fn sealer(k: u8) -> Sealer {
        let mut p = CodecPipeline::new();
        p.push(Arc::new(ToyCipher(k))).unwrap();
        Sealer::new(p, "c", Namespace::default_namespace()).unwrap()
    }

    #[test]
    fn op_round_trips_and_rejects_garbage() {
        for (k, v) in [(&b"k"[..], Some(&b"v"[..])), (b"", Some(b"")), (b"key", None)] {
            let b = encode_op(k, v).unwrap();
            assert_eq!(decode_op(&b).unwrap(), (k, v));
        }
        for bad in [&b""[..], b"\x01", b"\x01\x05\0\0\0ab", b"\x03\0\0\0\0", b"\x02\0\0\0\0x"] {
            assert!(decode_op(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn seal_binds_domain_and_number_and_refuses_plaintext() {
        let s = sealer(0x5a);
        assert!(s.requires_seal());
        let body = s.seal(Domain::Journal, 7, b"hello").unwrap();
        assert_eq!(s.open(Domain::Journal, 7, &body).unwrap(), b"hello");
        assert!(s.open(Domain::Journal, 8, &body).is_err());
        assert!(s.open(Domain::DeadLetter, 7, &body).is_err());
        assert!(sealer(0x5b).open(Domain::Journal, 7, &body).is_err());
        // No steps: plaintext in place of a sealed body.
        let mut plain = vec![0u8];
        plain.extend_from_slice(b"hello");
        assert!(matches!(s.open(Domain::Journal, 7, &plain), Err(CodecError::MissingRequired(_))));
        // Every truncation is an error, never a panic.
        for n in 0..body.len() {
            assert!(s.open(Domain::Journal, 7, &body[..n]).is_err(), "cut at {n}");
        }
    }
}
