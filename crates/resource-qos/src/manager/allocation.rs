//! The allocation handle and its life: [`Allocation`], [`LeaseId`], [`Revocation`], and what
//! ends an allocation (release, lease expiry, the end of a victim's grace period).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Effects, Inner, State};
use crate::deadline::after;
use crate::observe::{AuditAction, ResourceEvent};
use crate::{QosClass, QosError, ResourceList};

/// Why an allocation stopped being held while its handle is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// Chosen as a preemption victim; release before the deadline or be reclaimed then.
    Preempted {
        /// When the resources are reclaimed regardless.
        deadline: Instant,
    },
    /// Reclaimed: the lease expired or the grace period passed.
    Reclaimed,
}

pub(super) const ST_ACTIVE: u8 = 0;
pub(super) const ST_PREEMPTED: u8 = 1;
pub(super) const ST_RECLAIMED: u8 = 2;

/// What the manager and a handle share: the revocation status and its signal.
#[derive(Debug)]
pub(super) struct HandleShared {
    status: AtomicU8,
    deadline: Mutex<Option<Instant>>,
    notify: Notify,
}

impl HandleShared {
    /// Active, not signalled.
    pub(super) fn new() -> Self {
        Self { status: AtomicU8::new(ST_ACTIVE), deadline: Mutex::new(None), notify: Notify::new() }
    }

    pub(super) fn signal(&self, status: u8, deadline: Option<Instant>) {
        if deadline.is_some() {
            *self.deadline.lock() = deadline;
        }
        self.status.store(status, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// Id of a detached lease: 128 random bits from the operating system's generator, so a lease
/// cannot be found by guessing or counting. It is also bound to the principal that allocated it:
/// [`ResourceManager::heartbeat`](super::ResourceManager::heartbeat) and
/// [`ResourceManager::release_lease`](super::ResourceManager::release_lease) refuse other principals.
///
/// It renders as (and parses from) 32 lowercase hex digits for storage or transport. Treat it
/// like a credential: `Debug` shows only its first four digits, and no error message, audit
/// record or event of this crate contains it.
///
/// ```
/// use strata_resource_qos::LeaseId;
/// let id: LeaseId = "0123456789abcdef0123456789abcdef".parse()?;
/// assert_eq!(id.to_string(), "0123456789abcdef0123456789abcdef");
/// assert_eq!(format!("{id:?}"), "LeaseId(0123…)");
/// assert!("42".parse::<LeaseId>().is_err());
/// # Ok::<(), strata_resource_qos::QosError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub(super) u128);

impl LeaseId {
    fn random() -> Result<Self, QosError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| {
            tracing::error!(error = %e, "the operating system's random number generator failed");
            QosError::InvalidRequest("cannot draw a random lease id: the system random generator failed".into())
        })?;
        Ok(Self(u128::from_le_bytes(bytes)))
    }
}

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::fmt::Debug for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LeaseId({:04x}…)", self.0 >> 112)
    }
}

impl std::str::FromStr for LeaseId {
    type Err = QosError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(QosError::InvalidRequest("a lease id is 32 hex digits".into()));
        }
        u128::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| QosError::InvalidRequest("a lease id is 32 hex digits".into()))
    }
}

impl Serialize for LeaseId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LeaseId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An admitted allocation. Dropping it returns its resources (RAII).
///
/// When preempted, [`revoked`](Allocation::revoked) resolves: stop the work and drop the handle
/// before the grace deadline.
#[derive(Debug)]
#[must_use = "dropping the allocation releases its resources at once"]
pub struct Allocation {
    pub(super) inner: Arc<Inner>,
    pub(super) shared: Arc<HandleShared>,
    pub(super) id: u64,
    pub(super) qos: QosClass,
    pub(super) priority: i32,
    pub(super) requests: ResourceList,
    pub(super) detached: bool,
}

impl Allocation {
    /// Allocation id: sequential, the one observer events and audit records name. It is not a
    /// capability: a detached lease is addressed by its unguessable [`LeaseId`].
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// QoS class derived at admission.
    #[must_use]
    pub fn qos(&self) -> QosClass {
        self.qos
    }

    /// Priority value.
    #[must_use]
    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// Final (defaulted) requests taken from capacity.
    #[must_use]
    pub fn requests(&self) -> &ResourceList {
        &self.requests
    }

    /// `Some` once preempted or reclaimed.
    #[must_use]
    pub fn revocation(&self) -> Option<Revocation> {
        match self.shared.status.load(Ordering::Acquire) {
            ST_ACTIVE => None,
            ST_PREEMPTED => {
                Some(Revocation::Preempted { deadline: self.shared.deadline.lock().unwrap_or_else(Instant::now) })
            }
            _ => Some(Revocation::Reclaimed),
        }
    }

    /// Resolves when the allocation is preempted or reclaimed (the cancellation signal).
    pub async fn revoked(&self) -> Revocation {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.revocation() {
                return r;
            }
            notified.await;
        }
    }

    /// Renews the lease (no-op success for allocations without a lease).
    ///
    /// # Errors
    /// [`QosError::NotHeld`] when it was already reclaimed.
    pub fn heartbeat(&self) -> Result<(), QosError> {
        self.inner.heartbeat(self.id)
    }

    /// Turns the handle into a detached lease that is not released on drop: it lives until
    /// [`ResourceManager::release_lease`](super::ResourceManager::release_lease) or until it
    /// misses a heartbeat. Only the principal that made the request may renew or release it.
    ///
    /// # Errors
    /// [`QosError::InvalidRequest`] when the allocation was not made with a lease TTL (it would
    /// leak forever) or no random id could be drawn, [`QosError::NotHeld`] when already
    /// reclaimed. On error the handle is consumed and its resources are released.
    pub fn detach(mut self) -> Result<LeaseId, QosError> {
        let lease = LeaseId::random()?;
        self.inner.state.lock().ledger.attach_lease(self.id, lease.0)?;
        self.detached = true;
        Ok(lease)
    }

    /// Releases now (same as dropping).
    pub fn release(self) {}
}

impl Drop for Allocation {
    fn drop(&mut self) {
        if !self.detached {
            self.inner.release(self.id, AuditAction::Released);
        }
    }
}

impl Inner {
    /// Removes an allocation and returns its resources; `true` if it was held.
    pub(super) fn release(&self, id: u64, action: AuditAction) -> bool {
        let mut fx = Effects::default();
        let mut st = self.state.lock();
        // Only a release of something a waiter is short of can unblock it.
        let unblocks = st.ledger.get(id).is_some_and(|r| st.queue.may_unblock(r.claim().req.iter().map(|&(k, _)| k)));
        let timers_due = !st.timers.is_empty();
        let held = self.remove_alloc(&mut st, id, action, None, &mut fx);
        if held && (unblocks || timers_due) {
            let now = Instant::now();
            if st.timers.first().is_some_and(|(t, _)| *t <= now) {
                self.reap(&mut st, now, &mut fx);
            } else if unblocks {
                self.drain(&mut st, now, &mut fx);
            }
        }
        self.utilization(&st, &mut fx);
        drop(st);
        self.emit(fx);
        held
    }

    fn remove_alloc(
        &self,
        st: &mut State,
        id: u64,
        action: AuditAction,
        reason: Option<&'static str>,
        fx: &mut Effects,
    ) -> bool {
        let Some(r) = st.ledger.refund(id) else { return false };
        if let Some(t) = r.terminating() {
            st.timers.remove(&(t, id));
        }
        if let Some((_, d)) = r.lease {
            st.timers.remove(&(d, id));
        }
        let c = r.claim();
        if let Some(reason) = reason {
            r.shared.signal(ST_RECLAIMED, None);
            tracing::info!(allocation = id, reason, "resources reclaimed");
            if self.observe {
                fx.events.push(ResourceEvent::Reclaimed { id, reason });
            }
        } else if self.observe {
            fx.events.push(ResourceEvent::Released { id, requests: self.to_list(&c.req) });
        }
        if self.observe {
            fx.touched = true;
        }
        if self.auditing {
            fx.audits.push(crate::observe::audit_record(
                &c.principal,
                &c.namespace,
                action,
                Some(id),
                self.to_list(&c.req),
                reason.unwrap_or_default().to_owned(),
            ));
        }
        true
    }

    /// Reclaims expired leases and victims past their grace period, then drains the queue.
    pub(super) fn reap(&self, st: &mut State, now: Instant, fx: &mut Effects) {
        let mut any = false;
        while let Some(&(t, id)) = st.timers.first() {
            if t > now {
                break;
            }
            st.timers.pop_first();
            let reason = match st.ledger.get(id) {
                Some(r) if r.terminating().is_some_and(|d| d <= now) => "grace period over",
                Some(r) if r.lease.is_some_and(|(_, d)| d <= now) => "lease expired",
                _ => continue,
            };
            any |= self.remove_alloc(st, id, AuditAction::Reclaimed, Some(reason), fx);
        }
        if any || !st.queue.is_empty() {
            self.drain(st, now, fx);
        }
    }

    /// The allocation behind a detached lease, if `principal` holds it.
    pub(super) fn owned_lease(&self, principal: &str, lease: LeaseId) -> Result<u64, QosError> {
        let st = self.state.lock();
        let Some((id, r)) = st.ledger.lease_holder(lease.0) else {
            return Err(QosError::LeaseNotHeld);
        };
        if *r.claim().principal == *principal {
            return Ok(id);
        }
        let namespace = Arc::clone(&r.claim().namespace);
        drop(st);
        tracing::warn!(allocation = id, "lease renewal or release by a principal that does not hold it refused");
        let err = QosError::NotLeaseOwner;
        let mut fx = Effects::default();
        // The caller's name is not validated here: record it bounded and escaped.
        let principal = crate::name::sanitized(principal);
        if self.auditing {
            fx.audits.push(crate::observe::audit_record(
                &principal,
                &namespace,
                AuditAction::Denied,
                Some(id),
                ResourceList::new(),
                err.to_string(),
            ));
        }
        if self.observe {
            fx.events.push(ResourceEvent::Denied {
                namespace: namespace.to_string(),
                principal,
                reason: err.to_string(),
            });
        }
        self.emit(fx);
        Err(err)
    }

    pub(super) fn heartbeat(&self, id: u64) -> Result<(), QosError> {
        let now = Instant::now();
        let mut st = self.state.lock();
        let Some(r) = st.ledger.get_mut(id) else { return Err(QosError::NotHeld(id)) };
        let Some((ttl, old)) = r.lease else { return Ok(()) };
        if old <= now {
            // Missed: reclaim now rather than resurrect.
            let mut fx = Effects::default();
            self.reap(&mut st, now, &mut fx);
            drop(st);
            self.emit(fx);
            return Err(QosError::NotHeld(id));
        }
        let renewed = after(now, ttl);
        r.lease = Some((ttl, renewed));
        st.timers.remove(&(old, id));
        st.timers.insert((renewed, id));
        Ok(())
    }
}
