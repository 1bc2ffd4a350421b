//! The ledger: what is taken from capacity and counted against quotas, and by whom.
//!
//! [`Ledger`] owns the live allocations ([`Record`]s) together with the counters derived from
//! them, so the counters can only move through [`Ledger::charge`] and [`Ledger::refund`]:
//! - `used[k]` is the sum of the requests of `k` over the live records;
//! - `terminating[k]` is the same sum over the records marked as preemption victims;
//! - each quota's use is the sum of the requests and limits of the records it covers;
//! - a refund removes the record it refunds, so nothing is refunded twice and no counter can go
//!   below zero; a detached lease's token leaves with its record.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::allocation::HandleShared;
use super::builder::CompiledQuota;
use crate::{QosClass, QosError, ResourceKind};

/// What one allocation takes and is accounted as: shared by a request being admitted
/// ([`Prepared`](super::request::Prepared)) and an admitted allocation ([`Record`]).
#[derive(Clone, Debug)]
pub(super) struct Claim {
    pub(super) namespace: Arc<str>,
    pub(super) principal: Arc<str>,
    pub(super) priority: i32,
    pub(super) preemptible: bool,
    pub(super) qos: QosClass,
    /// Requests per kind index: what is taken from capacity.
    pub(super) req: Vec<(usize, u64)>,
    /// Limits per kind index: counted by quotas only.
    pub(super) lim: Vec<(usize, u64)>,
    /// Indices of the namespace's quotas that cover this claim.
    pub(super) quotas: Vec<usize>,
}

impl Claim {
    /// The request of kind `k` (0 when none).
    pub(super) fn request_of(&self, k: usize) -> u64 {
        self.req.iter().find(|(i, _)| *i == k).map_or(0, |(_, q)| *q)
    }
}

/// A live allocation as the ledger knows it. The claim and the victim mark are private: the
/// counters derived from them change only through the ledger.
pub(super) struct Record {
    claim: Claim,
    /// Admission order (higher is newer).
    pub(super) seq: u64,
    /// Lease TTL and the current expiry.
    pub(super) lease: Option<(Duration, Instant)>,
    /// Set once detached: the token [`LeaseId`](super::LeaseId) carries.
    lease_id: Option<u128>,
    /// Set once chosen as a preemption victim: when it is reclaimed regardless.
    terminating: Option<Instant>,
    pub(super) shared: Arc<HandleShared>,
}

impl Record {
    /// A record not yet charged.
    pub(super) fn new(claim: Claim, seq: u64, lease: Option<(Duration, Instant)>, shared: Arc<HandleShared>) -> Self {
        Self { claim, seq, lease, lease_id: None, terminating: None, shared }
    }

    pub(super) fn claim(&self) -> &Claim {
        &self.claim
    }

    pub(super) fn terminating(&self) -> Option<Instant> {
        self.terminating
    }
}

/// Summed requests and limits of one quota, per kind. `u128`: limits are not bounded by
/// capacity, so a sum of `u64` limits must not overflow (that would panic mid-admission).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct QuotaUse {
    pub(super) req: Vec<u128>,
    pub(super) lim: Vec<u128>,
}

/// Capacity, usage and quota use, kept equal to the sums over the live records.
pub(super) struct Ledger {
    capacity: Vec<u64>,
    used: Vec<u64>,
    terminating: Vec<u64>,
    quota_use: HashMap<Arc<str>, Vec<QuotaUse>>,
    records: HashMap<u64, Record, BuildHasherDefault<IdHasher>>,
    /// Detached leases: random token → allocation id.
    leases: HashMap<u128, u64>,
}

impl Ledger {
    /// An empty ledger over `capacity` (per kind index), with `n` quotas for each namespace.
    pub(super) fn new(capacity: Vec<u64>, quotas: impl IntoIterator<Item = (Arc<str>, usize)>) -> Self {
        let n = capacity.len();
        let quota_use = quotas
            .into_iter()
            .map(|(ns, count)| (ns, (0..count).map(|_| QuotaUse { req: vec![0; n], lim: vec![0; n] }).collect()))
            .collect();
        Self {
            capacity,
            used: vec![0; n],
            terminating: vec![0; n],
            quota_use,
            records: HashMap::default(),
            leases: HashMap::new(),
        }
    }

    pub(super) fn capacity(&self) -> &[u64] {
        &self.capacity
    }

    pub(super) fn used(&self) -> &[u64] {
        &self.used
    }

    /// Number of live allocations.
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    /// Capacity of `k` not taken; with `with_terminating`, plus what victims are giving back.
    pub(super) fn free(&self, k: usize, with_terminating: bool) -> u64 {
        let free = self.capacity[k].saturating_sub(self.used[k]);
        if with_terminating { free.saturating_add(self.terminating[k]) } else { free }
    }

    /// Free capacity of every kind.
    pub(super) fn free_all(&self) -> Vec<u64> {
        self.capacity.iter().zip(&self.used).map(|(c, u)| c.saturating_sub(*u)).collect()
    }

    /// Whether `claim`'s requests fit in the capacity not taken.
    pub(super) fn fits(&self, claim: &Claim) -> bool {
        claim.req.iter().all(|&(k, q)| self.used[k].checked_add(q).is_some_and(|u| u <= self.capacity[k]))
    }

    /// Takes `record`'s requests from capacity and counts it against its quotas, under `id`.
    ///
    /// The caller has checked [`fits`](Self::fits) (and the quotas) under the same lock; `id` is
    /// new. Quota use is `u128` and cannot overflow for any realistic number of allocations.
    pub(super) fn charge(&mut self, id: u64, record: Record) {
        debug_assert!(self.fits(&record.claim), "charged past capacity");
        debug_assert!(!self.records.contains_key(&id), "allocation id charged twice");
        debug_assert!(record.terminating.is_none() && record.lease_id.is_none());
        let c = &record.claim;
        for &(k, q) in &c.req {
            self.used[k] += q;
        }
        if let Some(uses) = self.quota_uses_mut(c) {
            for &qi in &c.quotas {
                for &(k, q) in &c.req {
                    uses[qi].req[k] += u128::from(q);
                }
                for &(k, q) in &c.lim {
                    uses[qi].lim[k] += u128::from(q);
                }
            }
        }
        self.records.insert(id, record);
    }

    /// Removes allocation `id` and gives back exactly what its charge took (and its victim mark
    /// and lease token); `None` when it is not held, so nothing is ever refunded twice.
    pub(super) fn refund(&mut self, id: u64) -> Option<Record> {
        let record = self.records.remove(&id)?;
        let c = &record.claim;
        for &(k, q) in &c.req {
            self.used[k] -= q;
        }
        if record.terminating.is_some() {
            for &(k, q) in &c.req {
                self.terminating[k] -= q;
            }
        }
        if let Some(uses) = self.quota_uses_mut(c) {
            for &qi in &c.quotas {
                for &(k, q) in &c.req {
                    uses[qi].req[k] -= u128::from(q);
                }
                for &(k, q) in &c.lim {
                    uses[qi].lim[k] -= u128::from(q);
                }
            }
        }
        if let Some(token) = record.lease_id {
            self.leases.remove(&token);
        }
        Some(record)
    }

    fn quota_uses_mut(&mut self, c: &Claim) -> Option<&mut Vec<QuotaUse>> {
        if c.quotas.is_empty() { None } else { self.quota_use.get_mut(&*c.namespace) }
    }

    /// Marks allocation `id` as a preemption victim reclaimed at `deadline`: its requests count
    /// as on their way back. `None` when it is not held or already marked.
    pub(super) fn mark_terminating(&mut self, id: u64, deadline: Instant) -> Option<&Record> {
        let record = self.records.get_mut(&id)?;
        if record.terminating.is_some() {
            return None;
        }
        record.terminating = Some(deadline);
        for &(k, q) in &record.claim.req {
            self.terminating[k] += q;
        }
        Some(record)
    }

    /// Binds the random lease token `token` to allocation `id`.
    ///
    /// # Errors
    /// [`QosError::NotHeld`] when `id` is not held; [`QosError::InvalidRequest`] when it has no
    /// lease TTL or the token is already taken.
    pub(super) fn attach_lease(&mut self, id: u64, token: u128) -> Result<(), QosError> {
        let Some(r) = self.records.get_mut(&id) else { return Err(QosError::NotHeld(id)) };
        if r.lease.is_none() {
            return Err(QosError::InvalidRequest("only allocations with a lease TTL can be detached".into()));
        }
        if self.leases.contains_key(&token) {
            // 2^-128: refuse rather than hand out an id another lease already has.
            return Err(QosError::InvalidRequest("random lease id collided; retry".into()));
        }
        r.lease_id = Some(token);
        self.leases.insert(token, id);
        Ok(())
    }

    /// The allocation a detached lease token names.
    pub(super) fn lease_holder(&self, token: u128) -> Option<(u64, &Record)> {
        self.leases.get(&token).and_then(|id| self.records.get(id).map(|r| (*id, r)))
    }

    pub(super) fn get(&self, id: u64) -> Option<&Record> {
        self.records.get(&id)
    }

    /// Mutable access to a record: its claim and marks stay private, so counters stay true.
    pub(super) fn get_mut(&mut self, id: u64) -> Option<&mut Record> {
        self.records.get_mut(&id)
    }

    pub(super) fn records(&self) -> impl Iterator<Item = (u64, &Record)> {
        self.records.iter().map(|(id, r)| (*id, r))
    }

    /// Use of quota `qi` of `namespace`.
    pub(super) fn quota_use(&self, namespace: &str, qi: usize) -> Option<&QuotaUse> {
        self.quota_use.get(namespace)?.get(qi)
    }

    /// Whether `claim` fits each of its quotas (`rules`: the namespace's compiled quotas).
    ///
    /// # Errors
    /// [`QosError::QuotaExceeded`] naming the first quota and resource it would pass.
    pub(super) fn check_quota(
        &self,
        rules: Option<&[CompiledQuota]>,
        claim: &Claim,
        kinds: &[ResourceKind],
    ) -> Result<(), QosError> {
        if claim.quotas.is_empty() {
            return Ok(());
        }
        let (Some(rules), Some(uses)) = (rules, self.quota_use.get(&*claim.namespace)) else {
            return Ok(());
        };
        for &qi in &claim.quotas {
            let (q, u) = (&rules[qi], &uses[qi]);
            for (hard, used, mine, what) in
                [(&q.hard_req, &u.req, &claim.req, "requests"), (&q.hard_lim, &u.lim, &claim.lim, "limits")]
            {
                for &(k, h) in hard {
                    let want = mine.iter().find(|(i, _)| *i == k).map_or(0, |(_, v)| *v);
                    if want > 0 && used[k] + u128::from(want) > u128::from(h) {
                        return Err(QosError::QuotaExceeded {
                            namespace: claim.namespace.to_string(),
                            quota: q.name.clone(),
                            resource: format!("{what}.{}", kinds[k]),
                            requested: want,
                            used: u64::try_from(used[k]).unwrap_or(u64::MAX),
                            hard: h,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Recomputes every counter from the live records and compares (tests only).
    #[cfg(test)]
    pub(super) fn assert_consistent(&self) {
        let n = self.capacity.len();
        let (mut used, mut term) = (vec![0u64; n], vec![0u64; n]);
        let mut quota: HashMap<Arc<str>, Vec<QuotaUse>> = self
            .quota_use
            .iter()
            .map(|(ns, v)| (Arc::clone(ns), vec![QuotaUse { req: vec![0; n], lim: vec![0; n] }; v.len()]))
            .collect();
        for r in self.records.values() {
            for &(k, q) in &r.claim.req {
                used[k] += q;
                if r.terminating.is_some() {
                    term[k] += q;
                }
            }
            if let Some(uses) = quota.get_mut(&*r.claim.namespace) {
                for &qi in &r.claim.quotas {
                    for &(k, q) in &r.claim.req {
                        uses[qi].req[k] += u128::from(q);
                    }
                    for &(k, q) in &r.claim.lim {
                        uses[qi].lim[k] += u128::from(q);
                    }
                }
            }
        }
        assert_eq!(used, self.used, "used = sum of live requests");
        assert_eq!(term, self.terminating, "terminating = sum of victims' requests");
        assert_eq!(quota, self.quota_use, "quota use = sum of covered claims");
        assert!(self.used.iter().zip(&self.capacity).all(|(u, c)| u <= c), "used within capacity");
        for (token, id) in &self.leases {
            assert_eq!(self.records.get(id).and_then(|r| r.lease_id), Some(*token), "lease token of a live record");
        }
    }
}

/// Hasher for sequential allocation ids (Fibonacci hashing; ids are not attacker-chosen).
#[derive(Default)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn claim(ns: &str, priority: i32, req: Vec<(usize, u64)>, quotas: Vec<usize>) -> Claim {
        let lim = req.iter().map(|&(k, q)| (k, q.saturating_mul(2))).collect();
        Claim {
            namespace: Arc::from(ns),
            principal: Arc::from("p"),
            priority,
            preemptible: true,
            qos: QosClass::Burstable,
            req,
            lim,
            quotas,
        }
    }

    fn record(c: Claim, lease: bool) -> Record {
        let lease = lease.then(|| (Duration::from_secs(1), Instant::now()));
        Record::new(c, 0, lease, Arc::new(HandleShared::new()))
    }

    fn ledger() -> Ledger {
        Ledger::new(vec![10, 4], [(Arc::from("a"), 2), (Arc::from("b"), 0)])
    }

    #[test]
    fn charge_then_refund_returns_to_zero() {
        let mut l = ledger();
        l.charge(1, record(claim("a", 0, vec![(0, 3), (1, 1)], vec![0, 1]), false));
        l.charge(2, record(claim("a", 0, vec![(0, 5)], vec![1]), false));
        assert_eq!(l.used(), &[8, 1]);
        assert_eq!(l.quota_use("a", 0).map(|u| u.req.clone()), Some(vec![3, 1]));
        assert_eq!(l.quota_use("a", 1).map(|u| u.lim.clone()), Some(vec![16, 2]));
        assert_eq!(l.free(0, false), 2);
        l.assert_consistent();
        assert!(l.refund(1).is_some());
        assert!(l.refund(1).is_none(), "a second refund of the same id gives nothing back");
        assert!(l.refund(2).is_some());
        assert_eq!(l.used(), &[0, 0]);
        assert_eq!(l.quota_use("a", 1), Some(&QuotaUse { req: vec![0, 0], lim: vec![0, 0] }));
        assert_eq!(l.len(), 0);
        l.assert_consistent();
    }

    #[test]
    fn terminating_counts_until_refund() {
        let mut l = ledger();
        l.charge(1, record(claim("b", 0, vec![(0, 6)], vec![]), false));
        assert_eq!(l.free(0, true), 4);
        let d = Instant::now();
        assert!(l.mark_terminating(1, d).is_some());
        assert!(l.mark_terminating(1, d).is_none(), "marked once");
        assert!(l.mark_terminating(9, d).is_none(), "unknown id");
        assert_eq!(l.free(0, false), 4);
        assert_eq!(l.free(0, true), 10);
        l.assert_consistent();
        let r = l.refund(1);
        assert_eq!(r.and_then(|r| r.terminating()), Some(d));
        assert_eq!(l.free(0, true), 10);
        assert_eq!(l.free(0, false), 10);
        l.assert_consistent();
    }

    #[test]
    fn fits_and_quota_checks() {
        let mut l = ledger();
        assert!(l.fits(&claim("a", 0, vec![(0, 10), (1, 4)], vec![])));
        assert!(!l.fits(&claim("a", 0, vec![(1, 5)], vec![])));
        assert!(!l.fits(&claim("a", 0, vec![(0, u64::MAX)], vec![])));
        let rules =
            [CompiledQuota { name: "q".into(), scope: Default::default(), hard_req: vec![(0, 5)], hard_lim: vec![] }];
        let kinds = [ResourceKind::Cpu, ResourceKind::Gpu];
        l.charge(1, record(claim("a", 0, vec![(0, 4)], vec![0]), false));
        assert!(l.check_quota(Some(&rules), &claim("a", 0, vec![(0, 1)], vec![0]), &kinds).is_ok());
        let err = l.check_quota(Some(&rules), &claim("a", 0, vec![(0, 2)], vec![0]), &kinds);
        assert!(matches!(err, Err(QosError::QuotaExceeded { requested: 2, used: 4, hard: 5, .. })), "{err:?}");
        assert!(l.check_quota(Some(&rules), &claim("a", 0, vec![(0, 2)], vec![]), &kinds).is_ok(), "not covered");
        assert!(l.check_quota(None, &claim("a", 0, vec![(0, 2)], vec![0]), &kinds).is_ok(), "no rules");
    }

    #[test]
    fn lease_tokens_leave_with_their_record() {
        let mut l = ledger();
        l.charge(1, record(claim("b", 0, vec![(1, 1)], vec![]), true));
        l.charge(2, record(claim("b", 0, vec![(1, 1)], vec![]), false));
        assert!(matches!(l.attach_lease(2, 7), Err(QosError::InvalidRequest(_))), "no TTL");
        assert!(matches!(l.attach_lease(3, 7), Err(QosError::NotHeld(3))));
        assert!(l.attach_lease(1, 7).is_ok());
        assert_eq!(l.lease_holder(7).map(|(id, _)| id), Some(1));
        l.assert_consistent();
        assert!(l.refund(1).is_some());
        assert!(l.lease_holder(7).is_none());
        l.assert_consistent();
    }

    #[derive(Clone, Debug)]
    enum Op {
        Charge { ns: bool, req: Vec<(usize, u64)>, quotas: Vec<usize> },
        Refund(usize),
        Terminate(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<bool>(), prop::collection::vec((0usize..3, 1u64..6), 1..3), prop::collection::vec(0usize..2, 0..3))
                .prop_map(|(ns, mut req, mut quotas)| {
                    req.sort_unstable_by_key(|(k, _)| *k);
                    req.dedup_by_key(|(k, _)| *k);
                    quotas.sort_unstable();
                    quotas.dedup();
                    Op::Charge { ns, req, quotas }
                }),
            (0usize..40).prop_map(Op::Refund),
            (0usize..40).prop_map(Op::Terminate),
        ]
    }

    type Held = (u64, Vec<(usize, u64)>, bool);

    proptest! {
        /// Arbitrary charges (when they fit), refunds (of held and unheld ids) and victim marks:
        /// the counters always equal a model recomputed from the charges still held, and the
        /// ledger ends at zero once everything is refunded.
        #[test]
        fn counters_match_a_model(ops in prop::collection::vec(op(), 1..60)) {
            let mut l = Ledger::new(vec![12, 8, 5], [(Arc::from("a"), 2)]);
            // (id, requests, marked as a victim) of each charge still held.
            let mut model: Vec<Held> = Vec::new();
            let mut next = 1u64;
            for op in ops {
                match op {
                    Op::Charge { ns, req, quotas } => {
                        let c = claim(if ns { "a" } else { "b" }, 0, req.clone(), quotas);
                        let fits = req.iter().all(|&(k, q)| l.used()[k] + q <= l.capacity()[k]);
                        prop_assert_eq!(l.fits(&c), fits);
                        if fits {
                            l.charge(next, record(c, false));
                            model.push((next, req, false));
                            next += 1;
                        }
                    }
                    Op::Refund(i) => {
                        let id = (i as u64) % (next + 2);
                        let held = model.iter().position(|(m, _, _)| *m == id);
                        prop_assert_eq!(l.refund(id).is_some(), held.is_some());
                        if let Some(p) = held {
                            model.remove(p);
                        }
                    }
                    Op::Terminate(i) => {
                        let id = (i as u64) % (next + 2);
                        let fresh = model.iter_mut().find(|(m, _, t)| *m == id && !*t);
                        prop_assert_eq!(l.mark_terminating(id, Instant::now()).is_some(), fresh.is_some());
                        if let Some(m) = fresh {
                            m.2 = true;
                        }
                    }
                }
                l.assert_consistent();
                let mut used = [0u64; 3];
                for (_, req, _) in &model {
                    for &(k, q) in req {
                        used[k] += q;
                    }
                }
                prop_assert_eq!(l.used(), &used[..]);
                prop_assert_eq!(l.len(), model.len());
            }
            for (id, _, _) in std::mem::take(&mut model) {
                prop_assert!(l.refund(id).is_some());
            }
            prop_assert_eq!(l.used(), &[0, 0, 0][..]);
            prop_assert_eq!(l.free(0, true), 12);
            prop_assert_eq!(l.quota_use("a", 0), Some(&QuotaUse { req: vec![0; 3], lim: vec![0; 3] }));
            l.assert_consistent();
        }
    }
}
