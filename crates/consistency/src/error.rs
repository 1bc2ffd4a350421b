//! The crate's error type.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strata_cache_core::{CacheError, CodecError, ConfigError, SharedError};

use crate::journal::RecordError;

/// Everything that can go wrong in a write policy, the journal, a snapshot or an adapter.
///
/// Underlying errors are kept as `source` (and `Arc`'d so that the error is `Clone`).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConsistencyError {
    /// The cache refused the operation (invalid key, value too large, serializer failure, ...).
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The source of truth (the [`Writer`](strata_cache_core::Writer)) failed; with write-through
    /// the cache tiers were left unchanged.
    #[error("source write failed for cache `{cache}`; the cache was left unchanged")]
    Source {
        /// The cache's name.
        cache: Arc<str>,
        /// The writer's error.
        #[source]
        source: SharedError,
    },
    /// The write-behind backlog stayed full for the whole enqueue deadline: slow down or raise
    /// `max_backlog`. Nothing was written.
    #[error("write-behind backlog of cache `{cache}` full ({backlog} entries) for {waited:?}; nothing was written")]
    Overloaded {
        /// The cache's name.
        cache: Arc<str>,
        /// Entries waiting for the source.
        backlog: usize,
        /// How long the write waited for room.
        waited: Duration,
    },
    /// The write-behind policy was shut down; it accepts no more writes.
    #[error("write-behind of cache `{0}` is shut down")]
    Closed(Arc<str>),
    /// A journal file could not be read, written, synced or removed.
    #[error("journal I/O failed ({op} {path}): {source}")]
    JournalIo {
        /// What was being done (`open`, `write`, `sync`, `remove`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A journal record in the middle of the journal is damaged (a valid record follows it, so
    /// this is not a torn tail from a crash). The journal is not replayed: inspect or move the
    /// segment aside by hand; nothing is deleted automatically.
    #[error("journal segment {segment} is corrupt at byte {offset}: {reason}")]
    JournalCorrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the damaged record.
        offset: u64,
        /// What is wrong.
        #[source]
        reason: RecordError,
    },
    /// A journal record is intact but its key or value does not decode as this policy's `K`/`V`
    /// (the types changed since it was written?).
    #[error("journal record seq {seq} in {segment} does not decode: {message}")]
    JournalDecode {
        /// The segment file.
        segment: PathBuf,
        /// The record's sequence number.
        seq: u64,
        /// The decoder's message.
        message: String,
    },
    /// Journal records to replay cannot be opened with this policy's codecs: a wrong or retired
    /// key, a codec that is not configured, or a record altered on disk (a sealed record is
    /// bound to its sequence number and cache). Nothing was replayed, written or deleted: open
    /// again with the codecs and keys the journal was written with.
    #[error(
        "{records} journal record(s) cannot be opened with the configured codecs (first: seq {seq} in {segment}); nothing was replayed or deleted: {source}"
    )]
    JournalUnreadable {
        /// The segment holding the first such record.
        segment: PathBuf,
        /// The first such record's sequence number.
        seq: u64,
        /// How many records to replay cannot be opened.
        records: usize,
        /// Why the first one cannot be opened.
        #[source]
        source: CodecError,
    },
    /// The journal encrypts (its codecs include one required on decode) but holds plaintext
    /// records to replay: written without encryption (an older version or configuration) or
    /// planted. They are refused; to migrate a journal written without encryption, open it
    /// once with [`WriteBehindConfigBuilder::replay_plaintext`](crate::WriteBehindConfigBuilder::replay_plaintext).
    /// Nothing was replayed, written or deleted.
    #[error(
        "{records} plaintext journal record(s) to replay (first in {segment}) but the journal is configured to encrypt; nothing was replayed (set replay_plaintext to migrate them once)"
    )]
    JournalPlaintext {
        /// The segment holding the first plaintext record.
        segment: PathBuf,
        /// How many plaintext records there are to replay.
        records: usize,
    },
    /// Write-behind was refused because its journal and dead-letter file would keep in
    /// plaintext what the cache protects (it encrypts or hashes key ids for its remote tiers):
    /// give [`WriteBehindConfigBuilder::codecs`](crate::WriteBehindConfigBuilder::codecs) the cache's codecs.
    #[error("write-behind for cache `{cache}` refused: {reason}")]
    JournalUnprotected {
        /// The cache's name.
        cache: Arc<str>,
        /// What is missing.
        reason: String,
    },
    /// A line of the dead-letter file cannot be read (not JSON, a field missing, or a sealed
    /// entry that the configured codecs cannot open).
    #[error("dead-letter file {path} line {line} cannot be read: {reason}")]
    DeadLetterUnreadable {
        /// The file.
        path: PathBuf,
        /// The line number (1-based).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The journal failed earlier (an I/O error while committing) and accepts no more writes;
    /// reopen it to replay what was durable.
    #[error("journal failed earlier and accepts no more writes: {0}")]
    JournalFailed(Arc<str>),
    /// A key or value could not be encoded for the journal.
    #[error("cannot encode {what} for the journal: {message}")]
    Encode {
        /// `key` or `value`.
        what: &'static str,
        /// The encoder's message.
        message: String,
    },
    /// A value is larger than the journal accepts.
    #[error("journal record of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A snapshot file could not be read or written.
    #[error("snapshot I/O failed ({op} {path}): {source}")]
    SnapshotIo {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A snapshot file is not a valid snapshot (wrong magic, bad checksum, truncated).
    #[error("snapshot {path} is invalid: {reason}")]
    SnapshotCorrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl ConsistencyError {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConsistencyError::Cache(e) => e.is_retryable(),
            ConsistencyError::Source { .. } | ConsistencyError::Overloaded { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn journal_io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ConsistencyError::JournalIo { op, path: path.into(), source: Arc::new(source) }
    }

    pub(crate) fn snapshot_io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ConsistencyError::SnapshotIo { op, path: path.into(), source: Arc::new(source) }
    }
}
