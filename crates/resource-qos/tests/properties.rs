//! Property tests: capacity and quota are never exceeded, preemption only takes strictly lower
//! priorities, releases return exactly what was taken.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::Duration;

use proptest::prelude::*;
use strata_resource_qos::{
    Allocation, AllocationRequest, NamespacePolicy, PriorityClass, QuotaScope, ResourceKind, ResourceList,
    ResourceManager, ResourceQuota, Revocation,
};

const CLASSES: [&str; 3] = ["low", "mid", "high"];
const NAMESPACES: [&str; 2] = ["a", "b"];

fn manager() -> ResourceManager {
    let quota = |name: &str, cpu, gpu, scope: Option<Vec<String>>| ResourceQuota {
        name: name.into(),
        hard_requests: ResourceList::new().cpu_millis(cpu).with(ResourceKind::Gpu, gpu),
        hard_limits: ResourceList::new().memory_bytes(6_000),
        scope: QuotaScope { priority_classes: scope },
    };
    ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 4_000)
        .capacity(ResourceKind::Memory, 8_000)
        .capacity(ResourceKind::Gpu, 4)
        .priority_class(PriorityClass::new("low", 0).global_default())
        .priority_class(PriorityClass::new("mid", 50))
        .priority_class(PriorityClass::new("high", 100))
        .namespace(
            "a",
            NamespacePolicy {
                limit_range: None,
                quotas: vec![quota("all", 3_000, 3, None), quota("high", 1_000, 1, Some(vec!["high".into()]))],
            },
        )
        .grace_period(Duration::from_millis(50))
        .build()
        .unwrap()
}

#[derive(Clone, Debug)]
enum Op {
    Alloc { ns: usize, cpu: u64, mem: u64, mem_limit: bool, gpu: u64, class: usize, preemptible: bool },
    Release(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize, 0..2_500u64, 0..3_000u64, any::<bool>(), 0..3u64, 0..3usize, any::<bool>()).prop_map(
            |(ns, cpu, mem, mem_limit, gpu, class, preemptible)| Op::Alloc { ns, cpu, mem, mem_limit, gpu, class, preemptible }
        ),
        2 => any::<usize>().prop_map(Op::Release),
    ]
}

fn request(
    ns: usize,
    cpu: u64,
    mem: u64,
    mem_limit: bool,
    gpu: u64,
    class: usize,
    preemptible: bool,
) -> AllocationRequest {
    let mut r = AllocationRequest::new(NAMESPACES[ns], "p").priority_class(CLASSES[class]).preemptible(preemptible);
    if cpu > 0 {
        r = r.request(ResourceKind::Cpu, cpu);
    }
    if mem > 0 {
        r = if mem_limit { r.limit(ResourceKind::Memory, mem) } else { r.request(ResourceKind::Memory, mem) };
    }
    if gpu > 0 {
        r = r.request(ResourceKind::Gpu, gpu);
    }
    r
}

fn total(handles: &[Allocation]) -> ResourceList {
    let mut t = ResourceList::new();
    for h in handles {
        t.add(h.requests());
    }
    t
}

fn check_invariants(m: &ResourceManager, handles: &[Allocation]) -> Result<(), TestCaseError> {
    let u = m.usage();
    for (k, used) in u.used.iter() {
        prop_assert!(used <= u.capacity.get(k).unwrap(), "{k}: used {used} > capacity");
    }
    prop_assert_eq!(&u.used, &total(handles), "accounting equals the live handles");
    let (reqs, lims) = m.quota_usage("a", "all").unwrap();
    prop_assert!(reqs.get(&ResourceKind::Cpu).unwrap_or(0) <= 3_000);
    prop_assert!(reqs.get(&ResourceKind::Gpu).unwrap_or(0) <= 3);
    prop_assert!(lims.get(&ResourceKind::Memory).unwrap_or(0) <= 6_000);
    let (reqs, _) = m.quota_usage("a", "high").unwrap();
    prop_assert!(reqs.get(&ResourceKind::Cpu).unwrap_or(0) <= 1_000);
    prop_assert!(reqs.get(&ResourceKind::Gpu).unwrap_or(0) <= 1);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn no_sequence_exceeds_capacity_or_quota_and_releases_are_exact(ops in prop::collection::vec(op(), 1..60)) {
        let m = manager();
        let mut handles: Vec<Allocation> = Vec::new();
        for op in ops {
            match op {
                Op::Alloc { ns, cpu, mem, mem_limit, gpu, class, preemptible } => {
                    if let Ok(h) = m.try_allocate(request(ns, cpu, mem, mem_limit, gpu, class, preemptible)) {
                        handles.push(h);
                    }
                }
                Op::Release(i) if !handles.is_empty() => {
                    let h = handles.swap_remove(i % handles.len());
                    let before = m.usage().used;
                    let taken = h.requests().clone();
                    drop(h);
                    let after = m.usage().used;
                    for (k, q) in taken.iter() {
                        prop_assert_eq!(before.get(k).unwrap_or(0) - after.get(k).unwrap_or(0), q, "released exactly {}", k);
                    }
                }
                Op::Release(_) => {}
            }
            check_invariants(&m, &handles)?;
        }
        drop(handles);
        prop_assert!(m.usage().used.is_empty());
    }

    #[test]
    fn preemption_only_takes_strictly_lower_preemptible_priorities(
        holders in prop::collection::vec((0..3usize, 1..2_000u64, 0..2u64, any::<bool>()), 1..12),
        class in 0..3usize,
        cpu in 1..4_000u64,
        gpu in 0..5u64,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let m = manager();
            let mut handles = Vec::new();
            for (c, hc, hg, preemptible) in holders {
                if let Ok(h) = m.try_allocate(request(1, hc, 0, false, hg, c, preemptible)) {
                    handles.push((c, preemptible, h));
                }
            }
            let m2 = m.clone();
            let task = tokio::spawn(async move {
                m2.allocate(request(1, cpu, 0, false, gpu.min(4), class, true).timeout(Duration::from_millis(10))).await
            });
            tokio::time::sleep(Duration::from_millis(1)).await;
            for (c, preemptible, h) in &handles {
                if let Some(Revocation::Preempted { .. }) = h.revocation() {
                    prop_assert!(*c < class, "victim class {} not strictly below {}", CLASSES[*c], CLASSES[class]);
                    prop_assert!(*preemptible);
                }
            }
            // Victims cooperate: once they are gone the preemptor fits.
            let revoked: Vec<bool> = handles.iter().map(|(_, _, h)| h.revocation().is_some()).collect();
            let any_revoked = revoked.iter().any(|r| *r);
            handles.retain(|(_, _, h)| h.revocation().is_none());
            let res = task.await.unwrap();
            if any_revoked {
                prop_assert!(res.is_ok(), "preemption happened but the preemptor was not admitted: {:?}", res.err());
            }
            drop(res);
            check_invariants(&m, &handles.into_iter().map(|(_, _, h)| h).collect::<Vec<_>>())?;
            Ok(())
        })?;
    }
}
