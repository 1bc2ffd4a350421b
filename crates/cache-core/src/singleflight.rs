//! Singleflight: concurrent requests for one key share one execution.
//!
//! Every caller awaits the same [`Shared`] future, so whoever polls it drives it: when the
//! caller that started it (the "leader") is cancelled, the others keep driving it and get its
//! result; nothing is stranded. When *every* caller is gone, the last one out removes the entry
//! and the work is dropped (cancelled), so a later caller starts afresh.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;

type Flight<T> = (u64, Shared<BoxFuture<'static, T>>);

/// A map of in-flight executions keyed by `K`, each producing a `T` shared by all its waiters.
pub struct SingleFlight<K, T: Clone> {
    inflight: Mutex<HashMap<K, Flight<T>>>,
    seq: AtomicU64,
}

impl<K, T: Clone> Default for SingleFlight<K, T> {
    fn default() -> Self {
        Self { inflight: Mutex::new(HashMap::new()), seq: AtomicU64::new(0) }
    }
}

impl<K, T: Clone> std::fmt::Debug for SingleFlight<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFlight").field("inflight", &self.inflight.lock().len()).finish()
    }
}

/// Removes the map entry when the last waiter leaves without a result, or after completion.
struct Guard<'a, K: Hash + Eq, T: Clone> {
    flight: &'a SingleFlight<K, T>,
    key: Option<K>,
    id: u64,
}

impl<K: Hash + Eq, T: Clone> Guard<'_, K, T> {
    fn remove(&mut self, only_if_unshared: bool) {
        let Some(key) = self.key.take() else { return };
        let mut map = self.flight.inflight.lock();
        if let Some((id, fut)) = map.get(&key) {
            // `strong_count` counts the map's handle plus every waiter still holding one.
            let unshared = fut.strong_count().is_none_or(|n| n <= 1);
            if *id == self.id && (!only_if_unshared || unshared) {
                map.remove(&key);
            }
        }
    }
}

impl<K: Hash + Eq, T: Clone> Drop for Guard<'_, K, T> {
    fn drop(&mut self) {
        // Cancelled before completion: drop the shared work only if nobody else waits on it.
        self.remove(true);
    }
}

impl<K, T> SingleFlight<K, T>
where
    K: Hash + Eq + Clone,
    T: Clone + Send + Sync + 'static,
{
    /// A new, empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `make()`'s future for `key` unless one is already in flight, in which case waits for
    /// that one. Returns the result and whether this caller started the work.
    pub async fn run<F>(&self, key: K, make: F) -> (T, bool)
    where
        F: FnOnce() -> BoxFuture<'static, T>,
    {
        let (fut, id, leader) = {
            let mut map = self.inflight.lock();
            match map.get(&key) {
                Some((id, fut)) => (fut.clone(), *id, false),
                None => {
                    let id = self.seq.fetch_add(1, Ordering::Relaxed);
                    let fut = make().shared();
                    map.insert(key.clone(), (id, fut.clone()));
                    (fut, id, true)
                }
            }
        };
        let mut guard = Guard { flight: self, key: Some(key), id };
        let out = fut.await;
        guard.remove(false);
        (out, leader)
    }

    /// Executions currently in flight.
    pub fn len(&self) -> usize {
        self.inflight.lock().len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    fn counting(calls: &Arc<AtomicUsize>, delay_ms: u64, val: u32) -> BoxFuture<'static, Result<u32, Arc<String>>> {
        let calls = calls.clone();
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            Ok(val)
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_thousand_waiters_one_execution() {
        let sf = Arc::new(SingleFlight::<u32, Result<u32, Arc<String>>>::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let entered = Arc::new(AtomicUsize::new(0));
        // The execution waits until every caller has joined, so that no caller can arrive after
        // it finished (which would rightly start a second one) however slow the machine is.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10_000 {
            let (sf, calls, entered, gate) = (sf.clone(), calls.clone(), entered.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                // Counting and joining happen in the same poll: no await in between.
                entered.fetch_add(1, Ordering::SeqCst);
                sf.run(7, move || {
                    Box::pin(async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let _permit = gate.acquire().await;
                        Ok(42)
                    })
                })
                .await
            }));
        }
        while entered.load(Ordering::SeqCst) < 10_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        gate.add_permits(1);
        let mut leaders = 0;
        for t in tasks {
            let (r, leader) = t.await.unwrap();
            assert_eq!(r.unwrap(), 42);
            leaders += usize::from(leader);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert!(sf.is_empty());
    }

    #[tokio::test]
    async fn errors_are_the_same_arc() {
        let sf = SingleFlight::<u32, Result<u32, Arc<String>>>::new();
        let make = || -> BoxFuture<'static, Result<u32, Arc<String>>> {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Err(Arc::new("boom".to_string()))
            })
        };
        let ((a, _), (b, _)) = tokio::join!(sf.run(1, make), sf.run(1, make));
        assert!(Arc::ptr_eq(&a.unwrap_err(), &b.unwrap_err()));
    }

    // Paused time: the leader is still running when the follower joins, however slow the machine.
    #[tokio::test(start_paused = true)]
    async fn cancelled_leader_does_not_strand_followers() {
        let sf = Arc::new(SingleFlight::<u32, Result<u32, Arc<String>>>::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let leader = {
            let (sf, calls) = (sf.clone(), calls.clone());
            tokio::spawn(async move { sf.run(1, || counting(&calls, 100, 5)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let follower = {
            let (sf, calls) = (sf.clone(), calls.clone());
            tokio::spawn(async move { sf.run(1, || counting(&calls, 100, 6)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        leader.abort();
        let (r, was_leader) = follower.await.unwrap();
        assert_eq!(r.unwrap(), 5, "follower got the leader's execution");
        assert!(!was_leader);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn all_cancelled_means_a_fresh_start() {
        let sf = Arc::new(SingleFlight::<u32, Result<u32, Arc<String>>>::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let t = {
            let (sf, calls) = (sf.clone(), calls.clone());
            tokio::spawn(async move { sf.run(1, || counting(&calls, 1_000, 5)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        t.abort();
        let _ = t.await;
        assert!(sf.is_empty(), "abandoned work was removed");
        let (r, leader) = sf.run(1, || counting(&calls, 1, 9)).await;
        assert_eq!(r.unwrap(), 9);
        assert!(leader);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn survivors_share_one_execution(n in 1usize..40, cancel_mask in proptest::prelude::any::<u64>()) {
            // Paused time: every task joins while the one execution runs, however slow the machine.
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            rt.block_on(async {
                let sf = Arc::new(SingleFlight::<u32, Result<u32, Arc<String>>>::new());
                let calls = Arc::new(AtomicUsize::new(0));
                let mut tasks = Vec::new();
                for i in 0..n {
                    let (sf, calls) = (sf.clone(), calls.clone());
                    tasks.push(tokio::spawn(async move { sf.run(3, || counting(&calls, 20, i as u32)).await }));
                    tokio::task::yield_now().await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                let mut survivors = Vec::new();
                let mut aborted = Vec::new();
                for (i, t) in tasks.into_iter().enumerate() {
                    if cancel_mask & (1 << (i % 64)) != 0 { t.abort(); aborted.push(t); } else { survivors.push(t); }
                }
                for t in aborted {
                    let _ = t.await;
                }
                let mut values = std::collections::HashSet::new();
                for t in survivors {
                    let (r, _) = t.await.unwrap();
                    values.insert(r.unwrap());
                }
                // Every survivor saw the same value, from a single execution.
                assert!(values.len() <= 1);
                assert_eq!(calls.load(Ordering::SeqCst), 1);
                assert!(sf.is_empty());
            });
        }
    }
}
