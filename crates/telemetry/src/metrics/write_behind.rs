//! Write-behind metrics. Write-behind lives in `strata-consistency`, which this crate does not
//! depend on (leaf crates never depend on siblings), so its events arrive through
//! [`WriteBehindMetrics`]: the facade (`strata`, features `consistency` + `telemetry`) adapts
//! the consistency crate's write-behind observer into it, and so can an application.

use std::time::Duration;

use super::PrometheusObserver;

/// Receives what a write-behind policy reports, as telemetry counts it. Implemented by
/// [`PrometheusObserver`], which exports `strata_cache_write_behind_backlog`,
/// `strata_cache_write_behind_flush_duration_seconds` and
/// `strata_cache_write_behind_flushed_entries_total`. Calls must be cheap and must not block.
pub trait WriteBehindMetrics: Send + Sync + 'static {
    /// The backlog of `cache` (entries acknowledged but not yet in the source) is now `backlog`.
    fn backlog(&self, cache: &str, backlog: usize);

    /// A batch part of `entries` entries was written to the source of `cache` in `duration`;
    /// `ok` tells whether the source accepted it (a failed part is retried).
    fn flush(&self, cache: &str, entries: usize, duration: Duration, ok: bool);
}

impl WriteBehindMetrics for PrometheusObserver {
    fn backlog(&self, cache: &str, backlog: usize) {
        let c = self.cache(cache);
        let gauge = c.backlog.get_or_init(|| self.f.backlog.with_label_values(&[c.label.as_str()]));
        gauge.set(i64::try_from(backlog).unwrap_or(i64::MAX));
    }

    fn flush(&self, cache: &str, entries: usize, duration: Duration, ok: bool) {
        let c = self.cache(cache);
        let result = if ok { "ok" } else { "error" };
        self.f.flush.with_label_values(&[c.label.as_str(), result]).observe(duration.as_secs_f64());
        self.f.flushed_entries.with_label_values(&[c.label.as_str(), result]).inc_by(entries as u64);
    }
}
