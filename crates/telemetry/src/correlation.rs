//! Correlation ids: one id per request, carried across `.await`s and written into every log
//! line.
//!
//! [`current`] returns the id set with [`with_correlation`] (a tokio task-local) if any, else
//! the OpenTelemetry trace id of the current `tracing` span (with the `otel` feature, when the
//! `tracing_setup` layer is installed and the span is sampled).
//! [`CorrelationFormat`] wraps a `tracing-subscriber` event formatter and prefixes each line
//! with `correlation_id=<id>`; [`CorrelationLayer`] (added after the OpenTelemetry layer)
//! stores each span's trace id so that the formatter finds it (a subscriber cannot ask
//! `tracing` for the current span while it is handling an event).
//!
//! ```
//! use strata_telemetry::correlation::{self, CorrelationId};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let id = CorrelationId::new("req-42").unwrap();
//! let seen = correlation::with_correlation(id.clone(), async { correlation::current() }).await;
//! assert_eq!(seen, Some(id));
//! assert_eq!(correlation::current(), None);
//! # });
//! ```

use std::fmt;

#[cfg(feature = "otel")]
use opentelemetry::trace::TraceContextExt;
use std::sync::OnceLock;
#[cfg(feature = "otel")]
use tracing_opentelemetry::OpenTelemetrySpanExt;

use tracing::dispatcher::{Dispatch, WeakDispatch};
#[cfg(feature = "otel")]
use tracing::span;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
#[cfg(feature = "otel")]
use tracing_subscriber::layer::Context;
use tracing_subscriber::layer::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::TelemetryError;

/// The longest accepted correlation id, in bytes.
pub const MAX_CORRELATION_ID_LEN: usize = 128;

/// A request's correlation id: 1–128 chars of `[A-Za-z0-9_.:-]` (so it is safe in a log line
/// and an HTTP header).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CorrelationId(std::sync::Arc<str>);

impl CorrelationId {
    /// Validates and wraps an id (e.g. from an `x-correlation-id` header).
    ///
    /// # Errors
    /// [`TelemetryError::Config`] when the id is empty, too long or has other characters.
    pub fn new(id: &str) -> Result<Self, TelemetryError> {
        if id.is_empty() || id.len() > MAX_CORRELATION_ID_LEN {
            return Err(TelemetryError::Config(format!(
                "correlation id must be 1..={MAX_CORRELATION_ID_LEN} bytes, got {}",
                id.len()
            )));
        }
        if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))) {
            return Err(TelemetryError::Config(format!(
                "correlation id may only contain [A-Za-z0-9_.:-], found {c:?}"
            )));
        }
        Ok(Self(id.into()))
    }

    /// A fresh random id (32 hex chars).
    pub fn random() -> Self {
        let (a, b) = (fastrand::u64(..), fastrand::u64(..));
        Self(format!("{a:016x}{b:016x}").into())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CorrelationId({})", self.0)
    }
}

tokio::task_local! {
    static CORRELATION: CorrelationId;
}

/// Runs `fut` with `id` as the correlation id of everything it does (on this task).
pub async fn with_correlation<F: Future>(id: CorrelationId, fut: F) -> F::Output {
    CORRELATION.scope(id, fut).await
}

/// Runs `f` synchronously with `id` as the correlation id.
pub fn sync_with_correlation<R>(id: CorrelationId, f: impl FnOnce() -> R) -> R {
    CORRELATION.sync_scope(id, f)
}

/// The current correlation id: the task-local one, else the current span's trace id (32 hex
/// chars), else `None`.
pub fn current() -> Option<CorrelationId> {
    if let Ok(id) = CORRELATION.try_with(Clone::clone) {
        return Some(id);
    }
    current_trace_id()
}

/// The OpenTelemetry trace id of the current `tracing` span, if it has a valid one (always
/// `None` without the `otel` feature).
#[cfg(feature = "otel")]
pub fn current_trace_id() -> Option<CorrelationId> {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| CorrelationId(sc.trace_id().to_string().into()))
}

/// The OpenTelemetry trace id of the current `tracing` span, if it has a valid one (always
/// `None` without the `otel` feature).
#[cfg(not(feature = "otel"))]
pub fn current_trace_id() -> Option<CorrelationId> {
    None
}

/// The trace id of a span, stored in its extensions by [`CorrelationLayer`].
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "otel"), allow(dead_code))] // only the otel layer creates it
struct SpanCorrelation(CorrelationId);

/// A layer that records each new span's OpenTelemetry trace id for [`CorrelationFormat`].
///
/// Add it after the `tracing-opentelemetry` layer (it reads what that layer created). Without
/// the `otel` feature there are no trace ids and the layer records nothing.
#[derive(Debug, Default)]
pub struct CorrelationLayer {
    dispatch: OnceLock<WeakDispatch>,
}

impl CorrelationLayer {
    /// A new layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for CorrelationLayer
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    #[cfg(feature = "otel")]
    fn on_new_span(&self, _attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(dispatch) = self.dispatch.get().and_then(WeakDispatch::upgrade) else { return };
        let Some(cx) = tracing_opentelemetry::get_otel_context(id, &dispatch) else { return };
        let sc = cx.span().span_context().clone();
        if sc.is_valid()
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().insert(SpanCorrelation(CorrelationId(sc.trace_id().to_string().into())));
        }
    }
}

/// An event formatter that writes `correlation_id=<id> ` before what `inner` writes, when
/// there is one: the task-local id, else the trace id [`CorrelationLayer`] stored on the
/// event's span or one of its parents.
///
/// ```
/// use strata_telemetry::correlation::{CorrelationFormat, CorrelationLayer};
/// use tracing_subscriber::layer::SubscriberExt;
///
/// let logs = tracing_subscriber::fmt::layer()
///     .event_format(CorrelationFormat::new(tracing_subscriber::fmt::format().compact()));
/// let subscriber = tracing_subscriber::registry().with(CorrelationLayer::new()).with(logs);
/// tracing::subscriber::with_default(subscriber, || tracing::info!("hello"));
/// ```
#[derive(Debug, Clone)]
pub struct CorrelationFormat<F> {
    inner: F,
}

impl<F> CorrelationFormat<F> {
    /// Wraps `inner`.
    pub fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<S, N, F> FormatEvent<S, N> for CorrelationFormat<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let id = CORRELATION.try_with(Clone::clone).ok().or_else(|| {
            ctx.event_scope()?.find_map(|span| span.extensions().get::<SpanCorrelation>().map(|c| c.0.clone()))
        });
        if let Some(id) = id {
            write!(writer, "correlation_id={id} ")?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(CorrelationId::new("req-1:abc_2.x").is_ok());
        for bad in ["", "a b", "x\ny", "é", &"a".repeat(129)] {
            assert!(matches!(CorrelationId::new(bad), Err(TelemetryError::Config(_))), "{bad:?}");
        }
        let (a, b) = (CorrelationId::random(), CorrelationId::random());
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(CorrelationId::new(a.as_str()).is_ok());
    }

    #[test]
    fn sync_scope_sets_and_unsets() {
        let id = CorrelationId::new("abc").unwrap();
        assert_eq!(sync_with_correlation(id.clone(), current), Some(id));
        assert_eq!(current(), None);
    }
}
