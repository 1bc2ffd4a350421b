use std::time::Duration;

use strata_cache_core::{BreakerState, CacheEvent, CacheObserver, LoadOutcome, StaleReason, TierError, TierErrorKind};
#[cfg(feature = "resources")]
use strata_resource_qos::{
    BreakerState as RBreaker, QosClass, ResourceEvent, ResourceKind, ResourceList, ResourceObserver,
};

use super::*;

fn line_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

/// Feeds one event of every kind the observer handles.
fn exercise(m: &PrometheusObserver) {
    let err = TierError::new("redis", TierErrorKind::Timeout, "slow");
    let c = "users";
    let events = [
        CacheEvent::Hit { cache: c, tier: "l1" },
        CacheEvent::Miss { cache: c, tier: "l1" },
        CacheEvent::StaleServed { cache: c, reason: StaleReason::LoaderError },
        CacheEvent::Load { cache: c, duration: Duration::from_millis(3), outcome: LoadOutcome::Found },
        CacheEvent::Coalesced { cache: c },
        CacheEvent::EarlyRefresh { cache: c },
        CacheEvent::TierError { cache: c, error: &err },
        CacheEvent::Eviction { cache: c },
        CacheEvent::InvalidationReceived { cache: c },
        CacheEvent::Resync { cache: c },
        CacheEvent::BreakerTransition { cache: "", tier: "redis", from: BreakerState::Closed, to: BreakerState::Open },
        CacheEvent::LockAcquired { cache: c },
        CacheEvent::LockWaited { cache: c, found: true },
        CacheEvent::TagInvalidated { cache: c },
    ];
    for e in &events {
        CacheObserver::on_event(m, e);
    }
    // Write-behind events come from the consistency crate's observer, adapted by the facade.
    WriteBehindMetrics::backlog(m, c, 17);
    WriteBehindMetrics::flush(m, c, 5, Duration::from_millis(2), true);
    let bus = strata_cache_core::BusError { bus: "nats".into(), message: "down".into(), source: None };
    CacheObserver::on_event(m, &CacheEvent::BusError { cache: c, error: &bus });
    let frame_err = strata_cache_core::CacheError::Frame(strata_cache_core::FrameError::Checksum);
    CacheObserver::on_event(m, &CacheEvent::DecodeError { cache: c, tier: "redis", error: &frame_err });
    let codec_err = strata_cache_core::CodecError::Integrity { codec: "aes-gcm" };
    CacheObserver::on_event(m, &CacheEvent::CodecRejected { cache: c, tier: "redis", error: &codec_err });
    #[cfg(feature = "resources")]
    exercise_resources(m);
}

/// Feeds one resource event of every kind the observer handles.
#[cfg(feature = "resources")]
fn exercise_resources(m: &PrometheusObserver) {
    let mut req = ResourceList::new();
    req.set(ResourceKind::Gpu, 1);
    let revents = [
        ResourceEvent::Admitted {
            id: 1,
            namespace: "ml".into(),
            principal: "alice".into(),
            qos: QosClass::Guaranteed,
            priority: 10,
            requests: req.clone(),
            waited: Duration::from_millis(20),
        },
        ResourceEvent::Denied { namespace: "ml".into(), principal: "bob".into(), reason: "quota".into() },
        ResourceEvent::Queued { namespace: "ml".into(), queue_len: 1 },
        ResourceEvent::Preempted { victim: 1, victim_priority: 1, preemptor_priority: 10, grace: Duration::ZERO },
        ResourceEvent::Released { id: 1, requests: req },
        ResourceEvent::Reclaimed { id: 2, reason: "lease expired" },
        ResourceEvent::BreakerStateChanged { resource: ResourceKind::Gpu, state: RBreaker::Open },
        ResourceEvent::Utilization { resource: ResourceKind::Gpu, component: "allocated", ratio: 0.5 },
        ResourceEvent::AuditFailed { error: "disk full: /var/log/strata/audit.jsonl".into() },
    ];
    for e in &revents {
        ResourceObserver::on_event(m, e);
    }
}

#[test]
fn every_described_family_is_exported_after_its_events() {
    let m = PrometheusObserver::new().unwrap();
    exercise(&m);
    m.watch_l1("users", || (3, 300));
    m.watch_breaker("sql", || Some(BreakerState::HalfOpen));
    #[cfg(feature = "resources")]
    m.watch_resources(|| strata_resource_qos::UsageSnapshot {
        capacity: [(ResourceKind::Cpu, 4000)].into_iter().collect(),
        used: [(ResourceKind::Cpu, 1000)].into_iter().collect(),
        allocations: 2,
        waiters: 1,
    });
    let text = m.encode_text();
    let families = if cfg!(feature = "resources") { 31 } else { 17 };
    assert!(m.metric_names().len() >= families, "{:?}", m.metric_names());
    assert_eq!(
        m.metric_names().iter().any(|(n, _)| n.starts_with("strata_resource_")),
        cfg!(feature = "resources"),
        "resource families exactly when the `resources` feature is on"
    );
    for (name, kind) in m.metric_names() {
        let series = if *kind == MetricKind::Histogram { format!("{name}_count") } else { name.clone() };
        assert!(text.lines().any(|l| l.starts_with(&series)), "{series} missing from:\n{text}");
        assert!(text.contains(&format!("# TYPE {name} {}", kind.as_str())), "{name} is not a {kind:?}");
    }
    assert_eq!(line_value(&text, r#"strata_cache_requests_total{cache="users",result="hit",tier="l1"}"#), Some(1.0));
    assert_eq!(
        line_value(&text, r#"strata_cache_requests_total{cache="users",result="error",tier="redis"}"#),
        Some(1.0)
    );
    assert_eq!(line_value(&text, r#"strata_cache_breaker_state{tier="redis"}"#), Some(2.0));
    assert_eq!(line_value(&text, r#"strata_cache_breaker_state{tier="sql"}"#), Some(1.0));
    assert_eq!(line_value(&text, r#"strata_cache_write_behind_backlog{cache="users"}"#), Some(17.0));
    assert_eq!(line_value(&text, r#"strata_cache_l1_weight_bytes{cache="users"}"#), Some(300.0));
    #[cfg(feature = "resources")]
    {
        assert_eq!(
            line_value(&text, r#"strata_resource_utilization_ratio{component="allocated",resource_type="cpu"}"#),
            Some(0.25)
        );
        assert_eq!(
            line_value(
                &text,
                r#"strata_resource_utilization_ratio{component="allocated",resource_type="nvidia.com/gpu"}"#
            ),
            Some(0.5)
        );
        assert_eq!(line_value(&text, "strata_resource_queue_depth"), Some(1.0));
        assert_eq!(line_value(&text, "strata_resource_audit_failures_total"), Some(1.0));
        assert!(!text.contains("disk full"), "the audit error text must not reach a label");
    }
    assert_eq!(
        line_value(&text, r#"strata_cache_decode_errors_total{cache="users",kind="codec",tier="redis"}"#),
        Some(1.0)
    );
    let mut states = m.breaker_states();
    states.sort();
    assert_eq!(states, vec![("redis".to_owned(), "open"), ("sql".to_owned(), "half_open")]);
    assert_eq!(m.write_behind_backlog(), vec![("users".to_owned(), 17)]);
}

#[test]
fn hits_count_per_cache_and_tier() {
    let m = PrometheusObserver::new().unwrap();
    for _ in 0..1000 {
        CacheObserver::on_event(&*m, &CacheEvent::Hit { cache: "a", tier: "l1" });
    }
    for _ in 0..3 {
        CacheObserver::on_event(&*m, &CacheEvent::Hit { cache: "a", tier: "redis" });
        CacheObserver::on_event(&*m, &CacheEvent::Miss { cache: "b", tier: "l1" });
    }
    let text = m.encode_text();
    assert_eq!(line_value(&text, r#"strata_cache_requests_total{cache="a",result="hit",tier="l1"}"#), Some(1000.0));
    assert_eq!(line_value(&text, r#"strata_cache_requests_total{cache="a",result="hit",tier="redis"}"#), Some(3.0));
    assert_eq!(line_value(&text, r#"strata_cache_requests_total{cache="b",result="miss",tier="l1"}"#), Some(3.0));
}

#[test]
fn cache_label_cardinality_is_capped() {
    let m = PrometheusObserver::new().unwrap();
    for i in 0..(MAX_CACHE_LABELS + 50) {
        let name = format!("c{i}");
        CacheObserver::on_event(&*m, &CacheEvent::Hit { cache: &name, tier: "l1" });
        CacheObserver::on_event(&*m, &CacheEvent::Eviction { cache: &name });
    }
    let text = m.encode_text();
    let hit_series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("strata_cache_requests_total{") && l.contains("result=\"hit\""))
        .collect();
    assert_eq!(hit_series.len(), MAX_CACHE_LABELS + 1, "{hit_series:?}");
    assert_eq!(
        line_value(&text, r#"strata_cache_requests_total{cache="other",result="hit",tier="other"}"#),
        Some(50.0)
    );
    assert_eq!(line_value(&text, r#"strata_cache_evictions_total{cache="other"}"#), Some(50.0));
}

#[test]
fn snapshot_json_has_series_and_histograms() {
    let m = PrometheusObserver::new().unwrap();
    exercise(&m);
    let j = m.snapshot_value();
    let text: serde_json::Value = serde_json::from_str(&m.snapshot_json()).unwrap();
    assert_eq!(text, j);
    let req = j["strata_cache_requests_total"].as_array().unwrap();
    assert!(req.iter().any(|s| s["labels"]["result"] == "hit" && s["value"] == 1.0));
    let load = &j["strata_cache_load_duration_seconds"].as_array().unwrap();
    let found = load.iter().find(|s| s["labels"]["outcome"] == "found").unwrap();
    assert_eq!(found["count"], 1);
    assert!((found["sum"].as_f64().unwrap() - 0.003).abs() < 1e-9);
    assert!(!found["buckets"].as_array().unwrap().is_empty());
}

#[test]
fn per_thread_memo_keeps_observers_and_pairs_apart() {
    let a = PrometheusObserver::new().unwrap();
    let b = PrometheusObserver::new().unwrap();
    // More pairs than memo slots, interleaved across two observers and two threads.
    let run = |m: &PrometheusObserver, n: usize| {
        for i in 0..n {
            for t in ["l1", "l2", "l3"] {
                let cache = if i % 2 == 0 { "x" } else { "y" };
                CacheObserver::on_event(m, &CacheEvent::Hit { cache, tier: t });
                CacheObserver::on_event(m, &CacheEvent::Miss { cache, tier: t });
            }
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| run(&a, 100));
        s.spawn(|| {
            run(&b, 10);
            run(&a, 10);
        });
    });
    let (ta, tb) = (a.encode_text(), b.encode_text());
    for t in ["l1", "l2", "l3"] {
        for c in ["x", "y"] {
            for r in ["hit", "miss"] {
                let series = format!(r#"strata_cache_requests_total{{cache="{c}",result="{r}",tier="{t}"}}"#);
                assert_eq!(line_value(&ta, &series), Some(55.0), "{series}\n{ta}");
                assert_eq!(line_value(&tb, &series), Some(5.0), "{series}\n{tb}");
            }
        }
    }
}
