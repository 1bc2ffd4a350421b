//! Write-behind: coalescing, retries, backpressure, replay, torn tails, corruption, observers.
#![allow(clippy::unwrap_used)]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{MemWriter, cache};
use strata_cache_core::Writer;
use strata_consistency::journal::{RecordError, SEGMENT_MAGIC};
use strata_consistency::{
    ConsistencyError, SyncPolicy, WriteBehind, WriteBehindConfig, WriteBehindConfigBuilder, WriteBehindEvent,
    WriteBehindObserver,
};

fn config(dir: &Path) -> WriteBehindConfigBuilder {
    WriteBehindConfig::builder(dir.join("journal")).retry(Duration::from_millis(5), Duration::from_millis(40))
}

async fn open(
    name: &str,
    writer: &Arc<MemWriter>,
    cfg: WriteBehindConfigBuilder,
) -> Result<(WriteBehind<u64, String>, strata_consistency::ReplayReport), ConsistencyError> {
    let (cache, _) = cache(name).await;
    WriteBehind::open(cache, writer.clone() as Arc<dyn Writer<u64, String>>, cfg.build()?).await
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn n_writes_to_one_key_become_one_source_write_of_the_last_value() {
    let dir = tempfile::tempdir().unwrap();
    let writer = MemWriter::new();
    // A batch delay no machine reaches (flush() cuts it short) and no fsync per
    // acknowledgement: all writes land in one batch however slowly the 101 sets run.
    let cfg = config(dir.path()).sync(SyncPolicy::Never).batch_delay(Duration::from_secs(3600));
    let (wb, _) = open("co", &writer, cfg).await.unwrap();
    for i in 0..100 {
        wb.set(1, format!("v{i}")).await.unwrap();
    }
    wb.set(2, "other".into()).await.unwrap();
    assert_eq!(wb.cache().get(&1).await.unwrap().as_deref().map(String::as_str), Some("v99"));
    wb.flush().await.unwrap();
    assert_eq!(writer.get(1).as_deref(), Some("v99"));
    assert_eq!(writer.get(2).as_deref(), Some("other"));
    let log = writer.log.lock().clone();
    assert_eq!(log.iter().filter(|(k, _)| *k == 1).count(), 1, "coalesced: {log:?}");
    assert_eq!(writer.batches.load(Ordering::SeqCst), 1);
    assert_eq!(wb.flushed(), 101);
    assert_eq!(wb.backlog(), 0);
}

#[tokio::test]
async fn failing_source_is_retried_until_it_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let writer = MemWriter::failing(4);
    let (wb, _) = open("rt", &writer, config(dir.path())).await.unwrap();
    for k in 0..10u64 {
        wb.set(k, format!("v{k}")).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(60), wb.flush()).await.unwrap().unwrap();
    assert_eq!(writer.failures.load(Ordering::SeqCst), 4);
    assert!(wb.retries() >= 4, "retries {}", wb.retries());
    for k in 0..10u64 {
        assert_eq!(writer.get(k), Some(format!("v{k}")));
    }
    assert_eq!(wb.backlog(), 0);
}

#[tokio::test]
async fn full_backlog_fails_with_overloaded_after_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let writer = MemWriter::gated();
    let cfg = config(dir.path()).max_backlog(5).enqueue_timeout(Duration::from_millis(150));
    let (wb, _) = open("bp", &writer, cfg).await.unwrap();
    for k in 0..5u64 {
        wb.set(k, "x".into()).await.unwrap();
    }
    assert_eq!(wb.backlog(), 5);
    let started = Instant::now();
    let err = wb.set(99, "y".into()).await.unwrap_err();
    let waited = started.elapsed();
    match &err {
        ConsistencyError::Overloaded { backlog, .. } => assert_eq!(*backlog, 5),
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert!(err.is_retryable());
    assert!(waited >= Duration::from_millis(150), "waited only {waited:?}");
    // Nothing was written for the refused key.
    assert_eq!(wb.cache().get(&99).await.unwrap(), None);
    // Release the source: the backlog drains and writes are accepted again.
    writer.gate.as_ref().unwrap().add_permits(1000);
    wb.flush().await.unwrap();
    assert_eq!(wb.backlog(), 0);
    wb.set(99, "y".into()).await.unwrap();
    wb.shutdown().await.unwrap();
    assert_eq!(writer.get(99).as_deref(), Some("y"));
    assert!(matches!(wb.set(1, "z".into()).await, Err(ConsistencyError::Closed(_))));
}

#[tokio::test]
async fn dropped_without_flush_then_reopened_replays_everything() {
    let dir = tempfile::tempdir().unwrap();
    let blocked = MemWriter::gated();
    // Small segments: the journal rolls several times.
    let cfg = config(dir.path()).segment_bytes(4096).sync(SyncPolicy::Batched { max_delay: Duration::from_millis(1) });
    let (wb, first) = open("rp", &blocked, cfg.clone()).await.unwrap();
    assert_eq!(first.requeued, 0);
    for k in 0..300u64 {
        wb.set(k % 120, format!("v{k}")).await.unwrap();
    }
    wb.delete(7).await.unwrap();
    assert!(segments(dir.path()).len() > 2, "journal should have rolled");
    drop(wb);
    assert!(blocked.rows.lock().is_empty());

    let writer = MemWriter::new();
    let (wb, report) = open("rp", &writer, cfg.clone()).await.unwrap();
    assert_eq!(report.requeued, 301, "{report:?}");
    assert_eq!(report.torn_tail, None);
    wb.flush().await.unwrap();
    for k in 0..120u64 {
        let last = (0..300u64).filter(|i| i % 120 == k).max().unwrap();
        let expected = (k != 7).then(|| format!("v{last}"));
        assert_eq!(writer.get(k), expected, "key {k}");
    }
    // Confirmed segments are removed once a checkpoint covers them.
    wb.set(500, "x".into()).await.unwrap();
    wb.shutdown().await.unwrap();
    assert!(segments(dir.path()).len() <= 2, "{:?}", segments(dir.path()));

    // A clean shutdown leaves nothing to replay.
    let (_wb, report) = open("rp", &writer, cfg).await.unwrap();
    assert_eq!(report.requeued, 0, "{report:?}");
}

/// Writes `n` records to a fresh journal with a blocked source, drops it, returns the dir.
async fn journal_with(n: u64) -> (tempfile::TempDir, WriteBehindConfigBuilder) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (wb, _) = open("tt", &MemWriter::gated(), cfg.clone()).await.unwrap();
    for k in 0..n {
        wb.set(k, format!("value-{k}")).await.unwrap();
    }
    drop(wb);
    (dir, cfg)
}

fn largest_segment(dir: &Path) -> std::path::PathBuf {
    segments(dir).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap()
}

#[tokio::test]
async fn torn_tail_is_cut_off_and_complete_records_replayed() {
    let (dir, cfg) = journal_with(50).await;
    let seg = largest_segment(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    // Cut the last record in half (a crash in the middle of a write).
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 9).unwrap();
    drop(f);
    // The torn segment must be the last one for this to be a torn tail.
    assert_eq!(segments(dir.path()).last().unwrap(), &seg);

    let writer = MemWriter::new();
    let (wb, report) = open("tt", &writer, cfg).await.unwrap();
    let torn = report.torn_tail.clone().expect("torn tail reported");
    assert_eq!(torn.segment, seg);
    assert!(torn.discarded_bytes > 0 && torn.discarded_bytes < 64, "{torn:?}");
    assert_eq!(report.requeued, 49, "{report:?}");
    // The file was truncated to the last complete record (checked before anything is flushed:
    // once its records are confirmed, the segment may be removed at any moment).
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), torn.offset);
    wb.flush().await.unwrap();
    for k in 0..49u64 {
        assert_eq!(writer.get(k), Some(format!("value-{k}")));
    }
    assert_eq!(writer.get(49), None, "the torn record is not invented");
}

#[tokio::test]
async fn zero_filled_tail_is_a_torn_tail() {
    let (dir, cfg) = journal_with(10).await;
    let seg = largest_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[0u8; 100]);
    std::fs::write(&seg, &bytes).unwrap();
    let (_wb, report) = open("tt", &MemWriter::new(), cfg).await.unwrap();
    assert_eq!(report.requeued, 10);
    assert_eq!(report.torn_tail.unwrap().discarded_bytes, 100);
}

#[tokio::test]
async fn corrupt_record_in_the_middle_is_a_typed_error() {
    let (dir, cfg) = journal_with(50).await;
    let seg = largest_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let err = open("tt", &MemWriter::new(), cfg.clone()).await.unwrap_err();
    match &err {
        ConsistencyError::JournalCorrupt { segment, offset, reason } => {
            assert_eq!(segment, &seg);
            assert!((*offset as usize) <= mid && (*offset as usize) > SEGMENT_MAGIC.len());
            assert!(matches!(reason, RecordError::PayloadChecksum | RecordError::HeaderChecksum), "{reason:?}");
        }
        other => panic!("expected JournalCorrupt, got {other:?}"),
    }
    assert!(err.to_string().contains("corrupt"), "{err}");
    // Nothing was deleted or truncated.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
}

#[tokio::test]
async fn foreign_file_as_segment_is_a_typed_error() {
    let (dir, cfg) = journal_with(3).await;
    let first = segments(dir.path()).into_iter().next().unwrap();
    std::fs::write(&first, b"this is not a journal segment at all").unwrap();
    let err = open("tt", &MemWriter::new(), cfg).await.unwrap_err();
    assert!(matches!(err, ConsistencyError::JournalCorrupt { reason: RecordError::BadSegmentHeader, .. }), "{err:?}");
}

#[derive(Default)]
struct Events {
    backlog_max: std::sync::atomic::AtomicUsize,
    flush_ok: std::sync::atomic::AtomicUsize,
    flush_failed: std::sync::atomic::AtomicUsize,
}

impl WriteBehindObserver for Events {
    fn on_event(&self, e: &WriteBehindEvent<'_>) {
        match e {
            WriteBehindEvent::Backlog { backlog, .. } => {
                self.backlog_max.fetch_max(*backlog, Ordering::SeqCst);
            }
            WriteBehindEvent::Flush { ok: true, .. } => {
                self.flush_ok.fetch_add(1, Ordering::SeqCst);
            }
            WriteBehindEvent::Flush { ok: false, .. } => {
                self.flush_failed.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn observer_sees_backlog_and_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let events = Arc::new(Events::default());
    let writer = MemWriter::failing(2);
    // The batch forms when flush() cuts the long delay short: the backlog is 20 however slowly
    // the sets run.
    let cfg = config(dir.path()).observer(events.clone()).batch_delay(Duration::from_secs(3600));
    let (wb, _) = open("ob", &writer, cfg).await.unwrap();
    for k in 0..20u64 {
        wb.set(k, "v".into()).await.unwrap();
    }
    wb.flush().await.unwrap();
    assert!(events.backlog_max.load(Ordering::SeqCst) >= 20, "{}", events.backlog_max.load(Ordering::SeqCst));
    assert_eq!(events.flush_failed.load(Ordering::SeqCst), 2);
    assert!(events.flush_ok.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn concurrent_writers_share_commits_and_all_reach_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let writer = MemWriter::new();
    let (wb, _) = open("cc", &writer, config(dir.path())).await.unwrap();
    let tasks: Vec<_> = (0..16u64)
        .map(|t| {
            let wb = wb.clone();
            tokio::spawn(async move {
                for i in 0..50u64 {
                    wb.set(t * 1000 + i, format!("{t}-{i}")).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Group commit: 16 concurrent writers shared syncs (each write waits for one).
    let commits = wb.journal_commits();
    assert!(commits < 800, "{commits} commits for 800 writes");
    wb.shutdown().await.unwrap();
    assert_eq!(writer.rows.lock().len(), 800);
    assert_eq!(wb.flushed(), 800);
}

#[tokio::test]
async fn concurrent_flush_lanes_deliver_every_key_once_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    let writer = MemWriter::failing(3);
    // A long batch delay: the batch forms when flush() cuts it short.
    let cfg = config(dir.path()).flush_concurrency(4).batch_delay(Duration::from_secs(3600)).max_batch(1000);
    let (wb, _) = open("ln", &writer, cfg).await.unwrap();
    for round in 0..3u64 {
        for k in 0..200u64 {
            wb.set(k, format!("{round}-{k}")).await.unwrap();
        }
    }
    wb.flush().await.unwrap();
    for k in 0..200u64 {
        assert_eq!(writer.get(k), Some(format!("2-{k}")));
    }
    // One batch of 600 writes coalesced to 200 keys, split into 4 lanes, 3 lane failures retried.
    assert_eq!(writer.rows_written.load(Ordering::SeqCst), 200);
    assert_eq!(writer.batches.load(Ordering::SeqCst), 4);
    assert_eq!(wb.retries(), 3);
    assert_eq!(wb.batches(), 1);
    assert!(WriteBehindConfig::builder("x").flush_concurrency(0).build().is_err());
}

#[tokio::test]
async fn torn_segment_creation_is_removed_and_everything_replayed() {
    let (dir, cfg) = journal_with(20).await;
    let last = segments(dir.path()).last().unwrap().clone();
    let name = last.file_name().unwrap().to_str().unwrap();
    let next: u64 = name.trim_end_matches(".wal").parse::<u64>().unwrap() + 1;
    // A crash right after creating the next segment: 3 bytes of its magic made it to disk.
    let torn = dir.path().join("journal").join(format!("{next:020}.wal"));
    std::fs::write(&torn, &SEGMENT_MAGIC[..3]).unwrap();
    let writer = MemWriter::new();
    let (wb, report) = open("tt", &writer, cfg).await.unwrap();
    let t = report.torn_tail.expect("torn creation reported");
    assert_eq!((t.segment, t.offset, t.discarded_bytes), (torn.clone(), 0, 3));
    assert!(!torn.exists());
    assert_eq!(report.requeued, 20);
    wb.flush().await.unwrap();
    assert_eq!(writer.rows.lock().len(), 20);
}

/// A source that rejects (or panics on) every batch holding `poison`; everything else goes to
/// `inner`.
struct PoisonWriter {
    inner: Arc<MemWriter>,
    poison: u64,
    panics: bool,
    calls_with_poison: std::sync::atomic::AtomicUsize,
}

impl PoisonWriter {
    fn new(poison: u64, panics: bool) -> Arc<Self> {
        Arc::new(Self { inner: MemWriter::new(), poison, panics, calls_with_poison: Default::default() })
    }

    fn check(&self, mut keys: impl Iterator<Item = u64>) -> Result<(), strata_cache_core::BoxError> {
        if keys.any(|k| k == self.poison) {
            self.calls_with_poison.fetch_add(1, Ordering::SeqCst);
            assert!(!self.panics, "writer bug triggered by the poison key");
            return Err("constraint violation: secret-value".into());
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Writer<u64, String> for PoisonWriter {
    async fn write(&self, key: &u64, value: &String) -> Result<(), strata_cache_core::BoxError> {
        self.write_many(&[(*key, value.clone())]).await
    }

    async fn write_many(&self, items: &[(u64, String)]) -> Result<(), strata_cache_core::BoxError> {
        self.check(items.iter().map(|(k, _)| *k))?;
        self.inner.write_many(items).await
    }

    async fn delete(&self, key: &u64) -> Result<(), strata_cache_core::BoxError> {
        self.check(std::iter::once(*key))?;
        self.inner.delete(key).await
    }
}

fn dead_letters(dir: &Path) -> Vec<serde_json::Value> {
    let path = dir.join("journal").join(strata_consistency::write_behind::DEAD_LETTER_FILE);
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn poison_entry_is_isolated_and_dead_lettered(panics: bool) {
    let dir = tempfile::tempdir().unwrap();
    let writer = PoisonWriter::new(7, panics);
    // One batch of 40 keys (flush() cuts the long delay short), 2 lanes.
    let cfg = config(dir.path())
        .batch_delay(Duration::from_secs(3600))
        .flush_concurrency(2)
        .max_attempts_before_split(3)
        .max_backlog(64);
    let (cache, _) = cache("pz").await;
    let (wb, _) =
        WriteBehind::open(cache, writer.clone() as Arc<dyn Writer<u64, String>>, cfg.clone().build().unwrap())
            .await
            .unwrap();
    for k in 0..40u64 {
        wb.set(k, format!("v{k}")).await.unwrap();
    }
    wb.delete(39).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), wb.flush()).await.expect("flush must not hang").unwrap();
    for k in 0..39u64 {
        let expected = (k != 7).then(|| format!("v{k}"));
        assert_eq!(writer.inner.get(k), expected, "key {k}");
    }
    assert_eq!(writer.inner.get(39), None);
    assert_eq!(wb.dead_lettered(), 1);
    assert_eq!(wb.backlog(), 0);
    // The poison key was retried alone for its whole budget before it was given up.
    assert!(
        writer.calls_with_poison.load(Ordering::SeqCst) >= 3 * 2,
        "{}",
        writer.calls_with_poison.load(Ordering::SeqCst)
    );
    let dl = dead_letters(dir.path());
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0]["op"], "put");
    assert_eq!(dl[0]["key_postcard_hex"], "07");
    // postcard("v7") = length 2, then the bytes.
    assert_eq!(dl[0]["value_postcard_hex"], "027637");
    // The flusher is still alive: later writes flow, and shutdown returns.
    wb.set(100, "later".into()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), wb.shutdown()).await.expect("shutdown must not hang").unwrap();
    assert_eq!(writer.inner.get(100).as_deref(), Some("later"));
    // The checkpoint advanced past the dead-lettered entry: nothing is replayed.
    let (_wb, report) = open("pz", &MemWriter::new(), cfg).await.unwrap();
    assert_eq!(report.requeued, 0, "{report:?}");
}

#[tokio::test]
async fn an_entry_the_source_always_rejects_is_dead_lettered_and_the_rest_flows() {
    poison_entry_is_isolated_and_dead_lettered(false).await;
}

#[tokio::test]
async fn a_writer_panic_does_not_kill_the_flusher_or_hang_flush() {
    poison_entry_is_isolated_and_dead_lettered(true).await;
}

#[tokio::test]
async fn full_backlog_drains_despite_a_poison_entry() {
    let dir = tempfile::tempdir().unwrap();
    let writer = PoisonWriter::new(3, false);
    let cfg = config(dir.path()).max_backlog(8).max_attempts_before_split(2).enqueue_timeout(Duration::from_secs(60));
    let (cache, _) = cache("pb").await;
    let (wb, _) =
        WriteBehind::open(cache, writer.clone() as Arc<dyn Writer<u64, String>>, cfg.build().unwrap()).await.unwrap();
    // Many more writes than the backlog holds: each set must eventually find room.
    for k in 0..50u64 {
        wb.set(k, format!("v{k}")).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(60), wb.flush()).await.unwrap().unwrap();
    assert_eq!(wb.dead_lettered(), 1);
    assert_eq!(writer.inner.rows.lock().len(), 49);
}

#[tokio::test]
async fn torn_record_holding_a_valid_record_in_its_payload_is_a_torn_tail() {
    use strata_consistency::journal::Record;
    let (dir, cfg) = journal_with(5).await;
    let seg = segments(dir.path()).last().unwrap().clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    let clean_len = bytes.len() as u64;
    // A record whose value happens to contain a complete, valid record.
    let ghost_key = postcard::to_allocvec(&999u64).unwrap();
    let ghost_value = postcard::to_allocvec(&"ghost".to_string()).unwrap();
    let inner = Record::Put { seq: 1000, key: &ghost_key, value: &ghost_value }.encode().unwrap();
    let mut value = vec![0xAAu8; 10];
    value.extend_from_slice(&inner);
    value.extend_from_slice(&[0xAAu8; 10]);
    let key = postcard::to_allocvec(&5u64).unwrap();
    Record::Put { seq: 6, key: &key, value: &value }.encode_into(&mut bytes).unwrap();
    // A crash tore the write after the embedded record.
    bytes.truncate(bytes.len() - 5);
    std::fs::write(&seg, &bytes).unwrap();

    let writer = MemWriter::new();
    let (wb, report) = open("tt", &writer, cfg).await.expect("a torn tail, not corruption");
    let torn = report.torn_tail.clone().expect("torn tail reported");
    assert_eq!((torn.segment.clone(), torn.offset), (seg.clone(), clean_len));
    assert_eq!(report.requeued, 5, "{report:?}");
    // Truncated (checked before the flush: a confirmed segment may be removed at any moment).
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), clean_len);
    wb.flush().await.unwrap();
    assert_eq!(writer.get(999), None, "the embedded record is not replayed");
    assert_eq!(writer.rows.lock().len(), 5);
}

/// Fails every write until `until`, then accepts everything: an outage, not a poison entry.
struct OutageWriter {
    inner: Arc<MemWriter>,
    until: Instant,
}

#[async_trait::async_trait]
impl Writer<u64, String> for OutageWriter {
    async fn write(&self, key: &u64, value: &String) -> Result<(), strata_cache_core::BoxError> {
        self.write_many(&[(*key, value.clone())]).await
    }
    async fn write_many(&self, items: &[(u64, String)]) -> Result<(), strata_cache_core::BoxError> {
        if Instant::now() < self.until {
            return Err("connection refused".into());
        }
        self.inner.write_many(items).await
    }
    async fn delete(&self, key: &u64) -> Result<(), strata_cache_core::BoxError> {
        if Instant::now() < self.until {
            return Err("connection refused".into());
        }
        self.inner.delete(key).await
    }
}

#[tokio::test]
async fn an_outage_longer_than_the_attempt_budget_dead_letters_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let writer =
        Arc::new(OutageWriter { inner: MemWriter::new(), until: Instant::now() + Duration::from_millis(1500) });
    // A tiny budget: without the "is the source up?" evidence rule, every entry would be
    // dead-lettered within a few hundred milliseconds of the outage.
    let cfg = config(dir.path()).max_attempts_before_split(2);
    let (cache, _) = cache("outage").await;
    let (wb, _) =
        WriteBehind::open(cache, writer.clone() as Arc<dyn Writer<u64, String>>, cfg.build().unwrap()).await.unwrap();
    for k in 0..20u64 {
        wb.set(k, format!("v{k}")).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(60), wb.flush()).await.unwrap().unwrap();
    assert_eq!(wb.dead_lettered(), 0, "an outage is not a poison entry");
    assert_eq!(writer.inner.rows.lock().len(), 20, "every write reached the source after the outage");
}

#[tokio::test]
async fn a_lone_poison_entry_is_dead_lettered_after_dead_letter_after() {
    let dir = tempfile::tempdir().unwrap();
    let writer = PoisonWriter::new(7, false);
    let cfg = config(dir.path()).max_attempts_before_split(2).dead_letter_after(Duration::from_millis(300));
    let (cache, _) = cache("lone").await;
    let (wb, _) =
        WriteBehind::open(cache, writer.clone() as Arc<dyn Writer<u64, String>>, cfg.build().unwrap()).await.unwrap();
    wb.set(7, "only".into()).await.unwrap();
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(60), wb.flush()).await.unwrap().unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300), "no evidence the source is up: waited dead_letter_after");
    assert_eq!(wb.dead_lettered(), 1);
    wb.set(8, "after".into()).await.unwrap();
    wb.flush().await.unwrap();
    assert_eq!(writer.inner.get(8).as_deref(), Some("after"), "the pipeline moves on");
}

/// A poison entry that is alone in its batch (the flusher took it before the next write was
/// journaled, as happens on a busy machine) must not hold back the writes queued behind it
/// until `dead_letter_after`: they are the evidence that the source is up.
#[tokio::test]
async fn a_poison_entry_alone_in_its_batch_does_not_stall_the_writes_behind_it() {
    for deletes in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let writer = PoisonWriter::new(3, false);
        // dead_letter_after stays at its default (5 minutes): only evidence can free the entry.
        let cfg =
            config(dir.path()).max_backlog(4).max_attempts_before_split(2).enqueue_timeout(Duration::from_secs(60));
        let (cache, _) = cache("alone").await;
        let (wb, _) = WriteBehind::open(cache, writer.clone() as Arc<dyn Writer<u64, String>>, cfg.build().unwrap())
            .await
            .unwrap();
        wb.set(3, "poison".into()).await.unwrap();
        // The poison entry is being retried on its own.
        let deadline = Instant::now() + Duration::from_secs(60);
        while writer.calls_with_poison.load(Ordering::SeqCst) < 3 {
            assert!(Instant::now() < deadline, "the poison entry was never tried");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // More writes than the backlog holds queue up behind it (a later write of the poison
        // key too: it must not overtake the entry in flight).
        for k in 10..20u64 {
            if deletes && k % 2 == 1 {
                wb.delete(k).await.unwrap();
            } else {
                wb.set(k, format!("v{k}")).await.unwrap();
            }
        }
        wb.set(3, "poison again".into()).await.unwrap();
        // Writes behind that one too (with nothing behind it, a lone failing entry waits for
        // dead_letter_after: see a_lone_poison_entry_is_dead_lettered_after_dead_letter_after).
        for k in 20..24u64 {
            wb.set(k, format!("v{k}")).await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(60), wb.flush()).await.expect("the pipeline stalled").unwrap();
        for k in 20..24u64 {
            assert_eq!(writer.inner.get(k), Some(format!("v{k}")), "key {k}");
        }
        for k in 10..20u64 {
            let expected = (!(deletes && k % 2 == 1)).then(|| format!("v{k}"));
            assert_eq!(writer.inner.get(k), expected, "key {k}");
        }
        // Both writes of the poison key were refused by the source: two dead letters, in order.
        assert_eq!(wb.dead_lettered(), 2);
        let dl = dead_letters(dir.path());
        assert_eq!(dl.len(), 2, "{dl:?}");
        assert_eq!(dl[0]["value_postcard_hex"], "06706f69736f6e"); // "poison"
        assert_eq!(wb.backlog(), 0);
    }
}
