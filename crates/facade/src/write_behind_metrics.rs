//! Write-behind events into telemetry's metrics: [`WriteBehindTelemetry`] is the consistency
//! crate's [`WriteBehindObserver`] that forwards to telemetry's [`WriteBehindMetrics`] (such as
//! [`PrometheusObserver`](strata_telemetry::PrometheusObserver)). Neither leaf crate knows the
//! other; the facade, which has both, joins them.
//!
//! ```
//! use strata::consistency::WriteBehindConfig;
//! use strata::telemetry::PrometheusObserver;
//! use strata::write_behind_metrics::WriteBehindTelemetry;
//!
//! let metrics = PrometheusObserver::new()?;
//! let config = WriteBehindConfig::builder("/var/lib/app/journal")
//!     .observer(WriteBehindTelemetry::new(metrics.clone()))
//!     .build()?;
//! # let _ = config;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

use strata_consistency::{WriteBehindEvent, WriteBehindObserver};
use strata_telemetry::metrics::WriteBehindMetrics;

/// Forwards a write-behind policy's events to telemetry's metrics.
pub struct WriteBehindTelemetry(Arc<dyn WriteBehindMetrics>);

impl std::fmt::Debug for WriteBehindTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehindTelemetry").finish_non_exhaustive()
    }
}

impl WriteBehindTelemetry {
    /// An observer that feeds `metrics`, for
    /// [`WriteBehindConfigBuilder::observer`](strata_consistency::WriteBehindConfigBuilder::observer).
    pub fn new(metrics: Arc<dyn WriteBehindMetrics>) -> Arc<Self> {
        Arc::new(Self(metrics))
    }
}

impl WriteBehindObserver for WriteBehindTelemetry {
    fn on_event(&self, event: &WriteBehindEvent<'_>) {
        match *event {
            WriteBehindEvent::Backlog { cache, backlog } => self.0.backlog(cache, backlog),
            WriteBehindEvent::Flush { cache, entries, duration, ok } => self.0.flush(cache, entries, duration, ok),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use strata_cache_core::{BoxError, Cache, MemoryTier, Postcard, Writer};
    use strata_consistency::{WriteBehind, WriteBehindConfig};
    use strata_telemetry::PrometheusObserver;

    use super::WriteBehindTelemetry;

    /// A source that fails its first write, then takes everything.
    #[derive(Default)]
    struct FailsOnce(AtomicUsize);

    #[async_trait::async_trait]
    impl Writer<u64, String> for FailsOnce {
        async fn write(&self, _k: &u64, _v: &String) -> Result<(), BoxError> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 { Err("source down".into()) } else { Ok(()) }
        }
        async fn delete(&self, _k: &u64) -> Result<(), BoxError> {
            Ok(())
        }
    }

    fn value(text: &str, prefix: &str) -> Option<f64> {
        text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
    }

    #[tokio::test]
    async fn a_write_behind_policy_exports_its_backlog_and_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = PrometheusObserver::new().unwrap();
        let cache: Cache<u64, String> =
            Cache::builder("orders").tier(Arc::new(MemoryTier::new("l2"))).serializer(Postcard).build().await.unwrap();
        let config = WriteBehindConfig::builder(dir.path().join("journal"))
            .retry(std::time::Duration::from_millis(1), std::time::Duration::from_millis(5))
            .batch_delay(std::time::Duration::from_secs(3600))
            .observer(WriteBehindTelemetry::new(metrics.clone()))
            .build()
            .unwrap();
        let (wb, _) = WriteBehind::open(cache, Arc::new(FailsOnce::default()), config).await.unwrap();
        for k in 0..3 {
            wb.set(k, "v".into()).await.unwrap();
        }
        assert_eq!(metrics.write_behind_backlog(), vec![("orders".to_owned(), 3)]);
        wb.flush().await.unwrap();
        let text = metrics.encode_text();
        assert_eq!(value(&text, r#"strata_cache_write_behind_backlog{cache="orders"}"#), Some(0.0));
        let flushed = r#"strata_cache_write_behind_flushed_entries_total{cache="orders",result=""#;
        assert_eq!(value(&text, &format!("{flushed}ok\"}}")), Some(3.0));
        assert_eq!(value(&text, &format!("{flushed}error\"}}")), Some(3.0));
        let failed = r#"strata_cache_write_behind_flush_duration_seconds_count{cache="orders",result="error"}"#;
        assert_eq!(value(&text, failed), Some(1.0));
        wb.shutdown().await.unwrap();
    }
}
