//! An outage must never leave older data visible afterwards: a real Redis with `appendonly yes`
//! is SIGKILLed while writes (or invalidations) go on, then restarted from its AOF — so it comes
//! back holding the old values — with three instances (separate L1s) over it and a real SQLite
//! L3. After the writer's auto-recovery, every instance, after `clear_l1` and a brand-new one
//! read the new state. Also: an older genuine AES-GCM frame put back into Redis is refused
//! (freshness floor), and strict mode catches it in a cold process.
//!
//! Each test starts its own `redis-server` (it kills it): skipped without one unless `CI=true`.
#![cfg(all(feature = "redis", feature = "sql"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata::{Cache, CacheStats, EntryOptions, Strata, StrataConfig};

const N: u64 = 20;
/// Generous: the suite must pass on a busy machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// A `redis-server` with `appendonly yes` (fsync always) in its own directory, which can be
/// SIGKILLed and restarted from its AOF on the same port.
fn aof_redis() -> Option<common::Server> {
    common::Server::start_aof()
}

/// Whether `key` exists on `redis`.
fn exists(redis: &common::Server, key: &str) -> bool {
    redis.cli(&["--raw", "EXISTS", key]).is_some_and(|o| o.trim() == "1")
}

fn config(redis: &str, db: &Path) -> StrataConfig {
    StrataConfig::from_toml(&format!(
        "[redis]\nurl = \"{redis}\"\nprefix = \"rec:\"\n[sql]\nurl = \"sqlite://{}?mode=rwc\"\n",
        db.display()
    ))
    .unwrap()
}

async fn runtime(redis: &str, db: &Path, stats: &Arc<CacheStats>) -> Strata {
    Strata::builder().config(config(redis, db)).observer(stats.clone()).connect().await.unwrap()
}

/// Waits (generous deadline) until nothing is pending on any tier of `c`.
async fn recovered(c: &Cache<u64, String>) {
    let deadline = Instant::now() + DEADLINE;
    while c.pending_recovery().iter().any(|b| b.pending > 0) {
        assert!(Instant::now() < deadline, "not recovered: {:?}", c.pending_recovery());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What happens while Redis is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum During {
    /// Every key set to v2.
    Set,
    /// Every key invalidated.
    Delete,
    /// Every key carries tag `t`; the tag is invalidated.
    Tag,
    /// Every key set to v2 by a writer whose pending bound is 5 (overflowed).
    SetOverflow,
}

fn v1(i: u64) -> String {
    format!("v1-{i}")
}

fn v2(i: u64) -> String {
    format!("v2-{i}")
}

async fn all_read(c: &Cache<u64, String>) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for i in 0..N {
        out.push(c.get(&i).await.unwrap().map(|v| (*v).clone()));
    }
    out
}

fn expected(during: During) -> Vec<Option<String>> {
    (0..N).map(|i| matches!(during, During::Set | During::SetOverflow).then(|| v2(i))).collect()
}

async fn outage_then_aof_restart(during: During) {
    let Some(mut redis) = aof_redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("l3.db");
    let url = redis.url();
    let stats = CacheStats::new();
    let (ra, rb, rc) = (
        runtime(&url, &db, &stats).await,
        runtime(&url, &db, &CacheStats::new()).await,
        runtime(&url, &db, &CacheStats::new()).await,
    );
    let bound = if during == During::SetOverflow { 5 } else { 10_000 };
    let a = ra.cache::<u64, String>("items").max_pending_invalidations(bound).build().await.unwrap();
    let b = rb.cache::<u64, String>("items").build().await.unwrap();
    let c = rc.cache::<u64, String>("items").build().await.unwrap();

    let opts = EntryOptions::new(Duration::from_secs(3600)).tag("t");
    for i in 0..N {
        a.set_with(i, v1(i), &opts).await.unwrap();
    }
    // The other instances hold v1 in their L1.
    let old: Vec<Option<String>> = (0..N).map(|i| Some(v1(i))).collect();
    assert_eq!(all_read(&b).await, old);
    assert_eq!(all_read(&c).await, old);
    assert!(exists(&redis, "rec:items:default:0"), "v1 is in Redis (and its AOF)");

    redis.kill();
    match during {
        During::Set | During::SetOverflow => {
            for i in 0..N {
                a.set(i, v2(i)).await.unwrap();
            }
        }
        During::Delete => {
            for i in 0..N {
                a.invalidate(&i).await.unwrap();
            }
        }
        During::Tag => {
            // Redis missed it: reported (SQLite and the L1s took it).
            assert!(a.invalidate_tag("t").await.is_err());
        }
    }
    let backlog = a.pending_recovery();
    assert_eq!(backlog[0].tier, "redis");
    match during {
        During::SetOverflow => assert!(backlog[0].overflowed, "{backlog:?}"),
        During::Tag => assert_eq!(backlog[0].pending, 1, "{backlog:?}"),
        _ => assert_eq!(backlog[0].pending, N as usize, "{backlog:?}"),
    }
    assert_eq!(backlog[1].pending, 0, "SQLite took everything: {backlog:?}");
    // The writer's own reads never see the old data, even before Redis is back.
    assert_eq!(all_read(&a).await, expected(during));

    // Redis comes back from its AOF, holding v1 again.
    redis.restart();
    recovered(&a).await;

    // Without clear_l1 the other instances' L1s are cleared by the bus (resync on reconnect).
    let deadline = Instant::now() + DEADLINE;
    for inst in [&b, &c] {
        while all_read(inst).await != expected(during) {
            assert!(Instant::now() < deadline, "{during:?}: an instance keeps serving old data");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // After clear_l1 (every read goes to Redis first), and from a brand-new instance.
    for inst in [&a, &b, &c] {
        inst.clear_l1();
        assert_eq!(all_read(inst).await, expected(during), "{during:?}: after clear_l1");
    }
    let rd = runtime(&url, &db, &CacheStats::new()).await;
    let d = rd.cache::<u64, String>("items").build().await.unwrap();
    assert_eq!(all_read(&d).await, expected(during), "{during:?}: a brand-new instance");
    assert!(stats.recoveries() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_redis_outage_win_over_its_aof() {
    outage_then_aof_restart(During::Set).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_during_a_redis_outage_win_over_its_aof() {
    outage_then_aof_restart(During::Delete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_invalidations_during_a_redis_outage_win_over_its_aof() {
    outage_then_aof_restart(During::Tag).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowed_recovery_bound_still_serves_no_old_value() {
    outage_then_aof_restart(During::SetOverflow).await;
}

/// The window before the writer's replay: another instance that reads the restored Redis before
/// the writer has replayed its backlog refills its L1 with the AOF's older value. The writer's
/// replay must reach it (it publishes each replayed key again), or it serves that value until its
/// TTL. The replay is driven by hand (`recover_now`, the background retry set to an hour) so that
/// the reader's refill surely comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_read_the_restored_redis_before_the_replay_drops_what_it_read() {
    let Some(mut redis) = aof_redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("l3.db");
    let url = redis.url();
    let b_stats = CacheStats::new();
    let (ra, rb) = (runtime(&url, &db, &CacheStats::new()).await, runtime(&url, &db, &b_stats).await);
    let a = ra.cache::<u64, String>("items").recovery_retry(Duration::from_secs(3600)).build().await.unwrap();
    let b = rb.cache::<u64, String>("items").build().await.unwrap();
    for i in 0..N {
        a.set(i, v1(i)).await.unwrap();
    }
    let old: Vec<Option<String>> = (0..N).map(|i| Some(v1(i))).collect();
    assert_eq!(all_read(&b).await, old);

    redis.kill();
    for i in 0..N {
        a.set(i, v2(i)).await.unwrap();
    }
    assert_eq!(a.pending_recovery()[0].pending, N as usize);
    let resyncs_before = b_stats.resyncs();
    redis.restart();
    // b's bus reconnects and resyncs (its L1 is cleared); only then does it read, so what it
    // reads next comes from the restored Redis: the AOF's v1 (the documented window).
    let deadline = Instant::now() + DEADLINE;
    while b_stats.resyncs() == resyncs_before {
        assert!(Instant::now() < deadline, "b's bus never resynced after the restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(all_read(&b).await, old, "before the writer's replay b reads the restored values");

    // The writer replays (its breaker may still be open for a while: retry until done).
    let deadline = Instant::now() + DEADLINE;
    while !a.recover_now().await {
        assert!(Instant::now() < deadline, "not recovered: {:?}", a.pending_recovery());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Without clear_l1: b drops what it read in the window and reads v2.
    let want: Vec<Option<String>> = (0..N).map(|i| Some(v2(i))).collect();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let got = all_read(&b).await;
        if got == want {
            break;
        }
        assert!(Instant::now() < deadline, "b keeps serving what it read before the replay: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rollback with real AES-256-GCM frames in a real Redis over SQLite: the older genuine
/// ciphertext of a key put back into Redis decrypts fine but is refused by the writer (floor)
/// and by a cold process in strict mode; a cold process without strict mode cannot tell (the
/// documented residual risk).
#[cfg(feature = "security")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_genuine_ciphertext_put_back_into_redis_is_refused() {
    use strata::core::frame::Frame;
    use strata::core::{Key, Namespace, StoredEntry};
    use strata::security::{AesGcmCodec, AuditObserver, MemoryAuditSink, NamespaceKeyring};

    let Some(redis) = common::own_redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("l3.db");
    let keys = Arc::new(NamespaceKeyring::new());
    let stats = CacheStats::new();
    let audit = Arc::new(MemoryAuditSink::new());
    let rt = runtime(&redis.url, &db, &stats).await;
    let build = |rt: &Strata, strict: bool| {
        rt.cache::<u64, String>("secret")
            .codec(Arc::new(AesGcmCodec::new(keys.clone()).unwrap()))
            .observer(AuditObserver::new(audit.clone()))
            .strict_versions(strict)
            .build()
    };
    let a = build(&rt, false).await.unwrap();
    let redis_tier = rt.tiers()[0].clone();
    let key = Key::new("secret", Namespace::default_namespace(), "1").unwrap();

    a.set(1, "balance=100".into()).await.unwrap();
    let old = redis_tier.get(&key).await.unwrap().unwrap();
    assert!(!String::from_utf8_lossy(&old).contains("balance"), "encrypted at rest");
    tokio::time::sleep(Duration::from_millis(2)).await;
    a.set(1, "balance=0".into()).await.unwrap();
    let put_back = || async {
        let meta = Frame::decode(&old).unwrap().0.meta;
        redis_tier.set(&key, &StoredEntry { meta, frame: old.clone() }).await.unwrap();
    };

    put_back().await;
    a.clear_l1();
    assert_eq!(a.get(&1).await.unwrap().as_deref(), Some(&"balance=0".to_string()));
    assert_eq!(stats.frames_rejected(), 1, "the writer refused the older frame");
    let records = audit.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0].detail.as_deref().is_some_and(|d| d.contains("older_than_seen")), "{records:?}");

    // Cold processes: without strict mode the old ciphertext is served (residual risk); with
    // it, SQLite's newer version refuses it.
    put_back().await;
    let cold_stats = CacheStats::new();
    let cold_rt = runtime(&redis.url, &db, &cold_stats).await;
    let strict = build(&cold_rt, true).await.unwrap();
    assert_eq!(strict.get(&1).await.unwrap().as_deref(), Some(&"balance=0".to_string()));
    assert_eq!(cold_stats.frames_rejected(), 1);
    assert!(audit.records().iter().any(|r| r.detail.as_deref().is_some_and(|d| d.contains("older_than_last_tier"))));
    put_back().await;
    let lax_rt = runtime(&redis.url, &db, &CacheStats::new()).await;
    let lax = build(&lax_rt, false).await.unwrap();
    assert_eq!(lax.get(&1).await.unwrap().as_deref(), Some(&"balance=100".to_string()));
}
