//! Audit logging: the one [`AuditSink`] contract (fallible: a sink that cannot record makes
//! the caller decide, and the security crate fails closed), [`AuditRecord`], and the sinks
//! [`MemoryAuditSink`], [`NoopAuditSink`] and [`JsonLinesAuditSink`], a hash-chained
//! JSON-lines file whose edits and deletions [`verify`] detects.
//!
//! Files: `mod.rs` (record, outcome, error, trait, in-memory sinks) and `chain.rs` (the chained
//! file sink and its verification).
//!
//! Each line of a chained log is one JSON object: the record's fields, `seq`, `prev_hash` (the
//! previous line's `hash`, 64 zeros for the first line) and `hash` = SHA-256 (or HMAC-SHA256
//! with [`JsonLinesAuditSink::open_keyed`]) over the line's canonical JSON without `hash`
//! (which includes `prev_hash`). Editing a line breaks its hash; deleting one breaks the next
//! line's `prev_hash`. Dropping lines at the *end* leaves a valid shorter chain: compare
//! [`VerifyReport::last_hash`] with a value anchored elsewhere (shipped to a log store) to
//! catch that. A plain SHA-256 chain can be recomputed by whoever can write the file; the keyed
//! variant cannot without the secret.
//!
//! One record type serves every component: cache operations fill `cache` (the cache name),
//! `namespace` and `key_hash`; the resource manager names [`RESOURCES`](crate::RESOURCES) as
//! its target and fills `allocation` and `resources`. Optional fields are left out of the JSON
//! when empty, so logs written before they existed still verify.

mod chain;

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::access::Action;

pub use chain::{ChainedRecord, JsonLinesAuditSink, VerifyReport, parse_line, verify, verify_keyed};

/// `prev_hash` of the first line of a log.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Longest accepted line when parsing (records are small; a huge line is hostile).
pub const MAX_LINE_LEN: usize = 64 * 1024;
/// Shortest accepted secret of a keyed (HMAC) chain, in bytes.
pub const MIN_CHAIN_SECRET_LEN: usize = 16;

/// How a request ended, as far as the audit is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The policy allowed the request (or the recorded action took effect).
    Allowed,
    /// The policy refused the request (or the request was refused for another reason, named
    /// in `detail`).
    Denied,
    /// Bytes read from a tier were refused (tampered, truncated, wrong or unknown key) and
    /// treated as a miss.
    Rejected,
}

/// One audited event. Keys appear only as keyed hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// Who.
    pub principal: String,
    /// What.
    pub action: Action,
    /// The target: the cache, or [`RESOURCES`](crate::RESOURCES) for the resource manager.
    pub cache: String,
    /// The namespace.
    pub namespace: String,
    /// Keyed hash of the key (or tag), never the key itself.
    pub key_hash: Option<String>,
    /// Allowed or denied.
    pub outcome: Outcome,
    /// The request's correlation (or trace) id.
    pub correlation_id: Option<String>,
    /// What went wrong, or more about what happened (never key material).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The allocation concerned (resource-manager records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<u64>,
    /// Resources involved, by resource name (resource-manager records).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<String, u64>,
}

impl AuditRecord {
    /// A record stamped with the current time and the current correlation id
    /// ([`correlation::current`](crate::correlation::current)).
    pub fn now(
        principal: &str,
        action: Action,
        cache: &str,
        namespace: &str,
        key_hash: Option<String>,
        outcome: Outcome,
    ) -> Self {
        Self {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            principal: principal.to_owned(),
            action,
            cache: cache.to_owned(),
            namespace: namespace.to_owned(),
            key_hash,
            outcome,
            correlation_id: crate::correlation::current().map(|c| c.to_string()),
            detail: None,
            allocation: None,
            resources: BTreeMap::new(),
        }
    }

    /// Adds a detail.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Names the allocation concerned.
    #[must_use]
    pub fn with_allocation(mut self, id: u64) -> Self {
        self.allocation = Some(id);
        self
    }

    /// Lists the resources involved (`name → quantity`).
    #[must_use]
    pub fn with_resources(mut self, resources: impl IntoIterator<Item = (String, u64)>) -> Self {
        self.resources = resources.into_iter().collect();
        self
    }
}

/// An audit log failed or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The log could not be read or written.
    #[error("audit log `{path}`: {message}")]
    Io {
        /// The path.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// A line is not a valid audit record.
    #[error("audit log line {line}: unparsable record: {reason}")]
    Parse {
        /// The 1-based line number (0 for a line parsed alone).
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// The hash chain is broken at `line`: that line (or the one before it) was edited,
    /// inserted or deleted.
    #[error("audit log chain broken at line {line}: {reason}")]
    Broken {
        /// The 1-based line number where verification failed.
        line: u64,
        /// What did not match.
        reason: String,
    },
    /// The configuration is invalid (e.g. a chain secret that is too short).
    #[error("audit configuration: {0}")]
    Config(String),
}

/// Receives audit records. Implementations should be durable enough for their purpose and
/// must not block for long: records are written on the request path.
///
/// Recording is fallible; what a failure means is the caller's policy, documented where it
/// calls: the security crate's `SecureCache` fails the request (fail closed), the resource
/// manager logs and reports it to its observer (the decision was already taken).
pub trait AuditSink: Send + Sync + 'static {
    /// Records one event.
    fn record(&self, record: &AuditRecord) -> Result<(), AuditError>;

    /// Whether records should be built at all (`false` lets callers skip the work).
    fn enabled(&self) -> bool {
        true
    }
}

/// Discards every record and says so through [`AuditSink::enabled`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopAuditSink;

impl AuditSink for NoopAuditSink {
    fn record(&self, _record: &AuditRecord) -> Result<(), AuditError> {
        Ok(())
    }
    fn enabled(&self) -> bool {
        false
    }
}

/// Keeps records in memory (tests, examples): every record with [`new`](Self::new), the most
/// recent `capacity` with [`bounded`](Self::bounded).
#[derive(Debug, Default)]
pub struct MemoryAuditSink {
    capacity: Option<usize>,
    records: Mutex<VecDeque<AuditRecord>>,
}

impl MemoryAuditSink {
    /// An empty, unbounded sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty sink that keeps at most `capacity` records (at least one), dropping the oldest.
    pub fn bounded(capacity: usize) -> Self {
        Self { capacity: Some(capacity.max(1)), records: Mutex::default() }
    }

    /// A copy of the records, oldest first.
    pub fn records(&self) -> Vec<AuditRecord> {
        self.records.lock().iter().cloned().collect()
    }
}

impl AuditSink for MemoryAuditSink {
    fn record(&self, record: &AuditRecord) -> Result<(), AuditError> {
        let mut records = self.records.lock();
        if self.capacity.is_some_and(|c| records.len() >= c) {
            records.pop_front();
        }
        records.push_back(record.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlation::{self, CorrelationId};

    #[test]
    fn bounded_memory_sink_drops_the_oldest() {
        let sink = MemoryAuditSink::bounded(2);
        for p in ["a", "b", "c"] {
            sink.record(&AuditRecord::now(p, Action::Allocate, crate::RESOURCES, "ml", None, Outcome::Allowed))
                .expect("memory sink");
        }
        let who: Vec<_> = sink.records().into_iter().map(|r| r.principal).collect();
        assert_eq!(who, ["b", "c"]);
        assert!(MemoryAuditSink::new().enabled() && !NoopAuditSink.enabled());
    }

    #[test]
    fn records_carry_the_correlation_id_of_their_scope() {
        let id = CorrelationId::new("req-7").expect("valid id");
        let rec =
            correlation::sync_scope(id, || AuditRecord::now("p", Action::Read, "c", "ns", None, Outcome::Allowed));
        assert_eq!(rec.correlation_id.as_deref(), Some("req-7"));
        let outside = AuditRecord::now("p", Action::Read, "c", "ns", None, Outcome::Allowed);
        assert_eq!(outside.correlation_id, None);
    }

    #[test]
    fn optional_fields_stay_out_of_the_json_when_empty() {
        let plain = AuditRecord::now("p", Action::Read, "c", "ns", None, Outcome::Allowed);
        let json = serde_json::to_string(&plain).expect("serializes");
        assert!(!json.contains("allocation") && !json.contains("resources") && !json.contains("detail"));
        let res = AuditRecord::now("p", Action::Preempt, crate::RESOURCES, "ml", None, Outcome::Allowed)
            .with_allocation(7)
            .with_resources([("cpu".to_owned(), 500)])
            .with_detail("preempted by prod/bob");
        let json: serde_json::Value = serde_json::to_value(&res).expect("serializes");
        assert_eq!(json["action"], "preempt");
        assert_eq!(json["allocation"], 7);
        assert_eq!(json["resources"]["cpu"], 500);
        let back: AuditRecord = serde_json::from_value(json).expect("parses");
        assert_eq!(back, res);
    }
}
