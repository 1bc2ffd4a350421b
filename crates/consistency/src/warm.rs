//! Warming from an L1 snapshot: save the keys that are hot now, load them again on the next
//! start.
//!
//! [`save_hot_keys`] writes the ids of up to `limit` keys resident in the cache's L1 (for the
//! handle's namespace) to a file, atomically (a temporary file in the same directory, synced,
//! then renamed over the target). [`warm_from_snapshot`] reads them back and loads them through
//! the normal read path ([`Cache::warm`]: tiers, then the loader, with bounded concurrency).
//! Only key ids are stored, never values.
//!
//! File format: `b"STRJSNP1"`, then `crc32(body): u32 LE`, `body_len: u64 LE`, then the body
//! (postcard: cache name, namespace, list of key ids).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strata_cache_core::{Cache, CacheKey, WarmReport};

use crate::error::ConsistencyError;

const MAGIC: &[u8; 8] = b"STRJSNP1";
const HEADER_LEN: usize = 8 + 4 + 8;
/// The largest snapshot file accepted (256 MiB).
pub const MAX_SNAPSHOT_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct Body {
    cache: String,
    namespace: String,
    keys: Vec<String>,
}

/// What [`warm_from_snapshot`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotWarm {
    /// Whether the snapshot file was missing (then nothing was loaded).
    pub missing: bool,
    /// Key ids in the snapshot.
    pub keys: usize,
    /// Ids that do not parse as the cache's key type (skipped).
    pub unparsable: usize,
    /// What loading the parsed keys did.
    pub report: WarmReport,
}

/// Writes the ids of up to `limit` keys resident in `cache`'s L1 (in the handle's namespace) to
/// `path`, atomically. Returns how many were written (0 when the cache has no L1).
pub async fn save_hot_keys<K, V>(
    cache: &Cache<K, V>,
    path: impl AsRef<Path>,
    limit: usize,
) -> Result<usize, ConsistencyError>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    if cache.hashes_key_ids() {
        // Its key ids are personal data kept out of every store: a snapshot would write them
        // to disk in plaintext.
        return Err(strata_cache_core::ConfigError::new(
            "snapshot",
            format!("cache `{}` hashes its key ids (PII); hot-key snapshots are refused", cache.name()),
        )
        .into());
    }
    let keys: Vec<String> = cache.l1_keys(limit).iter().map(CacheKey::key_id).collect();
    let n = keys.len();
    let body = Body { cache: cache.name().to_owned(), namespace: cache.namespace().as_str().to_owned(), keys };
    let body = postcard::to_allocvec(&body)
        .map_err(|e| ConsistencyError::Encode { what: "snapshot", message: e.to_string() })?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&body);
    let path = path.as_ref().to_path_buf();
    blocking(move || write_atomic(&path, &bytes)).await?;
    Ok(n)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ConsistencyError> + Send + 'static,
) -> Result<T, ConsistencyError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ConsistencyError::SnapshotIo {
        op: "run blocking task",
        path: PathBuf::new(),
        source: std::sync::Arc::new(std::io::Error::other(e.to_string())),
    })?
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ConsistencyError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "snapshot".into());
    let tmp = dir.join(format!(".{name}.tmp-{}-{:016x}", std::process::id(), fastrand::u64(..)));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| ConsistencyError::snapshot_io("create", &tmp, e))?;
        f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| ConsistencyError::snapshot_io("write", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| ConsistencyError::snapshot_io("rename", path, e))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            // Best effort: make the rename durable.
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn corrupt(path: &Path, reason: impl Into<String>) -> ConsistencyError {
    ConsistencyError::SnapshotCorrupt { path: path.to_path_buf(), reason: reason.into() }
}

/// Parses a snapshot file's bytes: `(cache, namespace, key ids)`. Never panics.
fn parse(path: &Path, bytes: &[u8]) -> Result<Body, ConsistencyError> {
    if bytes.len() < HEADER_LEN {
        return Err(corrupt(path, format!("{} bytes, shorter than the {HEADER_LEN}-byte header", bytes.len())));
    }
    if &bytes[..8] != MAGIC {
        return Err(corrupt(path, "not a Strata snapshot (bad magic bytes)"));
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[8..12]);
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[12..20]);
    let len = u64::from_le_bytes(len);
    let body = &bytes[HEADER_LEN..];
    if body.len() as u64 != len {
        return Err(corrupt(path, format!("body is {} bytes, header says {len} (truncated?)", body.len())));
    }
    if crc32fast::hash(body) != u32::from_le_bytes(crc) {
        return Err(corrupt(path, "checksum mismatch"));
    }
    postcard::from_bytes(body).map_err(|e| corrupt(path, format!("body does not decode: {e}")))
}

/// Loads the keys saved by [`save_hot_keys`] through `cache`'s normal read path, at most
/// `concurrency` at a time.
///
/// A missing file is not an error (`missing: true`, nothing loaded). A file that is not a
/// valid snapshot, or one saved for another cache or namespace, is
/// [`ConsistencyError::SnapshotCorrupt`].
pub async fn warm_from_snapshot<K, V>(
    cache: &Cache<K, V>,
    path: impl AsRef<Path>,
    concurrency: usize,
) -> Result<SnapshotWarm, ConsistencyError>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    let path = path.as_ref().to_path_buf();
    let p2 = path.clone();
    let bytes = blocking(move || {
        let meta = match std::fs::metadata(&p2) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ConsistencyError::snapshot_io("stat", &p2, e)),
        };
        if meta.len() > MAX_SNAPSHOT_BYTES {
            return Err(corrupt(&p2, format!("{} bytes, over the {MAX_SNAPSHOT_BYTES}-byte limit", meta.len())));
        }
        match std::fs::read(&p2) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ConsistencyError::snapshot_io("read", &p2, e)),
        }
    })
    .await?;
    let Some(bytes) = bytes else {
        return Ok(SnapshotWarm { missing: true, ..SnapshotWarm::default() });
    };
    let body = parse(&path, &bytes)?;
    if body.cache != cache.name() || body.namespace != cache.namespace().as_str() {
        return Err(corrupt(&path, "saved for another cache or namespace"));
    }
    let total = body.keys.len();
    let keys: Vec<K> = body.keys.iter().filter_map(|id| K::from_key_id(id)).collect();
    let unparsable = total - keys.len();
    let report = cache.warm(keys, concurrency).await;
    Ok(SnapshotWarm { missing: false, keys: total, unparsable, report })
}
