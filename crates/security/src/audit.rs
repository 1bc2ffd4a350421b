//! Audit logging: the [`AuditSink`] seam, [`AuditRecord`], and [`JsonLinesAuditSink`], a
//! hash-chained JSON-lines file whose edits and deletions [`verify`] detects.
//!
//! Each line is one JSON object: the record's fields, `seq`, `prev_hash` (the previous line's
//! `hash`, 64 zeros for the first line) and `hash` = SHA-256 (or HMAC-SHA256 with
//! [`JsonLinesAuditSink::open_keyed`]) over the line's canonical JSON without `hash` (which
//! includes `prev_hash`). Editing a line breaks its hash; deleting one breaks the next line's
//! `prev_hash`. Dropping lines at the *end* leaves a valid shorter chain: compare
//! [`VerifyReport::last_hash`] with a value anchored elsewhere (shipped to a log store) to catch
//! that. A plain SHA-256 chain can be recomputed by whoever can write the file; the keyed
//! variant cannot without the secret.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use hmac::{Hmac, KeyInit, Mac};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::access::Action;

/// `prev_hash` of the first line of a log.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Longest accepted line when parsing (records are small; a huge line is hostile).
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// How a request ended, as far as the audit is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The policy allowed the request.
    Allowed,
    /// The policy refused the request.
    Denied,
    /// Bytes read from a tier were refused (tampered, truncated, wrong or unknown key) and
    /// treated as a miss.
    Rejected,
}

/// One audited request. Keys appear only as keyed hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// Who.
    pub principal: String,
    /// What.
    pub action: Action,
    /// The cache.
    pub cache: String,
    /// The namespace.
    pub namespace: String,
    /// Keyed hash of the key (or tag), never the key itself.
    pub key_hash: Option<String>,
    /// Allowed or denied.
    pub outcome: Outcome,
    /// The request's correlation id.
    pub correlation_id: Option<String>,
    /// What went wrong, for `Rejected` records (tier and error kind; never key material).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditRecord {
    /// A record stamped with the current time and the task's correlation id
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
        }
    }

    /// Adds a detail.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

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
pub trait AuditSink: Send + Sync + 'static {
    /// Records one event. An error makes the audited operation fail (fail closed).
    fn record(&self, record: &AuditRecord) -> Result<(), AuditError>;
}

/// Keeps records in memory (tests, examples).
#[derive(Debug, Default)]
pub struct MemoryAuditSink {
    records: Mutex<Vec<AuditRecord>>,
}

impl MemoryAuditSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every record so far.
    pub fn records(&self) -> Vec<AuditRecord> {
        self.records.lock().clone()
    }
}

impl AuditSink for MemoryAuditSink {
    fn record(&self, record: &AuditRecord) -> Result<(), AuditError> {
        self.records.lock().push(record.clone());
        Ok(())
    }
}

/// One parsed line of a chained log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainedRecord {
    /// Position in the log (1 for the first line).
    pub seq: u64,
    /// The record.
    #[serde(flatten)]
    pub record: AuditRecord,
    /// The previous line's hash.
    pub prev_hash: String,
    /// This line's hash.
    pub hash: String,
}

#[derive(Serialize)]
struct Canonical<'a> {
    seq: u64,
    #[serde(flatten)]
    record: &'a AuditRecord,
    prev_hash: &'a str,
}

#[derive(Clone)]
enum Hasher {
    Plain,
    Keyed(Hmac<Sha256>),
}

impl Hasher {
    fn keyed(secret: &[u8]) -> Result<Self, AuditError> {
        if secret.len() < crate::keyhash::MIN_SECRET_LEN {
            return Err(AuditError::Config(format!(
                "chain secret must be at least {} bytes",
                crate::keyhash::MIN_SECRET_LEN
            )));
        }
        Hmac::<Sha256>::new_from_slice(secret)
            .map(Hasher::Keyed)
            .map_err(|_| AuditError::Config("unusable chain secret".into()))
    }

    fn hash(&self, data: &[u8]) -> String {
        match self {
            Hasher::Plain => strata_cache_core::text::hex::encode(&Sha256::digest(data)),
            Hasher::Keyed(mac) => {
                let mut mac = mac.clone();
                mac.update(data);
                strata_cache_core::text::hex::encode(&mac.finalize().into_bytes())
            }
        }
    }
}

fn canonical(seq: u64, record: &AuditRecord, prev_hash: &str) -> Result<String, AuditError> {
    serde_json::to_string(&Canonical { seq, record, prev_hash })
        .map_err(|e| AuditError::Parse { line: seq, reason: e.to_string() })
}

/// Parses one line of a chained log (no chain check; see [`verify`]). Hostile input gives an
/// error, never a panic.
pub fn parse_line(line: &str) -> Result<ChainedRecord, AuditError> {
    if line.len() > MAX_LINE_LEN {
        return Err(AuditError::Parse { line: 0, reason: format!("line longer than {MAX_LINE_LEN} bytes") });
    }
    let rec: ChainedRecord =
        serde_json::from_str(line).map_err(|e| AuditError::Parse { line: 0, reason: e.to_string() })?;
    for (name, h) in [("prev_hash", &rec.prev_hash), ("hash", &rec.hash)] {
        if !strata_cache_core::text::hex::is_lower_hex(h, 64) {
            return Err(AuditError::Parse { line: 0, reason: format!("{name} is not 64 lower-case hex digits") });
        }
    }
    Ok(rec)
}

/// What [`verify`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records verified.
    pub lines: u64,
    /// The last line's hash ([`GENESIS_HASH`] for an empty log): anchor it elsewhere to detect
    /// truncation.
    pub last_hash: String,
}

/// Verifies the hash chain of a plain (SHA-256) log. `Err(AuditError::Broken { line, .. })`
/// names the first line that does not verify.
pub fn verify(path: impl AsRef<Path>) -> Result<VerifyReport, AuditError> {
    verify_with(path.as_ref(), &Hasher::Plain)
}

/// Verifies a log written by [`JsonLinesAuditSink::open_keyed`] with the same secret.
pub fn verify_keyed(path: impl AsRef<Path>, secret: &[u8]) -> Result<VerifyReport, AuditError> {
    verify_with(path.as_ref(), &Hasher::keyed(secret)?)
}

fn io_err(path: &Path, e: std::io::Error) -> AuditError {
    AuditError::Io { path: path.display().to_string(), message: e.to_string() }
}

fn verify_with(path: &Path, hasher: &Hasher) -> Result<VerifyReport, AuditError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let mut reader = BufReader::new(file);
    let mut prev = GENESIS_HASH.to_owned();
    let mut n = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read =
            (&mut reader).take(MAX_LINE_LEN as u64 + 2).read_until(b'\n', &mut buf).map_err(|e| io_err(path, e))?;
        if read == 0 {
            break;
        }
        n += 1;
        let broken = |reason: String| AuditError::Broken { line: n, reason };
        if buf.last() != Some(&b'\n') {
            return Err(broken("line is not newline-terminated (truncated write or oversized line)".into()));
        }
        let text = std::str::from_utf8(&buf[..buf.len() - 1]).map_err(|_| broken("line is not UTF-8".into()))?;
        let rec = parse_line(text).map_err(|e| match e {
            AuditError::Parse { reason, .. } => broken(format!("unparsable record: {reason}")),
            other => other,
        })?;
        if rec.seq != n {
            return Err(broken(format!("sequence number {} where {n} was expected", rec.seq)));
        }
        if rec.prev_hash != prev {
            return Err(broken(
                "prev_hash does not match the previous line's hash (a line was deleted or inserted)".into(),
            ));
        }
        let expected = hasher.hash(canonical(rec.seq, &rec.record, &rec.prev_hash)?.as_bytes());
        if rec.hash != expected {
            return Err(broken("hash does not match the record (the line was edited)".into()));
        }
        prev = rec.hash;
    }
    Ok(VerifyReport { lines: n, last_hash: prev })
}

struct SinkState {
    file: File,
    seq: u64,
    prev: String,
}

/// A hash-chained JSON-lines audit file (one writer per file). Reopening an existing log
/// continues its chain.
///
/// ```
/// use strata_security::audit::{self, AuditRecord, AuditSink, JsonLinesAuditSink, Outcome};
/// use strata_security::Action;
/// let dir = std::env::temp_dir().join(format!("strata-audit-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("audit.jsonl");
/// # let _ = std::fs::remove_file(&path);
/// let sink = JsonLinesAuditSink::open(&path)?;
/// sink.record(&AuditRecord::now("alice", Action::Read, "users", "eu", None, Outcome::Allowed))?;
/// sink.record(&AuditRecord::now("bob", Action::Write, "users", "eu", None, Outcome::Denied))?;
/// assert_eq!(audit::verify(&path)?.lines, 2);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), strata_security::audit::AuditError>(())
/// ```
pub struct JsonLinesAuditSink {
    path: PathBuf,
    hasher: Hasher,
    sync: bool,
    state: Mutex<SinkState>,
}

impl std::fmt::Debug for JsonLinesAuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLinesAuditSink").field("path", &self.path).finish_non_exhaustive()
    }
}

impl JsonLinesAuditSink {
    /// Opens (or creates) a plain SHA-256 chained log.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, AuditError> {
        Self::open_with(path.as_ref(), Hasher::Plain)
    }

    /// Opens (or creates) a log chained with HMAC-SHA256 under `secret`.
    pub fn open_keyed(path: impl AsRef<Path>, secret: &[u8]) -> Result<Self, AuditError> {
        Self::open_with(path.as_ref(), Hasher::keyed(secret)?)
    }

    /// Calls `fsync` after every record (durable, slower).
    #[must_use]
    pub fn sync_each_record(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    fn open_with(path: &Path, hasher: Hasher) -> Result<Self, AuditError> {
        let mut file =
            OpenOptions::new().create(true).read(true).append(true).open(path).map_err(|e| io_err(path, e))?;
        let (seq, prev) = last_link(&mut file).map_err(|e| match e {
            AuditError::Io { message, .. } => AuditError::Io { path: path.display().to_string(), message },
            other => other,
        })?;
        Ok(Self { path: path.to_owned(), hasher, sync: false, state: Mutex::new(SinkState { file, seq, prev }) })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The last line's sequence number and hash (0 and genesis for an empty file).
fn last_link(file: &mut File) -> Result<(u64, String), AuditError> {
    let io = |e: std::io::Error| AuditError::Io { path: String::new(), message: e.to_string() };
    let len = file.seek(SeekFrom::End(0)).map_err(io)?;
    if len == 0 {
        return Ok((0, GENESIS_HASH.to_owned()));
    }
    let window = len.min(2 * MAX_LINE_LEN as u64);
    file.seek(SeekFrom::Start(len - window)).map_err(io)?;
    let mut tail = Vec::with_capacity(window as usize);
    file.take(window).read_to_end(&mut tail).map_err(io)?;
    if tail.last() != Some(&b'\n') {
        return Err(AuditError::Broken {
            line: 0,
            reason: "the log's last line is incomplete; repair it before appending".into(),
        });
    }
    let body = &tail[..tail.len() - 1];
    let last = body.rsplit(|b| *b == b'\n').next().unwrap_or(body);
    let text = std::str::from_utf8(last)
        .map_err(|_| AuditError::Parse { line: 0, reason: "last line is not UTF-8".into() })?;
    let rec = parse_line(text)?;
    Ok((rec.seq, rec.hash))
}

impl AuditSink for JsonLinesAuditSink {
    fn record(&self, record: &AuditRecord) -> Result<(), AuditError> {
        let mut st = self.state.lock();
        let seq = st.seq + 1;
        let mut line = canonical(seq, record, &st.prev)?;
        let hash = self.hasher.hash(line.as_bytes());
        // `canonical` is a JSON object: splice `hash` in before its closing brace.
        line.pop();
        line.push_str(",\"hash\":\"");
        line.push_str(&hash);
        line.push_str("\"}\n");
        st.file.write_all(line.as_bytes()).map_err(|e| io_err(&self.path, e))?;
        if self.sync {
            st.file.sync_data().map_err(|e| io_err(&self.path, e))?;
        }
        st.seq = seq;
        st.prev = hash;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize) -> AuditRecord {
        AuditRecord::now(&format!("p{i}"), Action::Read, "c", "ns", Some(format!("{i:032x}")), Outcome::Allowed)
    }

    fn write_log(path: &Path, n: usize) {
        let sink = JsonLinesAuditSink::open(path).unwrap();
        for i in 0..n {
            sink.record(&rec(i)).unwrap();
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }

    #[test]
    fn chain_verifies_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        write_log(&path, 3);
        write_log(&path, 2); // reopen: continues the chain
        let r = verify(&path).unwrap();
        assert_eq!(r.lines, 5);
        assert_eq!(r.last_hash, parse_line(lines(&path).last().unwrap()).unwrap().hash);
        let first = parse_line(&lines(&path)[0]).unwrap();
        assert_eq!(first.prev_hash, GENESIS_HASH);
        assert_eq!(first.record.principal, "p0");
    }

    #[test]
    fn edits_and_deletions_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        write_log(&path, 5);
        let orig = lines(&path);

        let mut edited = orig.clone();
        edited[2] = edited[2].replace("\"p2\"", "\"mallory\"");
        write_lines(&path, &edited);
        assert!(matches!(verify(&path), Err(AuditError::Broken { line: 3, .. })), "{:?}", verify(&path));

        let mut deleted = orig.clone();
        deleted.remove(1);
        write_lines(&path, &deleted);
        assert!(matches!(verify(&path), Err(AuditError::Broken { line: 2, .. })));

        let mut first_gone = orig.clone();
        first_gone.remove(0);
        write_lines(&path, &first_gone);
        assert!(matches!(verify(&path), Err(AuditError::Broken { line: 1, .. })));

        let mut garbage = orig.clone();
        garbage[4] = "{not json".into();
        write_lines(&path, &garbage);
        assert!(matches!(verify(&path), Err(AuditError::Broken { line: 5, .. })));

        write_lines(&path, &orig);
        assert_eq!(verify(&path).unwrap().lines, 5);
    }

    #[test]
    fn keyed_chain_needs_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.jsonl");
        let sink = JsonLinesAuditSink::open_keyed(&path, &[7; 32]).unwrap();
        sink.record(&rec(1)).unwrap();
        assert_eq!(verify_keyed(&path, &[7; 32]).unwrap().lines, 1);
        assert!(matches!(verify_keyed(&path, &[8; 32]), Err(AuditError::Broken { line: 1, .. })));
        assert!(matches!(verify(&path), Err(AuditError::Broken { line: 1, .. })));
        assert!(JsonLinesAuditSink::open_keyed(&path, b"short").is_err());
    }

    #[test]
    fn refuses_to_append_to_a_torn_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        write_log(&path, 2);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.truncate(text.len() - 10);
        std::fs::write(&path, text).unwrap();
        assert!(JsonLinesAuditSink::open(&path).is_err());
    }
}
