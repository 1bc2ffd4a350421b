//! Property tests over the whole public API with arbitrary durations (zero and `Duration::MAX`
//! included), quantities (zero, capacity ± 1, `u64::MAX`) and names (empty, huge, control
//! characters, Unicode): nothing panics, every refusal is a typed error, and once everything is
//! released the books are exactly empty (no capacity, quota or waiter left behind).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::Duration;

use proptest::prelude::*;
use strata_resource_qos::{
    Allocation, AllocationRequest, BreakerConfig, LeaseId, LimitRange, MAX_NAME_LEN, NamespacePolicy, PriorityClass,
    QosError, QuotaScope, ResourceKind, ResourceList, ResourceManager, ResourceQuota,
};
use tokio::task::JoinHandle;

const CPU: u64 = 4_000;
const GPU: u64 = 4;

fn duration() -> BoxedStrategy<Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::MAX),
        Just(Duration::MAX - Duration::from_nanos(1)),
        Just(Duration::from_secs(u64::MAX)),
        Just(Duration::from_millis(u64::MAX)),
        Just(Duration::from_secs(86_400 * 365 * 30)),
        Just(Duration::from_secs(86_400 * 365 * 30 + 1)),
        (0..3_000u64).prop_map(Duration::from_millis),
        (any::<u64>(), 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
    ]
    .boxed()
}

fn quantity(cap: u64) -> BoxedStrategy<u64> {
    prop_oneof![
        1 => Just(0),
        1 => Just(1),
        1 => Just(cap - 1),
        1 => Just(cap),
        1 => Just(cap + 1),
        1 => Just(u64::MAX - 1),
        1 => Just(u64::MAX),
        12 => 1..=cap,
        1 => any::<u64>(),
    ]
    .boxed()
}

fn name() -> BoxedStrategy<String> {
    prop_oneof![
        24 => prop::sample::select(vec!["a", "b", "free"]).prop_map(String::from),
        1 => Just(String::new()),
        1 => Just("x".repeat(MAX_NAME_LEN)),
        1 => Just("x".repeat(MAX_NAME_LEN + 1)),
        1 => Just("y".repeat(100_000)),
        1 => Just("a\nforged".to_owned()),
        1 => Just("\u{0}".to_owned()),
        1 => Just("\u{1b}[31m".to_owned()),
        1 => "\\PC{1,12}",      // printable Unicode
        1 => any::<String>(), // anything, control characters included
    ]
    .boxed()
}

fn class() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        3 => Just(None),
        4 => prop::sample::select(vec!["low", "mid", "high"]).prop_map(|s| Some(s.to_owned())),
        1 => name().prop_map(Some),
    ]
    .boxed()
}

#[derive(Clone, Debug)]
struct Spec {
    ns: String,
    principal: String,
    class: Option<String>,
    cpu: Option<u64>,
    cpu_limit: Option<u64>,
    mem_limit: Option<u64>,
    gpu: Option<u64>,
    timeout: Option<Duration>,
    lease: Option<Duration>,
    preemptible: bool,
}

fn spec() -> BoxedStrategy<Spec> {
    (
        (name(), prop_oneof![6 => Just("p".to_owned()), 1 => Just("q".to_owned()), 1 => name()], class()),
        (
            prop::option::weighted(0.8, quantity(CPU)),
            prop::option::weighted(0.25, quantity(CPU)),
            prop::option::weighted(0.3, any::<u64>()),
            prop::option::weighted(0.4, quantity(GPU)),
        ),
        (prop::option::of(duration()), prop::option::weighted(0.4, duration()), any::<bool>()),
    )
        .prop_map(|((ns, principal, class), (cpu, cpu_limit, mem_limit, gpu), (timeout, lease, preemptible))| Spec {
            ns,
            principal,
            class,
            cpu,
            cpu_limit,
            mem_limit,
            gpu,
            timeout,
            lease,
            preemptible,
        })
        .boxed()
}

impl Spec {
    fn request(&self) -> AllocationRequest {
        let mut r = AllocationRequest::new(self.ns.as_str(), self.principal.as_str()).preemptible(self.preemptible);
        if let Some(c) = &self.class {
            r = r.priority_class(c);
        }
        if let Some(q) = self.cpu {
            r = r.request(ResourceKind::Cpu, q);
        }
        if let Some(q) = self.cpu_limit {
            r = r.limit(ResourceKind::Cpu, q);
        }
        if let Some(q) = self.mem_limit {
            r = r.limit(ResourceKind::Memory, q);
        }
        if let Some(q) = self.gpu {
            r = r.request(ResourceKind::Gpu, q);
        }
        if let Some(t) = self.timeout {
            r = r.timeout(t);
        }
        if let Some(l) = self.lease {
            r = r.lease(l);
        }
        r
    }

    /// The typed refusal this request must get whatever the manager's state, if any.
    fn bad_name(&self) -> Option<&'static str> {
        let bad = |n: &str| n.is_empty() || n.len() > MAX_NAME_LEN || n.chars().any(char::is_control);
        if bad(&self.ns) {
            Some("namespace")
        } else if bad(&self.principal) {
            Some("principal")
        } else if self.class.as_deref().is_some_and(bad) {
            Some("priority class")
        } else {
            None
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Try(Spec),
    Wait(Spec),
    Sleep(u64),
    Release(usize),
    Detach(usize),
    Heartbeat(usize),
    LeaseHeartbeat(usize, bool),
    LeaseRelease(usize, bool),
    Reclaim,
}

fn op() -> BoxedStrategy<Op> {
    prop_oneof![
        6 => spec().prop_map(Op::Try),
        4 => spec().prop_map(Op::Wait),
        2 => (0..2_000u64).prop_map(Op::Sleep),
        3 => any::<usize>().prop_map(Op::Release),
        2 => any::<usize>().prop_map(Op::Detach),
        1 => any::<usize>().prop_map(Op::Heartbeat),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, o)| Op::LeaseHeartbeat(i, o)),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, o)| Op::LeaseRelease(i, o)),
        1 => Just(Op::Reclaim),
    ]
    .boxed()
}

#[derive(Clone, Debug)]
struct Settings {
    default_timeout: Duration,
    grace: Duration,
    open_ms: u64,
    max_waiters: usize,
}

fn settings() -> impl Strategy<Value = Settings> {
    (duration(), duration(), prop_oneof![Just(1u64), Just(u64::MAX), 1..10_000u64], 0..8usize).prop_map(
        |(default_timeout, grace, open_ms, max_waiters)| Settings { default_timeout, grace, open_ms, max_waiters },
    )
}

/// The manager under test, with the observer that records who owns each allocation.
fn manager(s: &Settings) -> ResourceManager {
    builder_for(s).observer(std::sync::Arc::new(OwnerObserver)).build().unwrap()
}

fn check_result(spec: &Spec, r: &Result<Allocation, QosError>) -> Result<(), TestCaseError> {
    if let Some(what) = spec.bad_name() {
        prop_assert!(
            matches!(r, Err(QosError::InvalidName { what: w, .. }) if *w == what),
            "bad {} name must be refused as such, got {:?}",
            what,
            r.as_ref().err()
        );
    } else if spec.lease == Some(Duration::ZERO) {
        prop_assert!(r.is_err(), "a zero lease is refused");
    }
    if let Err(e) = r {
        prop_assert!(!e.to_string().is_empty());
        prop_assert!(!e.to_string().contains('\n'), "error text holds a raw newline: {:?}", e.to_string());
    }
    Ok(())
}

fn within_capacity(m: &ResourceManager) -> Result<(), TestCaseError> {
    let u = m.usage();
    for (k, used) in u.used.iter() {
        prop_assert!(used <= u.capacity.get(k).unwrap(), "{}: used {} > capacity", k, used);
    }
    Ok(())
}

struct World {
    m: ResourceManager,
    handles: Vec<Allocation>,
    leases: Vec<(LeaseId, String)>,
    tasks: Vec<(Spec, JoinHandle<Result<Allocation, QosError>>)>,
}

impl World {
    async fn collect_finished(&mut self) -> Result<(), TestCaseError> {
        let mut i = 0;
        while i < self.tasks.len() {
            if self.tasks[i].1.is_finished() {
                let (spec, t) = self.tasks.swap_remove(i);
                let r = t.await.unwrap();
                check_result(&spec, &r)?;
                if let Ok(a) = r {
                    self.handles.push(a);
                }
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    async fn run(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Try(spec) => {
                let r = self.m.try_allocate(spec.request());
                check_result(&spec, &r)?;
                if let Ok(a) = r {
                    self.handles.push(a);
                }
            }
            Op::Wait(spec) => {
                let m = self.m.clone();
                let req = spec.request();
                self.tasks.push((spec, tokio::spawn(async move { m.allocate(req).await })));
                tokio::task::yield_now().await;
            }
            Op::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Op::Release(i) if !self.handles.is_empty() => {
                let n = self.handles.len();
                drop(self.handles.swap_remove(i % n));
            }
            Op::Detach(i) if !self.handles.is_empty() => {
                let n = self.handles.len();
                let a = self.handles.swap_remove(i % n);
                let owner = Self::owner_of(&a);
                match a.detach() {
                    Ok(l) => self.leases.push((l, owner)),
                    Err(e) => prop_assert!(matches!(e, QosError::InvalidRequest(_) | QosError::NotHeld(_)), "{e:?}"),
                }
            }
            Op::Heartbeat(i) if !self.handles.is_empty() => {
                let n = self.handles.len();
                if let Err(e) = self.handles[i % n].heartbeat() {
                    prop_assert!(matches!(e, QosError::NotHeld(_)), "{e:?}");
                }
            }
            Op::LeaseHeartbeat(i, as_owner) if !self.leases.is_empty() => {
                let (l, owner) = self.leases[i % self.leases.len()].clone();
                let who = if as_owner { owner } else { format!("{owner}-intruder") };
                match self.m.heartbeat(&who, l) {
                    Ok(()) => prop_assert!(as_owner, "an intruder renewed a lease"),
                    Err(QosError::LeaseNotHeld) => {}
                    Err(QosError::NotLeaseOwner) => prop_assert!(!as_owner, "the owner was refused"),
                    Err(e) => prop_assert!(false, "unexpected {:?}", e),
                }
            }
            Op::LeaseRelease(i, as_owner) if !self.leases.is_empty() => {
                let n = self.leases.len();
                let (l, owner) = self.leases[i % n].clone();
                let who = if as_owner { owner } else { format!("{owner}-intruder") };
                match self.m.release_lease(&who, l) {
                    Ok(()) => {
                        prop_assert!(as_owner, "an intruder released a lease");
                        self.leases.swap_remove(i % n);
                    }
                    Err(QosError::LeaseNotHeld) => {
                        self.leases.swap_remove(i % n);
                    }
                    Err(QosError::NotLeaseOwner) => prop_assert!(!as_owner, "the owner was refused"),
                    Err(e) => prop_assert!(false, "unexpected {:?}", e),
                }
            }
            Op::Reclaim => self.m.reclaim_expired(),
            _ => {}
        }
        self.collect_finished().await?;
        within_capacity(&self.m)
    }

    /// The principal that made the request (the handle does not say; the observer saw it).
    fn owner_of(a: &Allocation) -> String {
        OWNERS.with(|o| o.borrow().get(&a.id()).cloned().unwrap_or_default())
    }
}

thread_local! {
    /// Allocation id → principal, filled from admission events.
    static OWNERS: std::cell::RefCell<std::collections::HashMap<u64, String>> = Default::default();
}

struct OwnerObserver;
impl strata_resource_qos::ResourceObserver for OwnerObserver {
    fn on_event(&self, e: &strata_resource_qos::ResourceEvent) {
        if let strata_resource_qos::ResourceEvent::Admitted { id, principal, .. } = e {
            OWNERS.with(|o| o.borrow_mut().insert(*id, principal.clone()));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_durations_quantities_and_names_never_panic_and_books_balance(
        s in settings(),
        ops in prop::collection::vec(op(), 1..64),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        OWNERS.with(|o| o.borrow_mut().clear());
        rt.block_on(async {
            let mut w = World { m: manager(&s), handles: Vec::new(), leases: Vec::new(), tasks: Vec::new() };
            for op in ops {
                w.run(op).await?;
            }
            // Release everything: handles, leases (by their owners), and cancel every waiter.
            let World { m, handles, leases, tasks } = w;
            drop(handles);
            for (l, owner) in leases {
                match m.release_lease(&owner, l) {
                    Ok(()) | Err(QosError::LeaseNotHeld) => {}
                    Err(e) => prop_assert!(false, "owner could not release: {:?}", e),
                }
            }
            for (_, t) in &tasks {
                t.abort();
            }
            for (spec, t) in tasks {
                if let Ok(r) = t.await {
                    check_result(&spec, &r)?;
                    drop(r);
                }
            }
            m.reclaim_expired();
            let u = m.usage();
            prop_assert!(u.used.is_empty(), "left counted: {}", u.used);
            prop_assert_eq!(u.allocations, 0);
            prop_assert_eq!(u.waiters, 0);
            for (ns, q) in [("a", "all"), ("a", "high"), ("b", "b")] {
                let (reqs, lims) = m.quota_usage(ns, q).unwrap();
                prop_assert!(reqs.is_empty() && lims.is_empty(), "quota {}/{} left {} / {}", ns, q, reqs, lims);
            }
            // And the manager still works.
            drop(m.try_allocate(AllocationRequest::new("free", "p").request(ResourceKind::Cpu, CPU)).unwrap());
            Ok(())
        })?;
    }

    #[test]
    fn arbitrary_configuration_builds_or_is_refused_never_panics(
        window in prop_oneof![Just(0u32), Just(u32::MAX), 0..64u32],
        min_calls in prop_oneof![Just(0u32), 0..64u32],
        failure_rate in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-0.0), Just(1.0), any::<f64>(), 0.0..1.0f64],
        open_ms in any::<u64>(),
        half_open_probes in any::<u32>(),
        capacity in quantity(CPU),
        class_name in name(),
        class_value in any::<i32>(),
        namespace in name(),
        quota_name in name(),
        ratio in prop_oneof![Just(f64::NAN), Just(0.5), Just(1.0), Just(f64::MAX), any::<f64>()],
    ) {
        let breaker = BreakerConfig {
            sliding_window: window,
            minimum_calls: min_calls,
            failure_rate_threshold: failure_rate,
            open_wait: Duration::from_millis(open_ms),
            permitted_half_open_calls: half_open_probes,
            enabled: true,
        };
        let policy = NamespacePolicy {
            limit_range: Some(LimitRange {
                max_limit_request_ratio: [(ResourceKind::Cpu, ratio)].into_iter().collect(),
                ..Default::default()
            }),
            quotas: vec![ResourceQuota { name: quota_name.clone(), hard_requests: ResourceList::new().cpu_millis(capacity.max(1)), ..Default::default() }],
        };
        let built = ResourceManager::builder()
            .capacity(ResourceKind::Cpu, capacity)
            .priority_class(PriorityClass::new(&class_name, class_value).global_default())
            .namespace(&namespace, policy)
            .breaker(breaker)
            .build();
        let bad = |n: &str| n.is_empty() || n.len() > MAX_NAME_LEN || n.chars().any(char::is_control);
        match built {
            Ok(m) => {
                prop_assert!(capacity > 0 && !bad(&class_name) && !bad(&namespace) && !bad(&quota_name));
                // It serves a request in the configured namespace without panicking.
                let r = m.try_allocate(AllocationRequest::new(namespace.as_str(), "p").request(ResourceKind::Cpu, 1).limit(ResourceKind::Cpu, capacity.max(1)));
                drop(r);
                prop_assert!(m.usage().used.is_empty());
            }
            Err(e) => prop_assert!(matches!(e, QosError::InvalidConfig(_)), "{e:?}"),
        }
    }
}

fn builder_for(s: &Settings) -> strata_resource_qos::ResourceManagerBuilder {
    let quota = |name: &str, scope: Option<Vec<String>>| ResourceQuota {
        name: name.into(),
        hard_requests: ResourceList::new().cpu_millis(3_000).with(ResourceKind::Gpu, 3),
        hard_limits: ResourceList::new().cpu_millis(u64::MAX).memory_bytes(u64::MAX),
        scope: QuotaScope { priority_classes: scope },
    };
    let limit_range = LimitRange {
        default_limits: ResourceList::new().cpu_millis(500),
        max: ResourceList::new().cpu_millis(u64::MAX),
        max_limit_request_ratio: [(ResourceKind::Cpu, 1e9)].into_iter().collect(),
        ..Default::default()
    };
    ResourceManager::builder()
        .capacity(ResourceKind::Cpu, CPU)
        .capacity(ResourceKind::Memory, u64::MAX)
        .capacity(ResourceKind::Gpu, GPU)
        .priority_class(PriorityClass::new("low", i32::MIN).global_default())
        .priority_class(PriorityClass::new("mid", 0))
        .priority_class(PriorityClass::new("high", i32::MAX))
        .namespace(
            "a",
            NamespacePolicy {
                limit_range: None,
                quotas: vec![quota("all", None), quota("high", Some(vec!["high".into()]))],
            },
        )
        .namespace("b", NamespacePolicy { limit_range: Some(limit_range), quotas: vec![quota("b", None)] })
        .default_timeout(s.default_timeout)
        .grace_period(s.grace)
        .max_waiters(s.max_waiters)
        .breaker(BreakerConfig {
            sliding_window: 4,
            minimum_calls: 2,
            open_wait: Duration::from_millis(s.open_ms),
            ..Default::default()
        })
}
