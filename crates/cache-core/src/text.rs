//! Small text helpers shared by the crates above (no dependency needed for so little):
//! lower-case hex (re-exported from governance), and escaping a literal for a Redis glob pattern.

/// Lower-case hex encoding and decoding: a re-export of [`strata_governance::hex`], the one copy.
///
/// ```
/// assert_eq!(strata_cache_core::text::hex::encode(&[0x00, 0xab, 0x7f]), "00ab7f");
/// ```
pub use strata_governance::hex;

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
