//! The wait queue: requests that did not fit, in priority order, and what they hold back.
//!
//! [`WaitQueue`] keeps its totals true by construction: [`push`](WaitQueue::push) is the only way
//! in and [`remove`](WaitQueue::remove) / [`take_all`](WaitQueue::take_all) the only ways out, so
//! - the queued totals (overall and per priority) equal the sums over the queued requests;
//! - `blocked[k]` counts the waiters whose last look found them short of `k`;
//! - a waiter is un-accounted exactly once, when it leaves (a second remove finds nothing).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Allocation;
use super::request::Prepared;

/// Queue order: higher priority first, then first come.
pub(super) type WaitKey = (Reverse<i32>, u64);

/// A queued request.
pub(super) struct Waiter {
    pub(super) prepared: Prepared,
    /// Where the admitted handle is sent.
    pub(super) tx: oneshot::Sender<Allocation>,
    pub(super) enqueued: Instant,
    deadline: Instant,
    /// Kind indices it was short of when last looked at.
    short: Vec<usize>,
    seq: u64,
}

impl Waiter {
    /// Kind indices it was short of when last looked at.
    pub(super) fn short(&self) -> &[usize] {
        &self.short
    }
}

/// The priority queue of waiters with its running totals.
pub(super) struct WaitQueue {
    waiters: BTreeMap<WaitKey, Waiter>,
    /// Summed requests of the waiters of each priority, per kind.
    by_prio: BTreeMap<Reverse<i32>, Vec<u128>>,
    /// Summed requests of all waiters per kind (`u128`: many waiters may each ask for up to
    /// `u64::MAX` when the capacity is that large).
    total: Vec<u128>,
    /// Per kind: waiters that were short of it when last looked at.
    blocked: Vec<u32>,
    deadlines: BTreeSet<(Instant, u64)>,
    /// A scan stopped early, so some waiters' `short` may be stale: drain on every release.
    short_stale: bool,
    seq: u64,
}

impl WaitQueue {
    /// An empty queue over `kinds` resource kinds.
    pub(super) fn new(kinds: usize) -> Self {
        Self {
            waiters: BTreeMap::new(),
            by_prio: BTreeMap::new(),
            total: vec![0; kinds],
            blocked: vec![0; kinds],
            deadlines: BTreeSet::new(),
            short_stale: false,
            seq: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.waiters.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    /// The nearest waiter deadline.
    pub(super) fn earliest_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Queues `prepared` (short of the kinds `short`) until `deadline` and accounts it.
    pub(super) fn push(
        &mut self,
        prepared: Prepared,
        tx: oneshot::Sender<Allocation>,
        enqueued: Instant,
        deadline: Instant,
        short: Vec<usize>,
    ) -> WaitKey {
        self.seq += 1;
        let seq = self.seq;
        let key = (Reverse(prepared.claim.priority), seq);
        let n = self.total.len();
        let sums = self.by_prio.entry(key.0).or_insert_with(|| vec![0; n]);
        for &(k, q) in &prepared.claim.req {
            sums[k] += u128::from(q);
            self.total[k] += u128::from(q);
        }
        for &k in &short {
            self.blocked[k] += 1;
        }
        self.deadlines.insert((deadline, seq));
        self.waiters.insert(key, Waiter { prepared, tx, enqueued, deadline, short, seq });
        key
    }

    /// Takes waiter `key` out and un-accounts it; `None` when it already left.
    pub(super) fn remove(&mut self, key: WaitKey) -> Option<Waiter> {
        let w = self.waiters.remove(&key)?;
        let prio = Reverse(w.prepared.claim.priority);
        if let Some(sums) = self.by_prio.get_mut(&prio) {
            for &(k, q) in &w.prepared.claim.req {
                sums[k] -= u128::from(q);
            }
            if sums.iter().all(|v| *v == 0) {
                self.by_prio.remove(&prio);
            }
        }
        for &(k, q) in &w.prepared.claim.req {
            self.total[k] -= u128::from(q);
        }
        for &k in &w.short {
            self.blocked[k] -= 1;
        }
        self.deadlines.remove(&(w.deadline, w.seq));
        Some(w)
    }

    /// Empties the queue (shutdown); dropping the waiters fails their requests.
    pub(super) fn take_all(&mut self) -> Vec<Waiter> {
        let waiters = std::mem::take(&mut self.waiters);
        self.by_prio.clear();
        self.deadlines.clear();
        self.total.iter_mut().for_each(|v| *v = 0);
        self.blocked.iter_mut().for_each(|v| *v = 0);
        self.short_stale = false;
        waiters.into_values().collect()
    }

    pub(super) fn get(&self, key: WaitKey) -> Option<&Waiter> {
        self.waiters.get(&key)
    }

    /// What waiters of `priority` or higher wait for of kind `k`.
    pub(super) fn reserved(&self, k: usize, priority: i32) -> u128 {
        if self.total[k] == 0 {
            return 0;
        }
        self.by_prio.range(..=Reverse(priority)).fold(0u128, |acc, (_, s)| acc.saturating_add(s[k]))
    }

    /// Whether returning the kinds `kinds` may let a waiter in.
    pub(super) fn may_unblock(&self, mut kinds: impl Iterator<Item = usize>) -> bool {
        !self.waiters.is_empty() && (self.short_stale || kinds.any(|k| self.blocked[k] > 0))
    }

    /// After a candidate from [`scan`](Self::scan) stayed queued although nothing looked short:
    /// make the next release drain regardless.
    pub(super) fn mark_stale(&mut self) {
        self.short_stale = true;
    }

    /// Walks the waiters in priority order against `free` capacity, refreshing what each is short
    /// of, and returns those that fit (and pass `quota_ok`). A waiter that does not fit keeps what
    /// it asks for reserved, so lower priorities cannot starve it; waiters of other kinds pass.
    pub(super) fn scan(&mut self, mut free: Vec<u64>, mut quota_ok: impl FnMut(&Prepared) -> bool) -> Vec<WaitKey> {
        let mut admit = Vec::new();
        let mut stopped_early = false;
        let total = self.waiters.len();
        for (n, (key, w)) in self.waiters.iter_mut().enumerate() {
            for &k in &w.short {
                self.blocked[k] -= 1;
            }
            w.short.clear();
            w.short.extend(w.prepared.claim.req.iter().filter(|&&(k, q)| q > free[k]).map(|&(k, _)| k));
            if w.short.is_empty() {
                if quota_ok(&w.prepared) {
                    admit.push(*key);
                } else {
                    // Quota-blocked: any release of its kinds may unblock it.
                    w.short.extend(w.prepared.claim.req.iter().map(|&(k, _)| k));
                }
            }
            for &k in &w.short {
                self.blocked[k] += 1;
            }
            for &(k, q) in &w.prepared.claim.req {
                free[k] = free[k].saturating_sub(q);
            }
            if free.iter().all(|v| *v == 0) {
                stopped_early = n + 1 < total;
                break;
            }
        }
        self.short_stale = stopped_early;
        admit
    }

    /// Recomputes every total from the queued waiters and compares (tests only).
    #[cfg(test)]
    pub(super) fn assert_consistent(&self) {
        let n = self.total.len();
        let (mut total, mut blocked) = (vec![0u128; n], vec![0u32; n]);
        let mut by_prio: BTreeMap<Reverse<i32>, Vec<u128>> = BTreeMap::new();
        let mut deadlines = BTreeSet::new();
        for (key, w) in &self.waiters {
            assert_eq!(*key, (Reverse(w.prepared.claim.priority), w.seq));
            let sums = by_prio.entry(key.0).or_insert_with(|| vec![0; n]);
            for &(k, q) in &w.prepared.claim.req {
                total[k] += u128::from(q);
                sums[k] += u128::from(q);
            }
            for &k in &w.short {
                blocked[k] += 1;
            }
            deadlines.insert((w.deadline, w.seq));
        }
        by_prio.retain(|_, s| s.iter().any(|v| *v > 0));
        let mut mine = self.by_prio.clone();
        mine.retain(|_, s| s.iter().any(|v| *v > 0));
        assert_eq!(total, self.total, "total = sum of queued requests");
        assert_eq!(by_prio, mine, "per-priority sums");
        assert_eq!(blocked, self.blocked, "blocked = waiters short of each kind");
        assert_eq!(deadlines, self.deadlines, "one deadline per waiter");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::manager::ledger::Claim;
    use crate::{QosClass, ResourceList};

    fn prepared(priority: i32, req: Vec<(usize, u64)>) -> Prepared {
        Prepared {
            claim: Claim {
                namespace: Arc::from("ns"),
                principal: Arc::from("p"),
                priority,
                preemptible: true,
                qos: QosClass::BestEffort,
                req,
                lim: Vec::new(),
                quotas: Vec::new(),
            },
            may_preempt: false,
            requests: ResourceList::new(),
            timeout: Duration::ZERO,
            lease_ttl: None,
        }
    }

    fn push(q: &mut WaitQueue, priority: i32, req: Vec<(usize, u64)>, short: Vec<usize>) -> WaitKey {
        let (tx, _rx) = oneshot::channel();
        let now = Instant::now();
        q.push(prepared(priority, req), tx, now, now + Duration::from_secs(priority.unsigned_abs().into()), short)
    }

    #[test]
    fn push_and_remove_account_exactly_once() {
        let mut q = WaitQueue::new(2);
        let a = push(&mut q, 5, vec![(0, 3)], vec![0]);
        let b = push(&mut q, 1, vec![(0, 2), (1, 7)], vec![1]);
        q.assert_consistent();
        assert_eq!(q.len(), 2);
        assert_eq!(q.reserved(0, 5), 3, "only equal or higher priorities reserve");
        assert_eq!(q.reserved(0, 1), 5);
        assert_eq!(q.reserved(1, 0), 7);
        assert!(q.may_unblock([1].into_iter()));
        assert!(q.remove(b).is_some());
        assert!(q.remove(b).is_none(), "un-accounted once");
        q.assert_consistent();
        assert_eq!(q.reserved(1, 0), 0);
        assert!(!q.may_unblock([1].into_iter()));
        assert!(q.may_unblock([0].into_iter()));
        assert!(q.remove(a).is_some());
        assert!(q.is_empty());
        assert_eq!(q.earliest_deadline(), None);
        q.assert_consistent();
    }

    #[test]
    fn scan_admits_in_priority_order_and_reserves_for_the_blocked() {
        let mut q = WaitQueue::new(2);
        let high = push(&mut q, 9, vec![(0, 5)], vec![0]);
        let low_other = push(&mut q, 1, vec![(1, 1)], vec![1]);
        let low_same = push(&mut q, 1, vec![(0, 1)], vec![0]);
        // 4 free of kind 0: the high waiter stays short and holds back the rest of kind 0.
        let admit = q.scan(vec![4, 1], |_| true);
        assert_eq!(admit, vec![low_other]);
        assert_eq!(q.get(high).map(|w| w.short().to_vec()), Some(vec![0]));
        assert_eq!(q.get(low_same).map(|w| w.short().to_vec()), Some(vec![0]));
        q.assert_consistent();
        // A quota refusal marks every kind of the waiter as blocking.
        let admit = q.scan(vec![10, 10], |p| p.claim.priority != 1);
        assert_eq!(admit, vec![high]);
        assert_eq!(q.get(low_other).map(|w| w.short().to_vec()), Some(vec![1]));
        q.assert_consistent();
        // Stopping early (nothing left) marks the rest stale.
        let admit = q.scan(vec![5, 0], |_| true);
        assert_eq!(admit, vec![high]);
        assert!(q.may_unblock(std::iter::empty()), "stale: any release drains");
        q.assert_consistent();
        assert_eq!(q.take_all().len(), 3);
        q.assert_consistent();
        assert!(!q.may_unblock([0, 1].into_iter()));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push { priority: i32, req: Vec<(usize, u64)>, short: Vec<usize> },
        Remove(usize),
        Scan(Vec<u64>),
    }

    fn op() -> impl Strategy<Value = Op> {
        let kinds = |len| prop::collection::vec(0usize..3, len);
        prop_oneof![
            (-2i32..3, prop::collection::vec((0usize..3, 1u64..u64::MAX), 1..3), kinds(0..3)).prop_map(
                |(priority, mut req, mut short)| {
                    req.sort_unstable_by_key(|(k, _)| *k);
                    req.dedup_by_key(|(k, _)| *k);
                    short.sort_unstable();
                    short.dedup();
                    Op::Push { priority, req, short }
                }
            ),
            (0usize..40).prop_map(Op::Remove),
            prop::collection::vec(0u64..20, 3).prop_map(Op::Scan),
        ]
    }

    proptest! {
        /// Arbitrary pushes, removes (of queued and gone keys) and scans: the totals always
        /// equal the sums over the queued requests, and an emptied queue holds nothing back.
        #[test]
        fn totals_match_the_queued_requests(ops in prop::collection::vec(op(), 1..60)) {
            let mut q = WaitQueue::new(3);
            let mut keys: Vec<WaitKey> = Vec::new();
            let mut queued = 0usize;
            for op in ops {
                match op {
                    Op::Push { priority, req, short } => {
                        keys.push(push(&mut q, priority, req, short));
                        queued += 1;
                    }
                    Op::Remove(i) if !keys.is_empty() => {
                        let key = keys[i % keys.len()];
                        let was = q.get(key).is_some();
                        prop_assert_eq!(q.remove(key).is_some(), was);
                        if was {
                            queued -= 1;
                        }
                    }
                    Op::Remove(_) => {}
                    Op::Scan(free) => {
                        for key in q.scan(free, |p| p.claim.priority >= 0) {
                            prop_assert!(q.remove(key).is_some());
                            queued -= 1;
                        }
                    }
                }
                q.assert_consistent();
                prop_assert_eq!(q.len(), queued);
            }
            for key in keys {
                q.remove(key);
            }
            q.assert_consistent();
            prop_assert!(q.is_empty());
            prop_assert_eq!(q.reserved(0, i32::MIN), 0);
            prop_assert_eq!(q.earliest_deadline(), None);
        }
    }
}
