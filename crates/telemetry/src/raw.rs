//! The escape hatch: the prometheus, axum and tracing-subscriber values behind this crate's
//! types, for composing them with your own.
//!
//! Everything here names those crates' types, so code that uses it is tied to the versions
//! this crate builds with (see the crate's `Cargo.toml`); the rest of the crate's public API
//! names none (`cargo xtask public-api` keeps it so), except
//! [`TracingConfig::span_exporter`](crate::TracingConfig::span_exporter), which takes an
//! OpenTelemetry SDK exporter you built.
//!
//! - [`registry`]: the Prometheus registry of a [`PrometheusObserver`] (to add your own
//!   families, or to gather them yourself; [`PrometheusObserver::encode_text`] is the scrape
//!   body).
//! - [`router`]: the admin routes as an axum `Router`, **without** the access rules and limits
//!   of [`admin::serve_with`](crate::admin::serve_with), for mounting behind a front end that
//!   enforces its own.
//! - [`otel_layer`]: the `tracing-opentelemetry` layer of a [`TracingPipeline`], for a
//!   subscriber you compose yourself.

#[cfg(feature = "prometheus")]
use crate::PrometheusObserver;
#[cfg(feature = "admin")]
use crate::admin::AdminState;
#[cfg(feature = "otel")]
use crate::tracing_setup::TracingPipeline;

#[cfg(feature = "prometheus")]
/// The registry `metrics`' families live on.
pub fn registry(metrics: &PrometheusObserver) -> &prometheus::Registry {
    metrics.registry()
}

#[cfg(feature = "admin")]
/// The admin routes on `state`, **without** the access rules and limits of
/// [`admin::serve_with`](crate::admin::serve_with) (no Host check, no token).
pub fn router(state: AdminState) -> axum::Router {
    crate::admin::router(state)
}

#[cfg(feature = "otel")]
/// The `tracing-opentelemetry` layer for `pipeline`'s provider (no level filter: add your own).
pub fn otel_layer<S>(pipeline: &TracingPipeline) -> impl tracing_subscriber::Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    pipeline.otel_layer()
}
