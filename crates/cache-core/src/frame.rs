//! The versioned, self-describing frame stored in remote tiers.
//!
//! ```text
//! offset size  field
//! 0      2     magic "ST"
//! 2      1     format version (1)
//! 3      1     flags (bit 0: negative entry; other bits must be 0)
//! 4      1     serializer id (1 postcard, 2 json, 64.. third-party: see [`crate::ids`])
//! 5      8     created        (ms since epoch, little endian)
//! 13     8     fresh_until    (ms)
//! 21     8     expires_at     (ms, hard expiry)
//! 29     8     version
//! 37     4     load cost (µs)
//! 41     1     tag count (≤ 32), then per tag: u8 length (1..=255) + UTF-8
//! ..     1     codec count (≤ 8), then per codec in the order applied:
//!              u8 codec id, u16 params length (≤ 1024), params (key id, nonce, dictionary id …)
//! ..     4     payload length (u32)
//! ..     n     payload (serialized value after every codec)
//! end-4  4     CRC-32 of every byte before it
//! ```
//!
//! The bytes from offset 0 to the end of the tags are the *metadata section*; codecs may bind
//! it as associated data (the AES-GCM codec does) so that tampering with the expiry is detected.
//! The trailing CRC-32 catches accidental corruption and truncation (it is not a MAC; encryption
//! is what protects against deliberate tampering).
//! The decoder treats its input as hostile: every length is checked, every failure is a
//! [`FrameError`], never a panic.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::clock::Timestamp;
use crate::error::FrameError;
use crate::meta::EntryMeta;

/// Magic bytes at the start of every frame.
pub const MAGIC: [u8; 2] = *b"ST";
/// The frame format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Most tags per entry.
pub const MAX_TAGS: usize = 32;
/// Longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 255;
/// Most codecs per frame.
pub const MAX_CODECS: usize = 8;
/// Longest codec parameter block, in bytes.
pub const MAX_CODEC_PARAMS: usize = 1024;

const FLAG_NEGATIVE: u8 = 0b0000_0001;
const KNOWN_FLAGS: u8 = FLAG_NEGATIVE;

/// One codec applied to the payload, with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecStep {
    /// The codec's id.
    pub id: u8,
    /// Codec-specific parameters (e.g. key id and nonce).
    pub params: Vec<u8>,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Entry metadata.
    pub meta: EntryMeta,
    /// Which serializer produced the payload (before codecs).
    pub serializer: u8,
    /// The codecs applied, in the order they were applied.
    pub codecs: Vec<CodecStep>,
    /// The payload after every codec.
    pub payload: Bytes,
}

/// Encodes the metadata section (header + metadata + tags).
pub fn encode_meta(meta: &EntryMeta, serializer: u8) -> Result<BytesMut, FrameError> {
    if meta.tags.len() > MAX_TAGS {
        return Err(FrameError::Invalid("too many tags"));
    }
    let tag_bytes: usize = meta.tags.iter().map(|t| t.len() + 1).sum();
    let mut buf = BytesMut::with_capacity(42 + tag_bytes);
    buf.put_slice(&MAGIC);
    buf.put_u8(FORMAT_VERSION);
    buf.put_u8(if meta.negative { FLAG_NEGATIVE } else { 0 });
    buf.put_u8(serializer);
    buf.put_u64_le(meta.created.0);
    buf.put_u64_le(meta.fresh_until.0);
    buf.put_u64_le(meta.expires_at.0);
    buf.put_u64_le(meta.version);
    buf.put_u32_le(meta.load_cost_us);
    buf.put_u8(meta.tags.len() as u8);
    for t in meta.tags.iter() {
        if t.is_empty() || t.len() > MAX_TAG_LEN {
            return Err(FrameError::Invalid("tag length out of range"));
        }
        buf.put_u8(t.len() as u8);
        buf.put_slice(t.as_bytes());
    }
    Ok(buf)
}

impl Frame {
    /// Appends codec steps and payload to an encoded metadata section.
    pub fn finish(mut meta_section: BytesMut, codecs: &[CodecStep], payload: &[u8]) -> Result<Bytes, FrameError> {
        if codecs.len() > MAX_CODECS {
            return Err(FrameError::Invalid("too many codecs"));
        }
        let payload_len = u32::try_from(payload.len())
            .map_err(|_| FrameError::TooLarge { size: payload.len(), limit: u32::MAX as usize })?;
        meta_section.reserve(9 + codecs.iter().map(|c| 3 + c.params.len()).sum::<usize>() + payload.len());
        meta_section.put_u8(codecs.len() as u8);
        for c in codecs {
            if c.params.len() > MAX_CODEC_PARAMS {
                return Err(FrameError::TooLarge { size: c.params.len(), limit: MAX_CODEC_PARAMS });
            }
            meta_section.put_u8(c.id);
            meta_section.put_u16_le(c.params.len() as u16);
            meta_section.put_slice(&c.params);
        }
        meta_section.put_u32_le(payload_len);
        meta_section.put_slice(payload);
        let crc = crc32fast::hash(&meta_section);
        meta_section.put_u32_le(crc);
        Ok(meta_section.freeze())
    }

    /// Encodes the whole frame.
    pub fn encode(&self) -> Result<Bytes, FrameError> {
        Self::finish(encode_meta(&self.meta, self.serializer)?, &self.codecs, &self.payload)
    }

    /// Decodes a frame, returning it and the length of its metadata section.
    pub fn decode(bytes: &Bytes) -> Result<(Frame, usize), FrameError> {
        let mut r = Reader { buf: bytes, pos: 0 };
        if r.take(2)? != MAGIC {
            return Err(FrameError::BadMagic);
        }
        if bytes.len() < 4 {
            return Err(FrameError::Truncated { offset: bytes.len(), needed: 4 });
        }
        let body_end = bytes.len() - 4;
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&bytes[body_end..]);
        if crc32fast::hash(&bytes[..body_end]) != u32::from_le_bytes(crc) {
            return Err(FrameError::Checksum);
        }
        let mut r = Reader { buf: &bytes[..body_end], pos: 2 };
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(FrameError::UnsupportedVersion(version, FORMAT_VERSION));
        }
        let flags = r.u8()?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FrameError::UnknownFlags(flags));
        }
        let serializer = r.u8()?;
        let created = Timestamp(r.u64()?);
        let fresh_until = Timestamp(r.u64()?);
        let expires_at = Timestamp(r.u64()?);
        let version = r.u64()?;
        let load_cost_us = r.u32()?;
        if !(created <= fresh_until && fresh_until <= expires_at) {
            return Err(FrameError::Invalid("timestamps out of order"));
        }
        let ntags = usize::from(r.u8()?);
        if ntags > MAX_TAGS {
            return Err(FrameError::Invalid("too many tags"));
        }
        let mut tags = Vec::with_capacity(ntags);
        for _ in 0..ntags {
            let len = usize::from(r.u8()?);
            if len == 0 {
                return Err(FrameError::Invalid("empty tag"));
            }
            let raw = r.take(len)?;
            let tag = std::str::from_utf8(raw).map_err(|_| FrameError::Invalid("tag is not UTF-8"))?;
            tags.push(tag.to_owned());
        }
        let meta_len = r.pos;
        let ncodecs = usize::from(r.u8()?);
        if ncodecs > MAX_CODECS {
            return Err(FrameError::Invalid("too many codecs"));
        }
        let mut codecs = Vec::with_capacity(ncodecs);
        for _ in 0..ncodecs {
            let id = r.u8()?;
            let plen = usize::from(r.u16()?);
            if plen > MAX_CODEC_PARAMS {
                return Err(FrameError::TooLarge { size: plen, limit: MAX_CODEC_PARAMS });
            }
            codecs.push(CodecStep { id, params: r.take(plen)?.to_vec() });
        }
        let negative = flags & FLAG_NEGATIVE != 0;
        let plen = r.u32()? as usize;
        let start = r.pos;
        r.take(plen)?;
        if r.pos != body_end {
            return Err(FrameError::Invalid("trailing bytes after payload"));
        }
        let payload = bytes.slice(start..start + plen);
        let meta =
            EntryMeta { created, fresh_until, expires_at, version, load_cost_us, negative, tags: Arc::from(tags) };
        Ok((Frame { meta, serializer, codecs, payload }, meta_len))
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or(FrameError::Truncated {
            offset: self.pos,
            needed: n.saturating_sub(self.buf.len().saturating_sub(self.pos)),
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<bool>(),
            proptest::collection::vec("[a-z0-9:_-]{1,40}", 0..MAX_TAGS),
            any::<u8>(),
            proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..MAX_CODECS),
            proptest::collection::vec(any::<u8>(), 0..2048),
        )
            .prop_map(|(created, fresh, stale, version, cost, negative, tags, ser, codecs, payload)| {
                let created = created / 4;
                let fresh_until = created + u64::from(fresh);
                Frame {
                    meta: EntryMeta {
                        created: Timestamp(created),
                        fresh_until: Timestamp(fresh_until),
                        expires_at: Timestamp(fresh_until + u64::from(stale)),
                        version,
                        load_cost_us: cost,
                        negative,
                        tags: tags.into(),
                    },
                    serializer: ser,
                    codecs: codecs.into_iter().map(|(id, params)| CodecStep { id, params }).collect(),
                    payload: Bytes::from(payload),
                }
            })
    }

    proptest! {
        #[test]
        fn round_trip(frame in arb_frame()) {
            let bytes = frame.encode().unwrap();
            let (back, meta_len) = Frame::decode(&bytes).unwrap();
            prop_assert_eq!(&back, &frame);
            prop_assert_eq!(&bytes[..meta_len], &encode_meta(&frame.meta, frame.serializer).unwrap()[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Frame::decode(&Bytes::from(bytes));
        }

        #[test]
        fn mutated_frames_never_panic(frame in arb_frame(), idx in any::<usize>(), val in any::<u8>(), cut in any::<usize>()) {
            let mut v = frame.encode().unwrap().to_vec();
            let i = idx % v.len();
            v[i] = val;
            let _ = Frame::decode(&Bytes::from(v.clone()));
            v.truncate(cut % (v.len() + 1));
            let _ = Frame::decode(&Bytes::from(v));
        }

        #[test]
        fn every_truncation_is_an_error(frame in arb_frame(), cut in any::<usize>()) {
            let bytes = frame.encode().unwrap();
            let cut = cut % bytes.len();
            prop_assert!(Frame::decode(&bytes.slice(..cut)).is_err());
        }

        #[test]
        fn every_single_byte_corruption_is_detected(frame in arb_frame(), idx in any::<usize>(), flip in 1u8..=255) {
            let mut v = frame.encode().unwrap().to_vec();
            let i = idx % v.len();
            v[i] ^= flip;
            prop_assert!(Frame::decode(&Bytes::from(v)).is_err());
        }
    }

    #[test]
    fn typed_errors() {
        assert_eq!(Frame::decode(&Bytes::from_static(b"")), Err(FrameError::Truncated { offset: 0, needed: 2 }));
        assert_eq!(Frame::decode(&Bytes::from_static(b"XX\x01")), Err(FrameError::BadMagic));
        assert_eq!(Frame::decode(&Bytes::from_static(b"ST\x01\x80")), Err(FrameError::Checksum));
        let with_crc = |body: &[u8]| {
            let mut v = body.to_vec();
            v.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
            Bytes::from(v)
        };
        assert_eq!(Frame::decode(&with_crc(b"ST\x09")), Err(FrameError::UnsupportedVersion(9, 1)));
        assert_eq!(Frame::decode(&with_crc(b"ST\x01\x80")), Err(FrameError::UnknownFlags(0x80)));
        assert!(matches!(Frame::decode(&with_crc(b"ST\x01\x00\x01")), Err(FrameError::Truncated { .. })));
    }
}
