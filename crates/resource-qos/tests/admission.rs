//! Public-API tests of the admission pipeline.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_governance::audit::verify;
use strata_governance::correlation::CorrelationId;
use strata_gpu::{DevicePluginConfig, MigStrategy, ReplicatedResource, SimulatedInventory, TimeSlicing};
use strata_resource_qos::{
    Action, AllocationRequest, AuditAction, AuditError, AuditRecord, AuditSink, BreakerConfig, BreakerState,
    JsonLinesAuditSink, LimitRange, ManagerConfig, MemoryAuditSink, NamespacePolicy, Outcome, PreemptionPolicy,
    PriorityClass, QosClass, QosError, QuotaScope, RESOURCES, ResourceEvent, ResourceKind, ResourceList,
    ResourceManager, ResourceObserver, ResourceQuota, Revocation, StaticRbac,
};

const GI: u64 = 1 << 30;

fn cpu_mgr() -> ResourceManager {
    ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 4000)
        .capacity(ResourceKind::Memory, 16 * GI)
        .capacity(ResourceKind::Gpu, 2)
        .priority_class(PriorityClass::new("low", 10).global_default())
        .priority_class(PriorityClass::new("high", 1000))
        .priority_class(PriorityClass::new("polite", 1000).preemption_policy(PreemptionPolicy::Never))
        .grace_period(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn req(cpu: u64) -> AllocationRequest {
    AllocationRequest::new("ns", "p").request(ResourceKind::Cpu, cpu)
}

fn used(m: &ResourceManager, k: &ResourceKind) -> u64 {
    m.usage().used.get(k).unwrap_or(0)
}

#[test]
fn public_types_are_send_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<ResourceManager>();
    check::<strata_resource_qos::Allocation>();
    check::<QosError>();
    check::<Arc<dyn ResourceObserver>>();
    check::<Arc<dyn strata_resource_qos::AuditSink>>();
    check::<Arc<dyn strata_resource_qos::AccessPolicy>>();
}

#[tokio::test]
async fn raii_release_returns_exactly_what_was_taken() {
    let m = cpu_mgr();
    let a = m.allocate(req(1500).request(ResourceKind::Gpu, 1)).await.unwrap();
    let b = m.try_allocate(req(500)).unwrap();
    assert_eq!(used(&m, &ResourceKind::Cpu), 2000);
    assert_eq!(used(&m, &ResourceKind::Gpu), 1);
    assert_eq!(m.usage().allocations, 2);
    drop(a);
    assert_eq!(used(&m, &ResourceKind::Cpu), 500);
    assert_eq!(used(&m, &ResourceKind::Gpu), 0);
    b.release();
    assert!(m.usage().used.is_empty());
    assert_eq!(m.usage().allocations, 0);
}

#[test]
fn bad_input_is_a_typed_error() {
    let m = cpu_mgr();
    assert!(matches!(m.try_allocate(req(0)), Err(QosError::InvalidQuantity { .. })));
    assert!(matches!(m.try_allocate(req(5000)), Err(QosError::ExceedsCapacity { capacity: 4000, .. })));
    let custom = ResourceKind::custom("example.com/fpga").unwrap();
    assert!(matches!(
        m.try_allocate(req(1).request(custom, 1)),
        Err(QosError::UnknownResource(name)) if name == "example.com/fpga"
    ));
    let mig = ResourceKind::Mig("1g.10gb".parse().unwrap());
    assert!(matches!(m.try_allocate(req(1).request(mig, 1)), Err(QosError::ExceedsCapacity { capacity: 0, .. })));
    assert!(matches!(m.try_allocate(req(1).priority_class("nope")), Err(QosError::UnknownPriorityClass(_))));
    assert!(matches!(
        m.try_allocate(req(1).request(ResourceKind::Gpu, 1).limit(ResourceKind::Gpu, 2)),
        Err(QosError::InvalidRequest(_))
    ));
    assert!(matches!(m.try_allocate(req(2000).limit(ResourceKind::Cpu, 1000)), Err(QosError::InvalidRequest(_))));
    assert!("cpus".parse::<ResourceKind>().is_err());
    assert!(ResourceKind::Cpu.parse_quantity("-1").is_err());
    assert!(ResourceKind::Cpu.parse_quantity("0").is_err());
    assert_eq!(ResourceKind::Cpu.parse_quantity("0.25").unwrap(), 250);
    assert_eq!(ResourceKind::Memory.parse_quantity("1.5Gi").unwrap(), 3 * GI / 2);
    // Bad configuration.
    assert!(ResourceManager::builder().capacity(ResourceKind::Cpu, 0).build().is_err());
    assert!(
        ResourceManager::builder()
            .priority_class(PriorityClass::new("a", 1).global_default())
            .priority_class(PriorityClass::new("b", 2).global_default())
            .build()
            .is_err()
    );
    let quota_on_missing = NamespacePolicy {
        quotas: vec![ResourceQuota {
            name: "q".into(),
            hard_requests: ResourceList::new().cpu_millis(1),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(ResourceManager::builder().namespace("x", quota_on_missing).build().is_err());
}

#[test]
fn rbac_denies_and_audits() {
    let audit = Arc::new(MemoryAuditSink::bounded(100));
    let m = ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 1000)
        .access_policy(Arc::new(StaticRbac::new().bind("alice", "ml")))
        .audit_sink(audit.clone())
        .build()
        .unwrap();
    let ok = m.try_allocate(AllocationRequest::new("ml", "alice").request(ResourceKind::Cpu, 100)).unwrap();
    let denied = m.try_allocate(AllocationRequest::new("prod", "alice").request(ResourceKind::Cpu, 100));
    assert!(matches!(denied, Err(QosError::Forbidden { .. })));
    drop(ok);
    let actions: Vec<(Action, Outcome)> = audit.records().into_iter().map(|r| (r.action, r.outcome)).collect();
    let expected = [AuditAction::Allocated, AuditAction::Denied, AuditAction::Released].map(|a| a.action_and_outcome());
    assert_eq!(actions, expected);
    assert_eq!(actions[0], (Action::Allocate, Outcome::Allowed));
    assert_eq!(actions[1], (Action::Allocate, Outcome::Denied));
    assert_eq!(actions[2], (Action::Release, Outcome::Allowed));
    assert_eq!(audit.records()[1].namespace, "prod");
}

#[test]
fn limit_range_defaults_bounds_and_qos() {
    let lr = LimitRange {
        default_limits: ResourceList::new().cpu_millis(1000).memory_bytes(GI),
        default_requests: ResourceList::new().cpu_millis(250),
        min: ResourceList::new().cpu_millis(100),
        max: ResourceList::new().cpu_millis(2000).memory_bytes(4 * GI),
        max_limit_request_ratio: [(ResourceKind::Cpu, 4.0)].into_iter().collect(),
    };
    let m = ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 8000)
        .capacity(ResourceKind::Memory, 64 * GI)
        .namespace("ns", NamespacePolicy { limit_range: Some(lr), quotas: vec![] })
        .build()
        .unwrap();
    // Nothing given: default request 250m, default limits; memory request defaults to its limit.
    let a = m.try_allocate(AllocationRequest::new("ns", "p")).unwrap();
    assert_eq!(a.requests().get(&ResourceKind::Cpu), Some(250));
    assert_eq!(a.requests().get(&ResourceKind::Memory), Some(GI));
    assert_eq!(a.qos(), QosClass::Burstable);
    // Limits given without requests: requests = limits → Guaranteed.
    let g = m
        .try_allocate(AllocationRequest::new("ns", "p").limit(ResourceKind::Cpu, 500).limit(ResourceKind::Memory, GI))
        .unwrap();
    assert_eq!(g.qos(), QosClass::Guaranteed);
    assert_eq!(g.requests().get(&ResourceKind::Cpu), Some(500));
    let viol = |r: Result<_, QosError>, needle: &str| match r {
        Err(QosError::LimitRangeViolation { reason, .. }) => assert!(reason.contains(needle), "{reason}"),
        other => panic!("expected violation {needle:?}, got {other:?}"),
    };
    viol(m.try_allocate(req(50)), "below the minimum");
    viol(m.try_allocate(req(100).limit(ResourceKind::Cpu, 3000)), "above the maximum");
    viol(m.try_allocate(req(100).limit(ResourceKind::Cpu, 1000)), "ratio");
    // A namespace without LimitRange: BestEffort allowed.
    let be = m.try_allocate(AllocationRequest::new("other", "p")).unwrap();
    assert_eq!(be.qos(), QosClass::BestEffort);
    // Invalid LimitRange is a config error.
    let bad = LimitRange {
        min: ResourceList::new().cpu_millis(10),
        max: ResourceList::new().cpu_millis(5),
        ..Default::default()
    };
    assert!(
        ResourceManager::builder()
            .capacity(ResourceKind::Cpu, 1)
            .namespace("x", NamespacePolicy { limit_range: Some(bad), quotas: vec![] })
            .build()
            .is_err()
    );
}

#[test]
fn quota_per_priority_scope() {
    let policy = NamespacePolicy {
        limit_range: None,
        quotas: vec![
            ResourceQuota {
                name: "all".into(),
                hard_requests: ResourceList::new().cpu_millis(3000),
                hard_limits: ResourceList::new().memory_bytes(4 * GI),
                scope: QuotaScope::default(),
            },
            ResourceQuota {
                name: "high-gpus".into(),
                hard_requests: ResourceList::new().with(ResourceKind::Gpu, 1),
                hard_limits: ResourceList::new(),
                scope: QuotaScope { priority_classes: Some(vec!["high".into()]) },
            },
        ],
    };
    let m = ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 100_000)
        .capacity(ResourceKind::Memory, 100 * GI)
        .capacity(ResourceKind::Gpu, 8)
        .priority_class(PriorityClass::new("low", 1).global_default())
        .priority_class(PriorityClass::new("high", 100))
        .namespace("team", policy)
        .build()
        .unwrap();
    let t = |cpu| AllocationRequest::new("team", "p").request(ResourceKind::Cpu, cpu);
    let a = m.try_allocate(t(2000)).unwrap();
    let err = m.try_allocate(t(1500)).unwrap_err();
    assert!(
        matches!(&err, QosError::QuotaExceeded { quota, resource, used: 2000, hard: 3000, .. } if quota == "all" && resource == "requests.cpu"),
        "{err}"
    );
    let g = m.try_allocate(t(100).request(ResourceKind::Gpu, 1).priority_class("high")).unwrap();
    assert!(matches!(
        m.try_allocate(t(100).request(ResourceKind::Gpu, 1).priority_class("high")),
        Err(QosError::QuotaExceeded { .. })
    ));
    // The GPU quota is scoped to "high": a low-priority GPU request does not count against it.
    let l = m.try_allocate(t(100).request(ResourceKind::Gpu, 1)).unwrap();
    assert!(matches!(m.try_allocate(t(100).limit(ResourceKind::Memory, 5 * GI)), Err(QosError::QuotaExceeded { .. })));
    let (reqs, _) = m.quota_usage("team", "all").unwrap();
    assert_eq!(reqs.get(&ResourceKind::Cpu), Some(2200));
    drop((a, g, l));
    let (reqs, lims) = m.quota_usage("team", "all").unwrap();
    assert!(reqs.is_empty() && lims.is_empty());
    // Other namespaces are unaffected.
    assert!(m.try_allocate(AllocationRequest::new("else", "p").request(ResourceKind::Cpu, 50_000)).is_ok());
}

#[tokio::test(start_paused = true)]
async fn preemption_signals_lower_priority_and_reclaims_after_grace() {
    let m = cpu_mgr();
    let guaranteed_low =
        m.try_allocate(req(1000).limit(ResourceKind::Cpu, 1000).limit(ResourceKind::Memory, GI)).unwrap();
    let best_effort_low = m.try_allocate(AllocationRequest::new("ns", "p").request(ResourceKind::Gpu, 2)).unwrap();
    assert_eq!(best_effort_low.qos(), QosClass::BestEffort);
    let burstable_low = m.try_allocate(req(3000)).unwrap();
    let non_preemptible_high = m.try_allocate(req(0).priority_class("high").preemptible(false)).err();
    assert!(non_preemptible_high.is_some(), "zero request is refused");

    // A high-priority request for 2000m: the burstable victim (3000m) suffices, the guaranteed one is spared.
    let m2 = m.clone();
    let high =
        tokio::spawn(
            async move { m2.allocate(req(2000).priority_class("high").timeout(Duration::from_secs(60))).await },
        );
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(matches!(burstable_low.revocation(), Some(Revocation::Preempted { .. })));
    assert_eq!(guaranteed_low.revocation(), None);
    assert_eq!(best_effort_low.revocation(), None, "holds no CPU, so it is not a useful victim");
    // The victim ignores the signal: after the grace period its resources are reclaimed.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let got = high.await.unwrap().unwrap();
    assert_eq!(burstable_low.revocation(), Some(Revocation::Reclaimed));
    assert!(burstable_low.heartbeat().is_err());
    assert_eq!(used(&m, &ResourceKind::Cpu), 3000);
    drop(burstable_low); // no double release
    assert_eq!(used(&m, &ResourceKind::Cpu), 3000);
    drop(got);
    drop(guaranteed_low);
    assert_eq!(used(&m, &ResourceKind::Cpu), 0);
}

#[tokio::test(start_paused = true)]
async fn victim_that_cooperates_frees_at_once_and_never_policy_does_not_preempt() {
    let m = cpu_mgr();
    let low = m.try_allocate(req(4000)).unwrap();
    // "polite" has high priority but PreemptionPolicy::Never: it waits without preempting.
    let m2 = m.clone();
    let polite = tokio::spawn(async move { m2.allocate(req(1000).priority_class("polite")).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(low.revocation(), None);
    // It queues ahead of lower priorities: a low request after it waits behind it.
    let m3 = m.clone();
    let later_low = tokio::spawn(async move { m3.allocate(req(1000).timeout(Duration::from_secs(1))).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(m.usage().waiters, 2);
    // A preempting class takes the victim; the victim cooperates on the signal.
    let m4 = m.clone();
    let high = tokio::spawn(async move { m4.allocate(req(2000).priority_class("high")).await });
    let revoked = tokio::time::timeout(Duration::from_secs(1), low.revoked()).await.unwrap();
    assert!(matches!(revoked, Revocation::Preempted { .. }));
    drop(low);
    let h = high.await.unwrap().unwrap();
    let p = polite.await.unwrap().unwrap();
    assert_eq!(h.priority(), 1000);
    assert_eq!(p.priority(), 1000);
    let l = later_low.await.unwrap().unwrap();
    assert_eq!(used(&m, &ResourceKind::Cpu), 4000);
    drop((h, p, l));
}

#[tokio::test(start_paused = true)]
async fn waiters_time_out_and_higher_priority_goes_first() {
    let m = cpu_mgr();
    let hog = m.try_allocate(req(4000).preemptible(false)).unwrap();
    let err = m.allocate(req(1000).timeout(Duration::from_millis(200))).await.unwrap_err();
    assert!(matches!(err, QosError::Timeout { waited, .. } if waited >= Duration::from_millis(200)), "{err}");
    assert!(err.is_retryable());
    assert_eq!(m.usage().waiters, 0);

    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (name, class) in [("low1", "low"), ("high", "high"), ("low2", "low")] {
        let (m, order) = (m.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let a = m.allocate(req(4000).priority_class(class)).await.unwrap();
            order.lock().unwrap().push(name);
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(a);
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(hog);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec!["high", "low1", "low2"]);
}

#[tokio::test(start_paused = true)]
async fn bounded_queue_fails_fast_with_retry_after() {
    let m = ResourceManager::builder().capacity(ResourceKind::Cpu, 1000).max_waiters(2).build().unwrap();
    let hog = m.try_allocate(req(1000)).unwrap();
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let m = m.clone();
        waiters.push(tokio::spawn(async move { m.allocate(req(500).timeout(Duration::from_secs(10))).await }));
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    let err = m.allocate(req(500)).await.unwrap_err();
    match err {
        QosError::Overloaded { retry_after } => {
            assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(10), "{retry_after:?}")
        }
        other => panic!("expected Overloaded, got {other:?}"),
    }
    drop(hog);
    for w in waiters {
        assert!(w.await.unwrap().is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_on_exhaustion_and_recovers() {
    let cfg = BreakerConfig {
        sliding_window: 4,
        minimum_calls: 4,
        failure_rate_threshold: 0.75,
        open_wait: Duration::from_millis(1000),
        permitted_half_open_calls: 1,
        enabled: true,
    };
    let m = ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 1000)
        .capacity(ResourceKind::Memory, GI)
        .breaker(cfg)
        .build()
        .unwrap();
    let hog = m.try_allocate(req(1000)).unwrap();
    for _ in 0..3 {
        assert!(matches!(m.try_allocate(req(500)), Err(QosError::Insufficient { .. })));
    }
    assert_eq!(m.breaker_state(&ResourceKind::Cpu), Some(BreakerState::Open));
    let err = m.try_allocate(req(1)).unwrap_err();
    assert!(matches!(err, QosError::CircuitOpen { ref resource, .. } if resource == "cpu"), "{err}");
    assert!(err.retry_after().is_some());
    // Other resources are unaffected.
    let mem = m.try_allocate(AllocationRequest::new("ns", "p").request(ResourceKind::Memory, 1)).unwrap();
    drop(hog);
    tokio::time::advance(Duration::from_millis(1001)).await;
    let probe = m.try_allocate(req(100)).unwrap();
    assert_eq!(m.breaker_state(&ResourceKind::Cpu), Some(BreakerState::Closed));
    drop((probe, mem));
}

#[tokio::test(start_paused = true)]
async fn leases_expire_without_heartbeat() {
    let m = cpu_mgr();
    let maint = m.spawn_maintenance(Duration::from_millis(100));
    let a = m.allocate(req(1000).lease(Duration::from_secs(1))).await.unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        a.heartbeat().unwrap();
    }
    assert_eq!(used(&m, &ResourceKind::Cpu), 1000);
    let lease = a.detach().unwrap();
    m.heartbeat("p", lease).unwrap();
    // Leaked: no more heartbeats.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(used(&m, &ResourceKind::Cpu), 0);
    assert!(matches!(m.heartbeat("p", lease), Err(QosError::LeaseNotHeld)));
    assert!(matches!(m.release_lease("p", lease), Err(QosError::LeaseNotHeld)));
    // A detached lease released explicitly.
    let b = m.try_allocate(req(500).lease(Duration::from_secs(5))).unwrap();
    let id = b.detach().unwrap();
    assert_eq!(used(&m, &ResourceKind::Cpu), 500);
    m.release_lease("p", id).unwrap();
    assert_eq!(used(&m, &ResourceKind::Cpu), 0);
    // Without a TTL detaching is refused (it would leak forever); the handle is consumed and released.
    let c = m.try_allocate(req(500)).unwrap();
    assert!(matches!(c.detach(), Err(QosError::InvalidRequest(_))));
    assert_eq!(used(&m, &ResourceKind::Cpu), 0);
    maint.abort();
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiter_leaves_the_queue() {
    let m = cpu_mgr();
    let hog = m.try_allocate(req(4000)).unwrap();
    let fut = m.allocate(req(100).priority_class("low"));
    assert!(tokio::time::timeout(Duration::from_millis(10), fut).await.is_err());
    assert_eq!(m.usage().waiters, 0);
    m.shutdown();
    assert!(matches!(m.try_allocate(req(1)), Err(QosError::Shutdown)));
    drop(hog);
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);
impl ResourceObserver for Recorder {
    fn on_event(&self, e: &ResourceEvent) {
        let tag = match e {
            ResourceEvent::Admitted { .. } => "admitted",
            ResourceEvent::Denied { .. } => "denied",
            ResourceEvent::Released { .. } => "released",
            ResourceEvent::AuditFailed { .. } => "audit_failed",
            ResourceEvent::Utilization { .. } => return,
            _ => "other",
        };
        self.0.lock().unwrap().push(tag.into());
    }
}

#[test]
fn observer_and_json_lines_audit_see_decisions() {
    let rec = Arc::new(Recorder::default());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resources.jsonl");
    let sink = Arc::new(JsonLinesAuditSink::open(&path).unwrap());
    let m = ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 100)
        .observer(rec.clone())
        .audit_sink(sink.clone())
        .build()
        .unwrap();
    let a = m.try_allocate(req(100)).unwrap();
    assert!(m.try_allocate(req(100)).is_err());
    drop(a);
    assert_eq!(*rec.0.lock().unwrap(), vec!["admitted", "denied", "released"]);
    drop(m);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["action"], "allocate");
    assert_eq!(lines[0]["outcome"], "allowed");
    assert_eq!(lines[0]["cache"], RESOURCES);
    assert_eq!(lines[0]["resources"]["cpu"], 100);
    assert_eq!(lines[1]["action"], "allocate");
    assert_eq!(lines[1]["outcome"], "denied");
    assert_eq!(lines[2]["action"], "release");
    // The resource audit log is hash-chained: it verifies as written (what `strata-audit verify`
    // checks) ...
    assert_eq!(verify(&path).unwrap().lines, 3);
    // ... and an edited line (an allocation's size rewritten) breaks the chain at that line.
    std::fs::write(&path, text.replacen("\"cpu\":100", "\"cpu\":1", 1)).unwrap();
    assert!(matches!(verify(&path), Err(AuditError::Broken { line: 1, .. })), "{:?}", verify(&path));
}

/// An audit sink that refuses every record.
struct FailingSink;

impl AuditSink for FailingSink {
    fn record(&self, _: &AuditRecord) -> Result<(), AuditError> {
        Err(AuditError::Io { path: "nowhere".into(), message: "disk full".into() })
    }
}

#[test]
fn a_failing_audit_sink_is_reported_and_the_decision_stands() {
    let rec = Arc::new(Recorder::default());
    let m = ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 100)
        .observer(rec.clone())
        .audit_sink(Arc::new(FailingSink))
        .build()
        .unwrap();
    let a = m.try_allocate(req(100)).expect("the allocation does not depend on the audit sink");
    assert_eq!(m.usage().used.get(&ResourceKind::Cpu), Some(100));
    drop(a);
    assert_eq!(m.usage().used.get(&ResourceKind::Cpu), None);
    // Each refused record (allocate, release) is reported to the observer.
    assert_eq!(*rec.0.lock().unwrap(), vec!["admitted", "audit_failed", "released", "audit_failed"]);
}

#[tokio::test]
async fn resource_audit_records_carry_the_correlation_id() {
    let audit = Arc::new(MemoryAuditSink::new());
    let m = ResourceManager::builder().capacity(ResourceKind::Cpu, 100).audit_sink(audit.clone()).build().unwrap();
    let id = CorrelationId::new("req-77").unwrap();
    let a = strata_governance::correlation::scope(id, async { m.allocate(req(10)).await.unwrap() }).await;
    drop(a); // released outside the scope
    let records = audit.records();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].correlation_id.as_deref(), Some("req-77"));
    assert_eq!(records[1].correlation_id, None);
}

#[test]
fn gpu_capacity_from_inventory_and_config_from_toml() {
    let inv = SimulatedInventory::builder()
        .gpus(4, "NVIDIA A100-SXM4-80GB", 80)
        .mig(0, ["3g.40gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb"])
        .build()
        .unwrap();
    let plugin = DevicePluginConfig {
        mig_strategy: MigStrategy::Mixed,
        time_slicing: Some(TimeSlicing {
            rename_by_default: true,
            fail_requests_greater_than_one: false,
            resources: vec![ReplicatedResource { name: "nvidia.com/gpu".into(), replicas: 4, rename: None }],
        }),
    };
    let config: ManagerConfig = toml::from_str(
        r#"
        max_waiters = 10
        [capacity]
        cpu = "16"
        memory = "64Gi"
        "nvidia.com/gpu.shared" = 8   # override: fewer replicas than advertised

        [[priority_classes]]
        name = "default"
        value = 0
        global_default = true

        [namespaces.ml.limit_range.default_limits]
        cpu = "1"
        "#,
    )
    .unwrap();
    let m = ResourceManager::builder().gpu_inventory(Arc::new(inv), plugin).config(config).build().unwrap();
    let cap = m.usage().capacity;
    assert_eq!(cap.get(&ResourceKind::Cpu), Some(16_000));
    assert_eq!(cap.get(&ResourceKind::GpuShare), Some(8));
    assert_eq!(cap.get(&ResourceKind::Mig("1g.10gb".parse().unwrap())), Some(4));
    assert_eq!(cap.get(&ResourceKind::Mig("3g.40gb".parse().unwrap())), Some(1));
    assert_eq!(cap.get(&ResourceKind::Gpu), None);
    let a = m
        .try_allocate(AllocationRequest::new("ml", "p").request("nvidia.com/mig-1g.10gb".parse().unwrap(), 2))
        .unwrap();
    assert_eq!(a.requests().get(&ResourceKind::Cpu), Some(1000), "LimitRange default from TOML");
    assert!(m.gpu_inventory().is_some());
    assert!(toml::from_str::<ManagerConfig>("[capacity]\ncpu = \"-1\"\n").is_err());
    assert!(toml::from_str::<ManagerConfig>("[capacity]\ncpu = 0\n").is_err());
    assert!(toml::from_str::<ManagerConfig>("[capacity]\nbogus = 1\n").is_err());
}
