//! Monitoring: samples actual usage, keeps decaying histograms, and produces VPA-style resource
//! recommendations and an HPA/KEDA-style desired replica count.
//!
//! The loop is a task spawned on the caller's tokio runtime ([`Monitor::spawn`]); the returned
//! [`MonitorHandle`] stops it. There are no hidden threads. Events go out on a
//! `tokio::sync::broadcast` channel and usage ratios also to the manager's
//! [`crate::ResourceObserver`] as [`crate::ResourceEvent::Utilization`] with component `actual`.
//!
//! ```
//! use strata_resource_qos::monitor::{desired_replicas, DecayingHistogram};
//! use std::time::Duration;
//! // HPA: ceil(current × metric / target), unchanged within a 10 % tolerance.
//! assert_eq!(desired_replicas(4, 90.0, 60.0, 0.1), 6);
//! assert_eq!(desired_replicas(4, 63.0, 60.0, 0.1), 4);
//! // VPA-style target: p90 of the decaying histogram + 15 %.
//! let start = tokio::time::Instant::now();
//! let mut h = DecayingHistogram::new(1.0, 1.05, Duration::from_secs(86_400), start);
//! for v in 1..=100 { h.add(f64::from(v), 1.0, start); }
//! let p90 = h.percentile(0.9).unwrap();
//! assert!((88.0..=95.0).contains(&p90), "{p90}");
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use strata_gpu::GpuInventory;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use crate::{QosError, ResourceEvent, ResourceKind, ResourceManager};

/// One usage sample; `None` where the source had nothing.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct UsageSample {
    /// CPU used since the previous sample, in millicores.
    pub cpu_millis: Option<f64>,
    /// Memory in use, in bytes.
    pub memory_bytes: Option<u64>,
    /// Mean GPU utilization in percent.
    pub gpu_utilization_percent: Option<f64>,
}

/// Source of usage samples.
pub trait UsageSampler: Send + Sync + 'static {
    /// Takes a sample.
    ///
    /// # Errors
    /// [`QosError::Discovery`] when the source cannot be read.
    fn sample(&self) -> Result<UsageSample, QosError>;
}

/// Samples this process: cgroup v2 `cpu.stat` (`usage_usec`) and `memory.current` when the
/// cgroup directory has them, else `/proc/self/stat` and `/proc/self/status`; GPU utilization
/// from a [`GpuInventory`] if given.
pub struct ProcessSampler {
    cgroup_dir: Option<PathBuf>,
    proc_self: PathBuf,
    gpu: Option<Arc<dyn GpuInventory>>,
    last_cpu: Mutex<Option<(Instant, f64)>>,
}

impl std::fmt::Debug for ProcessSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessSampler").field("cgroup_dir", &self.cgroup_dir).finish_non_exhaustive()
    }
}

/// Linux `USER_HZ`: `/proc/<pid>/stat` times are in 1/100 s.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

impl ProcessSampler {
    /// Reads `/proc/self` only.
    #[must_use]
    pub fn new() -> Self {
        Self { cgroup_dir: None, proc_self: PathBuf::from("/proc/self"), gpu: None, last_cpu: Mutex::new(None) }
    }

    /// Prefers this cgroup v2 directory (`cpu.stat`, `memory.current`).
    #[must_use]
    pub fn cgroup_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cgroup_dir = Some(dir.into());
        self
    }

    /// Reads `stat` and `status` from this directory instead of `/proc/self`.
    #[must_use]
    pub fn proc_self_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.proc_self = dir.into();
        self
    }

    /// Adds GPU utilization from `inventory`.
    #[must_use]
    pub fn gpu_inventory(mut self, inventory: Arc<dyn GpuInventory>) -> Self {
        self.gpu = Some(inventory);
        self
    }

    /// Total CPU time consumed so far, in seconds.
    fn cpu_seconds(&self) -> Option<f64> {
        if let Some(dir) = &self.cgroup_dir
            && let Ok(s) = std::fs::read_to_string(dir.join("cpu.stat"))
        {
            return s
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|us| us / 1e6);
        }
        let stat = std::fs::read_to_string(self.proc_self.join("stat")).ok()?;
        // Fields after the parenthesised command name: state is field 3; utime, stime are 14, 15.
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = f.get(11)?.parse().ok()?;
        let stime: f64 = f.get(12)?.parse().ok()?;
        Some((utime + stime) / CLOCK_TICKS_PER_SEC)
    }

    fn memory_bytes(&self) -> Option<u64> {
        if let Some(dir) = &self.cgroup_dir
            && let Ok(s) = std::fs::read_to_string(dir.join("memory.current"))
        {
            return s.trim().parse().ok();
        }
        let status = std::fs::read_to_string(self.proc_self.join("status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    }
}

impl Default for ProcessSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl UsageSampler for ProcessSampler {
    fn sample(&self) -> Result<UsageSample, QosError> {
        let now = Instant::now();
        let cpu_millis = self.cpu_seconds().and_then(|secs| {
            let mut last = self.last_cpu.lock();
            let prev = last.replace((now, secs));
            prev.and_then(|(t, s)| {
                let dt = now.saturating_duration_since(t).as_secs_f64();
                (dt > 0.0).then(|| ((secs - s).max(0.0) / dt) * 1000.0)
            })
        });
        let gpu_utilization_percent = match &self.gpu {
            Some(inv) => inv.refresh()?.mean_utilization_percent(),
            None => None,
        };
        Ok(UsageSample { cpu_millis, memory_bytes: self.memory_bytes(), gpu_utilization_percent })
    }
}

/// A histogram with exponentially growing buckets whose samples lose weight with a half-life,
/// as the Kubernetes VPA recommender keeps them (new samples get weight `2^(age / half_life)`
/// relative to a reference time, which is equivalent to decaying old ones).
#[derive(Clone, Debug)]
pub struct DecayingHistogram {
    first_bucket: f64,
    ratio: f64,
    weights: Vec<f64>,
    total: f64,
    half_life: Duration,
    reference: Instant,
}

const MAX_BUCKETS: usize = 400;

impl DecayingHistogram {
    /// Buckets `[0, first)`, `[first, first·ratio)`, … (at most 400), decaying with `half_life`.
    #[must_use]
    pub fn new(first_bucket: f64, ratio: f64, half_life: Duration, now: Instant) -> Self {
        Self {
            first_bucket: first_bucket.max(f64::MIN_POSITIVE),
            ratio: ratio.max(1.000_001),
            weights: Vec::new(),
            total: 0.0,
            half_life: half_life.max(Duration::from_millis(1)),
            reference: now,
        }
    }

    fn bucket(&self, v: f64) -> usize {
        if v < self.first_bucket {
            0
        } else {
            (((v / self.first_bucket).ln() / self.ratio.ln()).floor() as usize + 1).min(MAX_BUCKETS - 1)
        }
    }

    fn upper_bound(&self, i: usize) -> f64 {
        self.first_bucket * self.ratio.powi(i as i32)
    }

    /// Adds `value` with `weight` at time `now`. Negative and non-finite values are ignored.
    pub fn add(&mut self, value: f64, weight: f64, now: Instant) {
        if !value.is_finite() || value < 0.0 || !weight.is_finite() || weight <= 0.0 {
            return;
        }
        let age = now.saturating_duration_since(self.reference).as_secs_f64();
        let mut factor = 2f64.powf(age / self.half_life.as_secs_f64());
        if factor > 1e12 {
            // Move the reference forward so weights stay representable.
            self.weights.iter_mut().for_each(|w| *w /= factor);
            self.total /= factor;
            self.reference = now;
            factor = 1.0;
        }
        let b = self.bucket(value);
        if self.weights.len() <= b {
            self.weights.resize(b + 1, 0.0);
        }
        self.weights[b] += weight * factor;
        self.total += weight * factor;
    }

    /// The upper bound of the bucket holding the `p` quantile (0.0 ..= 1.0); `None` when empty.
    #[must_use]
    pub fn percentile(&self, p: f64) -> Option<f64> {
        if self.total <= 0.0 {
            return None;
        }
        let want = p.clamp(0.0, 1.0) * self.total;
        let mut acc = 0.0;
        for (i, w) in self.weights.iter().enumerate() {
            acc += w;
            if acc >= want && *w > 0.0 {
                return Some(self.upper_bound(i));
            }
        }
        Some(self.upper_bound(self.weights.len().saturating_sub(1)))
    }

    /// Whether no sample was added.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.total <= 0.0
    }
}

/// HPA's formula: `ceil(current × metric / target)`, unchanged when `|metric/target − 1| ≤
/// tolerance`. From zero replicas (KEDA activation) any positive metric gives
/// `max(1, ceil(metric / target))`; a non-positive or non-finite target keeps `current`.
#[must_use]
pub fn desired_replicas(current: u32, metric: f64, target: f64, tolerance: f64) -> u32 {
    if !(target.is_finite() && target > 0.0 && metric.is_finite() && metric >= 0.0) {
        return current;
    }
    let ratio = metric / target;
    if current == 0 {
        return if metric > 0.0 { ratio.ceil().max(1.0).min(f64::from(u32::MAX)) as u32 } else { 0 };
    }
    if (ratio - 1.0).abs() <= tolerance {
        return current;
    }
    (f64::from(current) * ratio).ceil().min(f64::from(u32::MAX)) as u32
}

/// A VPA-style recommendation for one resource.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recommendation {
    /// The resource (CPU in millicores, memory in bytes).
    pub resource: ResourceKind,
    /// Percentile of the decaying histogram plus the safety margin.
    pub target: u64,
}

/// HPA-style scaling on CPU per replica.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScalingTarget {
    /// Replicas running now.
    pub current_replicas: u32,
    /// Desired CPU per replica, in millicores.
    pub target_cpu_millis_per_replica: f64,
    /// Tolerance (0.1 = 10 %).
    pub tolerance: f64,
}

/// Monitor settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MonitorConfig {
    /// Time between samples.
    pub interval: Duration,
    /// Half-life of histogram weights (VPA uses 24 h).
    pub half_life: Duration,
    /// Percentile used for targets (0.9).
    pub percentile: f64,
    /// Safety margin added to targets (0.15).
    pub margin: f64,
    /// Optional replica scaling.
    pub scaling: Option<ScalingTarget>,
    /// Capacity of the broadcast channel.
    pub channel_capacity: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            half_life: Duration::from_secs(24 * 3600),
            percentile: 0.9,
            margin: 0.15,
            scaling: None,
            channel_capacity: 64,
        }
    }
}

/// What the monitor publishes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum MonitorEvent {
    /// A usage sample.
    Sample(UsageSample),
    /// Current recommendations (CPU and memory, once each has samples).
    Recommendations(Vec<Recommendation>),
    /// Desired replica count.
    DesiredReplicas {
        /// Replicas now.
        current: u32,
        /// Replicas wanted.
        desired: u32,
        /// Observed CPU per replica (millicores).
        metric: f64,
        /// Target CPU per replica (millicores).
        target: f64,
    },
}

/// The monitoring loop's state. Drive it with [`tick`](Self::tick) or [`spawn`](Self::spawn) it.
pub struct Monitor {
    manager: ResourceManager,
    sampler: Arc<dyn UsageSampler>,
    config: MonitorConfig,
    cpu: DecayingHistogram,
    memory: DecayingHistogram,
    tx: broadcast::Sender<MonitorEvent>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Monitor {
    /// A monitor for `manager` reading `sampler`.
    #[must_use]
    pub fn new(manager: ResourceManager, sampler: Arc<dyn UsageSampler>, config: MonitorConfig) -> Self {
        let now = Instant::now();
        let (tx, _) = broadcast::channel(config.channel_capacity.max(1));
        Self {
            manager,
            sampler,
            cpu: DecayingHistogram::new(1.0, 1.05, config.half_life, now),
            memory: DecayingHistogram::new(1024.0 * 1024.0, 1.05, config.half_life, now),
            config,
            tx,
        }
    }

    /// Subscribes to events.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<MonitorEvent> {
        self.tx.subscribe()
    }

    /// Current recommendations.
    #[must_use]
    pub fn recommendations(&self) -> Vec<Recommendation> {
        let mut out = Vec::new();
        let m = 1.0 + self.config.margin;
        if let Some(p) = self.cpu.percentile(self.config.percentile) {
            out.push(Recommendation { resource: ResourceKind::Cpu, target: (p * m).ceil() as u64 });
        }
        if let Some(p) = self.memory.percentile(self.config.percentile) {
            out.push(Recommendation { resource: ResourceKind::Memory, target: (p * m).ceil() as u64 });
        }
        out
    }

    /// Takes one sample, updates histograms, and publishes sample, recommendations and desired
    /// replicas. Returns the sample.
    ///
    /// # Errors
    /// The sampler's error (nothing is recorded then).
    pub fn tick(&mut self) -> Result<UsageSample, QosError> {
        let sample = self.sampler.sample()?;
        let now = Instant::now();
        if let Some(c) = sample.cpu_millis {
            self.cpu.add(c, 1.0, now);
        }
        if let Some(b) = sample.memory_bytes {
            self.memory.add(b as f64, 1.0, now);
        }
        let observer = self.manager.observer();
        if observer.enabled() {
            let cap = self.manager.usage().capacity;
            let ratio = |kind: ResourceKind, v: Option<f64>| {
                if let (Some(v), Some(c)) = (v, cap.get(&kind)) {
                    observer.on_event(&ResourceEvent::Utilization {
                        resource: kind,
                        component: "actual",
                        ratio: v / c as f64,
                    });
                }
            };
            ratio(ResourceKind::Cpu, sample.cpu_millis);
            ratio(ResourceKind::Memory, sample.memory_bytes.map(|b| b as f64));
            if let Some(u) = sample.gpu_utilization_percent {
                observer.on_event(&ResourceEvent::Utilization {
                    resource: ResourceKind::Gpu,
                    component: "actual",
                    ratio: u / 100.0,
                });
            }
        }
        // Send errors only mean nobody listens.
        let _ = self.tx.send(MonitorEvent::Sample(sample.clone()));
        let recs = self.recommendations();
        if !recs.is_empty() {
            let _ = self.tx.send(MonitorEvent::Recommendations(recs));
        }
        if let (Some(s), Some(c)) = (&self.config.scaling, sample.cpu_millis) {
            let metric = if s.current_replicas == 0 { c } else { c / f64::from(s.current_replicas) };
            let desired = desired_replicas(s.current_replicas, metric, s.target_cpu_millis_per_replica, s.tolerance);
            let _ = self.tx.send(MonitorEvent::DesiredReplicas {
                current: s.current_replicas,
                desired,
                metric,
                target: s.target_cpu_millis_per_replica,
            });
        }
        Ok(sample)
    }

    /// Runs the loop as a task on the current tokio runtime. Sampling errors are logged and the
    /// loop continues.
    ///
    /// # Panics
    /// When called outside a tokio runtime (as `tokio::spawn` does).
    pub fn spawn(mut self) -> MonitorHandle {
        let stop = Arc::new(Notify::new());
        let tx = self.tx.clone();
        let stop2 = Arc::clone(&stop);
        let join = tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.config.interval.max(Duration::from_millis(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop2.notified() => return,
                    _ = tick.tick() => {
                        if let Err(e) = self.tick() {
                            tracing::warn!(error = %e, "usage sample failed");
                        }
                    }
                }
            }
        });
        MonitorHandle { stop, join, tx }
    }
}

/// Owns the spawned monitoring task.
#[derive(Debug)]
pub struct MonitorHandle {
    stop: Arc<Notify>,
    join: tokio::task::JoinHandle<()>,
    tx: broadcast::Sender<MonitorEvent>,
}

impl MonitorHandle {
    /// Subscribes to events.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<MonitorEvent> {
        self.tx.subscribe()
    }

    /// Stops the loop and waits for it to end.
    pub async fn stop(self) {
        self.stop.notify_one();
        let _ = self.join.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_replicas_follows_hpa() {
        assert_eq!(desired_replicas(3, 150.0, 100.0, 0.1), 5);
        assert_eq!(desired_replicas(3, 50.0, 100.0, 0.1), 2);
        assert_eq!(desired_replicas(3, 109.0, 100.0, 0.1), 3);
        assert_eq!(desired_replicas(3, 91.0, 100.0, 0.1), 3);
        assert_eq!(desired_replicas(0, 250.0, 100.0, 0.1), 3);
        assert_eq!(desired_replicas(0, 0.0, 100.0, 0.1), 0);
        assert_eq!(desired_replicas(3, 10.0, 0.0, 0.1), 3);
        assert_eq!(desired_replicas(3, f64::NAN, 1.0, 0.1), 3);
    }

    #[test]
    fn histogram_decays_old_samples() {
        let t0 = Instant::now();
        let day = Duration::from_secs(86_400);
        let mut h = DecayingHistogram::new(1.0, 1.05, day, t0);
        assert!(h.is_empty() && h.percentile(0.9).is_none());
        for _ in 0..100 {
            h.add(1000.0, 1.0, t0);
        }
        // Ten days later a smaller load dominates: old weight is 2^-10 of new weight.
        for _ in 0..100 {
            h.add(10.0, 1.0, t0 + day * 10);
        }
        let p = h.percentile(0.9).unwrap();
        assert!(p < 11.0, "{p}");
        h.add(-1.0, 1.0, t0);
        h.add(f64::NAN, 1.0, t0);
        // Rescaling keeps results sane far in the future.
        h.add(10.0, 1.0, t0 + day * 400);
        assert!(h.percentile(0.5).unwrap() < 11.0);
    }
}
