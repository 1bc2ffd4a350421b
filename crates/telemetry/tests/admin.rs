#![allow(clippy::unwrap_used)]
//! The admin router over real HTTP on 127.0.0.1:0, with a tiny HTTP/1.1 client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use strata_cache_core::{BreakerConfig, BreakerTier, Cache, FnLoader, MemoryTier, Postcard};
use strata_resource_qos::{ResourceKind, ResourceManager};
use strata_telemetry::PrometheusObserver;
use strata_telemetry::admin::{
    self, AdminState, CacheHealth, CacheTopology, HealthReport, HealthSource, ResourceTopology, Status,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut raw)).await.unwrap().unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    Reply { status, headers, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

struct Switch(AtomicBool);

#[async_trait]
impl HealthSource for Switch {
    async fn health(&self) -> HealthReport {
        let down = self.0.load(Ordering::SeqCst);
        HealthReport {
            name: "switch".into(),
            status: if down { Status::Unavailable } else { Status::Ok },
            tiers: vec![],
            write_behind_backlog: None,
        }
    }
}

async fn cache_with(metrics: &Arc<PrometheusObserver>, l2: &MemoryTier) -> Cache<u64, String> {
    Cache::builder("users")
        .tier(Arc::new(l2.clone()))
        .serializer(Postcard)
        .loader(FnLoader::new(|id: u64| async move { Ok(Some(format!("user-{id}"))) }))
        .observer(metrics.clone())
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_with_the_right_status_and_type() {
    let metrics = PrometheusObserver::new().unwrap();
    let l2 = MemoryTier::new("l2");
    let cache = cache_with(&metrics, &l2).await;
    metrics.watch_cache(&cache);
    for k in 0..10 {
        cache.get_or_load(&k).await.unwrap();
        cache.get_or_load(&k).await.unwrap();
    }
    let manager = ResourceManager::builder().capacity(ResourceKind::Cpu, 4000).build().unwrap();
    let m2 = manager.clone();
    metrics.watch_resources(move || m2.usage());
    let switch = Arc::new(Switch(AtomicBool::new(false)));
    let state = AdminState::new(metrics.clone())
        .health_source(Arc::new(CacheHealth::new(cache.clone(), Some(metrics.clone()))))
        .health_source(switch.clone())
        .topology_source(Arc::new(CacheTopology::new(cache.clone())))
        .topology_source(Arc::new(ResourceTopology::new(manager)))
        .topology_source(Arc::new(|| {
            admin::Topology::from_serialize(&serde_json::json!({"backplane": {"kind": "local"}})).unwrap_or_default()
        }));
    let (addr, server) = admin::serve("127.0.0.1:0".parse().unwrap(), state).await.unwrap();

    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"), "{:?}", r.headers);
    assert!(r.body.contains(r#"strata_cache_requests_total{cache="users",result="hit",tier="l1"} 10"#), "{}", r.body);
    assert!(r.body.contains(r#"strata_cache_l1_entries{cache="users"} 10"#), "{}", r.body);
    assert!(r.body.contains(r#"strata_resource_capacity{resource_type="cpu"} 4000"#), "{}", r.body);

    let r = get(addr, "/health").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("content-type").unwrap().starts_with("application/json"));
    let j = r.json();
    assert_eq!(j["status"], "ok");
    assert_eq!(j["components"][0]["name"], "users");
    assert_eq!(j["components"][0]["tiers"][0]["name"], "l2");
    assert_eq!(j["components"][0]["tiers"][0]["status"], "ok");

    // The only remote tier fails: the cache cannot serve from its shared level → 503.
    l2.set_failing(true);
    let r = get(addr, "/health").await;
    assert_eq!(r.status, 503, "{}", r.body);
    let j = r.json();
    assert_eq!(j["status"], "unavailable");
    assert_eq!(j["components"][0]["tiers"][0]["status"], "unavailable");
    assert_eq!(j["components"][0]["tiers"][0]["detail"], "injected failure");
    l2.set_failing(false);
    assert_eq!(get(addr, "/health").await.status, 200);
    switch.0.store(true, Ordering::SeqCst);
    assert_eq!(get(addr, "/health").await.status, 503);
    switch.0.store(false, Ordering::SeqCst);

    let r = get(addr, "/topology").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("application/json"));
    let t = r.json();
    assert_eq!(t["caches"][0]["name"], "users");
    assert_eq!(t["caches"][0]["tiers"][0]["name"], "l2");
    assert_eq!(t["resources"]["capacity"]["cpu"], 4000);
    assert_eq!(t["backplane"]["kind"], "local");

    let r = get(addr, "/api/stats").await;
    assert_eq!(r.status, 200);
    let s = r.json();
    assert!(s["time_ms"].as_u64().unwrap() > 0);
    let req = s["metrics"]["strata_cache_requests_total"].as_array().unwrap();
    assert!(req.iter().any(|x| x["labels"]["tier"] == "l1" && x["labels"]["result"] == "hit" && x["value"] == 10.0));

    for path in ["/dashboard", "/"] {
        let r = get(addr, path).await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        assert!(r.body.contains("<svg id=\"topology\""));
        for forbidden in ["http://", "https://", "src=\"//", "href=\"//", "@import"] {
            assert!(!r.body.contains(forbidden), "dashboard references an external resource ({forbidden})");
        }
        assert!(r.body.contains("api/stats") && r.body.contains("setInterval(poll, 1000)"));
    }
    assert_eq!(get(addr, "/nope").await.status, 404);
    server.abort();
}

#[tokio::test]
async fn open_breaker_makes_the_tier_unavailable() {
    let metrics = PrometheusObserver::new().unwrap();
    let l2 = MemoryTier::new("l2");
    let config = BreakerConfig {
        failure_rate_threshold: 0.5,
        minimum_calls: 2,
        sliding_window: 4,
        open_wait: Duration::from_secs(60),
        permitted_half_open_calls: 1,
        enabled: true,
    };
    let breaker = Arc::new(BreakerTier::with_observer(l2.clone(), config, metrics.clone()).unwrap());
    let cache: Cache<u64, String> = Cache::builder("orders")
        .tier(breaker.clone())
        .serializer(Postcard)
        .loader(FnLoader::new(|id: u64| async move { Ok(Some(format!("order-{id}"))) }))
        .observer(metrics.clone())
        .build()
        .await
        .unwrap();
    l2.set_failing(true);
    for k in 0..6 {
        let _ = cache.get_or_load(&k).await;
    }
    assert_eq!(breaker.state(), strata_cache_core::BreakerState::Open);
    // The tier is back, but the breaker is still open: health reports it from the metrics.
    l2.set_failing(false);
    let report = CacheHealth::new(cache, Some(metrics.clone())).health().await;
    assert_eq!(report.status, Status::Unavailable, "{report:?}");
    assert_eq!(report.tiers[0].breaker.as_deref(), Some("open"));
    assert!(metrics.encode_text().contains(r#"strata_cache_breaker_state{tier="l2"} 2"#));
    assert!(metrics.encode_text().contains(r#"strata_cache_breaker_transitions_total{tier="l2",to="open"} 1"#));
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<PrometheusObserver>();
    check::<AdminState>();
    check::<CacheHealth<u64, String>>();
    check::<CacheTopology<u64, String>>();
    check::<ResourceTopology>();
    check::<strata_telemetry::correlation::CorrelationId>();
    check::<strata_telemetry::tracing_setup::TracingPipeline>();
    check::<strata_telemetry::TracingGuard>();
}
