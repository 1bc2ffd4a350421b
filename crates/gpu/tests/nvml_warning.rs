//! The "no driver" warning of strata-gpu, in a test binary of its own: tracing caches whether a
//! log line is wanted per call site and process, so a test in the same process that reaches
//! the same line first, with no subscriber, can leave it disabled for the subscriber below.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::{Arc, Mutex};

use strata_gpu::{DriverStatus, GpuInventory, NvmlInventory};

/// A minimal subscriber that records WARN events, so the "no driver" log line is checked.
#[derive(Default, Clone)]
struct Capture(Arc<Mutex<Vec<String>>>);

struct Visitor<'a>(&'a mut String);
impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut s = String::new();
            event.record(&mut Visitor(&mut s));
            self.0.lock().unwrap().push(s);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn nvml_missing_library_gives_empty_inventory_and_a_warning() {
    let capture = Capture::default();
    let inv = tracing::subscriber::with_default(capture.clone(), || {
        NvmlInventory::with_library_path("/nonexistent/strata-test/libnvidia-ml.so.1")
    })
    .expect("a missing driver is not an error");
    assert!(inv.snapshot().is_empty());
    assert!(inv.refresh().unwrap().is_empty());
    let DriverStatus::Unavailable { reason } = inv.driver_status() else { panic!("{:?}", inv.driver_status()) };
    assert_eq!(inv.backend(), "nvml");
    let logs = capture.0.lock().unwrap();
    assert_eq!(logs.len(), 1, "exactly one warning: {logs:?}");
    assert!(logs[0].contains("no NVIDIA driver"), "{}", logs[0]);
    // Built without NVML, the reason and the log line name the missing feature.
    let without_nvml = reason.contains("`nvml` feature") && logs[0].contains("`nvml` feature");
    assert_eq!(without_nvml, cfg!(not(feature = "nvml")), "{reason} / {}", logs[0]);
}
