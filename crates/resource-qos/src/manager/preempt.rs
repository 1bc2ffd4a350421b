//! Preemption: choosing lower-priority victims that together cover a shortfall, and signalling
//! them (they keep their resources, counted as terminating, until released or their grace ends).

use std::cmp::Reverse;

use tokio::time::Instant;

use super::allocation::ST_PREEMPTED;
use super::request::Prepared;
use super::{Effects, Inner, State};
use crate::deadline::after;
use crate::observe::{AuditAction, ResourceEvent};

impl Inner {
    /// Picks victims (strictly lower priority, preemptible, holding a short resource) in the
    /// order BestEffort → Burstable → Guaranteed, then lowest priority, then newest; signals them
    /// only if together they cover the shortfall.
    pub(super) fn preempt(&self, st: &mut State, prepared: &Prepared, now: Instant, fx: &mut Effects) {
        let p = &prepared.claim;
        let mut need: Vec<(usize, u64)> = Vec::new();
        for &(k, q) in &p.req {
            let avail = self.available_for(st, k, p.priority, true);
            if q > avail {
                need.push((k, q - avail));
            }
        }
        if need.is_empty() {
            return; // resources already on their way back from earlier victims
        }
        let mut candidates: Vec<(u8, i32, Reverse<u64>, u64)> = st
            .ledger
            .records()
            .filter(|(_, r)| {
                let c = r.claim();
                c.priority < p.priority
                    && c.preemptible
                    && r.terminating().is_none()
                    && c.req.iter().any(|(k, _)| need.iter().any(|(n, _)| n == k))
            })
            .map(|(id, r)| (r.claim().qos.preemption_rank(), r.claim().priority, Reverse(r.seq), id))
            .collect();
        candidates.sort_unstable();
        let ledger = &st.ledger;
        let freed_of = |id: u64, k: usize| ledger.get(id).map_or(0, |r| r.claim().request_of(k));
        let mut freed: Vec<u64> = vec![0; need.len()];
        let mut chosen = Vec::new();
        for &(_, _, _, id) in &candidates {
            if need.iter().zip(&freed).all(|((_, n), f)| f >= n) {
                break;
            }
            for (j, (k, _)) in need.iter().enumerate() {
                freed[j] += freed_of(id, *k);
            }
            chosen.push(id);
        }
        if !need.iter().zip(&freed).all(|((_, n), f)| f >= n) {
            return; // even every eligible victim would not make room: wait instead
        }
        // Reprieve: give back victims that are not needed, most important first.
        let mut i = chosen.len();
        while i > 0 {
            i -= 1;
            let id = chosen[i];
            let still = need.iter().enumerate().all(|(j, (k, n))| freed[j] - freed_of(id, *k) >= *n);
            if still {
                for (j, (k, _)) in need.iter().enumerate() {
                    freed[j] -= freed_of(id, *k);
                }
                chosen.remove(i);
            }
        }
        let deadline = after(now, self.grace);
        for id in chosen {
            let Some(r) = st.ledger.mark_terminating(id, deadline) else { continue };
            r.shared.signal(ST_PREEMPTED, Some(deadline));
            let r = r.claim();
            tracing::debug!(victim = id, victim_priority = r.priority, preemptor_priority = p.priority, "preempting");
            if self.observe {
                fx.events.push(ResourceEvent::Preempted {
                    victim: id,
                    victim_priority: r.priority,
                    preemptor_priority: p.priority,
                    grace: self.grace,
                });
            }
            if self.auditing {
                let list = self.to_list(&r.req);
                fx.audits.push(crate::observe::audit_record(
                    &r.principal,
                    &r.namespace,
                    AuditAction::Preempted { by_priority: p.priority },
                    Some(id),
                    list,
                    format!("preempted by {}/{}; grace {:?}", p.namespace, p.principal, self.grace),
                ));
            }
            st.timers.insert((deadline, id));
        }
    }
}
