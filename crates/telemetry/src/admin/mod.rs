//! The admin HTTP server (axum): metrics, health, topology and a live dashboard.
//!
//! | Route | Content |
//! |---|---|
//! | `GET /metrics` | Prometheus text exposition of the [`PrometheusObserver`] |
//! | `GET /health` | JSON [`HealthSummary`]; HTTP 503 when a source reports [`Status::Unavailable`] |
//! | `GET /topology` | JSON: the merged objects of every [`TopologySource`] (schema below) |
//! | `GET /api/stats` | JSON: every metric family's series, breaker states, backlogs |
//! | `GET /dashboard` (and `/`) | one self-contained HTML page (inline JS/CSS, no external URL) polling `/api/stats` every second |
//!
//! ## Access and limits
//! [`serve`] and [`serve_with`] put [access rules](access) in front of every route: a `Host`
//! allow-list (loopback names by default) and `Origin` check against DNS rebinding, an optional
//! bearer token ([`AdminToken`], required when listening on a non-loopback address), header and
//! idle timeouts, a per-connection request limit and a global connection limit
//! ([`AdminConfig`]). [`router`] alone has none of them.
//!
//! The state is built from trait objects so that the facade can feed it whatever it composed:
//! [`HealthSource`] (async, e.g. [`CacheHealth`] for a [`Cache`]) and [`TopologySource`]
//! (e.g. [`CacheTopology`], [`ResourceTopology`], or a closure returning JSON).
//!
//! ## Topology schema (what the dashboard draws)
//! Sources return JSON objects; `/topology` merges them (arrays under the same key are
//! concatenated, other keys overwritten):
//! ```json
//! { "caches": [ { "name": "users", "l1": {"entries": 10},
//!                 "tiers": [ {"name": "redis", "kind": "redis", "nodes": ["10.0.0.1:6379"]},
//!                            {"name": "sql", "kind": "sql", "backend": "postgres"} ] } ],
//!   "backplane": { "kind": "redis-pubsub", "channel": "strata:inv" },
//!   "resources": { "capacity": {"cpu": 8000}, "used": {"cpu": 2000},
//!                  "gpus": [ {"index": 0, "name": "A100", "mig_instances": []} ] } }
//! ```
//!
//! ```no_run
//! use strata_telemetry::{admin, PrometheusObserver};
//! # async fn run() -> Result<(), strata_telemetry::TelemetryError> {
//! let metrics = PrometheusObserver::new()?;
//! let state = admin::AdminState::new(metrics);
//! let (addr, _server) = admin::serve("127.0.0.1:9464".parse().unwrap(), state).await?;
//! println!("dashboard at http://{addr}/dashboard");
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use strata_cache_core::{Cache, CacheKey, TierHealth};
#[cfg(feature = "resources")]
use strata_resource_qos::ResourceManager;
use tokio::task::JoinHandle;

pub mod access;
mod server;

pub use access::{AdminConfig, AdminToken, DEFAULT_ALLOWED_HOSTS, MAX_TIMEOUT};
pub use server::serve_with;

use crate::metrics::TEXT_CONTENT_TYPE;
use crate::{PrometheusObserver, TelemetryError};

/// The dashboard page, served as is.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// How healthy something is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Serving normally.
    Ok,
    /// Serving, with a problem worth reporting (a tier down, a breaker open).
    Degraded,
    /// Cannot serve: `/health` answers 503.
    Unavailable,
}

/// Health of one tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierReport {
    /// The tier's name.
    pub name: String,
    /// Its status.
    pub status: Status,
    /// What is wrong, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Its circuit breaker state (`closed`, `half_open`, `open`), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<String>,
}

/// Health of one component (a cache, the resource manager, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// The component's name.
    pub name: String,
    /// Its overall status.
    pub status: Status,
    /// Per-tier detail (empty for components without tiers).
    pub tiers: Vec<TierReport>,
    /// Write-behind entries not yet in the source, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_behind_backlog: Option<u64>,
}

/// What `/health` returns: the worst status and every report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthSummary {
    /// The worst status of all reports (`ok` when there are none).
    pub status: Status,
    /// One report per source.
    pub components: Vec<HealthReport>,
}

/// Something that can report its health.
#[async_trait]
pub trait HealthSource: Send + Sync + 'static {
    /// The current health (should answer within a second or two: it runs per request).
    async fn health(&self) -> HealthReport;
}

/// Something that can describe its place in the topology (see the module docs for the schema).
pub trait TopologySource: Send + Sync + 'static {
    /// A JSON object to merge into `/topology`.
    fn topology(&self) -> serde_json::Value;
}

impl<F> TopologySource for F
where
    F: Fn() -> serde_json::Value + Send + Sync + 'static,
{
    fn topology(&self) -> serde_json::Value {
        self()
    }
}

/// The [`HealthSource`] of a [`Cache`]: each remote tier's health, and its breaker state when
/// the observer knows it (from [`PrometheusObserver::watch_breaker`] or breaker transitions).
///
/// Status: `unavailable` when the cache has remote tiers and every one is unhealthy or behind
/// an open breaker (the fleet has lost its shared levels: every L1 miss goes to the source);
/// `degraded` when some are; `ok` otherwise. An L1-only cache is always `ok`.
pub struct CacheHealth<K, V> {
    cache: Cache<K, V>,
    metrics: Option<Arc<PrometheusObserver>>,
}

impl<K, V> std::fmt::Debug for CacheHealth<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheHealth").finish_non_exhaustive()
    }
}

impl<K, V> CacheHealth<K, V> {
    /// Reports on `cache` (a cheap clone of the handle), with breaker states from `metrics`.
    pub fn new(cache: Cache<K, V>, metrics: Option<Arc<PrometheusObserver>>) -> Self {
        Self { cache, metrics }
    }
}

#[async_trait]
impl<K: CacheKey, V: Send + Sync + 'static> HealthSource for CacheHealth<K, V> {
    async fn health(&self) -> HealthReport {
        let breakers = self.metrics.as_ref().map(|m| m.breaker_states()).unwrap_or_default();
        let backlog = self.metrics.as_ref().and_then(|m| {
            m.write_behind_backlog().into_iter().find(|(c, _)| c == self.cache.name()).map(|(_, b)| b.max(0) as u64)
        });
        let tiers: Vec<TierReport> = self
            .cache
            .health()
            .await
            .into_iter()
            .map(|(name, h)| {
                let breaker = breakers.iter().find(|(t, _)| *t == name).map(|(_, s)| (*s).to_owned());
                let (mut status, mut detail) = match h {
                    TierHealth::Healthy => (Status::Ok, None),
                    TierHealth::Degraded(d) => (Status::Degraded, Some(d)),
                    TierHealth::Unhealthy(d) => (Status::Unavailable, Some(d)),
                };
                if breaker.as_deref() == Some("open") {
                    status = Status::Unavailable;
                    detail.get_or_insert_with(|| "circuit breaker open".to_owned());
                } else if breaker.as_deref() == Some("half_open") && status == Status::Ok {
                    status = Status::Degraded;
                    detail = Some("circuit breaker half-open".to_owned());
                }
                TierReport { name, status, detail, breaker }
            })
            .collect();
        let status = if tiers.is_empty() || tiers.iter().all(|t| t.status == Status::Ok) {
            Status::Ok
        } else if tiers.iter().all(|t| t.status == Status::Unavailable) {
            Status::Unavailable
        } else {
            Status::Degraded
        };
        HealthReport { name: self.cache.name().to_owned(), status, tiers, write_behind_backlog: backlog }
    }
}

/// The [`TopologySource`] of a [`Cache`]: its name, L1 size and tiers (names only; the facade,
/// which knows the Redis nodes and SQL backend, adds `nodes`/`backend` through its own source).
pub struct CacheTopology<K, V> {
    cache: Cache<K, V>,
}

impl<K, V> std::fmt::Debug for CacheTopology<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheTopology").finish_non_exhaustive()
    }
}

impl<K, V> CacheTopology<K, V> {
    /// Describes `cache`.
    pub fn new(cache: Cache<K, V>) -> Self {
        Self { cache }
    }
}

impl<K: CacheKey, V: Send + Sync + 'static> TopologySource for CacheTopology<K, V> {
    fn topology(&self) -> serde_json::Value {
        let l1 = self.cache.l1().map(|l1| serde_json::json!({"entries": l1.len(), "weight": l1.weight()}));
        let tiers: Vec<serde_json::Value> =
            self.cache.tier_names().into_iter().map(|n| serde_json::json!({"name": n, "kind": n})).collect();
        serde_json::json!({"caches": [{
            "name": self.cache.name(),
            "namespace": self.cache.namespace().as_str(),
            "l1": l1,
            "tiers": tiers,
            "codecs": self.cache.codec_names(),
        }]})
    }
}

/// The [`TopologySource`] of a [`ResourceManager`]: capacity, usage and the GPU inventory
/// (devices, MIG instances, links). Feature `resources`.
#[cfg(feature = "resources")]
#[derive(Debug, Clone)]
pub struct ResourceTopology {
    manager: ResourceManager,
}

#[cfg(feature = "resources")]
impl ResourceTopology {
    /// Describes `manager`.
    pub fn new(manager: ResourceManager) -> Self {
        Self { manager }
    }
}

#[cfg(feature = "resources")]
impl TopologySource for ResourceTopology {
    fn topology(&self) -> serde_json::Value {
        let usage = self.manager.usage();
        let list = |l: &strata_resource_qos::ResourceList| {
            l.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(v))).collect::<serde_json::Map<_, _>>()
        };
        let (gpus, links) = match self.manager.gpu_inventory() {
            Some(inv) => {
                let snap = inv.snapshot();
                (
                    serde_json::to_value(&snap.devices).unwrap_or_default(),
                    serde_json::to_value(&snap.links).unwrap_or_default(),
                )
            }
            None => (serde_json::json!([]), serde_json::json!([])),
        };
        serde_json::json!({"resources": {
            "capacity": list(&usage.capacity),
            "used": list(&usage.used),
            "allocations": usage.allocations,
            "waiters": usage.waiters,
            "gpus": gpus,
            "links": links,
        }})
    }
}

struct Inner {
    metrics: Arc<PrometheusObserver>,
    health: Vec<Arc<dyn HealthSource>>,
    topology: Vec<Arc<dyn TopologySource>>,
}

/// What the admin routes read from. Cheap to clone.
#[derive(Clone)]
#[must_use]
pub struct AdminState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("health_sources", &self.inner.health.len())
            .field("topology_sources", &self.inner.topology.len())
            .finish()
    }
}

impl AdminState {
    /// A state serving `metrics`, with no health or topology source yet.
    pub fn new(metrics: Arc<PrometheusObserver>) -> Self {
        Self { inner: Arc::new(Inner { metrics, health: Vec::new(), topology: Vec::new() }) }
    }

    fn edit(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            metrics: Arc::clone(&shared.metrics),
            health: shared.health.clone(),
            topology: shared.topology.clone(),
        });
        f(&mut inner);
        Self { inner: Arc::new(inner) }
    }

    /// Adds a health source.
    pub fn health_source(self, source: Arc<dyn HealthSource>) -> Self {
        self.edit(|i| i.health.push(source))
    }

    /// Adds a topology source.
    pub fn topology_source(self, source: Arc<dyn TopologySource>) -> Self {
        self.edit(|i| i.topology.push(source))
    }

    /// The health of every source.
    pub async fn health(&self) -> HealthSummary {
        let components = futures::future::join_all(self.inner.health.iter().map(|s| s.health())).await;
        let status = components.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
        HealthSummary { status, components }
    }

    /// The merged topology.
    pub fn topology(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for s in &self.inner.topology {
            if let serde_json::Value::Object(obj) = s.topology() {
                merge(&mut out, obj);
            }
        }
        serde_json::Value::Object(out)
    }
}

fn merge(into: &mut serde_json::Map<String, serde_json::Value>, from: serde_json::Map<String, serde_json::Value>) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(serde_json::Value::Array(a)), serde_json::Value::Array(b)) => a.extend(b),
            (Some(serde_json::Value::Object(a)), serde_json::Value::Object(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// The admin routes on `state`, **without** the access rules and limits of [`serve_with`]
/// (no Host check, no token): for mounting behind a front end that enforces its own.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/topology", get(topology))
        .route("/api/stats", get(stats))
        .route("/dashboard", get(dashboard))
        .route("/", get(dashboard))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> Response {
    ([(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], s.inner.metrics.encode_text()).into_response()
}

async fn health(State(s): State<AdminState>) -> Response {
    let summary = s.health().await;
    let code = if summary.status == Status::Unavailable { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (code, axum::Json(summary)).into_response()
}

async fn topology(State(s): State<AdminState>) -> Response {
    axum::Json(s.topology()).into_response()
}

async fn stats(State(s): State<AdminState>) -> Response {
    let m = &s.inner.metrics;
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let breakers: serde_json::Map<String, serde_json::Value> =
        m.breaker_states().into_iter().map(|(t, st)| (t, serde_json::Value::from(st))).collect();
    let backlog: serde_json::Map<String, serde_json::Value> =
        m.write_behind_backlog().into_iter().map(|(c, b)| (c, serde_json::Value::from(b))).collect();
    axum::Json(serde_json::json!({
        "time_ms": now_ms,
        "metrics": m.snapshot_json(),
        "breakers": breakers,
        "backlog": backlog,
    }))
    .into_response()
}

async fn dashboard() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(DASHBOARD_HTML)).into_response()
}

/// Binds `addr` and serves the admin routes with the default [`AdminConfig`] (loopback
/// hosts, no token, default timeouts and limits); see [`serve_with`].
///
/// # Errors
/// As [`serve_with`]: in particular [`TelemetryError::AdminTokenRequired`] when `addr` is not a
/// loopback address (use [`serve_with`] with a token), [`TelemetryError::Io`] when the address
/// cannot be bound.
pub async fn serve(addr: SocketAddr, state: AdminState) -> Result<(SocketAddr, JoinHandle<()>), TelemetryError> {
    serve_with(addr, state, AdminConfig::default()).await
}
