//! Redis key layout and Redis Cluster hash slots.
//!
//! Every key starts with the configured prefix (default `strata:`). After it:
//!
//! | what        | layout                                    |
//! |-------------|-------------------------------------------|
//! | entry       | `cache:namespace:id`                      |
//! | entry, long | `cache:namespace#<hash>` (SHA-256, 128 bits) |
//! | tag set     | `!tag:cache:namespace:tag` (or `#<hash>`) |
//! | load lock   | `!lock:cache:namespace:id` (or `#<hash>`) |
//!
//! Cache and namespace names are limited to `[A-Za-z0-9_.-]` by the core, so the three
//! families cannot collide: only entries start with a name character, and the character after
//! the namespace (`:` for a literal id, `#` for a hashed one) tells the two id forms apart.
//! Ids are stored as their raw bytes (Redis keys are binary-safe); an id whose key would exceed
//! [`KeySpace::max_key_len`] is replaced by a 128-bit hash of it, keeping its `{hashtag}` (if
//! any) so that the key still lands in the slot the caller chose.

use std::fmt::Write as _;

/// The number of Redis Cluster hash slots.
pub const SLOTS: u16 = 16384;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "strata:";

/// The default longest Redis key before the id part is hashed.
pub const DEFAULT_MAX_KEY_LEN: usize = 512;

/// The longest `{hashtag}` of a hashed id that is kept (longer ones are hashed with the id).
pub const MAX_KEPT_HASHTAG: usize = 64;

/// Builds the Redis keys of one tier (one prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    prefix: String,
    max_key_len: usize,
}

impl KeySpace {
    /// A key space with `prefix` whose keys are at most `max_key_len` bytes long before the
    /// id part is hashed (the caller validates both; see `RedisConfig`).
    pub fn new(prefix: &str, max_key_len: usize) -> Self {
        Self { prefix: prefix.to_owned(), max_key_len }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The longest key kept literal.
    pub fn max_key_len(&self) -> usize {
        self.max_key_len
    }

    /// The key of an entry.
    pub fn entry(&self, cache: &str, namespace: &str, id: &str) -> String {
        self.build("", cache, namespace, id)
    }

    /// The key of the set that lists the entries carrying `tag`.
    pub fn tag_set(&self, cache: &str, namespace: &str, tag: &str) -> String {
        self.build("!tag:", cache, namespace, tag)
    }

    /// The key of the load lock of an entry.
    pub fn lock(&self, cache: &str, namespace: &str, id: &str) -> String {
        self.build("!lock:", cache, namespace, id)
    }

    /// The default invalidation channel (`<prefix>inv`).
    pub fn channel(&self) -> String {
        format!("{}inv", self.prefix)
    }

    fn build(&self, family: &str, cache: &str, namespace: &str, id: &str) -> String {
        let head = self.prefix.len() + family.len() + cache.len() + namespace.len() + 2;
        let mut s = String::with_capacity(head + id.len().min(self.max_key_len));
        s.push_str(&self.prefix);
        s.push_str(family);
        s.push_str(cache);
        s.push(':');
        s.push_str(namespace);
        if head + id.len() <= self.max_key_len {
            s.push(':');
            s.push_str(id);
        } else {
            s.push('#');
            let (a, b) = hash128(id.as_bytes());
            let _ = write!(s, "{a:016x}{b:016x}");
            if let Some(tag) = hashtag(id.as_bytes()).filter(|t| t.len() <= MAX_KEPT_HASHTAG) {
                // Keep the caller's slot choice; `{`/`}` cannot occur inside `tag`.
                s.push('{');
                s.push_str(&String::from_utf8_lossy(tag));
                s.push('}');
            }
        }
        s
    }
}

/// SHA-256 of a long id, truncated to 128 bits: collision resistance matters here, since long
/// ids (URLs, query strings) are often chosen by callers and a collision would serve one key's
/// entry for another.
fn hash128(data: &[u8]) -> (u64, u64) {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(data);
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&d[..8]);
    b.copy_from_slice(&d[8..16]);
    (u64::from_be_bytes(a), u64::from_be_bytes(b))
}

/// The part of a key Redis Cluster hashes: the bytes between the first `{` and the first `}`
/// after it, when that is non-empty; `None` when the whole key is hashed.
pub fn hashtag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&c| c == b'{')?;
    let close = key[open + 1..].iter().position(|&c| c == b'}')?;
    (close > 0).then(|| &key[open + 1..open + 1 + close])
}

/// The Redis Cluster hash slot of a key (CRC16-XMODEM of the key or its hashtag, mod 16384),
/// exactly as the server computes it.
pub fn slot(key: &[u8]) -> u16 {
    crc16(hashtag(key).unwrap_or(key)) % SLOTS
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as used by Redis Cluster.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// Groups item indices by the slot of their key, keeping the input order inside each group
/// and ordering groups by their first item. Every index appears exactly once.
pub fn group_by_slot<S: AsRef<[u8]>>(keys: &[S]) -> Vec<(u16, Vec<usize>)> {
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    let mut by_slot: std::collections::HashMap<u16, usize> = std::collections::HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        let s = slot(k.as_ref());
        match by_slot.get(&s) {
            Some(&g) => groups[g].1.push(i),
            None => {
                by_slot.insert(s, groups.len());
                groups.push((s, vec![i]));
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_redis_reference() {
        // From the Redis Cluster specification: CRC16("123456789") = 0x31C3.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot(b"foo{{bar}}zap"), crc16(b"{bar") % SLOTS);
        assert_eq!(slot(b"foo{bar}{zap}"), crc16(b"bar") % SLOTS);
    }

    #[test]
    fn layout_is_unambiguous() {
        let ks = KeySpace::new("strata:", 64);
        assert_eq!(ks.entry("users", "eu", "42"), "strata:users:eu:42");
        assert_eq!(ks.tag_set("users", "eu", "t"), "strata:!tag:users:eu:t");
        assert_eq!(ks.lock("users", "eu", "42"), "strata:!lock:users:eu:42");
        let long = "x".repeat(100);
        let k = ks.entry("users", "eu", &long);
        assert!(k.starts_with("strata:users:eu#") && k.len() < 64, "{k}");
        let with_tag = format!("{{grp}}{long}");
        let k2 = ks.entry("users", "eu", &with_tag);
        assert!(k2.ends_with("{grp}"), "{k2}");
        assert_eq!(slot(k2.as_bytes()), slot(b"{grp}"));
        assert_ne!(ks.entry("users", "eu", &long), ks.entry("users", "eu", &format!("{long}y")));
    }
}
