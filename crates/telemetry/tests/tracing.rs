#![allow(clippy::unwrap_used)]
//! Spans of the cache engine through the SDK's in-memory exporter, and correlation ids in logs.

use std::io::Write;
use std::sync::{Arc, Mutex};

use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use strata_cache_core::{Cache, FnLoader, MemoryTier, Postcard};
use strata_telemetry::correlation::{self, CorrelationFormat, CorrelationId, CorrelationLayer};
use strata_telemetry::tracing_setup::{TracingConfig, TracingPipeline};
use tracing_subscriber::layer::SubscriberExt;

const SECRET_ID: &str = "alice@example.com";

fn attr(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.clone())
}

#[tokio::test]
async fn cache_get_spans_carry_level_hit_and_hashed_key_only() {
    let exporter = InMemorySpanExporter::default();
    let pipeline = TracingPipeline::new(TracingConfig::new("telemetry-test").span_exporter(exporter.clone())).unwrap();
    // With the correlation layer too: it must not disturb the attributes recorded later.
    let subscriber =
        tracing_subscriber::registry().with(strata_telemetry::raw::otel_layer(&pipeline)).with(CorrelationLayer::new());
    let _guard = tracing::subscriber::set_default(subscriber);

    let l2 = MemoryTier::new("l2");
    let cache: Cache<String, String> = Cache::builder("users")
        .tier(Arc::new(l2.clone()))
        .serializer(Postcard)
        .loader(FnLoader::new(|id: String| async move { Ok(Some(format!("profile of {id}"))) }))
        .build()
        .await
        .unwrap();
    let key = SECRET_ID.to_owned();
    assert!(cache.get(&key).await.unwrap().is_none()); // miss everywhere, no loader call
    cache.get_or_load(&key).await.unwrap(); // miss, loaded
    cache.clear_l1();
    cache.get(&key).await.unwrap(); // L1 miss, L2 hit
    cache.get(&key).await.unwrap(); // L1 hit: no span
    pipeline.flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let gets: Vec<&SpanData> = spans.iter().filter(|s| s.name == "cache.get").collect();
    assert_eq!(gets.len(), 3, "{:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>());
    for s in &gets {
        assert_eq!(attr(s, "cache.name"), Some(Value::from("users")));
        let hash = attr(s, "cache.key_hash").expect("key hash recorded").to_string();
        assert_eq!(hash.len(), 16, "{hash}");
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()), "{hash}");
    }
    // The plain miss: no tier answered.
    assert_ne!(attr(gets[0], "cache.hit"), Some(Value::Bool(true)));
    // The load.
    assert_eq!(attr(gets[1], "cache.level"), Some(Value::from("loader")));
    assert_eq!(attr(gets[1], "cache.hit"), Some(Value::Bool(false)));
    // Answered by L2.
    assert_eq!(attr(gets[2], "cache.level"), Some(Value::from("l2")));
    assert_eq!(attr(gets[2], "cache.hit"), Some(Value::Bool(true)));
    // No attribute (or span name) anywhere holds the plaintext key.
    for s in &spans {
        assert!(!s.name.contains("alice"));
        for kv in &s.attributes {
            let v = kv.value.to_string();
            assert!(!v.contains("alice") && !v.contains(SECRET_ID), "{} = {v}", kv.key);
        }
    }
    pipeline.shutdown().unwrap();
}

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_carry_the_task_local_or_trace_correlation_id() {
    let buf = Buf::default();
    let exporter = InMemorySpanExporter::default();
    let pipeline = TracingPipeline::new(TracingConfig::new("telemetry-test").span_exporter(exporter.clone())).unwrap();
    let w = buf.clone();
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(move || w.clone())
        .event_format(CorrelationFormat::new(tracing_subscriber::fmt::format().compact()));
    let subscriber = tracing_subscriber::registry()
        .with(strata_telemetry::raw::otel_layer(&pipeline))
        .with(CorrelationLayer::new())
        .with(fmt);
    let _guard = tracing::subscriber::set_default(subscriber);

    let id = CorrelationId::new("req-7f3a").unwrap();
    correlation::with_correlation(id.clone(), async {
        tokio::task::yield_now().await; // the id survives an await
        assert_eq!(correlation::current(), Some(id.clone()));
        tracing::info!("inside the request");
    })
    .await;
    let trace_id = {
        let span = tracing::info_span!("request");
        let _e = span.enter();
        let trace_id = correlation::current().unwrap();
        tracing::info!("inside a span");
        trace_id
    };
    tracing::info!("outside");

    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines.len(), 3, "{logs}");
    assert!(lines[0].starts_with("correlation_id=req-7f3a ") && lines[0].contains("inside the request"), "{logs}");
    assert!(lines[1].starts_with(&format!("correlation_id={trace_id} ")), "{logs}");
    assert_eq!(trace_id.as_str().len(), 32);
    assert!(!lines[2].contains("correlation_id"), "{logs}");
    // The trace id in the log is the exported span's.
    pipeline.flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let req = spans.iter().find(|s| s.name == "request").unwrap();
    assert_eq!(req.span_context.trace_id().to_string(), trace_id.as_str());
}

#[tokio::test]
async fn admissions_are_spans_with_outcome_and_no_principal() {
    use strata_resource_qos::{AllocationRequest, PriorityClass, ResourceKind, ResourceManager};
    let exporter = InMemorySpanExporter::default();
    let pipeline = TracingPipeline::new(TracingConfig::new("telemetry-test").span_exporter(exporter.clone())).unwrap();
    let subscriber = tracing_subscriber::registry().with(strata_telemetry::raw::otel_layer(&pipeline));
    let _guard = tracing::subscriber::set_default(subscriber);

    let manager = ResourceManager::builder()
        .capacity(ResourceKind::Cpu, 4_000)
        .priority_class(PriorityClass::new("batch", 100).global_default())
        .build()
        .unwrap();
    let req = |cpu| {
        AllocationRequest::new("ml", SECRET_ID)
            .request(ResourceKind::Cpu, cpu)
            .timeout(std::time::Duration::from_millis(20))
    };
    let held = manager.allocate(req(3_000)).await.unwrap();
    assert!(manager.allocate(req(3_000)).await.is_err(), "no room while the first job holds 3 of 4 CPUs");
    drop(held);
    pipeline.flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let admissions: Vec<&SpanData> = spans.iter().filter(|s| s.name == "resource.allocate").collect();
    assert_eq!(admissions.len(), 2);
    assert_eq!(attr(admissions[0], "resource.namespace"), Some(Value::from("ml")));
    assert_eq!(attr(admissions[0], "resource.outcome"), Some(Value::from("admitted")));
    assert_eq!(attr(admissions[1], "resource.outcome"), Some(Value::from("timeout")));
    for s in &admissions {
        for kv in &s.attributes {
            assert!(!kv.value.to_string().contains("alice"), "{} leaks the principal", kv.key);
        }
    }
    pipeline.shutdown().unwrap();
}
