//! Admission: [`ResourceManager::allocate`] and [`ResourceManager::try_allocate`], the locked
//! pipeline (quota → breaker → capacity → preemption), committing to the ledger, waiting in the
//! queue, and draining it when resources come back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::allocation::HandleShared;
use super::ledger::{Claim, Ledger, Record};
use super::queue::WaitKey;
use super::request::Prepared;
use super::{Allocation, AllocationRequest, Effects, Inner, ResourceManager, State};
use crate::QosError;
use crate::deadline::after;
use crate::observe::{AuditAction, ResourceEvent};

/// Outcome of the locked admission checks.
enum Admit {
    /// Fits now: commit.
    Fits,
    /// Short of these kind indices: wait (or fail).
    Short { short: Vec<usize> },
}

impl ResourceManager {
    /// Admits the request, waiting in the priority queue (up to its timeout) when capacity is
    /// short, after preempting lower priorities when its class allows.
    ///
    /// # Errors
    /// Every [`QosError`] of the admission pipeline: `Forbidden`, `UnknownPriorityClass`,
    /// `InvalidQuantity`, `InvalidRequest`, `UnknownResource`, `LimitRangeViolation`,
    /// `QuotaExceeded`, `ExceedsCapacity`, `CircuitOpen`, `Overloaded`, `Timeout`, `Shutdown`.
    pub async fn allocate(&self, request: AllocationRequest) -> Result<Allocation, QosError> {
        use tracing::Instrument;
        // The principal is left out of the span (it may name a person); the namespace is not.
        // A namespace that admission will refuse is not written raw into the span either.
        let namespace: std::borrow::Cow<'_, str> = match crate::name::problem(&request.namespace) {
            None => std::borrow::Cow::Borrowed(&*request.namespace),
            Some(_) => std::borrow::Cow::Owned(crate::name::sanitized(&request.namespace)),
        };
        let span = tracing::info_span!(
            "resource.allocate",
            resource.namespace = %namespace,
            resource.outcome = tracing::field::Empty,
            resource.qos = tracing::field::Empty
        );
        let r = self.allocate_inner(request).instrument(span.clone()).await;
        match &r {
            Ok(a) => {
                span.record("resource.outcome", "admitted");
                span.record("resource.qos", tracing::field::debug(a.qos()));
            }
            Err(e) => {
                span.record("resource.outcome", outcome_of(e));
            }
        }
        r
    }

    #[allow(clippy::too_many_lines)]
    async fn allocate_inner(&self, request: AllocationRequest) -> Result<Allocation, QosError> {
        let inner = &self.inner;
        let prepared = inner.prepare(request)?;
        let now = Instant::now();
        let deadline = after(now, prepared.timeout);
        let mut fx = Effects::default();
        let (rx, mut guard, key, who) = {
            let mut st = inner.state.lock();
            match inner.admit(&mut st, &prepared, now, true, &mut fx) {
                Err(e) => {
                    drop(st);
                    return Err(inner.deny(&prepared.claim.namespace, &prepared.claim.principal, e, fx));
                }
                Ok(Admit::Fits) => {
                    let a = inner.commit(&mut st, prepared, now, Duration::ZERO, &mut fx);
                    inner.utilization(&st, &mut fx);
                    drop(st);
                    inner.emit(fx);
                    return Ok(a);
                }
                Ok(Admit::Short { short }) => {
                    if st.queue.len() >= inner.max_waiters {
                        let retry_after = st
                            .queue
                            .earliest_deadline()
                            .map_or(Duration::from_millis(100), |d| d.saturating_duration_since(now))
                            .max(Duration::from_millis(1));
                        inner.breaker_failures(&mut st, &short, now, &mut fx);
                        drop(st);
                        return Err(inner.deny(
                            &prepared.claim.namespace,
                            &prepared.claim.principal,
                            QosError::Overloaded { retry_after },
                            fx,
                        ));
                    }
                    let (tx, rx) = oneshot::channel();
                    let ns = Arc::clone(&prepared.claim.namespace);
                    let principal = Arc::clone(&prepared.claim.principal);
                    let key = st.queue.push(prepared, tx, now, deadline, short);
                    if inner.observe {
                        fx.events.push(ResourceEvent::Queued { namespace: ns.to_string(), queue_len: st.queue.len() });
                    }
                    drop(st);
                    // The guard exists before observers run: if one panics, unwinding still takes
                    // the waiter (and what it reserves) out of the queue.
                    let guard = WaitGuard { inner: Arc::clone(inner), key: Some(key) };
                    inner.emit(fx);
                    (rx, guard, key, (ns, principal))
                }
            }
        };
        tokio::pin!(rx);
        loop {
            let next_timer = inner.state.lock().timers.first().map(|(t, _)| *t);
            let wake = next_timer.map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                biased;
                r = &mut rx => {
                    guard.key = None;
                    return r.map_err(|_| QosError::Shutdown);
                }
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    let mut fx = Effects::default();
                    let timed_out = {
                        let mut st = inner.state.lock();
                        if now >= deadline {
                            let w = st.queue.remove(key);
                            if let Some(w) = &w {
                                inner.breaker_failures(&mut st, w.short(), now, &mut fx);
                                inner.drain(&mut st, now, &mut fx);
                            }
                            Some(w)
                        } else {
                            inner.reap(&mut st, now, &mut fx);
                            None
                        }
                    };
                    match timed_out {
                        None => inner.emit(fx),
                        Some(Some(w)) => {
                            guard.key = None;
                            let resource = w.short().first().map_or_else(String::new, |&k| inner.kinds[k].to_string());
                            let err = QosError::Timeout { waited: now - w.enqueued, resource };
                            return Err(inner.deny(&who.0, &who.1, err, fx));
                        }
                        Some(None) => {
                            // Admitted concurrently: the handle is in the channel.
                            guard.key = None;
                            inner.emit(fx);
                            return rx.await.map_err(|_| QosError::Shutdown);
                        }
                    }
                }
            }
        }
    }

    /// Admits the request only if it fits now (never waits, never preempts).
    ///
    /// # Errors
    /// As [`allocate`](Self::allocate), with `Insufficient` instead of waiting.
    pub fn try_allocate(&self, request: AllocationRequest) -> Result<Allocation, QosError> {
        let inner = &self.inner;
        let prepared = inner.prepare(request)?;
        let now = Instant::now();
        let mut fx = Effects::default();
        let mut st = inner.state.lock();
        match inner.admit(&mut st, &prepared, now, false, &mut fx) {
            Ok(Admit::Fits) => {
                let a = inner.commit(&mut st, prepared, now, Duration::ZERO, &mut fx);
                inner.utilization(&st, &mut fx);
                drop(st);
                inner.emit(fx);
                Ok(a)
            }
            Ok(Admit::Short { short }) => {
                inner.breaker_failures(&mut st, &short, now, &mut fx);
                drop(st);
                let resource = short.first().map_or_else(String::new, |&k| inner.kinds[k].to_string());
                let c = &prepared.claim;
                Err(inner.deny(&c.namespace, &c.principal, QosError::Insufficient { resource }, fx))
            }
            Err(e) => {
                drop(st);
                Err(inner.deny(&prepared.claim.namespace, &prepared.claim.principal, e, fx))
            }
        }
    }
}

struct WaitGuard {
    inner: Arc<Inner>,
    key: Option<WaitKey>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut fx = Effects::default();
            let mut st = self.inner.state.lock();
            if st.queue.remove(key).is_some() {
                self.inner.drain(&mut st, Instant::now(), &mut fx);
            }
            drop(st);
            self.inner.emit(fx);
        }
    }
}

impl Inner {
    /// The admission pipeline's locked part: quota → breaker → capacity → preemption.
    fn admit(
        &self,
        st: &mut State,
        p: &Prepared,
        now: Instant,
        may_wait: bool,
        fx: &mut Effects,
    ) -> Result<Admit, QosError> {
        if st.shutdown {
            return Err(QosError::Shutdown);
        }
        if st.timers.first().is_some_and(|(t, _)| *t <= now) {
            self.reap(st, now, fx);
        }
        self.check_quota(&st.ledger, &p.claim)?;
        // Capacity, keeping back what waiters of equal or higher priority are waiting for.
        let mut short = Vec::new();
        for &(k, q) in &p.claim.req {
            if q > self.available_for(st, k, p.claim.priority, false) {
                short.push(k);
            }
        }
        if short.is_empty() {
            // Work that fits is never refused by a breaker: exhaustion is backpressure, and
            // admissions now are evidence that it is over (enough in a row close the breaker).
            return Ok(Admit::Fits);
        }
        // Open breakers of the short resources fail fast instead of queueing or preempting.
        if self.breaker_cfg.enabled {
            for &k in &short {
                let (res, change) = st.breakers[k].check(&self.breaker_cfg, now);
                if let Some(s) = change {
                    self.breaker_event(k, s, fx);
                }
                if let Err(retry_after) = res {
                    return Err(QosError::CircuitOpen { resource: self.kinds[k].to_string(), retry_after });
                }
            }
        }
        // Preempt only when this request can then wait for the victims (queue not full).
        if may_wait && p.may_preempt && st.queue.len() < self.max_waiters {
            self.preempt(st, p, now, fx);
        }
        Ok(Admit::Short { short })
    }

    /// Free capacity of `k` for a request of `priority`: what waiters of equal or higher
    /// priority wait for is kept back; `with_terminating` counts what victims give back.
    pub(super) fn available_for(&self, st: &State, k: usize, priority: i32, with_terminating: bool) -> u64 {
        let free = st.ledger.free(k, with_terminating);
        let reserved = st.queue.reserved(k, priority);
        // Never above the u64 it started from.
        u64::try_from(u128::from(free).saturating_sub(reserved)).unwrap_or(u64::MAX)
    }

    /// Whether `claim` fits its namespace's quotas.
    fn check_quota(&self, ledger: &Ledger, claim: &Claim) -> Result<(), QosError> {
        let rules = self.namespaces.get(&*claim.namespace).map(|n| n.quotas.as_slice());
        ledger.check_quota(rules, claim, &self.kinds)
    }

    /// Takes the resources. Everything that could fail or panic (the handle's back-reference,
    /// the lease deadline, the id) is done before anything is counted, so a failure can never
    /// leave capacity or quota counted for an allocation nobody holds.
    pub(super) fn commit(
        &self,
        st: &mut State,
        p: Prepared,
        now: Instant,
        waited: Duration,
        fx: &mut Effects,
    ) -> Allocation {
        let inner = self.me.upgrade().unwrap_or_else(|| unreachable!("Inner is only used through an Arc"));
        let lease = p.lease_ttl.map(|ttl| (ttl, after(now, ttl)));
        let shared = Arc::new(HandleShared::new());
        let id = st.next_id;
        st.next_id = st.next_id.wrapping_add(1).max(1);
        st.seq = st.seq.wrapping_add(1);
        let c = &p.claim;
        if self.breaker_cfg.enabled {
            for &(k, _) in &c.req {
                if let Some(s) = st.breakers[k].on_success(&self.breaker_cfg) {
                    self.breaker_event(k, s, fx);
                }
            }
        }
        if self.observe {
            fx.touched = true;
            fx.events.push(ResourceEvent::Admitted {
                id,
                namespace: c.namespace.to_string(),
                principal: c.principal.to_string(),
                qos: c.qos,
                priority: c.priority,
                requests: p.requests.clone(),
                waited,
            });
        }
        if self.auditing {
            fx.audits.push(crate::observe::audit_record(
                &c.principal,
                &c.namespace,
                AuditAction::Allocated,
                Some(id),
                p.requests.clone(),
                format!("qos={} priority={}", c.qos.as_str(), c.priority),
            ));
        }
        let (qos, priority) = (c.qos, c.priority);
        // Counting starts here: nothing below can fail.
        if let Some((_, d)) = lease {
            st.timers.insert((d, id));
        }
        st.ledger.charge(id, Record::new(p.claim, st.seq, lease, Arc::clone(&shared)));
        Allocation { inner, shared, id, qos, priority, requests: p.requests, detached: false }
    }

    /// Admits waiters in priority order. A waiter that does not fit keeps what it asks for
    /// reserved, so lower-priority waiters cannot starve it; waiters of other resources pass.
    pub(super) fn drain(&self, st: &mut State, now: Instant, fx: &mut Effects) {
        if st.queue.is_empty() {
            return;
        }
        let State { ledger, queue, .. } = &mut *st;
        let admit = queue.scan(ledger.free_all(), |p| self.check_quota(ledger, &p.claim).is_ok());
        for key in admit {
            let Some(w) = st.queue.get(key) else { continue };
            // Quota may have been taken by a waiter admitted just before in this pass.
            if self.check_quota(&st.ledger, &w.prepared.claim).is_err() || !st.ledger.fits(&w.prepared.claim) {
                // Its `short` is empty yet it stays: make the next release drain regardless.
                st.queue.mark_stale();
                continue;
            }
            let Some(w) = st.queue.remove(key) else { continue };
            let waited = now.saturating_duration_since(w.enqueued);
            let a = self.commit(st, w.prepared, now, waited, fx);
            if let Err(a) = w.tx.send(a) {
                // The waiter gave up at this instant; release after the lock is dropped.
                fx.dropped.push(a);
            }
        }
    }
}

/// A short, data-free name for a refusal (span attributes must not carry principals).
fn outcome_of(e: &QosError) -> &'static str {
    match e {
        QosError::InvalidQuantity { .. }
        | QosError::InvalidName { .. }
        | QosError::UnknownResource(_)
        | QosError::InvalidRequest(_)
        | QosError::UnknownPriorityClass(_) => "invalid",
        QosError::InvalidConfig(_) | QosError::Discovery(_) | QosError::Gpu(_) => "config",
        QosError::Forbidden { .. } => "forbidden",
        QosError::LimitRangeViolation { .. } => "limit_range",
        QosError::QuotaExceeded { .. } => "quota",
        QosError::ExceedsCapacity { .. } | QosError::Insufficient { .. } => "capacity",
        QosError::Overloaded { .. } => "overloaded",
        QosError::CircuitOpen { .. } => "circuit_open",
        QosError::Timeout { .. } => "timeout",
        QosError::NotHeld(_) | QosError::LeaseNotHeld => "not_held",
        QosError::NotLeaseOwner => "not_owner",
        QosError::Shutdown => "shutdown",
        #[allow(unreachable_patterns)]
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use crate::{
        AllocationRequest, NamespacePolicy, PriorityClass, QosError, ResourceKind, ResourceList, ResourceManager,
        ResourceQuota,
    };

    fn check(m: &ResourceManager) {
        let st = m.inner.state.lock();
        st.ledger.assert_consistent();
        st.queue.assert_consistent();
    }

    /// The ledger and the queue stay equal to their records through admission, preemption,
    /// waiting, draining, refusals and shutdown.
    #[tokio::test(start_paused = true)]
    async fn ledger_and_queue_stay_consistent_through_the_pipeline() {
        let quota = ResourceQuota {
            name: "q".into(),
            hard_requests: ResourceList::new().cpu_millis(3_000),
            hard_limits: ResourceList::new(),
            scope: Default::default(),
        };
        let m = ResourceManager::builder()
            .capacity(ResourceKind::Cpu, 4_000)
            .capacity(ResourceKind::Gpu, 2)
            .priority_class(PriorityClass::new("low", 0).global_default())
            .priority_class(PriorityClass::new("high", 100))
            .namespace("a", NamespacePolicy { limit_range: None, quotas: vec![quota] })
            .grace_period(Duration::from_secs(60))
            .build()
            .unwrap();
        let low = m
            .try_allocate(
                AllocationRequest::new("a", "p").request(ResourceKind::Cpu, 3_000).request(ResourceKind::Gpu, 1),
            )
            .unwrap();
        check(&m);
        let refused = m.try_allocate(AllocationRequest::new("a", "p").request(ResourceKind::Cpu, 500));
        assert!(matches!(refused, Err(QosError::QuotaExceeded { .. })), "{refused:?}");
        check(&m);

        let m2 = m.clone();
        let high = tokio::spawn(async move {
            m2.allocate(AllocationRequest::new("b", "p").request(ResourceKind::Cpu, 2_000).priority_class("high")).await
        });
        tokio::task::yield_now().await;
        assert_eq!(m.usage().waiters, 1);
        assert!(low.revocation().is_some(), "preempted");
        check(&m);
        // A low-priority waiter queues behind; it times out.
        let timed_out = m
            .allocate(AllocationRequest::new("b", "p").request(ResourceKind::Gpu, 2).timeout(Duration::from_millis(10)))
            .await;
        assert!(matches!(timed_out, Err(QosError::Timeout { .. })), "{timed_out:?}");
        check(&m);

        drop(low);
        let high = high.await.unwrap().unwrap();
        assert_eq!(m.usage().used.get(&ResourceKind::Cpu), Some(2_000));
        assert_eq!(m.quota_usage("a", "q").map(|(r, _)| r.get(&ResourceKind::Cpu)), Some(None));
        check(&m);

        let m3 = m.clone();
        let waiting = tokio::spawn(async move {
            m3.allocate(AllocationRequest::new("b", "p").request(ResourceKind::Cpu, 3_000).preemptible(false)).await
        });
        tokio::task::yield_now().await;
        check(&m);
        m.shutdown();
        assert!(matches!(waiting.await.unwrap(), Err(QosError::Shutdown)));
        check(&m);
        drop(high);
        assert_eq!(m.usage().used, ResourceList::new());
        check(&m);
    }
}
