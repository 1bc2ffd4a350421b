//! Correlation ids carried by a task-local, so that audit records of one request share an id
//! without threading it through every call.
//!
//! ```
//! use strata_security::correlation;
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! assert_eq!(correlation::current(), None);
//! let seen = correlation::scope("req-42", async { correlation::current() }).await;
//! assert_eq!(seen.as_deref(), Some("req-42"));
//! # });
//! ```

use std::future::Future;
use std::sync::Arc;

tokio::task_local! {
    static CORRELATION_ID: Arc<str>;
}

/// Runs `fut` with `id` as the current correlation id.
pub async fn scope<F: Future>(id: impl Into<Arc<str>>, fut: F) -> F::Output {
    CORRELATION_ID.scope(id.into(), fut).await
}

/// The correlation id of the current task, if it runs inside [`scope`].
pub fn current() -> Option<Arc<str>> {
    CORRELATION_ID.try_with(Arc::clone).ok()
}
