//! OpenTelemetry tracing: `tracing` spans (the cache engine's `cache.get` / `cache.set` /
//! `cache.invalidate`, the resource manager's, your own) exported through an SDK tracer
//! provider with a batch span processor.
//!
//! [`init_tracing`] installs the global subscriber: a level filter, a log formatter that writes
//! the [correlation id](crate::correlation) on every line, and the `tracing-opentelemetry`
//! layer. [`TracingPipeline`] builds the same pieces without installing anything (for tests
//! and for services that compose their own subscriber, with
//! [`raw::otel_layer`](crate::raw::otel_layer)).
//!
//! Exporters: OTLP/HTTP protobuf with the `otlp` feature ([`TracingConfig::otlp_endpoint`]),
//! or any SDK exporter through [`TracingConfig::span_exporter`] (the SDK's in-memory exporter
//! in tests). Without an exporter spans still get trace ids (for correlation) and are dropped.
//!
//! ```
//! use strata_telemetry::tracing_setup::{TracingConfig, TracingPipeline};
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! let pipeline = TracingPipeline::new(TracingConfig::new("demo"))?;
//! let subscriber = tracing_subscriber::registry().with(strata_telemetry::raw::otel_layer(&pipeline));
//! tracing::subscriber::with_default(subscriber, || {
//!     let span = tracing::info_span!("work");
//!     let _g = span.enter();
//!     // Inside a sampled span the correlation id is the trace id.
//!     assert_eq!(strata_telemetry::correlation::current().map(|c| c.as_str().len()), Some(32));
//! });
//! pipeline.shutdown()?;
//! # Ok::<(), strata_telemetry::TelemetryError>(())
//! ```

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanExporter};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::TelemetryError;
use crate::correlation::{CorrelationFormat, CorrelationLayer};

type ExporterInstaller = Box<dyn FnOnce(BatchConfigBuilder) -> BatchSpanProcessor + Send>;

/// How to set up tracing.
#[must_use]
pub struct TracingConfig {
    service_name: String,
    level: LevelFilter,
    logs: bool,
    otlp_endpoint: Option<String>,
    batch_delay: Duration,
    exporter: Option<ExporterInstaller>,
}

impl std::fmt::Debug for TracingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracingConfig")
            .field("service_name", &self.service_name)
            .field("level", &self.level)
            .field("logs", &self.logs)
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("batch_delay", &self.batch_delay)
            .field("custom_exporter", &self.exporter.is_some())
            .finish()
    }
}

impl TracingConfig {
    /// Defaults: level INFO, logs to stderr on, no exporter, batch delay 1 s.
    pub fn new(service_name: impl Into<String>) -> Self {
        Self {
            service_name: service_name.into(),
            level: LevelFilter::INFO,
            logs: true,
            otlp_endpoint: None,
            batch_delay: Duration::from_secs(1),
            exporter: None,
        }
    }

    /// The most verbose level recorded (spans and logs).
    pub fn level(mut self, level: tracing::Level) -> Self {
        self.level = LevelFilter::from_level(level);
        self
    }

    /// Whether [`init_tracing`] writes logs to stderr.
    pub fn logs(mut self, on: bool) -> Self {
        self.logs = on;
        self
    }

    /// Exports spans over OTLP/HTTP protobuf to `endpoint` (e.g.
    /// `http://collector:4318/v1/traces`). Needs the `otlp` feature; without it building the
    /// pipeline fails with [`TelemetryError::Config`].
    pub fn otlp_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.otlp_endpoint = Some(endpoint.into());
        self
    }

    /// How long the batch processor waits before exporting a batch.
    pub fn batch_delay(mut self, delay: Duration) -> Self {
        self.batch_delay = delay;
        self
    }

    /// Exports through `exporter` (batched) instead of OTLP.
    pub fn span_exporter<E: SpanExporter + 'static>(mut self, exporter: E) -> Self {
        self.exporter = Some(Box::new(move |cfg: BatchConfigBuilder| {
            BatchSpanProcessor::builder(exporter).with_batch_config(cfg.build()).build()
        }));
        self
    }
}

/// A built tracer provider, not installed anywhere.
#[derive(Debug)]
pub struct TracingPipeline {
    provider: SdkTracerProvider,
    level: LevelFilter,
    logs: bool,
}

impl TracingPipeline {
    /// Builds the provider (and its exporter) from `config`.
    ///
    /// # Errors
    /// [`TelemetryError::Config`] for an empty service name, a zero batch delay, or an OTLP
    /// endpoint without the `otlp` feature; [`TelemetryError::Tracing`] when the exporter
    /// cannot be built.
    pub fn new(config: TracingConfig) -> Result<Self, TelemetryError> {
        if config.service_name.trim().is_empty() {
            return Err(TelemetryError::Config("service name must not be empty".into()));
        }
        if config.batch_delay.is_zero() {
            return Err(TelemetryError::Config("batch delay must be positive".into()));
        }
        let batch = BatchConfigBuilder::default().with_scheduled_delay(config.batch_delay);
        let resource = Resource::builder().with_service_name(config.service_name).build();
        let mut builder = SdkTracerProvider::builder().with_resource(resource);
        if let Some(install) = config.exporter {
            builder = builder.with_span_processor(install(batch));
        } else if let Some(endpoint) = config.otlp_endpoint {
            builder = builder.with_span_processor(otlp_processor(&endpoint, batch)?);
        }
        Ok(Self { provider: builder.build(), level: config.level, logs: config.logs })
    }

    /// The `tracing-opentelemetry` layer for this provider (public as
    /// [`crate::raw::otel_layer`]).
    pub(crate) fn otel_layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        crate::correlation::install_trace_id_source();
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("strata"))
    }

    /// Exports every finished span now.
    ///
    /// # Errors
    /// [`TelemetryError::Tracing`] when the exporter fails.
    pub fn flush(&self) -> Result<(), TelemetryError> {
        self.provider.force_flush().map_err(|e| TelemetryError::Tracing(e.to_string()))
    }

    /// Flushes and stops the exporter.
    ///
    /// # Errors
    /// [`TelemetryError::Tracing`] when the exporter fails to shut down.
    pub fn shutdown(&self) -> Result<(), TelemetryError> {
        self.provider.shutdown().map_err(|e| TelemetryError::Tracing(e.to_string()))
    }
}

#[cfg(feature = "otlp")]
fn otlp_processor(endpoint: &str, batch: BatchConfigBuilder) -> Result<BatchSpanProcessor, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| TelemetryError::Tracing(format!("OTLP exporter for {endpoint}: {e}")))?;
    Ok(BatchSpanProcessor::builder(exporter).with_batch_config(batch.build()).build())
}

#[cfg(not(feature = "otlp"))]
fn otlp_processor(endpoint: &str, _batch: BatchConfigBuilder) -> Result<BatchSpanProcessor, TelemetryError> {
    Err(TelemetryError::Config(format!(
        "OTLP endpoint {endpoint} configured but strata-telemetry was built without the `otlp` feature"
    )))
}

/// Keeps the global tracing pipeline alive; dropping it flushes and shuts the exporter down.
#[derive(Debug)]
pub struct TracingGuard {
    pipeline: TracingPipeline,
}

impl TracingGuard {
    /// Exports every finished span now.
    ///
    /// # Errors
    /// [`TelemetryError::Tracing`] when the exporter fails.
    pub fn flush(&self) -> Result<(), TelemetryError> {
        self.pipeline.flush()
    }
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Err(e) = self.pipeline.shutdown() {
            eprintln!("strata-telemetry: tracing shutdown: {e}");
        }
    }
}

/// Builds the pipeline and installs it as the global `tracing` subscriber: level filter,
/// logs with correlation ids (if enabled) and the OpenTelemetry layer.
///
/// # Errors
/// What [`TracingPipeline::new`] returns, and [`TelemetryError::Tracing`] when a global
/// subscriber is already installed.
pub fn init_tracing(config: TracingConfig) -> Result<TracingGuard, TelemetryError> {
    let pipeline = TracingPipeline::new(config)?;
    let logs = pipeline.logs.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .event_format(CorrelationFormat::new(tracing_subscriber::fmt::format()))
    });
    tracing_subscriber::registry()
        .with(pipeline.level)
        .with(logs)
        .with(pipeline.otel_layer())
        .with(pipeline.logs.then(CorrelationLayer::new))
        .try_init()
        .map_err(|e| TelemetryError::Tracing(e.to_string()))?;
    Ok(TracingGuard { pipeline })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_config_is_a_typed_error() {
        assert!(matches!(TracingPipeline::new(TracingConfig::new(" ")), Err(TelemetryError::Config(_))));
        assert!(matches!(
            TracingPipeline::new(TracingConfig::new("s").batch_delay(Duration::ZERO)),
            Err(TelemetryError::Config(_))
        ));
        #[cfg(not(feature = "otlp"))]
        assert!(matches!(
            TracingPipeline::new(TracingConfig::new("s").otlp_endpoint("http://127.0.0.1:4318/v1/traces")),
            Err(TelemetryError::Config(_))
        ));
    }
}
