//! Audit logging. The contract and the sinks ([`AuditSink`], [`AuditRecord`],
//! [`MemoryAuditSink`], the hash-chained [`JsonLinesAuditSink`], [`verify`]) are defined once in
//! `strata-governance` and re-exported here; this module adds [`AuditObserver`], which audits
//! the frames a cache refused.
//!
//! See [`strata_governance::audit`] for the chain's format.

pub use strata_governance::audit::{
    AuditError, AuditRecord, AuditSink, ChainedRecord, GENESIS_HASH, JsonLinesAuditSink, MAX_LINE_LEN, MemoryAuditSink,
    NoopAuditSink, Outcome, VerifyReport, parse_line, verify, verify_keyed,
};

use crate::access::Action;

/// A [`CacheObserver`](strata_cache_core::CacheObserver) that audits every frame a cache
/// refused — tampered or truncated bytes, a wrong, unknown or destroyed key, plaintext planted
/// where encryption is required, an older genuine frame put back (rollback) — as an
/// [`Outcome::Rejected`] record (principal `strata`,
/// action `read`, no key: cache events never carry keys). Add it to the cache's observers.
///
/// A failing sink is logged and counted, never propagated: the read already answered with a
/// miss.
pub struct AuditObserver {
    sink: std::sync::Arc<dyn AuditSink>,
    failures: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for AuditObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditObserver").field("failures", &self.failures()).finish_non_exhaustive()
    }
}

impl AuditObserver {
    /// Audits into `sink`.
    pub fn new(sink: std::sync::Arc<dyn AuditSink>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self { sink, failures: std::sync::atomic::AtomicU64::new(0) })
    }

    /// Records the sink refused.
    pub fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl strata_cache_core::CacheObserver for AuditObserver {
    fn on_event(&self, event: &strata_cache_core::CacheEvent<'_>) {
        use strata_cache_core::CacheEvent;
        let (cache, detail) = match event {
            CacheEvent::DecodeError { cache, tier, error } => (*cache, format!("tier {tier}: {error}")),
            // A genuine frame older than data already seen for its key (a rollback).
            CacheEvent::FrameRejected { cache, tier, reason } => {
                (*cache, format!("tier {tier}: older frame refused ({})", reason.as_str()))
            }
            _ => return,
        };
        let record = AuditRecord::now("strata", Action::Read, cache, "", None, Outcome::Rejected).with_detail(detail);
        if let Err(e) = self.sink.record(&record) {
            self.failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(cache = %cache, error = %e, "audit record of a rejected frame not written");
        }
    }
}
