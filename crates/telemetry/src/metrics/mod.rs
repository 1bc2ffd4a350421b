//! Prometheus metrics: [`PrometheusObserver`] turns cache and resource events into metrics on
//! its own [`prometheus::Registry`].
//!
//! ## Exported families
//! See [`PrometheusObserver::metric_names`] for the authoritative list (the operations rules and
//! dashboard are checked against it by `cargo xtask`). Labels are bounded: cache names are
//! capped at [`MAX_CACHE_LABELS`] distinct values and tier/resource names at
//! [`MAX_TIER_LABELS`]; later names are reported as `other`. Keys never appear in labels.
//!
//! ## Cost
//! The hot path (hits and misses) finds the pre-resolved counters of `(cache, tier)` in a
//! per-thread memo of the last four pairs (string compares, no lock) and increments one atomic.
//! On a memo miss it looks them up in a small shared map (one FxHash of the two names under a
//! read lock, no allocation once resolved) and remembers them.
//!
//! ## Files
//! - `mod.rs` — the observer: families, registration, probes read at scrape time, snapshots.
//! - `cache_events.rs` — the [`CacheObserver`](strata_cache_core::CacheObserver) implementation and its per-thread memo.
//! - `resources.rs` — (feature `resources`) the `strata_resource_*` families, the
//!   `ResourceObserver` implementation and the usage probe.
//! - `labels.rs` — bounded label values and the maps of pre-resolved children.
//! - `tests.rs` — unit tests.

mod cache_events;
mod labels;
#[cfg(feature = "resources")]
mod resources;

use std::sync::Arc;

use parking_lot::RwLock;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use strata_cache_core::BreakerState;

use crate::error::TelemetryError;
use labels::{ChildMap, LabelCap, OTHER};

/// Distinct cache names reported as labels; later caches are reported as `other`.
pub const MAX_CACHE_LABELS: usize = 64;
/// Distinct tier (and resource type) names reported as labels; later ones are `other`.
pub const MAX_TIER_LABELS: usize = 32;

/// Latency buckets (seconds) for loads and flushes: 100 µs … 10 s.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Numeric value of a breaker state in the `*_breaker_state` gauges: closed 0, half-open 1,
/// open 2.
pub fn breaker_value(state: BreakerState) -> i64 {
    match state {
        BreakerState::Closed => 0,
        BreakerState::HalfOpen => 1,
        BreakerState::Open => 2,
    }
}

/// Pre-resolved request counters of one `(cache, tier)`.
struct TierChildren {
    hit: IntCounter,
    miss: IntCounter,
    error: IntCounter,
}

/// Pre-resolved per-cache children.
struct CacheChildren {
    label: String,
    stale: IntCounter,
    evictions: IntCounter,
    coalesced: IntCounter,
    early_refresh: IntCounter,
    received: IntCounter,
    bus_errors: IntCounter,
    resyncs: IntCounter,
    loads: [Histogram; 4],
    backlog: std::sync::OnceLock<IntGauge>,
    lock_acquired: IntCounter,
    lock_found: IntCounter,
    lock_timeout: IntCounter,
    tag_invalidations: IntCounter,
}

type L1Probe = Box<dyn Fn() -> (u64, u64) + Send + Sync>;
type BreakerProbe = Box<dyn Fn() -> Option<BreakerState> + Send + Sync>;

/// Gauges read at scrape time from registered callbacks.
struct PullCollector {
    l1_entries: IntGaugeVec,
    l1_weight: IntGaugeVec,
    cache_breakers: IntGaugeVec,
    #[cfg(feature = "resources")]
    usage: resources::UsageGauges,
    l1: RwLock<Vec<(String, L1Probe)>>,
    breakers: RwLock<Vec<(String, BreakerProbe)>>,
    descs: Vec<Desc>,
}

impl Collector for PullCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        for (name, probe) in self.l1.read().iter() {
            let (entries, weight) = probe();
            self.l1_entries.with_label_values(&[name]).set(i64::try_from(entries).unwrap_or(i64::MAX));
            self.l1_weight.with_label_values(&[name]).set(i64::try_from(weight).unwrap_or(i64::MAX));
        }
        for (tier, probe) in self.breakers.read().iter() {
            if let Some(state) = probe() {
                self.cache_breakers.with_label_values(&[tier]).set(breaker_value(state));
            }
        }
        let mut out = Vec::new();
        out.extend(self.l1_entries.collect());
        out.extend(self.l1_weight.collect());
        out.extend(self.cache_breakers.collect());
        #[cfg(feature = "resources")]
        out.extend(self.usage.collect());
        out
    }
}

struct Caps {
    caches: LabelCap,
    tiers: LabelCap,
    #[cfg(feature = "resources")]
    resources: LabelCap,
}

struct Families {
    requests: IntCounterVec,
    load: HistogramVec,
    evictions: IntCounterVec,
    decode_errors: IntCounterVec,
    tier_errors: IntCounterVec,
    coalesced: IntCounterVec,
    early_refresh: IntCounterVec,
    breaker_transitions: IntCounterVec,
    backplane_messages: IntCounterVec,
    backplane_errors: IntCounterVec,
    resyncs: IntCounterVec,
    backlog: IntGaugeVec,
    flush: HistogramVec,
    flushed_entries: IntCounterVec,
    lock: IntCounterVec,
    tag_invalidations: IntCounterVec,
    #[cfg(feature = "resources")]
    resources: resources::ResourceFamilies,
}

/// A [`CacheObserver`](strata_cache_core::CacheObserver) and (feature `resources`)
/// [`ResourceObserver`](strata_resource_qos::ResourceObserver) that exports Prometheus metrics.
///
/// Share it as `Arc<PrometheusObserver>`: give clones to every cache builder
/// ([`strata_cache_core::CacheBuilder::observer`]), breaker tier and resource manager, then
/// serve [`PrometheusObserver::encode_text`] (the admin router's `/metrics` does).
pub struct PrometheusObserver {
    registry: Registry,
    f: Families,
    pull: Arc<PullCollector>,
    caps: Arc<Caps>,
    tiers: ChildMap<TierChildren>,
    caches: ChildMap<CacheChildren>,
    names: Vec<(String, MetricKind)>,
    /// Unique per observer (never reused), keys the per-thread memo.
    id: u64,
}

impl std::fmt::Debug for PrometheusObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusObserver").field("families", &self.names.len()).finish_non_exhaustive()
    }
}

/// The kind of an exported metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A monotonically increasing counter.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A histogram (`_bucket`, `_sum` and `_count` series).
    Histogram,
}

impl MetricKind {
    /// `counter`, `gauge` or `histogram`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, TelemetryError> {
    Ok(IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, TelemetryError> {
    Ok(IntGaugeVec::new(Opts::new(name, help), labels)?)
}

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> Result<HistogramVec, TelemetryError> {
    Ok(HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)?)
}

impl PrometheusObserver {
    /// A new observer with every family registered on a fresh registry.
    ///
    /// # Errors
    /// [`TelemetryError::Metrics`] if a family cannot be created (a bug: names are constants).
    pub fn new() -> Result<Arc<Self>, TelemetryError> {
        let f = Families {
            requests: counter_vec(
                "strata_cache_requests_total",
                "Cache lookups per tier and result (hit, miss, stale, error).",
                &["cache", "tier", "result"],
            )?,
            load: histogram_vec(
                "strata_cache_load_duration_seconds",
                "Loader (source of truth) latency by outcome.",
                &["cache", "outcome"],
                LATENCY_BUCKETS,
            )?,
            evictions: counter_vec("strata_cache_evictions_total", "L1 evictions.", &["cache"])?,
            decode_errors: counter_vec(
                "strata_cache_decode_errors_total",
                "Frames that could not be decoded (kind=frame) or that a codec refused, e.g. failed decryption (kind=codec).",
                &["cache", "tier", "kind"],
            )?,
            tier_errors: counter_vec(
                "strata_cache_tier_errors_total",
                "Tier calls that failed and were skipped, by error kind.",
                &["cache", "tier", "kind"],
            )?,
            coalesced: counter_vec(
                "strata_cache_coalesced_total",
                "Waiters that joined a load already in flight.",
                &["cache"],
            )?,
            early_refresh: counter_vec(
                "strata_cache_early_refreshes_total",
                "Background early refreshes (XFetch) started.",
                &["cache"],
            )?,
            breaker_transitions: counter_vec(
                "strata_cache_breaker_transitions_total",
                "Circuit breaker state changes per tier.",
                &["tier", "to"],
            )?,
            backplane_messages: counter_vec(
                "strata_cache_backplane_messages_total",
                "Invalidation messages received from other instances and applied.",
                &["cache", "direction"],
            )?,
            backplane_errors: counter_vec(
                "strata_cache_backplane_errors_total",
                "Invalidations that could not be published.",
                &["cache"],
            )?,
            resyncs: counter_vec(
                "strata_cache_backplane_resyncs_total",
                "Times the bus may have lost messages and L1 was cleared.",
                &["cache"],
            )?,
            backlog: gauge_vec(
                "strata_cache_write_behind_backlog",
                "Write-behind entries acknowledged but not yet written to the source.",
                &["cache"],
            )?,
            flush: histogram_vec(
                "strata_cache_write_behind_flush_duration_seconds",
                "Write-behind batch write latency by result (ok, error).",
                &["cache", "result"],
                LATENCY_BUCKETS,
            )?,
            flushed_entries: counter_vec(
                "strata_cache_write_behind_flushed_entries_total",
                "Entries in write-behind batches by result (ok, error).",
                &["cache", "result"],
            )?,
            lock: counter_vec(
                "strata_cache_load_lock_total",
                "Distributed load lock outcomes (acquired, waited_found, waited_timeout).",
                &["cache", "result"],
            )?,
            tag_invalidations: counter_vec(
                "strata_cache_tag_invalidations_total",
                "Tag invalidations applied.",
                &["cache"],
            )?,
            #[cfg(feature = "resources")]
            resources: resources::ResourceFamilies::new()?,
        };
        let caps = Arc::new(Caps {
            caches: LabelCap::new(MAX_CACHE_LABELS),
            tiers: LabelCap::new(MAX_TIER_LABELS),
            #[cfg(feature = "resources")]
            resources: LabelCap::new(MAX_TIER_LABELS),
        });
        let pull = {
            let l1_entries = gauge_vec("strata_cache_l1_entries", "Entries resident in L1.", &["cache"])?;
            let l1_weight =
                gauge_vec("strata_cache_l1_weight_bytes", "Weight (bytes by the weigher) resident in L1.", &["cache"])?;
            let cache_breakers = gauge_vec(
                "strata_cache_breaker_state",
                "Tier circuit breaker state (0 closed, 1 half-open, 2 open).",
                &["tier"],
            )?;
            #[cfg(feature = "resources")]
            let usage = resources::UsageGauges::new(&f.resources, Arc::clone(&caps))?;
            let mut descs = Vec::new();
            for c in [&l1_entries, &l1_weight, &cache_breakers] {
                descs.extend(c.desc().into_iter().cloned());
            }
            #[cfg(feature = "resources")]
            descs.extend(usage.descs());
            Arc::new(PullCollector {
                l1_entries,
                l1_weight,
                cache_breakers,
                #[cfg(feature = "resources")]
                usage,
                l1: RwLock::default(),
                breakers: RwLock::default(),
                descs,
            })
        };
        let registry = Registry::new();
        use MetricKind::{Counter as C, Gauge as G, Histogram as H};
        let mut collectors: Vec<(Box<dyn Collector>, MetricKind)> = vec![
            (Box::new(f.requests.clone()), C),
            (Box::new(f.load.clone()), H),
            (Box::new(f.evictions.clone()), C),
            (Box::new(f.decode_errors.clone()), C),
            (Box::new(f.tier_errors.clone()), C),
            (Box::new(f.coalesced.clone()), C),
            (Box::new(f.early_refresh.clone()), C),
            (Box::new(f.breaker_transitions.clone()), C),
            (Box::new(f.backplane_messages.clone()), C),
            (Box::new(f.backplane_errors.clone()), C),
            (Box::new(f.resyncs.clone()), C),
            (Box::new(f.backlog.clone()), G),
            (Box::new(f.flush.clone()), H),
            (Box::new(f.flushed_entries.clone()), C),
            (Box::new(f.lock.clone()), C),
            (Box::new(f.tag_invalidations.clone()), C),
        ];
        #[cfg(feature = "resources")]
        collectors.extend(f.resources.collectors());
        collectors.push((Box::new(SharedCollector(Arc::clone(&pull))), G));
        let mut names = Vec::new();
        for (c, kind) in collectors {
            names.extend(c.desc().iter().map(|d| (d.fq_name.clone(), kind)));
            registry.register(c)?;
        }
        Ok(Arc::new(Self {
            registry,
            f,
            pull,
            caps,
            tiers: ChildMap::default(),
            caches: ChildMap::default(),
            names,
            id: NEXT_OBSERVER_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }))
    }

    /// The registry the families live on (to add your own, or to gather them yourself).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every family (content type
    /// [`TEXT_CONTENT_TYPE`]).
    pub fn encode_text(&self) -> String {
        let mut buf = Vec::new();
        // Text encoding of well-formed families into a Vec cannot fail.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics could not be encoded");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Every family this observer exports, with its kind (histograms also expose `_bucket`,
    /// `_sum` and `_count` series). Taken from the registered collectors' descriptors.
    pub fn metric_names(&self) -> &[(String, MetricKind)] {
        &self.names
    }

    /// Reports `cache`'s L1 size at scrape time: `probe` returns `(entries, weight)` and must be
    /// cheap. For a [`strata_cache_core::Cache`] use [`PrometheusObserver::watch_cache`].
    pub fn watch_l1(&self, cache: &str, probe: impl Fn() -> (u64, u64) + Send + Sync + 'static) {
        let label = self.caps.caches.admit(cache);
        let mut l1 = self.pull.l1.write();
        l1.retain(|(n, _)| *n != label);
        l1.push((label, Box::new(probe)));
    }

    /// Reports the L1 size (entries, weight) of `cache` at scrape time. The probe holds a
    /// clone of the cache handle.
    pub fn watch_cache<K, V>(&self, cache: &strata_cache_core::Cache<K, V>)
    where
        K: strata_cache_core::CacheKey,
        V: Send + Sync + 'static,
    {
        let c = cache.clone();
        self.watch_l1(cache.name(), move || c.l1().map_or((0, 0), |l1| (l1.len() as u64, l1.weight())));
    }

    /// Reports `tier`'s breaker state at scrape time (e.g. `move || tier.breaker_state()` for
    /// a [`strata_cache_core::BreakerTier`]); complements
    /// [`CacheEvent::BreakerTransition`](strata_cache_core::CacheEvent::BreakerTransition).
    pub fn watch_breaker(&self, tier: &str, probe: impl Fn() -> Option<BreakerState> + Send + Sync + 'static) {
        let label = self.caps.tiers.admit(tier);
        let mut b = self.pull.breakers.write();
        b.retain(|(n, _)| *n != label);
        b.push((label, Box::new(probe)));
    }

    #[inline]
    fn tier(&self, cache: &str, tier: &str) -> Arc<TierChildren> {
        self.tiers.get2(cache, tier, || {
            let c = self.caps.caches.admit(cache);
            let t = if c == OTHER { OTHER.to_owned() } else { self.caps.tiers.admit(tier) };
            let r = &self.f.requests;
            TierChildren {
                hit: r.with_label_values(&[&c, &t, "hit"]),
                miss: r.with_label_values(&[&c, &t, "miss"]),
                error: r.with_label_values(&[&c, &t, "error"]),
            }
        })
    }

    fn cache(&self, cache: &str) -> Arc<CacheChildren> {
        self.caches.get1(cache, || {
            let c = self.caps.caches.admit(cache);
            let one = |v: &IntCounterVec| v.with_label_values(&[&c]);
            let f = &self.f;
            CacheChildren {
                stale: f.requests.with_label_values(&[&c, strata_cache_core::observer::SOURCE, "stale"]),
                evictions: one(&f.evictions),
                coalesced: one(&f.coalesced),
                early_refresh: one(&f.early_refresh),
                received: f.backplane_messages.with_label_values(&[&c, "received"]),
                bus_errors: one(&f.backplane_errors),
                resyncs: one(&f.resyncs),
                loads: ["found", "not_found", "error", "timeout"].map(|o| f.load.with_label_values(&[&c, o])),
                backlog: std::sync::OnceLock::new(),
                lock_acquired: f.lock.with_label_values(&[&c, "acquired"]),
                lock_found: f.lock.with_label_values(&[&c, "waited_found"]),
                lock_timeout: f.lock.with_label_values(&[&c, "waited_timeout"]),
                tag_invalidations: one(&f.tag_invalidations),
                label: c,
            }
        })
    }

    fn tier_label(&self, tier: &str) -> String {
        self.caps.tiers.admit(tier)
    }

    /// A JSON summary of the current values for dashboards: every family with its series
    /// (labels, and value or histogram count/sum/buckets).
    pub fn snapshot_json(&self) -> serde_json::Value {
        use prometheus::proto::MetricType;
        let mut out = serde_json::Map::new();
        for fam in self.registry.gather() {
            let series: Vec<serde_json::Value> = fam
                .get_metric()
                .iter()
                .map(|m| {
                    let labels: serde_json::Map<String, serde_json::Value> = m
                        .get_label()
                        .iter()
                        .map(|l| (l.name().to_owned(), serde_json::Value::from(l.value())))
                        .collect();
                    match fam.get_field_type() {
                        MetricType::COUNTER => {
                            serde_json::json!({"labels": labels, "value": m.get_counter().get_value()})
                        }
                        MetricType::HISTOGRAM => {
                            let h = m.get_histogram();
                            let buckets: Vec<serde_json::Value> = h
                                .get_bucket()
                                .iter()
                                .map(|b| serde_json::json!([b.upper_bound(), b.cumulative_count()]))
                                .collect();
                            serde_json::json!({"labels": labels, "count": h.get_sample_count(),
                                "sum": h.get_sample_sum(), "buckets": buckets})
                        }
                        _ => serde_json::json!({"labels": labels, "value": m.get_gauge().get_value()}),
                    }
                })
                .collect();
            out.insert(fam.name().to_owned(), serde_json::Value::Array(series));
        }
        serde_json::Value::Object(out)
    }

    /// The last known breaker state per tier (from transitions and watched probes), as
    /// `closed`/`half_open`/`open`.
    pub fn breaker_states(&self) -> Vec<(String, &'static str)> {
        let mut out = Vec::new();
        for fam in self.pull.collect() {
            if fam.name() != "strata_cache_breaker_state" {
                continue;
            }
            for m in fam.get_metric() {
                let tier = m.get_label().iter().find(|l| l.name() == "tier").map(|l| l.value().to_owned());
                let state = match m.get_gauge().get_value() as i64 {
                    0 => "closed",
                    1 => "half_open",
                    _ => "open",
                };
                if let Some(t) = tier {
                    out.push((t, state));
                }
            }
        }
        out
    }

    /// The write-behind backlog of every cache that reported one.
    pub fn write_behind_backlog(&self) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        self.caches.for_each(|_, _, c| {
            if let Some(g) = c.backlog.get() {
                out.push((c.label.clone(), g.get()));
            }
        });
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }
}

/// The content type of [`PrometheusObserver::encode_text`].
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Unique per observer, keys the per-thread memo of [`cache_events`].
static NEXT_OBSERVER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Registers the pull collector while the observer keeps a handle on it.
struct SharedCollector(Arc<PullCollector>);

impl Collector for SharedCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

#[cfg(test)]
mod tests;
