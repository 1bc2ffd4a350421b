//! Hostile and extreme input (issue 11): durations, quantities and names at their edges are
//! accepted (saturating) or refused with a typed error, never a panic and never a leak; leases
//! belong to the principal that made them and cannot be guessed; an open breaker never refuses
//! work that fits.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use strata_resource_qos::{
    Action, AllocationRequest, BreakerConfig, BreakerState, LeaseId, MAX_NAME_LEN, MemoryAuditSink, NamespacePolicy,
    Outcome, PriorityClass, QosError, ResourceKind, ResourceList, ResourceManager, ResourceQuota, Revocation,
};
use tokio::time::Instant;

const THIRTY_YEARS: Duration = Duration::from_secs(86_400 * 365 * 30);

fn mgr() -> ResourceManager {
    ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 4000)
        .capacity(ResourceKind::Gpu, 2)
        .priority_class(PriorityClass::new("low", 0).global_default())
        .priority_class(PriorityClass::new("high", 100))
        .grace_period(Duration::from_millis(50))
        .build()
        .unwrap()
}

fn req(cpu: u64) -> AllocationRequest {
    AllocationRequest::new("ns", "p").request(ResourceKind::Cpu, cpu)
}

fn assert_clean(m: &ResourceManager) {
    let u = m.usage();
    assert!(u.used.is_empty(), "used after releasing everything: {}", u.used);
    assert_eq!(u.allocations, 0);
    assert_eq!(u.waiters, 0);
}

// ---------------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------------

/// The reported panics: `.timeout(Duration::MAX)` and `.lease(Duration::MAX)` (the latter after
/// usage was counted, leaking the capacity), and their neighbours.
#[tokio::test(start_paused = true)]
async fn extreme_timeouts_and_lease_ttls_saturate_instead_of_panicking() {
    let m = mgr();
    let near_max = [
        Duration::MAX,
        Duration::MAX - Duration::from_nanos(1),
        Duration::from_secs(u64::MAX),
        Duration::from_millis(u64::MAX),
        THIRTY_YEARS + Duration::from_secs(1),
        THIRTY_YEARS,
    ];
    for d in near_max {
        // Fits at once: admitted with a lease that in practice never expires.
        let a = m.allocate(req(1000).timeout(d).lease(d)).await.unwrap();
        let b = m.try_allocate(req(1000).timeout(d).lease(d)).unwrap();
        assert_eq!(m.usage().used.get(&ResourceKind::Cpu), Some(2000), "{d:?}");
        a.heartbeat().unwrap();
        tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
        m.reclaim_expired();
        assert_eq!(a.revocation(), None, "a lease of {d:?} has not expired after a year");
        b.heartbeat().unwrap();
        // Detached, renewed and released by its owner.
        let lease = b.detach().unwrap();
        m.heartbeat("p", lease).unwrap();
        m.release_lease("p", lease).unwrap();
        drop(a);
        assert_clean(&m);

        // Short: waits with no practical deadline, and leaves cleanly when cancelled or admitted.
        let hog = m.try_allocate(req(4000)).unwrap();
        let waiting = {
            let m = m.clone();
            tokio::spawn(async move { m.allocate(req(500).timeout(d).lease(d)).await })
        };
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(m.usage().waiters, 1, "{d:?}: still waiting after an hour");
        drop(hog);
        let got = waiting.await.unwrap().unwrap();
        assert_eq!(m.usage().used.get(&ResourceKind::Cpu), Some(500));
        drop(got);
        let hog = m.try_allocate(req(4000)).unwrap();
        let fut = m.allocate(req(500).timeout(d));
        assert!(tokio::time::timeout(Duration::from_secs(60), fut).await.is_err());
        drop(hog);
        assert_clean(&m);
    }
}

#[tokio::test(start_paused = true)]
async fn zero_and_tiny_durations() {
    let m = mgr();
    // A zero lease would expire at admission: refused, nothing counted.
    assert!(matches!(m.try_allocate(req(100).lease(Duration::ZERO)), Err(QosError::InvalidRequest(_))));
    assert!(matches!(m.allocate(req(100).lease(Duration::ZERO)).await, Err(QosError::InvalidRequest(_))));
    assert_clean(&m);
    // The smallest positive lease is accepted and expires on the next tick.
    let a = m.try_allocate(req(100).lease(Duration::from_nanos(1))).unwrap();
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(a.heartbeat().is_err());
    m.reclaim_expired();
    assert_eq!(a.revocation(), Some(Revocation::Reclaimed));
    drop(a);
    assert_clean(&m);
    // A zero timeout admits what fits and times out at once otherwise.
    let a = m.allocate(req(4000).timeout(Duration::ZERO)).await.unwrap();
    let before = Instant::now();
    let err = m.allocate(req(1).timeout(Duration::ZERO)).await.unwrap_err();
    assert!(matches!(err, QosError::Timeout { waited, .. } if waited == Duration::ZERO), "{err}");
    assert_eq!(Instant::now(), before);
    drop(a);
    assert_clean(&m);
    // Maintenance with a zero or maximal period does not panic.
    let t1 = m.spawn_maintenance(Duration::ZERO);
    let t2 = m.spawn_maintenance(Duration::MAX);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!t1.is_finished() && !t2.is_finished());
    t1.abort();
    t2.abort();
}

/// Configured durations at their maximum: default timeout, grace period (used when preempting)
/// and breaker open time.
#[tokio::test(start_paused = true)]
async fn configured_durations_at_their_maximum() {
    let breaker = BreakerConfig {
        open_wait: Duration::MAX,
        minimum_calls: 1,
        sliding_window: 1,
        failure_rate_threshold: 1.0,
        ..Default::default()
    };
    let m = ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 1000)
        .priority_class(PriorityClass::new("low", 0).global_default())
        .priority_class(PriorityClass::new("high", 100))
        .default_timeout(Duration::MAX)
        .grace_period(Duration::MAX)
        .breaker(breaker)
        .build()
        .unwrap();
    let low = m.try_allocate(req(1000)).unwrap();
    // Preemption computes the victim's deadline from the (maximal) grace period.
    let high = {
        let m = m.clone();
        tokio::spawn(async move { m.allocate(req(1000).priority_class("high")).await })
    };
    tokio::time::sleep(Duration::from_millis(1)).await;
    let Some(Revocation::Preempted { deadline }) = low.revocation() else { panic!("not preempted") };
    assert!(deadline >= Instant::now() + Duration::from_secs(86_400 * 365 * 29), "grace saturates, not wraps");
    drop(low);
    let h = high.await.unwrap().unwrap();
    // A failure opens the breaker for "ever"; work that fits still goes through.
    assert!(matches!(m.try_allocate(req(1)), Err(QosError::Insufficient { .. })));
    assert_eq!(m.breaker_state(&ResourceKind::Cpu), Some(BreakerState::Open));
    let err = m.try_allocate(req(1)).unwrap_err();
    assert!(matches!(err, QosError::CircuitOpen { .. }), "{err}");
    drop(h);
    let again = m.try_allocate(req(1000)).unwrap();
    drop(again);
    assert_clean(&m);
    // Absurd breaker windows are refused before anything is allocated for them.
    let huge = BreakerConfig { sliding_window: u32::MAX, ..Default::default() };
    assert!(matches!(
        ResourceManager::builder().capacity(ResourceKind::Cpu, 1).breaker(huge).build(),
        Err(QosError::InvalidConfig(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Quantities
// ---------------------------------------------------------------------------------------------

/// `u64::MAX` capacity, requests and limits: sums of limits (not bounded by capacity) and of
/// waiting requests used to overflow after usage was counted.
#[tokio::test(start_paused = true)]
async fn maximal_quantities_never_overflow_the_books() {
    let quota = ResourceQuota {
        name: "q".into(),
        hard_limits: ResourceList::new().cpu_millis(u64::MAX).memory_bytes(u64::MAX),
        ..Default::default()
    };
    let m = ResourceManager::builder()
        .capacity(ResourceKind::Cpu, u64::MAX)
        .capacity(ResourceKind::Memory, u64::MAX)
        .namespace("ns", NamespacePolicy { quotas: vec![quota], ..Default::default() })
        .build()
        .unwrap();
    // Limits at u64::MAX on a tiny request, twice: the limit quota refuses the second (its sum
    // would pass u64::MAX), nothing panics, nothing is left counted.
    let a = m.try_allocate(req(1).limit(ResourceKind::Cpu, u64::MAX)).unwrap();
    let err = m.try_allocate(req(1).limit(ResourceKind::Cpu, u64::MAX)).unwrap_err();
    assert!(matches!(err, QosError::QuotaExceeded { hard: u64::MAX, .. }), "{err}");
    assert_eq!(m.usage().used.get(&ResourceKind::Cpu), Some(1));
    drop(a);
    // A request of the whole (maximal) capacity, then waiters each asking for u64::MAX.
    let all = m.try_allocate(req(u64::MAX)).unwrap();
    assert!(matches!(m.try_allocate(req(1)), Err(QosError::Insufficient { .. })));
    let mut waiters = Vec::new();
    for _ in 0..4 {
        let m = m.clone();
        waiters.push(tokio::spawn(async move { m.allocate(req(u64::MAX).timeout(Duration::from_secs(5))).await }));
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(m.usage().waiters, 4);
    drop(all);
    let first = waiters.remove(0).await.unwrap().unwrap();
    assert_eq!(m.usage().used.get(&ResourceKind::Cpu), Some(u64::MAX));
    drop(first);
    for w in waiters {
        drop(w.await.unwrap());
    }
    assert_clean(&m);
    let (reqs, lims) = m.quota_usage("ns", "q").unwrap();
    assert!(reqs.is_empty() && lims.is_empty());
    // Zero anywhere is a typed error; so is more than the capacity.
    let small = mgr();
    for r in [req(0), req(1).limit(ResourceKind::Cpu, 0), req(1).request(ResourceKind::Gpu, 0)] {
        assert!(matches!(small.try_allocate(r), Err(QosError::InvalidQuantity { .. })));
    }
    for q in [4001, u64::MAX - 1, u64::MAX] {
        assert!(matches!(small.try_allocate(req(q)), Err(QosError::ExceedsCapacity { .. })));
        assert!(matches!(small.allocate(req(q)).await, Err(QosError::ExceedsCapacity { .. })));
    }
    assert_clean(&small);
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

#[test]
fn hostile_names_are_refused_with_a_typed_error_and_not_echoed() {
    let audit = Arc::new(MemoryAuditSink::bounded(1000));
    let m = ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 1000)
        .priority_class(PriorityClass::new("low", 0).global_default())
        .audit_sink(audit.clone())
        .build()
        .unwrap();
    let long = "n".repeat(MAX_NAME_LEN + 1);
    let huge = "h".repeat(1 << 20);
    let wide = "é".repeat(MAX_NAME_LEN / 2 + 1); // 2 bytes each: over the byte limit
    let bad =
        ["", long.as_str(), huge.as_str(), wide.as_str(), "a\nforged: line", "\u{0}", "\u{1b}[2J", "tab\tx", "\u{85}"];
    for name in bad {
        for (ns, who, what) in [(name, "p", "namespace"), ("ns", name, "principal")] {
            let err = m.try_allocate(AllocationRequest::new(ns, who).request(ResourceKind::Cpu, 1)).unwrap_err();
            assert!(matches!(err, QosError::InvalidName { what: w, .. } if w == what), "{name:?}: {err}");
            let text = err.to_string();
            assert!(text.len() < 100 && !text.contains('\n') && !text.contains('\u{0}'), "{text:?}");
        }
        let err = m.try_allocate(req(1).priority_class(name)).unwrap_err();
        assert!(matches!(err, QosError::InvalidName { what: "priority class", .. }), "{name:?}: {err}");
    }
    // The denials are audited with a bounded, escaped rendering of the name.
    for r in audit.records() {
        assert_eq!((r.action, r.outcome), (Action::Allocate, Outcome::Denied));
        assert!(r.principal.len() < 300 && r.namespace.len() < 300);
        assert!(!r.principal.chars().any(char::is_control) && !r.namespace.chars().any(char::is_control));
    }
    // Unicode without control characters, up to the limit, is fine.
    let edge = "x".repeat(MAX_NAME_LEN);
    for name in ["équipe", "研究", "🚀-team", " spaced ", edge.as_str()] {
        drop(m.try_allocate(AllocationRequest::new(name, name).request(ResourceKind::Cpu, 1)).unwrap());
    }
    let err = m.try_allocate(req(1).priority_class("研究")).unwrap_err();
    assert!(matches!(err, QosError::UnknownPriorityClass(_)), "{err}");
    assert_clean(&m);
}

#[test]
fn hostile_names_in_the_configuration_are_refused() {
    let base = || ResourceManager::builder().capacity(ResourceKind::Cpu, 1000);
    for name in ["", "a\nb", "\u{1b}", &"c".repeat(MAX_NAME_LEN + 1)] {
        assert!(matches!(base().priority_class(PriorityClass::new(name, 1)).build(), Err(QosError::InvalidConfig(_))));
        assert!(matches!(base().namespace(name, NamespacePolicy::default()).build(), Err(QosError::InvalidConfig(_))));
        let quota = ResourceQuota { name: name.into(), ..Default::default() };
        let pol = NamespacePolicy { quotas: vec![quota], ..Default::default() };
        assert!(matches!(base().namespace("ok", pol).build(), Err(QosError::InvalidConfig(_))));
    }
    let twice = NamespacePolicy {
        quotas: vec![
            ResourceQuota { name: "q".into(), ..Default::default() },
            ResourceQuota { name: "q".into(), ..Default::default() },
        ],
        ..Default::default()
    };
    assert!(matches!(base().namespace("ok", twice).build(), Err(QosError::InvalidConfig(_))));
    // `ResourceKind::Custom` built directly, bypassing `ResourceKind::custom`'s check.
    for bad in ["", "noslash", "a/\nb", "x/y z"] {
        let kind = ResourceKind::Custom(Arc::from(bad));
        assert!(matches!(base().capacity(kind, 1).build(), Err(QosError::InvalidConfig(_))), "{bad:?}");
    }
    assert!(base().capacity(ResourceKind::custom("example.com/fpga").unwrap(), 1).build().is_ok());
    assert!(
        base()
            .priority_class(PriorityClass::new("研究", 1))
            .namespace("équipe", NamespacePolicy::default())
            .build()
            .is_ok()
    );
}

// ---------------------------------------------------------------------------------------------
// Leases
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn only_the_owner_may_renew_or_release_a_lease() {
    let audit = Arc::new(MemoryAuditSink::bounded(100));
    let m = ResourceManager::builder().capacity(ResourceKind::Cpu, 1000).audit_sink(audit.clone()).build().unwrap();
    let a = m
        .try_allocate(
            AllocationRequest::new("ml", "alice").request(ResourceKind::Cpu, 400).lease(Duration::from_secs(1)),
        )
        .unwrap();
    let alloc_id = a.id();
    let lease = a.detach().unwrap();
    let huge = "alice".repeat(100_000);
    for intruder in ["bob", "", "Alice", "alice ", "ALICE", "alice\nforged", huge.as_str()] {
        assert!(matches!(m.heartbeat(intruder, lease), Err(QosError::NotLeaseOwner)), "{intruder:?}");
        assert!(matches!(m.release_lease(intruder, lease), Err(QosError::NotLeaseOwner)), "{intruder:?}");
    }
    assert_eq!(m.usage().used.get(&ResourceKind::Cpu), Some(400), "still held");
    // The owner renews; intruders' heartbeats do not.
    tokio::time::advance(Duration::from_millis(800)).await;
    m.heartbeat("alice", lease).unwrap();
    tokio::time::advance(Duration::from_millis(800)).await; // 1.6 s: alive thanks to alice
    m.reclaim_expired();
    assert_eq!(m.usage().used.get(&ResourceKind::Cpu), Some(400), "renewed by its owner");
    assert!(matches!(m.heartbeat("bob", lease), Err(QosError::NotLeaseOwner)));
    tokio::time::advance(Duration::from_millis(300)).await; // 1.9 s: bob's heartbeat renewed nothing
    m.reclaim_expired();
    assert_eq!(m.usage().used.get(&ResourceKind::Cpu), None, "expired: the intruder did not renew it");
    assert!(matches!(m.heartbeat("alice", lease), Err(QosError::LeaseNotHeld)));
    // Refusals are audited as denials, naming the intruder and the allocation, never the lease id.
    let denials: Vec<_> = audit.records().into_iter().filter(|r| r.outcome == Outcome::Denied).collect();
    assert_eq!(denials.len(), 15);
    assert!(denials.iter().all(|r| r.principal.len() < 300 && !r.principal.chars().any(char::is_control)));
    assert!(denials.iter().all(|r| r.allocation == Some(alloc_id) && r.namespace == "ml"));
    assert!(denials.iter().any(|r| r.principal == "bob"));
    let token = lease.to_string();
    for r in audit.records() {
        assert!(!r.detail.as_deref().unwrap_or_default().contains(&token) && !r.principal.contains(&token));
    }
    assert!(!format!("{lease:?}").contains(&token[4..]), "Debug shows only a prefix");
    // A second lease, released by its owner after an intruder tried.
    let b = m
        .try_allocate(
            AllocationRequest::new("ml", "alice").request(ResourceKind::Cpu, 100).lease(Duration::from_secs(60)),
        )
        .unwrap();
    let lease = b.detach().unwrap();
    assert!(matches!(m.release_lease("bob", lease), Err(QosError::NotLeaseOwner)));
    assert_eq!(m.usage().used.get(&ResourceKind::Cpu), Some(100));
    m.release_lease("alice", lease).unwrap();
    assert!(matches!(m.release_lease("alice", lease), Err(QosError::LeaseNotHeld)));
    assert!(matches!(m.heartbeat("bob", lease), Err(QosError::LeaseNotHeld)));
    assert_clean(&m);
}

#[tokio::test(start_paused = true)]
async fn lease_ids_cannot_be_guessed() {
    let m = ResourceManager::builder().capacity(ResourceKind::Cpu, 100_000).build().unwrap();
    let mut leases = Vec::new();
    let mut alloc_ids = Vec::new();
    for i in 0..1000u64 {
        let a = m
            .try_allocate(
                AllocationRequest::new("ns", "owner")
                    .request(ResourceKind::Cpu, 1 + i % 3)
                    .lease(Duration::from_secs(600)),
            )
            .unwrap();
        alloc_ids.push(a.id());
        leases.push(a.detach().unwrap());
    }
    let held: HashSet<LeaseId> = leases.iter().copied().collect();
    assert_eq!(held.len(), 1000, "all distinct");
    // Guessing: small numbers, the allocation ids, and the neighbours of every known lease id
    // (as the attacker who holds one lease would try). The owner's own name is used, so only
    // unguessability protects here, not the ownership check.
    let mut guesses: Vec<u128> = (0..10_000u128).collect();
    guesses.extend(alloc_ids.iter().map(|&i| u128::from(i)));
    for l in &leases {
        let v = u128::from_str_radix(&l.to_string(), 16).unwrap();
        guesses.extend((1..=16).flat_map(|d| [v.wrapping_add(d), v.wrapping_sub(d)]));
        guesses.push(v ^ 1);
    }
    let mut found = 0;
    for g in guesses {
        let id: LeaseId = format!("{g:032x}").parse().unwrap();
        if held.contains(&id) {
            continue; // a neighbour that happens to be another held lease would be 2^-100-ish
        }
        match m.heartbeat("owner", id) {
            Err(QosError::LeaseNotHeld) => {}
            other => {
                found += 1;
                eprintln!("guess {g:x} answered {other:?}");
            }
        }
    }
    assert_eq!(found, 0);
    // Spread: the ids are not a counter (their top 64 bits differ).
    let tops: HashSet<u64> = leases.iter().map(|l| u64::from_str_radix(&l.to_string()[..16], 16).unwrap()).collect();
    assert!(tops.len() > 990, "{} distinct high halves", tops.len());
    // Round trip through text and serde; malformed ids are typed errors.
    let l = leases[0];
    assert_eq!(l.to_string().parse::<LeaseId>().unwrap(), l);
    let json = serde_json::to_string(&l).unwrap();
    assert_eq!(serde_json::from_str::<LeaseId>(&json).unwrap(), l);
    for bad in ["", "1", "g".repeat(32).as_str(), &"0".repeat(33), "+0000000000000000000000000000001"] {
        assert!(matches!(bad.parse::<LeaseId>(), Err(QosError::InvalidRequest(_))), "{bad:?}");
    }
    for l in leases {
        m.release_lease("owner", l).unwrap();
    }
    assert_clean(&m);
}

// ---------------------------------------------------------------------------------------------
// Breaker
// ---------------------------------------------------------------------------------------------

/// The reported case: after a flood against full capacity the breaker refused every request,
/// including those that fit once capacity was free, for the whole open time.
#[tokio::test(start_paused = true)]
async fn after_a_flood_work_that_fits_is_admitted_at_once() {
    const CONCURRENT: usize = 20_000;
    const SEQUENTIAL: usize = 50_000;
    let m = ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 1000)
        .capacity(ResourceKind::Memory, 1 << 30)
        .max_waiters(1024)
        .build()
        .unwrap(); // default breaker: opens at 50 % failures over 20 outcomes, 5 s open
    let hog = m.try_allocate(req(1000)).unwrap();
    // Flood: concurrent waiting allocations that all time out, then non-waiting ones.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENT {
        let m = m.clone();
        tasks.spawn(async move { m.allocate(req(100).timeout(Duration::from_millis(50))).await.map(drop) });
    }
    let mut refused = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Err(QosError::Timeout { .. } | QosError::Overloaded { .. } | QosError::CircuitOpen { .. }) => refused += 1,
            other => panic!("unexpected outcome during the flood: {other:?}"),
        }
    }
    assert_eq!(refused, CONCURRENT);
    for _ in 0..SEQUENTIAL {
        assert!(matches!(m.try_allocate(req(100)), Err(QosError::Insufficient { .. } | QosError::CircuitOpen { .. })));
    }
    assert_eq!(m.breaker_state(&ResourceKind::Cpu), Some(BreakerState::Open), "the flood opened the breaker");
    // While exhausted, requests that do not fit fail fast.
    assert!(matches!(m.try_allocate(req(1)), Err(QosError::CircuitOpen { .. })));
    assert_eq!(m.usage().waiters, 0);

    // Free the capacity. With no time passing on the manager's clock, work that fits is admitted.
    drop(hog);
    let freed_at = Instant::now();
    let all = m.try_allocate(req(1000)).unwrap();
    drop(all);
    let mut batch = Vec::new();
    for _ in 0..10 {
        batch.push(m.try_allocate(req(100)).unwrap());
    }
    assert_eq!(m.usage().used.get(&ResourceKind::Cpu), Some(1000));
    assert_eq!(m.breaker_state(&ResourceKind::Cpu), Some(BreakerState::Closed), "admissions closed it");
    drop(batch);
    let waited = tokio::time::timeout(Duration::from_millis(100), m.allocate(req(1000))).await;
    drop(waited.expect("admitted within 100 ms of manager time").unwrap());
    assert_eq!(Instant::now(), freed_at, "no manager time passed");
    // Other kinds were never involved.
    assert_eq!(m.breaker_state(&ResourceKind::Memory), Some(BreakerState::Closed));
    assert_clean(&m);
}

/// Neighbouring case: capacity frees only partly. What fits is admitted; what does not still
/// fails fast while the breaker is open.
#[tokio::test(start_paused = true)]
async fn partly_free_capacity_admits_what_fits_and_still_fails_fast_otherwise() {
    let cfg = BreakerConfig {
        sliding_window: 4,
        minimum_calls: 4,
        failure_rate_threshold: 0.5,
        open_wait: Duration::from_millis(60_000),
        permitted_half_open_calls: 3,
        enabled: true,
    };
    let m = ResourceManager::builder().capacity(ResourceKind::Cpu, 1000).breaker(cfg).build().unwrap();
    let a = m.try_allocate(req(600)).unwrap();
    let b = m.try_allocate(req(400)).unwrap();
    for _ in 0..4 {
        assert!(m.try_allocate(req(500)).is_err());
    }
    assert_eq!(m.breaker_state(&ResourceKind::Cpu), Some(BreakerState::Open));
    drop(b); // 400 free
    assert!(matches!(m.try_allocate(req(500)), Err(QosError::CircuitOpen { .. })), "does not fit: fast failure");
    let fits = m.try_allocate(req(400)).unwrap();
    assert_eq!(m.breaker_state(&ResourceKind::Cpu), Some(BreakerState::Open), "one admission is one probe of three");
    drop((a, fits));
    let c = m.try_allocate(req(300)).unwrap();
    let d = m.try_allocate(req(300)).unwrap();
    assert_eq!(m.breaker_state(&ResourceKind::Cpu), Some(BreakerState::Closed));
    drop((c, d));
    assert_clean(&m);
}

// ---------------------------------------------------------------------------------------------
// Panics in plugged-in code leave the books exact
// ---------------------------------------------------------------------------------------------

/// An observer that panics on chosen events (a buggy plugin).
struct PanickyObserver {
    on_queued: bool,
    on_admitted: bool,
}

impl strata_resource_qos::ResourceObserver for PanickyObserver {
    fn on_event(&self, e: &strata_resource_qos::ResourceEvent) {
        match e {
            strata_resource_qos::ResourceEvent::Queued { .. } if self.on_queued => panic!("observer bug (queued)"),
            strata_resource_qos::ResourceEvent::Admitted { .. } if self.on_admitted => {
                panic!("observer bug (admitted)")
            }
            _ => {}
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_observer_leaks_neither_waiters_nor_capacity() {
    let m = ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 1000)
        .observer(Arc::new(PanickyObserver { on_queued: true, on_admitted: false }))
        .build()
        .unwrap();
    let hog = m.try_allocate(req(1000)).unwrap();
    let task = {
        let m = m.clone();
        tokio::spawn(async move { m.allocate(req(500).timeout(Duration::from_secs(3600))).await })
    };
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(m.usage().waiters, 0, "the panicking request left the queue");
    drop(hog);
    // Nothing reserved by a ghost waiter: the whole capacity is available.
    drop(m.try_allocate(req(1000)).unwrap());
    assert_clean(&m);

    // Admission events are emitted after commit: the handle is dropped by unwinding.
    let m = ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 1000)
        .observer(Arc::new(PanickyObserver { on_queued: false, on_admitted: true }))
        .build()
        .unwrap();
    let m2 = m.clone();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m2.try_allocate(req(700))));
    assert!(r.is_err());
    assert_clean(&m);
}

#[test]
fn custom_resource_names_are_bounded_and_escaped() {
    let ok = format!("{}/{}", "d".repeat(253), "n".repeat(63));
    assert!(ResourceKind::custom(&ok).is_ok());
    for bad in [
        format!("{}/n", "d".repeat(254)),
        format!("d/{}", "n".repeat(64)),
        format!("example.com/{}", "z".repeat(1 << 20)),
        "example.com/a\nb".to_owned(),
    ] {
        let err = ResourceKind::custom(&bad).unwrap_err();
        assert!(matches!(err, QosError::UnknownResource(_)));
        let text = err.to_string();
        assert!(text.len() < 400 && !text.contains('\n'), "{text:?}");
    }
    // A `Custom` kind built directly with hostile text, used in a request.
    let m = mgr();
    let hostile = ResourceKind::Custom(Arc::from(format!("x/\u{1b}[2J{}", "w".repeat(10_000)).as_str()));
    let err = m.try_allocate(req(1).request(hostile, 1)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, QosError::UnknownResource(_)));
    assert!(text.len() < 400 && !text.contains('\u{1b}'), "{text:?}");
    assert_clean(&m);
}
