//! Glob patterns: [`Pattern`] (cache and namespace patterns in access grants) and the escaping
//! of hostile key ids for Redis `SCAN … MATCH` / `KEYS` patterns ([`escape_glob`]).

use std::fmt;

/// Longest accepted access pattern.
pub const MAX_PATTERN_LEN: usize = 128;

/// An access-grant pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// A pattern over cache or namespace names: `*` matches any run of characters (including
/// none), `?` exactly one; everything else matches itself. `tenant-*` is a prefix pattern, `*`
/// matches everything.
///
/// Names are `[A-Za-z0-9_.-]`, so a pattern may only contain those and `*`/`?`: anything else
/// could never match and is refused as a likely mistake.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    raw: Box<str>,
    literal: bool,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.raw, f)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl std::str::FromStr for Pattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Pattern {
    /// Parses and validates a pattern.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let err = |reason| PatternError { pattern: pattern.chars().take(MAX_PATTERN_LEN).collect(), reason };
        if pattern.is_empty() {
            return Err(err("empty pattern (use `*` to match everything)"));
        }
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(err("longer than 128 bytes"));
        }
        if !pattern.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'*' | b'?')) {
            return Err(err("may only contain [A-Za-z0-9_.-] and the wildcards `*` and `?`"));
        }
        let literal = !pattern.contains(['*', '?']);
        Ok(Self { raw: pattern.into(), literal })
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        if self.literal {
            return *self.raw == *name;
        }
        wildcard_match(self.raw.as_bytes(), name.as_bytes())
    }
}

/// `*`/`?` matching in O(pattern × text) worst case, without recursion.
fn wildcard_match(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

pub use strata_cache_core::text::escape_glob;

/// Redis's glob matcher (`stringmatchlen` in `util.c`), for testing escaped patterns without a
/// server: `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\x`.
pub fn redis_glob_match(pattern: &[u8], string: &[u8]) -> bool {
    redis_match(pattern, string, 0)
}

fn redis_match(mut p: &[u8], mut s: &[u8], depth: usize) -> bool {
    if depth > 64 {
        return false; // Redis also bounds its recursion (nesting of `*`).
    }
    while !p.is_empty() && !s.is_empty() {
        match p[0] {
            b'*' => {
                while p.len() > 1 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                for i in 0..s.len() {
                    if redis_match(&p[1..], &s[i..], depth + 1) {
                        return true;
                    }
                }
                return false;
            }
            b'?' => s = &s[1..],
            b'[' => {
                p = &p[1..];
                let not = p.first() == Some(&b'^');
                if not {
                    p = &p[1..];
                }
                let mut matched = false;
                loop {
                    if p.is_empty() {
                        break; // unterminated class: Redis treats the end as `]`
                    }
                    if p[0] == b'\\' && p.len() >= 2 {
                        p = &p[1..];
                        if p[0] == s[0] {
                            matched = true;
                        }
                    } else if p[0] == b']' {
                        break;
                    } else if p.len() >= 3 && p[1] == b'-' {
                        let (mut lo, mut hi) = (p[0], p[2]);
                        if lo > hi {
                            std::mem::swap(&mut lo, &mut hi);
                        }
                        p = &p[2..];
                        if (lo..=hi).contains(&s[0]) {
                            matched = true;
                        }
                    } else if p[0] == s[0] {
                        matched = true;
                    }
                    p = &p[1..];
                }
                if not {
                    matched = !matched;
                }
                if !matched {
                    return false;
                }
                s = &s[1..];
                if p.is_empty() {
                    // Ran off the end inside the class.
                    return s.is_empty();
                }
            }
            b'\\' if p.len() >= 2 => {
                p = &p[1..];
                if p[0] != s[0] {
                    return false;
                }
                s = &s[1..];
            }
            c => {
                if c != s[0] {
                    return false;
                }
                s = &s[1..];
            }
        }
        p = &p[1..];
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && s.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn patterns() {
        let p = Pattern::parse("tenant-*").unwrap();
        assert!(p.matches("tenant-1") && p.matches("tenant-") && !p.matches("tenant") && !p.matches("x-tenant-1"));
        let q = Pattern::parse("eu-?").unwrap();
        assert!(q.matches("eu-1") && !q.matches("eu-12") && !q.matches("eu-"));
        assert!(Pattern::parse("*").unwrap().matches(""));
        assert!(Pattern::parse("a*b*c").unwrap().matches("aXbYbZc"));
        assert!(!Pattern::parse("a*b*c").unwrap().matches("aXbYbZ"));
        assert!(Pattern::parse("exact").unwrap().matches("exact"));
        for bad in ["", "a b", "a:b", "[ab]", "é", &"x".repeat(129)] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn redis_matcher_semantics() {
        let m = |p: &str, s: &str| redis_glob_match(p.as_bytes(), s.as_bytes());
        assert!(m("a*", "ab") && m("a*", "a") && m("h?llo", "hello") && m("h[ae]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello") && m("h[^e]llo", "hallo") && m("h[a-b]llo", "hbllo"));
        assert!(m(r"a\*", "a*") && !m(r"a\*", "ab"));
        // Like Redis: an empty string only matches an empty pattern.
        assert!(!m("*", "") && !m("[", "") && !m("a", "") && m("", ""));
        assert!(!m("a[", "ab") && m("a[b", "ab")); // unterminated classes end at the pattern end
    }

    #[test]
    fn escaped_hostile_key_matches_only_itself() {
        let prefix = "users:default:";
        let pattern = format!("{prefix}{}", escape_glob("a*"));
        assert!(redis_glob_match(pattern.as_bytes(), format!("{prefix}a*").as_bytes()));
        for other in ["ab", "a", "aa*", "a**", "b*"] {
            assert!(!redis_glob_match(pattern.as_bytes(), format!("{prefix}{other}").as_bytes()), "{other}");
        }
        // Unescaped, the same id widens the match: this is what escaping prevents.
        assert!(redis_glob_match(format!("{prefix}a*").as_bytes(), format!("{prefix}ab").as_bytes()));
    }

    proptest! {
        #[test]
        fn escaped_literal_matches_exactly_itself(lit in "[a-c*?\\[\\]\\\\^-]{0,8}", other in "[a-c*?\\[\\]\\\\^-]{0,8}") {
            let pat = escape_glob(&lit);
            prop_assert!(redis_glob_match(pat.as_bytes(), lit.as_bytes()));
            prop_assert_eq!(redis_glob_match(pat.as_bytes(), other.as_bytes()), lit == other);
        }

        #[test]
        fn wildcard_agrees_with_redis_on_star_and_question(p in "[ab*?]{0,8}", s in "[ab]{1,10}") {
            prop_assert_eq!(wildcard_match(p.as_bytes(), s.as_bytes()), redis_glob_match(p.as_bytes(), s.as_bytes()));
        }
    }
}
