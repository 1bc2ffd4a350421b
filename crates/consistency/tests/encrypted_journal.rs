//! Write-behind with the cache's codecs (AES-256-GCM from strata-security): no plaintext key or
//! value in the journal directory (segments, checkpoints, dead-letter file), typed errors for a
//! wrong key, a tampered or moved record and plaintext records, torn tails still cut off, and
//! a PII cache refused without encryption.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use strata_cache_core::{BoxError, Cache, CodecError, CodecPipeline, EntryOptions, MemoryTier, Postcard, Writer};
use strata_consistency::journal::{RECORD_HEADER_LEN, Record, SEALED_SEGMENT_MAGIC, SEGMENT_MAGIC, scan_segment};
use strata_consistency::write_behind::DEAD_LETTER_FILE;
use strata_consistency::{ConsistencyError, WriteBehind, WriteBehindConfig, WriteBehindConfigBuilder};
use strata_security::{AesGcmCodec, DataKey, KeyId, Keyring, PiiPolicy};

const KEY_MARK: &str = "alice.pii@example.com";
const VALUE_MARK: &str = "SSN-078-05-1120";

/// An in-memory source keyed by strings; rejects keys containing `poison`; optionally blocked.
#[derive(Default)]
struct Rows {
    rows: Mutex<HashMap<String, String>>,
    blocked: bool,
}

impl Rows {
    fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn blocked() -> Arc<Self> {
        Arc::new(Self { blocked: true, ..Self::default() })
    }

    fn get(&self, k: &str) -> Option<String> {
        self.rows.lock().get(k).cloned()
    }
}

#[async_trait::async_trait]
impl Writer<String, String> for Rows {
    async fn write(&self, key: &String, value: &String) -> Result<(), BoxError> {
        self.write_many(&[(key.clone(), value.clone())]).await
    }

    async fn write_many(&self, items: &[(String, String)]) -> Result<(), BoxError> {
        if self.blocked {
            std::future::pending::<()>().await;
        }
        if items.iter().any(|(k, _)| k.contains("poison")) {
            return Err("constraint violation".into());
        }
        let mut rows = self.rows.lock();
        for (k, v) in items {
            rows.insert(k.clone(), v.clone());
        }
        Ok(())
    }

    async fn delete(&self, key: &String) -> Result<(), BoxError> {
        if self.blocked {
            std::future::pending::<()>().await;
        }
        self.rows.lock().remove(key);
        Ok(())
    }
}

fn aes(id: u32, material: u8) -> Arc<AesGcmCodec> {
    let ring = Keyring::new();
    ring.insert(DataKey::new(KeyId(id), &[material; 32]).unwrap()).unwrap();
    Arc::new(AesGcmCodec::new(Arc::new(ring)).unwrap())
}

fn pipeline(codec: Option<Arc<AesGcmCodec>>) -> CodecPipeline {
    let mut p = CodecPipeline::new();
    if let Some(c) = codec {
        p.push(c).unwrap();
    }
    p
}

/// A PII cache (AES-256-GCM, hashed key ids, bounded TTL) when `codec` is given, else a plain
/// cache.
async fn cache(codec: Option<Arc<AesGcmCodec>>) -> Cache<String, String> {
    let builder = Cache::<String, String>::builder("people")
        .tier(Arc::new(MemoryTier::new("l2")))
        .serializer(Postcard)
        .options(EntryOptions::new(Duration::from_secs(600)).stale_limit(Duration::from_secs(600)));
    match codec {
        Some(c) => {
            let policy = PiiPolicy::new(Duration::from_secs(3600), b"a-key-hash-secret-of-32-bytes!!!").unwrap();
            policy.build(builder.codec(c)).await.unwrap()
        }
        None => builder.build().await.unwrap(),
    }
}

fn config(dir: &Path, codec: Option<Arc<AesGcmCodec>>) -> WriteBehindConfigBuilder {
    WriteBehindConfig::builder(dir.join("journal"))
        .segment_bytes(4096)
        .max_attempts_before_split(2)
        .dead_letter_after(Duration::from_millis(200))
        .retry(Duration::from_millis(5), Duration::from_millis(40))
        .codecs(pipeline(codec))
}

async fn open(
    codec: Option<Arc<AesGcmCodec>>,
    dir: &Path,
    writer: &Arc<Rows>,
) -> Result<(WriteBehind<String, String>, strata_consistency::ReplayReport), ConsistencyError> {
    let cache = cache(codec.clone()).await;
    WriteBehind::open(cache, writer.clone() as Arc<dyn Writer<String, String>>, config(dir, codec).build()?).await
}

fn key(i: u64) -> String {
    format!("{KEY_MARK}-{i}")
}

fn value(i: u64) -> String {
    format!("{VALUE_MARK}-{i}")
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> =
        files(&dir.join("journal")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "wal")).collect();
    v.sort();
    v
}

/// Occurrences of the PII markers in any file of `dir`: raw, as hex (the dead-letter file's
/// plaintext form, either case) and as postcard bytes.
fn pii_hits(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut needles: Vec<Vec<u8>> = Vec::new();
    for m in [KEY_MARK, VALUE_MARK, "alice.pii", "078-05"] {
        needles.push(m.as_bytes().to_vec());
        needles.push(strata_cache_core::text::hex::encode(m.as_bytes()).into_bytes());
        needles.push(strata_cache_core::text::hex::encode(m.as_bytes()).to_uppercase().into_bytes());
    }
    let mut hits = Vec::new();
    for f in files(dir) {
        let bytes = std::fs::read(&f).unwrap();
        for n in &needles {
            if bytes.windows(n.len()).any(|w| w == n.as_slice()) {
                hits.push((f.clone(), String::from_utf8_lossy(n).into_owned()));
            }
        }
    }
    hits
}

/// Writes PII through write-behind with a blocked source (everything stays in the journal),
/// then dead-letters one poison entry; returns the directory.
async fn pii_journal(codec: Option<Arc<AesGcmCodec>>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (wb, _) = open(codec.clone(), dir.path(), &Rows::blocked()).await.unwrap();
    for i in 0..60 {
        wb.set(key(i), value(i)).await.unwrap();
    }
    for i in 50..55 {
        wb.delete(key(i)).await.unwrap();
    }
    drop(wb);
    // A second process life: the source accepts everything but the poison entry.
    let rows = Rows::new();
    let (wb, report) = open(codec, dir.path(), &rows).await.unwrap();
    assert_eq!(report.requeued, 65, "{report:?}");
    wb.set(format!("poison-{KEY_MARK}"), format!("poison-{VALUE_MARK}")).await.unwrap();
    for i in 60..70 {
        wb.set(key(i), value(i)).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(60), wb.flush()).await.expect("flush").unwrap();
    assert_eq!(wb.dead_lettered(), 1);
    for i in (0..50).chain(55..70) {
        assert_eq!(rows.get(&key(i)), Some(value(i)), "key {i}");
    }
    for i in 50..55 {
        assert_eq!(rows.get(&key(i)), None, "deleted key {i}");
    }
    let dl = wb.dead_letters().await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].key, format!("poison-{KEY_MARK}"));
    assert_eq!(dl[0].value.as_deref(), Some(format!("poison-{VALUE_MARK}").as_str()));
    assert!(!format!("{:?}", dl[0]).contains("alice"), "Debug hides the key");
    drop(wb);
    dir
}

#[tokio::test]
async fn encrypted_journal_directory_holds_no_plaintext_pii() {
    let codec = aes(1, 7);
    let dir = pii_journal(Some(codec.clone())).await;
    // The scan looked at real files: several sealed segments and a dead-letter line.
    let segs = segments(dir.path());
    assert!(!segs.is_empty());
    for s in &segs {
        let b = std::fs::read(s).unwrap();
        assert_eq!(&b[..8], SEALED_SEGMENT_MAGIC, "{s:?}");
    }
    let dl = std::fs::read_to_string(dir.path().join("journal").join(DEAD_LETTER_FILE)).unwrap();
    assert_eq!(dl.lines().count(), 1, "{dl}");
    assert!(dl.contains("sealed_hex") && !dl.contains("key_postcard_hex"), "{dl}");
    let hits = pii_hits(dir.path());
    assert!(hits.is_empty(), "plaintext PII in the journal directory: {hits:?}");

    // The dead-letter line opens only with the right key, and only unaltered.
    let (wb, report) = open(Some(aes(1, 8)), dir.path(), &Rows::blocked()).await.unwrap();
    assert_eq!(report.requeued, 0, "everything was confirmed: nothing to open");
    let err = wb.dead_letters().await.unwrap_err();
    assert!(matches!(err, ConsistencyError::DeadLetterUnreadable { line: 1, .. }), "{err:?}");
    drop(wb);
    let path = dir.path().join("journal").join(DEAD_LETTER_FILE);
    let line = std::fs::read_to_string(&path).unwrap();
    let at = line.find("sealed_hex\":\"").unwrap() + 40;
    let mut tampered = line.clone().into_bytes();
    tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&path, &tampered).unwrap();
    let (wb, _) = open(Some(codec.clone()), dir.path(), &Rows::blocked()).await.unwrap();
    let err = wb.dead_letters().await.unwrap_err();
    assert!(matches!(err, ConsistencyError::DeadLetterUnreadable { line: 1, .. }), "{err:?}");
    assert!(!err.to_string().contains("alice"), "{err}");
    std::fs::write(&path, &line).unwrap();
    assert_eq!(wb.dead_letters().await.unwrap().len(), 1);
    // A plaintext line planted after the genuine one (the form caches without codecs write) is
    // not handed back as genuine by an encrypting cache.
    let planted = format!(
        "{}{{\"cache\":\"people\",\"op\":\"delete\",\"key_postcard_hex\":\"016b\",\"unix_ms\":1}}\n",
        line.trim_end_matches('\n').to_owned() + "\n"
    );
    std::fs::write(&path, planted).unwrap();
    let err = wb.dead_letters().await.unwrap_err();
    assert!(matches!(err, ConsistencyError::DeadLetterUnreadable { line: 2, .. }), "{err:?}");
}

#[tokio::test]
async fn encrypted_journal_with_records_left_to_replay_holds_no_plaintext_pii() {
    // Records not yet confirmed (the state after a crash), across several rolled segments.
    let dir = tempfile::tempdir().unwrap();
    let codec = aes(1, 7);
    let (wb, _) = open(Some(codec.clone()), dir.path(), &Rows::blocked()).await.unwrap();
    for i in 0..200 {
        wb.set(key(i), value(i)).await.unwrap();
    }
    wb.delete(key(3)).await.unwrap();
    drop(wb);
    assert!(segments(dir.path()).len() >= 3, "{:?}", segments(dir.path()));
    let hits = pii_hits(dir.path());
    assert!(hits.is_empty(), "{hits:?}");
    // And every write comes back.
    let rows = Rows::new();
    let (wb, report) = open(Some(codec), dir.path(), &rows).await.unwrap();
    assert_eq!(report.requeued, 201);
    tokio::time::timeout(Duration::from_secs(60), wb.flush()).await.unwrap().unwrap();
    for i in 0..200 {
        assert_eq!(rows.get(&key(i)), if i == 3 { None } else { Some(value(i)) }, "key {i}");
    }
}

#[tokio::test]
async fn control_plaintext_journal_shows_the_markers_the_scan_looks_for() {
    // Without codecs (a plain cache) the same scenario leaves the markers in the segments and
    // the dead-letter file: the scan above can fail.
    let dir = pii_journal(None).await;
    let hits = pii_hits(dir.path());
    assert!(hits.iter().any(|(f, _)| f.extension().is_some_and(|e| e == "wal")), "{hits:?}");
    assert!(hits.iter().any(|(f, _)| f.ends_with(DEAD_LETTER_FILE)), "{hits:?}");
}

/// A journal with `n` sealed records left to replay (blocked source), its bytes per segment.
async fn sealed_journal(n: u64) -> (tempfile::TempDir, Arc<AesGcmCodec>) {
    let dir = tempfile::tempdir().unwrap();
    let codec = aes(1, 7);
    let (wb, _) = open(Some(codec.clone()), dir.path(), &Rows::blocked()).await.unwrap();
    for i in 0..n {
        wb.set(key(i), value(i)).await.unwrap();
    }
    drop(wb);
    (dir, codec)
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = files(dir).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    v.sort();
    v
}

#[tokio::test]
async fn wrong_or_missing_key_is_a_typed_error_and_nothing_is_lost() {
    let (dir, codec) = sealed_journal(20).await;
    let before = snapshot(dir.path());
    // Same key id, other key material: authentication fails.
    match open(Some(aes(1, 8)), dir.path(), &Rows::new()).await.unwrap_err() {
        ConsistencyError::JournalUnreadable { records, source: CodecError::Integrity { .. }, .. } => {
            assert_eq!(records, 20);
        }
        other => panic!("expected JournalUnreadable(Integrity), got {other:?}"),
    }
    // A keyring without the key id the records name.
    match open(Some(aes(2, 7)), dir.path(), &Rows::new()).await.unwrap_err() {
        ConsistencyError::JournalUnreadable { records, source: CodecError::Key { .. }, .. } => assert_eq!(records, 20),
        other => panic!("expected JournalUnreadable(Key), got {other:?}"),
    }
    // No codecs at all (a plain cache): the records name a codec this policy lacks.
    let err = open(None, dir.path(), &Rows::new()).await.unwrap_err();
    match &err {
        ConsistencyError::JournalUnreadable { records, source: CodecError::UnknownCodec(2), .. } => {
            assert_eq!(*records, 20);
        }
        other => panic!("expected JournalUnreadable(UnknownCodec), got {other:?}"),
    }
    // The message names no key or value.
    assert!(!err.to_string().contains("alice"), "{err}");
    // Nothing was truncated, deleted or added by the refused opens.
    assert_eq!(snapshot(dir.path()), before);
    // The right key replays every acknowledged write.
    let rows = Rows::new();
    let (wb, report) = open(Some(codec), dir.path(), &rows).await.unwrap();
    assert_eq!(report.requeued, 20);
    tokio::time::timeout(Duration::from_secs(60), wb.flush()).await.unwrap().unwrap();
    for i in 0..20 {
        assert_eq!(rows.get(&key(i)), Some(value(i)));
    }
}

/// The data records of a segment: (offset, framed length, seq).
fn data_records(bytes: &[u8]) -> Vec<(usize, usize, u64)> {
    let scan = scan_segment(bytes);
    let mut out = Vec::new();
    let offsets: Vec<usize> = scan.records.iter().map(|(o, _)| *o).chain([bytes.len()]).collect();
    for (i, (o, r)) in scan.records.iter().enumerate() {
        if let Record::Sealed { seq, .. } = r {
            out.push((*o, offsets[i + 1] - o, *seq));
        }
    }
    out
}

/// Re-frames a payload with valid checksums (what an attacker who edits the file would do).
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
    h.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    h.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let hc = crc32fast::hash(&h[..8]);
    h.extend_from_slice(&hc.to_le_bytes());
    h.extend_from_slice(payload);
    h
}

fn refused(e: &ConsistencyError) -> bool {
    matches!(
        e,
        ConsistencyError::JournalUnreadable { .. }
            | ConsistencyError::JournalPlaintext { .. }
            | ConsistencyError::JournalCorrupt { .. }
    )
}

#[tokio::test]
async fn every_byte_change_of_a_sealed_record_with_fixed_checksums_is_refused() {
    let (dir, codec) = sealed_journal(3).await;
    let seg = segments(dir.path()).pop().unwrap();
    let original = std::fs::read(&seg).unwrap();
    let recs = data_records(&original);
    assert_eq!(recs.len(), 3);
    let mut tried = 0;
    // The middle record and the last one (where a torn tail would be cut off).
    for &(off, len, _) in &recs[1..] {
        let payload = &original[off + RECORD_HEADER_LEN..off + len];
        for i in 0..payload.len() {
            // Sequence bytes: 0x80 only, so that the changed seq stays above the checkpoint
            // (a record moved below it is skipped like a deleted one: see the module docs).
            let masks: &[u8] = if (1..9).contains(&i) { &[0x80] } else { &[0x01, 0x80, 0xff] };
            for &m in masks {
                let mut p = payload.to_vec();
                p[i] ^= m;
                let mut bytes = original[..off].to_vec();
                bytes.extend_from_slice(&frame(&p));
                bytes.extend_from_slice(&original[off + len..]);
                std::fs::write(&seg, &bytes).unwrap();
                let r = open(Some(codec.clone()), dir.path(), &Rows::blocked()).await;
                match r {
                    Err(e) => assert!(refused(&e), "byte {i} ^ {m:#x} of record at {off}: {e:?}"),
                    Ok((_, report)) => panic!("byte {i} ^ {m:#x} of record at {off} accepted: {report:?}"),
                }
                tried += 1;
            }
        }
    }
    assert!(tried > 200, "{tried}");
    std::fs::write(&seg, &original).unwrap();
    let (_wb, report) = open(Some(codec), dir.path(), &Rows::blocked()).await.unwrap();
    assert_eq!(report.requeued, 3);
}

#[tokio::test]
async fn a_sealed_record_moved_to_another_sequence_number_is_refused() {
    let (dir, codec) = sealed_journal(3).await;
    let seg = segments(dir.path()).pop().unwrap();
    let original = std::fs::read(&seg).unwrap();
    let recs = data_records(&original);
    // Replace record 2 (seq s2) by record 1's body under seq s2: "write 1 again, not 2".
    let (o1, l1, _) = recs[0];
    let (o2, l2, s2) = recs[1];
    let mut moved = original[o1 + RECORD_HEADER_LEN..o1 + l1].to_vec();
    moved[1..9].copy_from_slice(&s2.to_le_bytes());
    let mut bytes = original[..o2].to_vec();
    bytes.extend_from_slice(&frame(&moved));
    bytes.extend_from_slice(&original[o2 + l2..]);
    std::fs::write(&seg, &bytes).unwrap();
    match open(Some(codec), dir.path(), &Rows::blocked()).await.unwrap_err() {
        ConsistencyError::JournalUnreadable { seq, records: 1, source: CodecError::Integrity { .. }, .. } => {
            assert_eq!(seq, s2);
        }
        other => panic!("expected JournalUnreadable for seq {s2}, got {other:?}"),
    }
}

#[tokio::test]
async fn torn_and_damaged_sealed_records_are_handled_like_plaintext_ones() {
    // Truncated last record: a torn tail, cut off; the others replay.
    let (dir, codec) = sealed_journal(10).await;
    let seg = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    for cut in [1u64, 9, 20] {
        let (dir, codec) = sealed_journal(10).await;
        let seg = segments(dir.path()).pop().unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(std::fs::metadata(&seg).unwrap().len() - cut).unwrap();
        drop(f);
        let rows = Rows::new();
        let (wb, report) = open(Some(codec), dir.path(), &rows).await.unwrap();
        assert!(report.torn_tail.is_some(), "cut {cut}: {report:?}");
        assert_eq!(report.requeued, 9, "cut {cut}");
        tokio::time::timeout(Duration::from_secs(60), wb.flush()).await.unwrap().unwrap();
        assert_eq!(rows.get(&key(9)), None, "the torn record is not invented");
        assert_eq!(rows.get(&key(8)), Some(value(8)));
    }
    // A flipped byte (checksums not fixed) in the middle: corrupt, nothing touched.
    let mut bytes = std::fs::read(&seg).unwrap();
    let recs = data_records(&bytes);
    let (o, _, _) = recs[4];
    bytes[o + RECORD_HEADER_LEN + 20] ^= 0x10;
    std::fs::write(&seg, &bytes).unwrap();
    let err = open(Some(codec.clone()), dir.path(), &Rows::blocked()).await.unwrap_err();
    assert!(matches!(err, ConsistencyError::JournalCorrupt { .. }), "{err:?}");
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
}

#[tokio::test]
async fn plaintext_journal_from_before_encryption_is_refused_then_migrated_on_request() {
    // A journal written without codecs (an older version or configuration).
    let dir = tempfile::tempdir().unwrap();
    let (wb, _) = open(None, dir.path(), &Rows::blocked()).await.unwrap();
    for i in 0..15 {
        wb.set(key(i), value(i)).await.unwrap();
    }
    drop(wb);
    for s in segments(dir.path()) {
        assert_eq!(&std::fs::read(&s).unwrap()[..8], SEGMENT_MAGIC);
    }
    let before = snapshot(dir.path());
    let codec = aes(1, 7);
    let err = open(Some(codec.clone()), dir.path(), &Rows::new()).await.unwrap_err();
    assert!(matches!(err, ConsistencyError::JournalPlaintext { records: 15, .. }), "{err:?}");
    assert!(err.to_string().contains("replay_plaintext"), "{err}");
    assert_eq!(snapshot(dir.path()), before, "a refused open changes nothing");

    // Opt in once: the plaintext records replay, new records are sealed.
    let rows = Rows::new();
    let cache = cache(Some(codec.clone())).await;
    let cfg = config(dir.path(), Some(codec.clone())).replay_plaintext(true);
    let (wb, report) =
        WriteBehind::open(cache, rows.clone() as Arc<dyn Writer<String, String>>, cfg.build().unwrap()).await.unwrap();
    assert_eq!(report.requeued, 15);
    wb.set(key(100), value(100)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), wb.shutdown()).await.unwrap().unwrap();
    for i in (0..15).chain([100]) {
        assert_eq!(rows.get(&key(i)), Some(value(i)));
    }
    // The next open (without the opt-in) finds everything confirmed and drops the old
    // plaintext segments: no plaintext left.
    let (wb, report) = open(Some(codec), dir.path(), &Rows::blocked()).await.unwrap();
    assert_eq!(report.requeued, 0);
    drop(wb);
    for s in segments(dir.path()) {
        assert_eq!(&std::fs::read(&s).unwrap()[..8], SEALED_SEGMENT_MAGIC, "{s:?}");
    }
    assert!(pii_hits(dir.path()).is_empty(), "{:?}", pii_hits(dir.path()));
}

#[tokio::test]
async fn a_cache_that_protects_its_data_is_refused_a_plaintext_journal() {
    let dir = tempfile::tempdir().unwrap();
    let writer = Rows::new() as Arc<dyn Writer<String, String>>;
    let unprotected = |r: Result<_, ConsistencyError>| match r {
        Err(ConsistencyError::JournalUnprotected { cache, reason }) => {
            assert_eq!(&*cache, "people");
            reason
        }
        Err(other) => panic!("expected JournalUnprotected, got {other:?}"),
        Ok(_) => panic!("expected JournalUnprotected, got a policy"),
    };
    // A PII cache (encrypting, hashed key ids) with a journal without codecs.
    let pii = cache(Some(aes(1, 7))).await;
    let reason = unprotected(
        WriteBehind::open(pii.clone(), writer.clone(), config(dir.path(), None).build().unwrap()).await.map(|_| ()),
    );
    assert!(reason.contains("aes-256-gcm"), "{reason}");
    assert!(!dir.path().join("journal").exists(), "nothing is written before the refusal");
    // An encrypting cache without hashed key ids, same.
    let enc = Cache::<String, String>::builder("people")
        .tier(Arc::new(MemoryTier::new("l2")))
        .serializer(Postcard)
        .codec(aes(1, 7))
        .build()
        .await
        .unwrap();
    unprotected(WriteBehind::open(enc, writer.clone(), config(dir.path(), None).build().unwrap()).await.map(|_| ()));
    // Hashed key ids without any codec: keys would be plaintext in the journal.
    let hashed = Cache::<String, String>::builder("people")
        .tier(Arc::new(MemoryTier::new("l2")))
        .serializer(Postcard)
        .key_id_hasher(Arc::new(|id: &str| format!("h{}", id.len())))
        .build()
        .await
        .unwrap();
    let reason = unprotected(
        WriteBehind::open(hashed, writer.clone(), config(dir.path(), None).build().unwrap()).await.map(|_| ()),
    );
    assert!(reason.contains("hashes key ids"), "{reason}");
    // With the cache's codec the same PII cache is accepted.
    let (wb, _) = WriteBehind::open(pii, writer, config(dir.path(), Some(aes(1, 7))).build().unwrap()).await.unwrap();
    wb.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_compressing_cache_needs_its_codec_in_the_journal_which_then_compresses_records() {
    use strata_security::ZstdCodec;
    let dir = tempfile::tempdir().unwrap();
    let zstd = Arc::new(ZstdCodec::new(3).unwrap());
    let build = || {
        Cache::<String, String>::builder("people")
            .tier(Arc::new(MemoryTier::new("l2")))
            .serializer(Postcard)
            .codec(zstd.clone())
            .build()
    };
    let writer = Rows::blocked() as Arc<dyn Writer<String, String>>;
    let plain_cfg = config(dir.path(), None);
    let err = WriteBehind::open(build().await.unwrap(), writer.clone(), plain_cfg.clone().build().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(&err, ConsistencyError::JournalUnprotected { reason, .. } if reason.contains("zstd")), "{err:?}");
    // A plaintext journal written before compression was configured still replays (nothing
    // requires a seal), and new records pass through zstd.
    let (wb, _) = open(None, dir.path(), &Rows::blocked()).await.unwrap();
    wb.set(key(1), value(1)).await.unwrap();
    drop(wb);
    let mut codecs = CodecPipeline::new();
    codecs.push(zstd.clone()).unwrap();
    let cfg = plain_cfg.codecs(codecs);
    let (wb, report) = WriteBehind::open(build().await.unwrap(), writer, cfg.clone().build().unwrap()).await.unwrap();
    assert_eq!(report.requeued, 1);
    let long = "compressible ".repeat(400);
    wb.set(key(2), long.clone()).await.unwrap();
    drop(wb);
    let newest = segments(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    assert_eq!(&bytes[..8], SEALED_SEGMENT_MAGIC);
    assert!(bytes.len() < long.len() / 4, "{} bytes for a {}-byte value", bytes.len(), long.len());
    let rows = Rows::new();
    let (wb, report) = WriteBehind::open(
        build().await.unwrap(),
        rows.clone() as Arc<dyn Writer<String, String>>,
        cfg.build().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(report.requeued, 2);
    tokio::time::timeout(Duration::from_secs(60), wb.flush()).await.unwrap().unwrap();
    assert_eq!(rows.get(&key(1)), Some(value(1)));
    assert_eq!(rows.get(&key(2)), Some(long));
}

/// A forged or damaged sequence number at the top of the range (the CRC has no key: anyone who
/// can write the directory can plant one) would wrap the journal's counter: new writes numbered
/// below the checkpoint, acknowledged before they are durable, never replayed. Refused as
/// corrupt, for a checkpoint and for a data record, at 2^63 and at u64::MAX; just below the
/// limit is accepted.
#[tokio::test]
async fn a_sequence_number_at_the_top_of_the_range_is_refused_as_corrupt() {
    for (forged, refused) in [
        (Record::Checkpoint { confirmed: u64::MAX }, true),
        (Record::Checkpoint { confirmed: 1 << 63 }, true),
        (Record::Delete { seq: u64::MAX, key: &[1, b'k'] }, true),
        (Record::Delete { seq: 1 << 63, key: &[1, b'k'] }, true),
        (Record::Checkpoint { confirmed: (1 << 63) - 2 }, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal");
        std::fs::create_dir_all(&journal).unwrap();
        let mut seg = SEGMENT_MAGIC.to_vec();
        Record::Checkpoint { confirmed: 0 }.encode_into(&mut seg).unwrap();
        forged.encode_into(&mut seg).unwrap();
        std::fs::write(journal.join(format!("{:020}.wal", 1)), &seg).unwrap();
        let writer = Rows::new();
        let cfg = WriteBehindConfig::builder(journal.clone()).segment_bytes(4096).build().unwrap();
        let opened = WriteBehind::open(cache(None).await, writer as Arc<dyn Writer<String, String>>, cfg).await;
        if refused {
            assert!(
                matches!(opened, Err(ConsistencyError::JournalCorrupt { .. })),
                "{forged:?}: {:?}",
                opened.map(|_| ())
            );
        } else {
            let (wb, _) = opened.unwrap_or_else(|e| panic!("{forged:?}: {e}"));
            wb.shutdown().await.unwrap();
        }
    }
}
