//! Test sources of truth.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use strata_cache_core::{BoxError, Cache, MemoryTier, Postcard, Writer};

/// An in-memory source with fault injection and an optional gate that blocks every write.
#[derive(Default)]
pub struct MemWriter {
    pub rows: Mutex<HashMap<u64, String>>,
    /// Rows written (after coalescing), summed over successful calls.
    pub rows_written: AtomicUsize,
    /// Successful `write_many` calls.
    pub batches: AtomicUsize,
    /// Calls that failed.
    pub failures: AtomicUsize,
    /// The next this-many calls fail.
    pub fail_next: AtomicUsize,
    /// When set, every write waits for a permit.
    pub gate: Option<tokio::sync::Semaphore>,
    /// Every row written, in order.
    pub log: Mutex<Vec<(u64, String)>>,
}

impl MemWriter {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn failing(k: usize) -> Arc<Self> {
        let w = Self::default();
        w.fail_next.store(k, Ordering::SeqCst);
        Arc::new(w)
    }

    pub fn gated() -> Arc<Self> {
        Arc::new(Self { gate: Some(tokio::sync::Semaphore::new(0)), ..Self::default() })
    }

    pub fn get(&self, k: u64) -> Option<String> {
        self.rows.lock().get(&k).cloned()
    }

    fn maybe_fail(&self) -> Result<(), BoxError> {
        let failed = self.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if failed {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err("injected source failure".into());
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Writer<u64, String> for MemWriter {
    async fn write(&self, key: &u64, value: &String) -> Result<(), BoxError> {
        self.write_many(&[(*key, value.clone())]).await
    }

    async fn write_many(&self, items: &[(u64, String)]) -> Result<(), BoxError> {
        if let Some(g) = &self.gate {
            g.acquire().await?.forget();
        }
        self.maybe_fail()?;
        let mut rows = self.rows.lock();
        let mut log = self.log.lock();
        for (k, v) in items {
            rows.insert(*k, v.clone());
            log.push((*k, v.clone()));
        }
        self.rows_written.fetch_add(items.len(), Ordering::SeqCst);
        self.batches.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn delete(&self, key: &u64) -> Result<(), BoxError> {
        self.maybe_fail()?;
        self.rows.lock().remove(key);
        Ok(())
    }
}

/// A durable file-backed source: one line per row (`P key value` / `D key`), appended and
/// fsynced per batch; the last line for a key wins.
pub struct FileWriter {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    delay: Duration,
}

impl FileWriter {
    pub fn open(path: &Path, delay: Duration) -> Arc<Self> {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).read(true).open(path).unwrap();
        // A line torn by a crash: end it so the next row starts cleanly.
        let len = file.metadata().unwrap().len();
        if len > 0 {
            let bytes = std::fs::read(path).unwrap();
            if bytes.last() != Some(&b'\n') {
                file.write_all(b"\n").unwrap();
            }
        }
        Arc::new(Self { path: path.to_path_buf(), file: Mutex::new(file), delay })
    }

    fn append(&self, text: &str) -> Result<(), BoxError> {
        let mut f = self.file.lock();
        f.write_all(text.as_bytes())?;
        f.sync_data()?;
        Ok(())
    }

    /// The source's content: the last value per key (malformed lines ignored).
    pub fn read(path: &Path) -> HashMap<u64, String> {
        let mut out = HashMap::new();
        let Ok(f) = std::fs::File::open(path) else { return out };
        for line in std::io::BufReader::new(f).lines() {
            let Ok(line) = line else { continue };
            let mut parts = line.splitn(3, ' ');
            match (parts.next(), parts.next().and_then(|k| k.parse::<u64>().ok()), parts.next()) {
                (Some("P"), Some(k), Some(v)) if !v.is_empty() => {
                    out.insert(k, v.to_owned());
                }
                (Some("D"), Some(k), None) => {
                    out.remove(&k);
                }
                _ => {}
            }
        }
        out
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait::async_trait]
impl Writer<u64, String> for FileWriter {
    async fn write(&self, key: &u64, value: &String) -> Result<(), BoxError> {
        self.write_many(&[(*key, value.clone())]).await
    }

    async fn write_many(&self, items: &[(u64, String)]) -> Result<(), BoxError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let mut text = String::new();
        for (k, v) in items {
            text.push_str(&format!("P {k} {v}\n"));
        }
        self.append(&text)
    }

    async fn delete(&self, key: &u64) -> Result<(), BoxError> {
        self.append(&format!("D {key}\n"))
    }
}

/// A cache with an L1 and one memory tier.
pub async fn cache(name: &str) -> (Cache<u64, String>, MemoryTier) {
    let tier = MemoryTier::new("l2");
    let cache = Cache::builder(name).tier(Arc::new(tier.clone())).serializer(Postcard).build().await.unwrap();
    (cache, tier)
}
