//! PII end to end: entries written through L1 → Redis → SQLite by a cache built under a
//! `PiiPolicy` (AES-256-GCM values, keyed-hash key ids). Afterwards Redis (SCAN + GET), the
//! SQLite files and every captured log line (TRACE, with span fields) are scanned for the
//! plaintext keys and values: 0 hits. Then crypto-shredding: destroying the namespace key makes
//! the remote copies unreadable.
#![cfg(all(feature = "redis", feature = "sql", feature = "security"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

mod common;

use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata::security::{AesGcmCodec, NamespaceKeyring, PiiPolicy};
use strata::{CacheStats, EntryOptions, FnLoader, Strata, StrataConfig};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn redis_cli(port: u16, args: &[&str]) -> Vec<u8> {
    let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().unwrap();
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

const PEOPLE: [(&str, &str); 3] = [
    ("alice.smith@example.com", "Alice Smith, SSN 123-45-6789"),
    ("bob.jones@example.org", "Bob Jones, IBAN DE89370400440532013000"),
    ("carol+tag@example.net", "Carol, born 1970-01-01"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pii_never_reaches_redis_sqlite_or_logs_in_plaintext() {
    // Our own server: the scan must see only this test's keys.
    let Some(redis) = common::own_redis() else { return };
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pii.db");
    let config = StrataConfig::from_toml(&format!(
        "[redis]\nurl = \"redis://127.0.0.1:{}\"\n[sql]\nurl = \"sqlite://{}?mode=rwc\"\n",
        redis.port,
        db.display()
    ))
    .unwrap();
    let stats = CacheStats::new();
    let strata = Strata::builder().config(config).observer(stats.clone()).connect().await.unwrap();

    let keys = Arc::new(NamespaceKeyring::new());
    keys.rotate("default").unwrap();
    let policy = PiiPolicy::new(Duration::from_secs(3600), b"pii-test-secret-0123456789").unwrap();
    let build = || {
        strata
            .cache::<String, String>("people")
            .codec(Arc::new(AesGcmCodec::new(keys.clone()).unwrap()))
            .options(EntryOptions::new(Duration::from_secs(600)).stale_limit(Duration::from_secs(600)))
            .loader(FnLoader::new(|k: String| async move {
                Ok(PEOPLE.iter().find(|(id, _)| *id == k).map(|(_, v)| (*v).to_owned()))
            }))
    };
    // Without the policy's hasher, a PII cache is refused.
    assert!(policy.check(&build().build().await.unwrap()).is_err());
    let people = policy.build(build()).await.unwrap();

    people.set(PEOPLE[0].0.into(), PEOPLE[0].1.into()).await.unwrap();
    for (id, v) in &PEOPLE[1..] {
        assert_eq!(people.get_or_load(&(*id).to_string()).await.unwrap().as_deref(), Some(&(*v).to_string()));
    }
    people.clear_l1();
    for (id, v) in &PEOPLE {
        assert_eq!(people.get(&(*id).to_string()).await.unwrap().as_deref(), Some(&(*v).to_string()), "from Redis");
    }
    people.invalidate(&PEOPLE[2].0.to_string()).await.unwrap();
    assert_eq!(stats.hits("redis"), 3);

    // Redis: every key and value of this server.
    let mut scanned = Vec::new();
    let names = redis_cli(redis.port, &["--scan", "--pattern", "*"]);
    let names: Vec<&str> = std::str::from_utf8(&names).unwrap().lines().collect();
    assert!(names.len() >= 2, "the entries are in Redis: {names:?}");
    for n in &names {
        scanned.extend_from_slice(n.as_bytes());
        if redis_cli(redis.port, &["TYPE", n]).starts_with(b"string") {
            scanned.extend(redis_cli(redis.port, &["GET", n]));
        }
    }
    // SQLite: the database file and its WAL.
    let mut sqlite = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        if let Ok(b) = std::fs::read(format!("{}{suffix}", db.display())) {
            sqlite.extend(b);
        }
    }
    assert!(sqlite.len() > 4096, "the SQLite tier wrote its file");
    let logged = logs.0.lock().unwrap().clone();
    assert!(contains(&logged, "cache.get"), "spans were captured: the log scan is not vacuous");
    for (id, value) in PEOPLE {
        for (place, bytes) in [("redis", &scanned), ("sqlite", &sqlite), ("logs", &logged)] {
            assert!(!contains(bytes, id), "plaintext key found in {place}");
            assert!(!contains(bytes, value), "plaintext value found in {place}");
        }
        // The parts that identify a person, too.
        assert!(!contains(&scanned, id.split('@').next().unwrap()));
    }

    // Crypto-shredding: destroy the namespace key; Redis and SQLite copies become misses.
    assert!(keys.destroy("default"));
    keys.rotate("default").unwrap();
    people.clear_l1();
    let errors_before = stats.decode_errors();
    assert_eq!(people.get(&PEOPLE[0].0.to_string()).await.unwrap(), None);
    assert!(stats.decode_errors() > errors_before, "unreadable copies are counted decode errors");
    drop(redis);
}
