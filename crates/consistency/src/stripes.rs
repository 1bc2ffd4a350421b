//! Striped per-key async locks: writes to one key through a policy are applied to the source
//! and the cache in the same order.

use std::hash::{BuildHasher, Hash};

use tokio::sync::{Mutex, MutexGuard};

const STRIPES: usize = 128;

pub(crate) struct Stripes {
    locks: Box<[Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Stripes {
    pub(crate) fn new() -> Self {
        Self { locks: (0..STRIPES).map(|_| Mutex::new(())).collect(), hasher: Default::default() }
    }

    pub(crate) async fn lock<K: Hash>(&self, key: &K) -> MutexGuard<'_, ()> {
        let i = (self.hasher.hash_one(key) as usize) % STRIPES;
        self.locks[i].lock().await
    }
}
