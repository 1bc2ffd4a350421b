//! The journal's on-disk record format.
//!
//! A segment file starts with 8 magic bytes and holds records back to back:
//! [`SEGMENT_MAGIC`] (`STRJWAL1`, format 1) for a journal without codecs, whose data records are
//! plaintext; [`SEALED_SEGMENT_MAGIC`] (`STRJWAL2`, format 2) for a journal whose data records
//! are sealed by a codec pipeline. A reader of format 1 only refuses a format-2 segment as
//! corrupt (bad magic) instead of mistaking a sealed record for a torn tail. Each record is
//!
//! ```text
//! len: u32 LE | payload_crc: u32 LE | header_crc: u32 LE | payload (len bytes)
//! ```
//!
//! where `payload_crc = crc32(payload)` and `header_crc = crc32(len ‖ payload_crc)` (so that a
//! damaged length is caught before it is trusted). The payload is
//!
//! ```text
//! 1 (put)        | seq: u64 LE | key_len: u32 LE | key | value
//! 2 (delete)     | seq: u64 LE | key
//! 3 (checkpoint) | confirmed: u64 LE
//! 4 (sealed)     | seq: u64 LE | sealed body
//! ```
//!
//! Keys and values are postcard bytes (see the write-behind docs). A checkpoint says "every
//! record with `seq <= confirmed` is in the source". A sealed record's body is a put or delete
//! payload (without its sequence number) passed through the journal's codec pipeline; only the
//! sequence number stays readable (see [`seal`](super::seal) for the body's layout).

/// The first bytes of a plaintext segment file (format version 1).
pub const SEGMENT_MAGIC: &[u8; 8] = b"STRJWAL1";
/// The first bytes of a segment file whose data records are sealed (format version 2).
pub const SEALED_SEGMENT_MAGIC: &[u8; 8] = b"STRJWAL2";
/// Bytes before a record's payload.
pub const RECORD_HEADER_LEN: usize = 12;
/// The largest accepted payload (64 MiB).
pub const MAX_PAYLOAD_LEN: usize = 64 * 1024 * 1024;

const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_CHECKPOINT: u8 = 3;
const KIND_SEALED: u8 = 4;

/// One journal record, borrowing its bytes from the buffer it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// A write of `value` to `key`.
    Put {
        /// The write's sequence number (strictly increasing within a journal).
        seq: u64,
        /// The encoded key.
        key: &'a [u8],
        /// The encoded value.
        value: &'a [u8],
    },
    /// A delete of `key`.
    Delete {
        /// The write's sequence number.
        seq: u64,
        /// The encoded key.
        key: &'a [u8],
    },
    /// A put or delete whose key and value are sealed by the journal's codec pipeline.
    Sealed {
        /// The write's sequence number (also bound into the seal).
        seq: u64,
        /// The sealed body.
        body: &'a [u8],
    },
    /// Every record with `seq <= confirmed` is in the source.
    Checkpoint {
        /// The confirmed sequence number.
        confirmed: u64,
    },
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The buffer ends before the record does (a torn write when it is at the end of the log).
    #[error("record truncated: {needed} more byte(s) needed")]
    Truncated {
        /// Missing bytes.
        needed: usize,
    },
    /// The header's checksum does not match (damaged length or checksum field).
    #[error("record header checksum mismatch")]
    HeaderChecksum,
    /// The payload's checksum does not match.
    #[error("record payload checksum mismatch")]
    PayloadChecksum,
    /// The announced payload length is over [`MAX_PAYLOAD_LEN`].
    #[error("record payload of {len} bytes exceeds the limit of {MAX_PAYLOAD_LEN}")]
    TooLarge {
        /// The announced length.
        len: usize,
    },
    /// The checksums match but the payload is not a record this build understands.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    /// A segment file does not start with [`SEGMENT_MAGIC`].
    #[error("not a journal segment (bad magic bytes)")]
    BadSegmentHeader,
}

impl Record<'_> {
    /// Encoded payload length.
    fn payload_len(&self) -> usize {
        match self {
            Record::Put { key, value, .. } => 1 + 8 + 4 + key.len() + value.len(),
            Record::Delete { key, .. } => 1 + 8 + key.len(),
            Record::Sealed { body, .. } => 1 + 8 + body.len(),
            Record::Checkpoint { .. } => 1 + 8,
        }
    }

    /// The data sequence number (`None` for checkpoints).
    pub fn seq(&self) -> Option<u64> {
        match self {
            Record::Put { seq, .. } | Record::Delete { seq, .. } | Record::Sealed { seq, .. } => Some(*seq),
            Record::Checkpoint { .. } => None,
        }
    }

    /// Appends the framed record to `out`. Fails when the payload exceeds [`MAX_PAYLOAD_LEN`] or
    /// the key exceeds `u32::MAX` bytes; `out` is unchanged then.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        let len = self.payload_len();
        if len > MAX_PAYLOAD_LEN {
            return Err(RecordError::TooLarge { len });
        }
        let start = out.len();
        out.extend_from_slice(&[0; RECORD_HEADER_LEN]);
        match self {
            Record::Put { seq, key, value } => {
                out.push(KIND_PUT);
                out.extend_from_slice(&seq.to_le_bytes());
                let klen = u32::try_from(key.len()).map_err(|_| RecordError::TooLarge { len })?;
                out.extend_from_slice(&klen.to_le_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(value);
            }
            Record::Delete { seq, key } => {
                out.push(KIND_DELETE);
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(key);
            }
            Record::Sealed { seq, body } => {
                out.push(KIND_SEALED);
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(body);
            }
            Record::Checkpoint { confirmed } => {
                out.push(KIND_CHECKPOINT);
                out.extend_from_slice(&confirmed.to_le_bytes());
            }
        }
        let payload_crc = crc32fast::hash(&out[start + RECORD_HEADER_LEN..]);
        // len <= MAX_PAYLOAD_LEN < u32::MAX
        let len32 = len as u32;
        let mut h = [0u8; 8];
        h[..4].copy_from_slice(&len32.to_le_bytes());
        h[4..].copy_from_slice(&payload_crc.to_le_bytes());
        let header_crc = crc32fast::hash(&h);
        out[start..start + 8].copy_from_slice(&h);
        out[start + 8..start + 12].copy_from_slice(&header_crc.to_le_bytes());
        Ok(())
    }

    /// The framed record as a new buffer.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        let mut v = Vec::with_capacity(RECORD_HEADER_LEN + self.payload_len());
        self.encode_into(&mut v)?;
        Ok(v)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes the record at the start of `buf`; returns it and its framed length. Never panics,
/// whatever the bytes.
pub fn decode_record(buf: &[u8]) -> Result<(Record<'_>, usize), RecordError> {
    if buf.len() < RECORD_HEADER_LEN {
        return Err(RecordError::Truncated { needed: RECORD_HEADER_LEN - buf.len() });
    }
    if crc32fast::hash(&buf[..8]) != u32_at(buf, 8) {
        return Err(RecordError::HeaderChecksum);
    }
    let len = u32_at(buf, 0) as usize;
    if len > MAX_PAYLOAD_LEN {
        return Err(RecordError::TooLarge { len });
    }
    let total = RECORD_HEADER_LEN + len;
    if buf.len() < total {
        return Err(RecordError::Truncated { needed: total - buf.len() });
    }
    let p = &buf[RECORD_HEADER_LEN..total];
    if crc32fast::hash(p) != u32_at(buf, 4) {
        return Err(RecordError::PayloadChecksum);
    }
    let record = decode_payload(p)?;
    Ok((record, total))
}

fn decode_payload(p: &[u8]) -> Result<Record<'_>, RecordError> {
    let (&kind, rest) = p.split_first().ok_or(RecordError::Malformed("empty payload"))?;
    if rest.len() < 8 {
        return Err(RecordError::Malformed("payload shorter than its sequence number"));
    }
    let n = u64_at(rest, 0);
    let rest = &rest[8..];
    match kind {
        KIND_PUT => {
            if rest.len() < 4 {
                return Err(RecordError::Malformed("put without key length"));
            }
            let klen = u32_at(rest, 0) as usize;
            let rest = &rest[4..];
            if klen > rest.len() {
                return Err(RecordError::Malformed("key length past the payload"));
            }
            let (key, value) = rest.split_at(klen);
            Ok(Record::Put { seq: n, key, value })
        }
        KIND_DELETE => Ok(Record::Delete { seq: n, key: rest }),
        KIND_SEALED => Ok(Record::Sealed { seq: n, body: rest }),
        KIND_CHECKPOINT if rest.is_empty() => Ok(Record::Checkpoint { confirmed: n }),
        KIND_CHECKPOINT => Err(RecordError::Malformed("checkpoint with trailing bytes")),
        _ => Err(RecordError::Malformed("unknown record kind")),
    }
}

/// The framed length a record header at the start of `buf` claims, when the header is intact
/// (checksum matches, length within [`MAX_PAYLOAD_LEN`]).
fn claimed_span(buf: &[u8]) -> Option<usize> {
    if buf.len() < RECORD_HEADER_LEN || crc32fast::hash(&buf[..8]) != u32_at(buf, 8) {
        return None;
    }
    let len = u32_at(buf, 0) as usize;
    (len <= MAX_PAYLOAD_LEN).then_some(RECORD_HEADER_LEN + len)
}

/// How a scan of one segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte belonged to a valid record.
    Clean,
    /// The bytes from `offset` on are not a valid record.
    Damaged {
        /// Where the first invalid record starts.
        offset: usize,
        /// Why it is invalid.
        error: RecordError,
        /// Whether a valid record can be found anywhere after `offset` (then the damage is in
        /// the middle of the log, not a torn tail).
        valid_after: bool,
    },
}

/// The result of [`scan_segment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan<'a> {
    /// The valid records before any damage, with their offsets.
    pub records: Vec<(usize, Record<'a>)>,
    /// How the scan ended.
    pub end: ScanEnd,
}

/// Scans a whole segment file's bytes (magic included, either format). Never panics.
///
/// A segment shorter than its magic whose bytes are a prefix of a magic (or zeros) is a torn
/// creation: [`ScanEnd::Damaged`] at offset 0 with `valid_after: false`.
pub fn scan_segment(bytes: &[u8]) -> SegmentScan<'_> {
    let magic_len = SEGMENT_MAGIC.len();
    if bytes.len() < magic_len {
        let n = bytes.len();
        let torn = bytes == &SEGMENT_MAGIC[..n] || bytes == &SEALED_SEGMENT_MAGIC[..n] || bytes.iter().all(|&b| b == 0);
        let error = if torn { RecordError::Truncated { needed: magic_len - n } } else { RecordError::BadSegmentHeader };
        return SegmentScan { records: Vec::new(), end: ScanEnd::Damaged { offset: 0, error, valid_after: !torn } };
    }
    if &bytes[..magic_len] != SEGMENT_MAGIC && &bytes[..magic_len] != SEALED_SEGMENT_MAGIC {
        let zeros = bytes.iter().all(|&b| b == 0);
        return SegmentScan {
            records: Vec::new(),
            end: ScanEnd::Damaged { offset: 0, error: RecordError::BadSegmentHeader, valid_after: !zeros },
        };
    }
    let mut records = Vec::new();
    let mut at = magic_len;
    while at < bytes.len() {
        match decode_record(&bytes[at..]) {
            Ok((r, n)) => {
                records.push((at, r));
                at += n;
            }
            Err(error) => {
                let valid_after = match claimed_span(&bytes[at..]) {
                    // The header is intact and the record runs past the end of the file: the
                    // write was torn. Bytes inside the claimed span are its payload (which may
                    // well contain valid-looking records), not later records.
                    Some(_) if matches!(error, RecordError::Truncated { .. }) => false,
                    // An intact header with a damaged payload: only what follows the span it
                    // claims can show that the damage is in the middle of the log.
                    Some(span) => (at + span..bytes.len()).any(|q| decode_record(&bytes[q..]).is_ok()),
                    None => (at + 1..bytes.len()).any(|q| decode_record(&bytes[q..]).is_ok()),
                };
                return SegmentScan { records, end: ScanEnd::Damaged { offset: at, error, valid_after } };
            }
        }
    }
    SegmentScan { records, end: ScanEnd::Clean }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_each_kind() {
        for r in [
            Record::Put { seq: 7, key: b"k", value: b"value" },
            Record::Put { seq: u64::MAX, key: b"", value: b"" },
            Record::Delete { seq: 9, key: b"key" },
            Record::Sealed { seq: 11, body: b"\x01\x02opaque" },
            Record::Sealed { seq: 0, body: b"" },
            Record::Checkpoint { confirmed: 42 },
        ] {
            let b = r.encode().unwrap();
            assert_eq!(decode_record(&b).unwrap(), (r, b.len()));
        }
    }

    fn segment_with(records: &[Record<'_>]) -> Vec<u8> {
        let mut b = SEGMENT_MAGIC.to_vec();
        for r in records {
            r.encode_into(&mut b).unwrap();
        }
        b
    }

    #[test]
    fn torn_record_with_a_valid_record_inside_its_payload_is_a_torn_tail() {
        let inner = Record::Put { seq: 99, key: b"x", value: b"y" }.encode().unwrap();
        let mut value = vec![7u8; 16];
        value.extend_from_slice(&inner);
        value.extend_from_slice(&[7u8; 16]);
        let mut b = segment_with(&[Record::Checkpoint { confirmed: 0 }]);
        let torn_at = b.len();
        Record::Put { seq: 1, key: b"k", value: &value }.encode_into(&mut b).unwrap();
        // Cut after the embedded record but before the end of the outer one.
        b.truncate(b.len() - 8);
        let scan = scan_segment(&b);
        assert_eq!(scan.records.len(), 1);
        match scan.end {
            ScanEnd::Damaged { offset, error, valid_after } => {
                assert_eq!(offset, torn_at);
                assert!(matches!(error, RecordError::Truncated { .. }), "{error:?}");
                assert!(!valid_after, "the embedded record must not count as a later record");
            }
            ScanEnd::Clean => panic!("expected damage"),
        }
    }

    #[test]
    fn damaged_payload_with_a_record_after_its_span_is_mid_log_damage() {
        let mut b = segment_with(&[Record::Put { seq: 1, key: b"k", value: b"some value" }]);
        let second = b.len();
        Record::Put { seq: 2, key: b"k", value: b"other value" }.encode_into(&mut b).unwrap();
        Record::Delete { seq: 3, key: b"k" }.encode_into(&mut b).unwrap();
        // Damage the second record's payload; its header stays intact.
        b[second + RECORD_HEADER_LEN + 3] ^= 0xff;
        match scan_segment(&b).end {
            ScanEnd::Damaged { offset, error, valid_after } => {
                assert_eq!(offset, second);
                assert_eq!(error, RecordError::PayloadChecksum);
                assert!(valid_after);
            }
            ScanEnd::Clean => panic!("expected damage"),
        }
        // The same damage in the last record, with a valid record embedded in its payload, is
        // still a tail: nothing valid follows its span.
        let inner = Record::Delete { seq: 9, key: b"z" }.encode().unwrap();
        let mut b = segment_with(&[Record::Checkpoint { confirmed: 0 }]);
        let last = b.len();
        Record::Put { seq: 1, key: b"k", value: &inner }.encode_into(&mut b).unwrap();
        b[last + RECORD_HEADER_LEN + 1] ^= 0xff;
        assert!(matches!(scan_segment(&b).end, ScanEnd::Damaged { offset, valid_after: false, .. } if offset == last));
    }

    #[test]
    fn damaged_length_is_caught_by_the_header_checksum() {
        let mut b = Record::Put { seq: 1, key: b"a", value: b"b" }.encode().unwrap();
        b[0] ^= 0x40;
        assert_eq!(decode_record(&b).unwrap_err(), RecordError::HeaderChecksum);
    }
}
