//! # strata-telemetry
//!
//! Observability for Strata: Prometheus metrics, OpenTelemetry tracing, correlation ids, and an
//! admin HTTP server with a live dashboard. This is the only Strata crate that depends on
//! `prometheus` and `opentelemetry`; the core crates report through the
//! [`CacheObserver`](strata_cache_core::CacheObserver) and
//! [`ResourceObserver`](strata_resource_qos::ResourceObserver) seams and emit `tracing` spans.
//!
//! ## Tour
//! - [`PrometheusObserver`] — implements both observer traits on its own registry;
//!   [`PrometheusObserver::encode_text`] is the scrape body. Hot-path cost: one shared-lock map
//!   lookup (no allocation) and one atomic increment per event. Labels are bounded (no keys;
//!   at most [`metrics::MAX_CACHE_LABELS`] cache names, then `other`).
//! - [`tracing_setup`] — [`init_tracing`] installs `tracing` + `tracing-opentelemetry` with an
//!   SDK tracer provider and a batch exporter (OTLP/HTTP with the `otlp` feature); logs carry
//!   the correlation id.
//! - [`correlation`] — [`correlation::current`] (task-local id, else the current trace id) and
//!   [`correlation::with_correlation`].
//! - [`admin`] — an axum router: `/metrics`, `/health` (503 when a cache cannot serve),
//!   `/topology`, `/api/stats`, and `/dashboard` (one self-contained HTML page).
//!
//! ## Features
//! Each part compiles only what it needs; the default is all of them but `otlp`.
//!
//! | Feature | Gives | Pulls in |
//! |---|---|---|
//! | `prometheus` | [`PrometheusObserver`], [`metrics`] | `prometheus` |
//! | `otel` | [`tracing_setup`], trace ids in [`correlation`] | `opentelemetry`, its SDK, `tracing-opentelemetry` |
//! | `otlp` | OTLP/HTTP span export (implies `otel`) | `opentelemetry-otlp` |
//! | `admin` | [`admin`]: the HTTP server and dashboard (implies `prometheus`) | `axum`, `hyper` |
//! | `resources` | resource-manager metrics and topology | `strata-resource-qos`, `strata-gpu` (without NVML) |
//!
//! A cache-only service that wants metrics depends on
//! `strata-telemetry = { default-features = false, features = ["prometheus"] }`.
//! [`correlation`] (task-local ids in log lines) is always there.
//!
//! ```
//! # #[cfg(feature = "prometheus")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use strata_cache_core::{Cache, FnLoader};
//! use strata_telemetry::PrometheusObserver;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let metrics = PrometheusObserver::new()?;
//! let cache: Cache<u64, String> = Cache::builder("users")
//!     .loader(FnLoader::new(|id: u64| async move { Ok(Some(format!("user-{id}"))) }))
//!     .observer(metrics.clone())
//!     .build()
//!     .await?;
//! metrics.watch_cache(&cache);
//! cache.get_or_load(&1).await?; // L1 miss, load
//! cache.get_or_load(&1).await?; // L1 hit
//!
//! let text = metrics.encode_text();
//! assert!(text.contains(r#"strata_cache_requests_total{cache="users",result="hit",tier="l1"} 1"#));
//! assert!(text.contains(r#"strata_cache_l1_entries{cache="users"} 1"#));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })
//! # }
//! # #[cfg(not(feature = "prometheus"))]
//! # fn main() {}
//! ```

#[cfg(feature = "admin")]
pub mod admin;
pub mod correlation;
mod error;
#[cfg(feature = "prometheus")]
pub mod metrics;
#[cfg(feature = "otel")]
pub mod tracing_setup;

pub use error::TelemetryError;
#[cfg(feature = "prometheus")]
pub use metrics::{MetricKind, PrometheusObserver};
#[cfg(feature = "otel")]
pub use tracing_setup::{TracingConfig, TracingGuard, init_tracing};
