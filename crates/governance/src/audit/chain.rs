//! The hash chain: [`JsonLinesAuditSink`] writes it, [`verify`] and [`verify_keyed`] check it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hex::{encode as hex, is_lower_hex};

use super::{AuditError, AuditRecord, AuditSink, GENESIS_HASH, MAX_LINE_LEN, MIN_CHAIN_SECRET_LEN};

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
        if secret.len() < MIN_CHAIN_SECRET_LEN {
            return Err(AuditError::Config(format!("chain secret must be at least {} bytes", MIN_CHAIN_SECRET_LEN)));
        }
        Hmac::<Sha256>::new_from_slice(secret)
            .map(Hasher::Keyed)
            .map_err(|_| AuditError::Config("unusable chain secret".into()))
    }

    fn hash(&self, data: &[u8]) -> String {
        match self {
            Hasher::Plain => hex(&Sha256::digest(data)),
            Hasher::Keyed(mac) => {
                let mut mac = mac.clone();
                mac.update(data);
                hex(&mac.finalize().into_bytes())
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
        if !is_lower_hex(h, 64) {
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
/// use strata_governance::audit::{self, AuditRecord, AuditSink, JsonLinesAuditSink, Outcome};
/// use strata_governance::Action;
/// let dir = std::env::temp_dir().join(format!("strata-audit-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("audit.jsonl");
/// # let _ = std::fs::remove_file(&path);
/// let sink = JsonLinesAuditSink::open(&path)?;
/// sink.record(&AuditRecord::now("alice", Action::Read, "users", "eu", None, Outcome::Allowed))?;
/// sink.record(&AuditRecord::now("bob", Action::Write, "users", "eu", None, Outcome::Denied))?;
/// assert_eq!(audit::verify(&path)?.lines, 2);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), strata_governance::audit::AuditError>(())
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
    use crate::{Action, Outcome};

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
