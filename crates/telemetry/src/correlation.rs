//! Correlation ids: one id per request, carried across `.await`s and written into every log
//! line.
//!
//! The id type ([`CorrelationId`]) and the task-local that carries it are the shared ones of
//! `strata-governance` (re-exported here), so an id set with [`with_correlation`] is the one
//! the security and resource crates write into their audit records, and vice versa.
//!
//! [`current`] returns the task-local id if any, else the OpenTelemetry trace id of the current
//! `tracing` span (with the `otel` feature, when the `tracing_setup` layer is installed and the
//! span is sampled). Building a [`CorrelationLayer`] (or the OpenTelemetry layer) also installs
//! that trace id as the fallback of `strata_governance::correlation::current`, so audit records
//! written outside an explicit scope carry the trace id.
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

pub use strata_governance::correlation::{CorrelationId, InvalidCorrelationId, MAX_CORRELATION_ID_LEN};

/// Runs `fut` with `id` as the correlation id of everything it does (on this task).
pub async fn with_correlation<F: Future>(id: CorrelationId, fut: F) -> F::Output {
    strata_governance::correlation::scope(id, fut).await
}

/// Runs `f` synchronously with `id` as the correlation id.
pub fn sync_with_correlation<R>(id: CorrelationId, f: impl FnOnce() -> R) -> R {
    strata_governance::correlation::sync_scope(id, f)
}

/// The current correlation id: the task-local one, else the current span's trace id (32 hex
/// chars), else `None`.
pub fn current() -> Option<CorrelationId> {
    strata_governance::correlation::task_local().or_else(current_trace_id)
}

/// Makes the current trace id the fallback of `strata_governance::correlation::current` (what
/// audit records read). Idempotent; called when the OpenTelemetry or correlation layer is built.
pub fn install_trace_id_source() {
    strata_governance::correlation::set_trace_id_source(current_trace_id);
}

#[cfg(feature = "otel")]
fn trace_correlation(trace_id: impl fmt::Display) -> Option<CorrelationId> {
    CorrelationId::new(&trace_id.to_string()).ok()
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
    if sc.is_valid() { trace_correlation(sc.trace_id()) } else { None }
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
    /// A new layer (also installs [`install_trace_id_source`]).
    pub fn new() -> Self {
        install_trace_id_source();
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
            && let Some(c) = trace_correlation(sc.trace_id())
        {
            span.extensions_mut().insert(SpanCorrelation(c));
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
        let id = strata_governance::correlation::task_local().or_else(|| {
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
    fn sync_scope_sets_and_unsets() {
        let id = CorrelationId::new("abc").unwrap();
        assert_eq!(sync_with_correlation(id.clone(), current), Some(id));
        assert_eq!(current(), None);
    }
}
