//! Bounded label values and the small concurrent maps that pre-resolve metric children.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

/// The label value used once a label has seen its maximum number of distinct values.
pub(crate) const OTHER: &str = "other";

/// A fast, non-cryptographic hasher (FxHash's mixing) for short label strings. The maps it
/// keys are filled from bounded, program-chosen names (cache and tier names), never from
/// request data, so flooding is not a concern.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(SEED);
    }
}

pub(crate) type FxBuild = BuildHasherDefault<FxHasher>;

/// Admits at most `max` distinct values of one label; later ones become [`OTHER`].
#[derive(Debug)]
pub(crate) struct LabelCap {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl LabelCap {
    pub(crate) fn new(max: usize) -> Self {
        Self { max, seen: Mutex::new(HashSet::new()) }
    }

    /// The label value to use for `value` (called on slow paths only).
    pub(crate) fn admit(&self, value: &str) -> String {
        let mut seen = self.seen.lock();
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < self.max {
            seen.insert(value.to_owned());
            value.to_owned()
        } else {
            OTHER.to_owned()
        }
    }
}

/// The most entries a [`ChildMap`] keeps; past it, lookups resolve on the slow path each time
/// (the label values are capped anyway, so this only bounds memory).
const MAX_MAP_ENTRIES: usize = 4096;

/// A read-mostly map from one or two short strings to pre-resolved metric children.
///
/// The steady state takes a shared lock, hashes the names once and allocates nothing: two-part
/// keys are joined on the stack with a `0xFF` separator (a byte that never occurs in UTF-8).
pub(crate) struct ChildMap<T> {
    map: RwLock<HashMap<Box<[u8]>, Arc<T>, FxBuild>>,
}

impl<T> Default for ChildMap<T> {
    fn default() -> Self {
        Self { map: RwLock::new(HashMap::default()) }
    }
}

const STACK_KEY: usize = 192;

impl<T> ChildMap<T> {
    /// The children for `(a, b)`, made by `make` the first time.
    #[inline]
    pub(crate) fn get2(&self, a: &str, b: &str, make: impl FnOnce() -> T) -> Arc<T> {
        let len = a.len() + 1 + b.len();
        if len <= STACK_KEY {
            let mut buf = [0u8; STACK_KEY];
            buf[..a.len()].copy_from_slice(a.as_bytes());
            buf[a.len()] = 0xFF;
            buf[a.len() + 1..len].copy_from_slice(b.as_bytes());
            self.get(&buf[..len], make)
        } else {
            let mut v = Vec::with_capacity(len);
            v.extend_from_slice(a.as_bytes());
            v.push(0xFF);
            v.extend_from_slice(b.as_bytes());
            self.get(&v, make)
        }
    }

    /// The children for `a`, made by `make` the first time.
    #[inline]
    pub(crate) fn get1(&self, a: &str, make: impl FnOnce() -> T) -> Arc<T> {
        self.get(a.as_bytes(), make)
    }

    #[inline]
    fn get(&self, key: &[u8], make: impl FnOnce() -> T) -> Arc<T> {
        if let Some(c) = self.map.read().get(key) {
            return Arc::clone(c);
        }
        self.slow(key, make)
    }

    #[cold]
    fn slow(&self, key: &[u8], make: impl FnOnce() -> T) -> Arc<T> {
        let mut map = self.map.write();
        if let Some(c) = map.get(key) {
            return Arc::clone(c);
        }
        let made = Arc::new(make());
        if map.len() < MAX_MAP_ENTRIES {
            map.insert(key.into(), Arc::clone(&made));
        }
        made
    }

    /// Calls `f` on every entry (keys split back into their parts).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&str, Option<&str>, &T)) {
        for (k, v) in self.map.read().iter() {
            let (a, b) = match k.iter().position(|&b| b == 0xFF) {
                Some(i) => (&k[..i], Some(&k[i + 1..])),
                None => (&k[..], None),
            };
            let a = std::str::from_utf8(a).unwrap_or("?");
            let b = b.map(|b| std::str::from_utf8(b).unwrap_or("?"));
            f(a, b, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_admits_max_then_other() {
        let cap = LabelCap::new(2);
        assert_eq!(cap.admit("a"), "a");
        assert_eq!(cap.admit("b"), "b");
        assert_eq!(cap.admit("c"), OTHER);
        assert_eq!(cap.admit("a"), "a");
    }

    #[test]
    fn child_map_resolves_once_and_splits_keys() {
        let m: ChildMap<u32> = ChildMap::default();
        let mut made = 0;
        for _ in 0..3 {
            m.get2("users", "l1", || {
                made += 1;
                7
            });
        }
        assert_eq!(made, 1);
        // "ab"+"c" and "a"+"bc" are different keys.
        assert_eq!(*m.get2("ab", "c", || 1), 1);
        assert_eq!(*m.get2("a", "bc", || 2), 2);
        let long = "x".repeat(300);
        assert_eq!(*m.get2(&long, "t", || 3), 3);
        assert_eq!(*m.get2(&long, "t", || 4), 3);
        let mut seen = Vec::new();
        m.for_each(|a, b, v| seen.push((a.to_owned(), b.map(str::to_owned), *v)));
        assert!(seen.contains(&("users".into(), Some("l1".into()), 7)));
        assert_eq!(seen.len(), 4);
    }
}
