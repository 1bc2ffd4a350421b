//! Lower-case hex encoding and decoding: the one implementation the workspace uses (audit chain
//! hashes, keyed-hash cache keys, the write-behind dead-letter file). No dependency for so little.
//!
//! ```
//! use strata_governance::hex;
//!
//! let s = hex::encode(&[0x00, 0xab, 0x7f]);
//! assert_eq!(s, "00ab7f");
//! assert_eq!(hex::decode("00AB7f"), Ok(vec![0x00, 0xab, 0x7f]));
//! assert!(hex::is_lower_hex(&s, 6));
//! ```

/// Encodes `bytes` as lower-case hex.
///
/// ```
/// assert_eq!(strata_governance::hex::encode(&[0x00, 0xab, 0x7f]), "00ab7f");
/// ```
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Decodes hex digits (either case).
///
/// # Errors
/// An odd number of digits, or a character that is not a hex digit.
pub fn decode(s: &str) -> Result<Vec<u8>, &'static str> {
    if !s.len().is_multiple_of(2) {
        return Err("odd number of hex digits");
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err("not a hex digit"),
    };
    s.as_bytes().chunks_exact(2).map(|p| Ok((digit(p[0])? << 4) | digit(p[1])?)).collect()
}

/// Whether `s` is exactly `len` lower-case hex digits.
pub fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        assert_eq!(encode(&[0x00, 0xab, 0x7f]), "00ab7f");
        for b in [&b""[..], b"\x00", b"\xff\x10abc", b"hello"] {
            assert_eq!(decode(&encode(b)), Ok(b.to_vec()));
        }
        assert_eq!(decode("0A"), Ok(vec![10]));
        assert_eq!(decode("FF10"), Ok(vec![0xff, 0x10]));
        for bad in ["0", "zz", "0g", "é0"] {
            assert!(decode(bad).is_err(), "{bad}");
        }
        assert!(is_lower_hex("00ab7f", 6));
        assert!(!is_lower_hex("00AB7F", 6));
        assert!(!is_lower_hex("00ab7", 6));
    }
}
