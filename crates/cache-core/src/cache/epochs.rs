//! Striped invalidation epochs: a read or load that raced with an invalidation of its key (or of
//! everything) hands its value to its callers but stores it nowhere.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::key::Namespace;

const EPOCH_STRIPES: usize = 256;

/// One counter per stripe of keys, bumped by every invalidation that touches the stripe.
///
/// A reader takes [`Epochs::get`] before it reads and compares after: a changed epoch means an
/// invalidation may have happened in between (stripes can only cause false positives, which cost
/// a skipped fill, never stale data).
pub(super) struct Epochs {
    stripes: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Epochs {
    pub(super) fn new() -> Self {
        Self { stripes: (0..EPOCH_STRIPES).map(|_| AtomicU64::new(0)).collect(), hasher: Default::default() }
    }

    fn slot<K: Hash>(&self, ns: &Namespace, key: &K) -> &AtomicU64 {
        let h = self.hasher.hash_one((ns.as_str(), key));
        &self.stripes[(h as usize) % EPOCH_STRIPES]
    }

    /// The key's current epoch.
    pub(super) fn get<K: Hash>(&self, ns: &Namespace, key: &K) -> u64 {
        self.slot(ns, key).load(Ordering::Acquire)
    }

    /// The key was invalidated.
    pub(super) fn bump<K: Hash>(&self, ns: &Namespace, key: &K) {
        self.slot(ns, key).fetch_add(1, Ordering::AcqRel);
    }

    /// Everything (or an unknown set of keys) was invalidated.
    pub(super) fn bump_all(&self) {
        for s in self.stripes.iter() {
            s.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bumps_change_the_epoch_of_the_key_and_bump_all_of_every_key() {
        let e = Epochs::new();
        let ns = Namespace::default_namespace();
        let (a, b) = (e.get(&ns, &1u64), e.get(&ns, &2u64));
        e.bump(&ns, &1u64);
        assert_ne!(e.get(&ns, &1u64), a);
        let (a, b2) = (e.get(&ns, &1u64), e.get(&ns, &2u64));
        e.bump_all();
        assert_ne!(e.get(&ns, &1u64), a);
        assert_ne!(e.get(&ns, &2u64), b2);
        assert!(e.get(&ns, &2u64) > b);
    }
}
