//! The tag column: `|t1|t2|`, each tag with `%` and `|` percent-encoded.
//!
//! Inside the column `|` appears only as a separator, so the needle `|enc(tag)|` occurs exactly
//! when an element equals `enc(tag)`, and the encoding is injective: a byte-wise substring
//! search (`instr`, `position`, `LOCATE` on a binary column) matches whole tags exactly. The
//! needle is a bound parameter and no `LIKE` pattern is involved, so `%`, `_` and `\` in a tag
//! are ordinary bytes.

/// Encodes one tag into `out`.
fn encode_into(tag: &str, out: &mut Vec<u8>) {
    for &b in tag.as_bytes() {
        match b {
            b'%' => out.extend_from_slice(b"%25"),
            b'|' => out.extend_from_slice(b"%7C"),
            _ => out.push(b),
        }
    }
}

/// The column value for a list of tags (`|` alone for none).
pub(crate) fn encode_list(tags: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + tags.iter().map(|t| t.len() + 1).sum::<usize>());
    out.push(b'|');
    for t in tags {
        encode_into(t, &mut out);
        out.push(b'|');
    }
    out
}

/// The needle that finds `tag` in a column value.
pub(crate) fn needle(tag: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(tag.len() + 2);
    out.push(b'|');
    encode_into(tag, &mut out);
    out.push(b'|');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn exact_matching() {
        let list = encode_list(&["a|b".into(), "c%".into(), "".into(), "x_y".into()]);
        assert_eq!(list, b"|a%7Cb|c%25||x_y|");
        for t in ["a|b", "c%", "", "x_y"] {
            assert!(contains(&list, &needle(t)), "{t:?}");
        }
        for t in ["a", "b", "c", "%", "|", "x", "y", "x%y", "a%7Cb", "c%25", "%7C"] {
            assert!(!contains(&list, &needle(t)), "{t:?}");
        }
        assert_eq!(encode_list(&[]), b"|");
        assert!(!contains(&encode_list(&[]), &needle("")));
    }

    proptest::proptest! {
        #[test]
        fn matches_iff_member(tags in proptest::collection::vec("[a|%_\\\\b]{0,4}", 0..5), probe in "[a|%_\\\\b]{0,4}") {
            let list = encode_list(&tags);
            proptest::prop_assert_eq!(contains(&list, &needle(&probe)), tags.contains(&probe));
        }
    }
}
