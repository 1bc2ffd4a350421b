//! The write-behind dead-letter file: entries the source kept rejecting, one JSON object per
//! line, in `dead-letter.jsonl` in the journal directory.
//!
//! Without codecs a line holds the key and value as hex postcard bytes:
//!
//! ```text
//! {"cache":"users","op":"put","key_postcard_hex":"07","value_postcard_hex":"027637","unix_ms":1700000000000}
//! ```
//!
//! With codecs ([`WriteBehindConfigBuilder::codecs`](crate::WriteBehindConfigBuilder::codecs)) the operation,
//! key and value are sealed together, bound to the line's `unix_ms`, and only the sealed bytes
//! are written:
//!
//! ```text
//! {"cache":"users","sealed_hex":"01024d...","unix_ms":1700000000000}
//! ```
//!
//! [`WriteBehind::dead_letters`](crate::WriteBehind::dead_letters) reads both kinds back.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use strata_cache_core::text::hex::{decode as unhex, encode as hex};

use crate::error::ConsistencyError;
use crate::journal::{Domain, Sealer, decode_op, encode_op};

/// The dead-letter file's name, in the journal directory.
pub const DEAD_LETTER_FILE: &str = "dead-letter.jsonl";

/// One entry read back from the dead-letter file. `Debug` shows neither key nor value.
#[derive(Clone, PartialEq, Eq)]
pub struct DeadLetter<K, V> {
    /// The key.
    pub key: K,
    /// The value of a put; `None` for a delete.
    pub value: Option<V>,
    /// When the entry was given up (ms since the Unix epoch).
    pub unix_ms: u64,
}

impl<K, V> std::fmt::Debug for DeadLetter<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetter")
            .field("op", &if self.value.is_some() { "put" } else { "delete" })
            .field("unix_ms", &self.unix_ms)
            .finish_non_exhaustive()
    }
}

/// Appends entries (puts, then deletes) to the dead-letter file in `dir`, synced; sealed when
/// `sealer` has codecs.
pub(crate) fn append<K: Serialize, V: Serialize>(
    dir: &Path,
    cache: &str,
    sealer: &Sealer,
    puts: &[(K, V)],
    deletes: &[K],
) -> std::io::Result<()> {
    let bad = |e: postcard::Error| std::io::Error::other(format!("dead-letter encoding failed: {e}"));
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let ops = puts.iter().map(|(k, v)| (k, Some(v))).chain(deletes.iter().map(|k| (k, None)));
    let mut text = String::new();
    for (k, v) in ops {
        let kb = postcard::to_allocvec(k).map_err(bad)?;
        let vb = v.map(postcard::to_allocvec).transpose().map_err(bad)?;
        let line = if sealer.is_active() {
            // Codec errors name the codec and what failed, never the bytes.
            let sealed = encode_op(&kb, vb.as_deref())
                .and_then(|plain| sealer.seal(Domain::DeadLetter, unix_ms, &plain))
                .map_err(|e| std::io::Error::other(format!("dead-letter sealing failed: {e}")))?;
            serde_json::json!({ "cache": cache, "sealed_hex": hex(&sealed), "unix_ms": unix_ms })
        } else if let Some(vb) = vb {
            serde_json::json!({
                "cache": cache,
                "op": "put",
                "key_postcard_hex": hex(&kb),
                "value_postcard_hex": hex(&vb),
                "unix_ms": unix_ms,
            })
        } else {
            serde_json::json!({ "cache": cache, "op": "delete", "key_postcard_hex": hex(&kb), "unix_ms": unix_ms })
        };
        text.push_str(&line.to_string());
        text.push('\n');
    }
    let path = dir.join(DEAD_LETTER_FILE);
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()
}

/// Reads every entry of the dead-letter file at `path` (none when it does not exist). Blocking.
pub(crate) fn read<K: DeserializeOwned, V: DeserializeOwned>(
    path: &Path,
    sealer: &Sealer,
) -> Result<Vec<DeadLetter<K, V>>, ConsistencyError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ConsistencyError::journal_io("read", path, e)),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let unreadable =
            |reason: String| ConsistencyError::DeadLetterUnreadable { path: path.to_path_buf(), line: i + 1, reason };
        out.push(read_line(line, sealer).map_err(unreadable)?);
    }
    Ok(out)
}

fn read_line<K: DeserializeOwned, V: DeserializeOwned>(
    line: &str,
    sealer: &Sealer,
) -> Result<DeadLetter<K, V>, String> {
    let j: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let field = |name: &str| j.get(name).and_then(serde_json::Value::as_str).map(unhex).transpose();
    let unix_ms = j.get("unix_ms").and_then(serde_json::Value::as_u64).ok_or("no unix_ms")?;
    let postcard_err = |what: &str, e: postcard::Error| format!("{what} does not decode: {e}");
    if let Some(sealed) = field("sealed_hex")? {
        let plain = sealer.open(Domain::DeadLetter, unix_ms, &sealed).map_err(|e| e.to_string())?;
        let (kb, vb) = decode_op(&plain).map_err(|e| e.to_string())?;
        let key = postcard::from_bytes(kb).map_err(|e| postcard_err("key", e))?;
        let value = vb.map(postcard::from_bytes).transpose().map_err(|e| postcard_err("value", e))?;
        return Ok(DeadLetter { key, value, unix_ms });
    }
    if sealer.requires_seal() {
        // As the journal refuses plaintext records: a plaintext line in an encrypting cache's
        // file is from an older version or planted; it is not handed back as genuine.
        return Err("a plaintext line in the dead-letter file of a cache that encrypts (written by an older \
                    version, or planted): not read back; inspect or move the file aside"
            .to_owned());
    }
    let kb = field("key_postcard_hex")?.ok_or("no key_postcard_hex")?;
    let key = postcard::from_bytes(&kb).map_err(|e| postcard_err("key", e))?;
    let value = match j.get("op").and_then(serde_json::Value::as_str) {
        Some("put") => {
            let vb = field("value_postcard_hex")?.ok_or("put without value_postcard_hex")?;
            Some(postcard::from_bytes(&vb).map_err(|e| postcard_err("value", e))?)
        }
        Some("delete") => None,
        _ => return Err("op is neither put nor delete".to_owned()),
    };
    Ok(DeadLetter { key, value, unix_ms })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        for b in [&b""[..], b"\x00\xff\x10", b"hello"] {
            assert_eq!(unhex(&hex(b)).unwrap(), b);
        }
        assert_eq!(unhex("0A").unwrap(), vec![10]);
        for bad in ["0", "zz", "0g", "é0"] {
            assert!(unhex(bad).is_err(), "{bad}");
        }
    }
}
