//! The crate's error type.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strata_cache_core::{CacheError, ConfigError, SharedError};

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
