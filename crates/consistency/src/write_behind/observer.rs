//! Observation of a write-behind policy: [`WriteBehindObserver`] receives [`WriteBehindEvent`]s.
//!
//! These events belong to the consistency crate, not to the cache's
//! [`CacheEvent`](strata_cache_core::CacheEvent): a cache knows nothing of write-behind. Give
//! an observer to
//! [`WriteBehindConfigBuilder::observer`](super::WriteBehindConfigBuilder::observer). Like cache events, they carry the cache name (bounded cardinality) and never a key or value.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use strata_consistency::{WriteBehindConfig, WriteBehindEvent, WriteBehindObserver};
//!
//! /// Remembers the largest backlog seen.
//! #[derive(Default)]
//! struct PeakBacklog(AtomicUsize);
//!
//! impl WriteBehindObserver for PeakBacklog {
//!     fn on_event(&self, event: &WriteBehindEvent<'_>) {
//!         if let WriteBehindEvent::Backlog { backlog, .. } = event {
//!             self.0.fetch_max(*backlog, Ordering::Relaxed);
//!         }
//!     }
//! }
//!
//! let peak = Arc::new(PeakBacklog::default());
//! let config = WriteBehindConfig::builder("/var/lib/app/journal").observer(peak.clone()).build()?;
//! # let _ = config;
//! # Ok::<(), strata_cache_core::ConfigError>(())
//! ```

use std::time::Duration;

/// Something that happened in a write-behind policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteBehindEvent<'a> {
    /// The backlog changed (entries acknowledged but not yet in the source).
    Backlog {
        /// The cache.
        cache: &'a str,
        /// Entries waiting.
        backlog: usize,
    },
    /// A batch part was written to the source (or failed and will be retried).
    Flush {
        /// The cache.
        cache: &'a str,
        /// Entries in the part.
        entries: usize,
        /// How long the write took.
        duration: Duration,
        /// Whether the source accepted it.
        ok: bool,
    },
}

/// Receives [`WriteBehindEvent`]s. Implementations must be cheap and must not block: backlog
/// events are emitted on the write path (`set`, `delete`), flush events by the flusher.
pub trait WriteBehindObserver: Send + Sync + 'static {
    /// Called for every event. The default ignores it.
    fn on_event(&self, event: &WriteBehindEvent<'_>) {
        let _ = event;
    }
}
