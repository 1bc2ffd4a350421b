//! Small text helpers shared by the crates above (no dependency needed for so little):
//! lower-case hex, and escaping a literal for a Redis glob pattern.

/// Lower-case hex encoding and decoding.
pub mod hex {
    /// Encodes `bytes` as lower-case hex.
    ///
    /// ```
    /// assert_eq!(strata_cache_core::text::hex::encode(&[0x00, 0xab, 0x7f]), "00ab7f");
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
}

/// Escapes a literal (a key id, a prefix) for use inside a Redis glob (`SCAN … MATCH`, `KEYS`):
/// `*`, `?`, `[`, `]` and `\` get a backslash, so a key id such as `a*` matches only itself and
/// cannot widen an invalidation to `ab`, `ac`, …
///
/// ```
/// assert_eq!(strata_cache_core::text::escape_glob(r"a*b?[c]\d"), r"a\*b\?\[c\]\\d");
/// ```
pub fn escape_glob(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len() + 4);
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::hex;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(hex::encode(&[0x00, 0xab, 0x7f]), "00ab7f");
        for b in [&b""[..], b"\x00", b"\xff\x10abc"] {
            assert_eq!(hex::decode(&hex::encode(b)), Ok(b.to_vec()));
        }
        assert_eq!(hex::decode("0A"), Ok(vec![10]));
        for bad in ["0", "zz", "0g", "é0"] {
            assert!(hex::decode(bad).is_err(), "{bad}");
        }
        assert!(hex::is_lower_hex("00ab7f", 6));
        assert!(!hex::is_lower_hex("00AB7F", 6));
        assert!(!hex::is_lower_hex("00ab7", 6));
    }

    #[test]
    fn glob_escape() {
        assert_eq!(super::escape_glob("plain:key"), "plain:key");
        assert_eq!(super::escape_glob(r"a*b?[c]\d"), r"a\*b\?\[c\]\\d");
    }
}
