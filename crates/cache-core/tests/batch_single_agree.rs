//! `get_many` and `get`/`get_or_load` must give every key the same answer and leave the cache in
//! the same state: the batch path probes the tiers with the same code as the single path.
//!
//! Two identical caches replay the same history; one reads key by key, the other in batches, and
//! both are compared after every read (values, per-level hits and misses, loads, stale serves,
//! rejected frames, what each tier and L1 hold, the recovery backlog). A property test drives
//! random histories (writes, invalidations, tag invalidations, clock steps, a failing tier,
//! loader failures, recovery); deterministic tests race invalidations against reads and loads in
//! flight and against slow tiers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use proptest::prelude::*;
use strata_cache_core::{
    BoxError, Cache, CacheKey, CacheStats, Clock, EntryOptions, FnLoader, Key, ManualClock, MemoryTier, Namespace,
    Postcard, StoredEntry, Tier, TierError, TierErrorKind, TierHealth,
};
use tokio::sync::{Notify, Semaphore};

/// Holds the first call that passes while armed until released; later calls pass.
struct Gate {
    armed: AtomicBool,
    entered: Notify,
    release: Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Self { armed: AtomicBool::new(false), entered: Notify::new(), release: Semaphore::new(0) }
    }
}

impl Gate {
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
    async fn pass(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.acquire().await.expect("gate semaphore open").forget();
        }
    }
    fn open(&self) {
        self.release.add_permits(1);
    }
}

/// A memory tier whose reads can fail (writes still succeed, unlike
/// [`MemoryTier::set_failing`]) and whose reads and writes can be held in flight.
#[derive(Clone)]
struct TestTier {
    mem: MemoryTier,
    fail_reads: Arc<AtomicBool>,
    reads: Arc<Gate>,
    writes: Arc<Gate>,
}

impl TestTier {
    fn new(name: &str, clock: Arc<dyn Clock>) -> Self {
        Self {
            mem: MemoryTier::with_clock(name, clock),
            fail_reads: Arc::default(),
            reads: Arc::default(),
            writes: Arc::default(),
        }
    }
    fn check_read(&self) -> Result<(), TierError> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(TierError::new(self.mem_name(), TierErrorKind::Unavailable, "reads failing"));
        }
        Ok(())
    }
    fn mem_name(&self) -> String {
        Tier::name(&self.mem).to_owned()
    }
}

#[async_trait]
impl Tier for TestTier {
    fn name(&self) -> &str {
        self.mem.name()
    }
    async fn get(&self, key: &Key) -> Result<Option<Bytes>, TierError> {
        self.reads.pass().await;
        self.check_read()?;
        self.mem.get(key).await
    }
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>, TierError> {
        self.reads.pass().await;
        self.check_read()?;
        self.mem.get_many(keys).await
    }
    async fn set(&self, key: &Key, entry: &StoredEntry) -> Result<(), TierError> {
        self.writes.pass().await;
        self.mem.set(key, entry).await
    }
    async fn set_many(&self, entries: &[(Key, StoredEntry)]) -> Result<(), TierError> {
        self.writes.pass().await;
        self.mem.set_many(entries).await
    }
    async fn delete(&self, key: &Key) -> Result<(), TierError> {
        self.mem.delete(key).await
    }
    async fn invalidate_tag(&self, cache: &str, namespace: &str, tag: &str) -> Result<u64, TierError> {
        self.mem.invalidate_tag(cache, namespace, tag).await
    }
    async fn health(&self) -> TierHealth {
        self.mem.health().await
    }
}

const KEYS: [u64; 5] = [1, 2, 3, 4, 5];
const NAME: &str = "agree";

/// One cache with two tiers, a manual clock and a loader over a shared source map.
struct Rig {
    cache: Cache<u64, String>,
    l2: TestTier,
    l3: TestTier,
    clock: ManualClock,
    stats: Arc<CacheStats>,
    source: Arc<Mutex<HashMap<u64, String>>>,
    loader_fails: Arc<AtomicBool>,
    load_gate: Arc<Gate>,
}

impl Rig {
    async fn build(with_loader: bool) -> Self {
        let clock = ManualClock::new(1_000_000);
        let shared_clock: Arc<dyn Clock> = Arc::new(clock.clone());
        let (l2, l3) = (TestTier::new("l2", shared_clock.clone()), TestTier::new("l3", shared_clock.clone()));
        let stats = CacheStats::new();
        let source: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
        let loader_fails: Arc<AtomicBool> = Arc::default();
        let load_gate: Arc<Gate> = Arc::default();
        let mut b = Cache::<u64, String>::builder(NAME)
            .tier(Arc::new(l2.clone()))
            .tier(Arc::new(l3.clone()))
            .serializer(Postcard)
            .clock(shared_clock)
            .observer(stats.clone())
            .recovery_retry(Duration::from_secs(3600))
            .options(
                EntryOptions::new(Duration::from_secs(10))
                    .stale_limit(Duration::from_secs(60))
                    .negative_ttl(Duration::from_secs(5)),
            );
        if with_loader {
            let (source, fails, gate) = (source.clone(), loader_fails.clone(), load_gate.clone());
            b = b.loader(FnLoader::new(move |k: u64| {
                let (source, fails, gate) = (source.clone(), fails.clone(), gate.clone());
                async move {
                    gate.pass().await;
                    if fails.load(Ordering::SeqCst) {
                        return Err::<Option<String>, BoxError>("source down".into());
                    }
                    Ok(source.lock().get(&k).cloned())
                }
            }));
        }
        let cache = b.build().await.expect("valid cache");
        Self { cache, l2, l3, clock, stats, source, loader_fails, load_gate }
    }

    fn skey(k: u64) -> Key {
        Key::new(NAME, Namespace::default_namespace(), &k.key_id()).expect("valid key")
    }

    /// Everything a read can change, for comparing two rigs.
    fn snapshot(&self) -> Snapshot {
        let s = &self.stats;
        let levels = ["l1", "l2", "l3"].map(|t| (s.hits(t), s.misses(t)));
        let mut l1 = self.cache.l1_keys(100);
        l1.sort_unstable();
        let held = |t: &TestTier| -> BTreeMap<u64, Option<u64>> {
            KEYS.iter().map(|&k| (k, t.mem.raw(&Self::skey(k)).map(|e| e.meta.created.as_millis()))).collect()
        };
        Snapshot {
            levels,
            loads: s.loads(),
            stale_served: s.stale_served(),
            frames_rejected: s.frames_rejected(),
            decode_errors: s.decode_errors(),
            l1,
            l2: held(&self.l2),
            l3: held(&self.l3),
            pending: self.cache.pending_recovery().iter().map(|b| (b.pending, b.overflowed)).collect(),
        }
    }

    /// Reads `keys` one at a time (`get_or_load` with a loader, else `get`), every key even
    /// after an error; the first error in key order is what a batch read returns.
    async fn read_single(&self, keys: &[u64], with_loader: bool) -> Reads {
        let mut out = Vec::new();
        let mut first_error = None;
        for k in keys {
            let v = if with_loader { self.cache.get_or_load(k).await } else { self.cache.get(k).await };
            match v {
                Ok(v) => out.push(v.map(|v| (*v).clone())),
                Err(e) => {
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        first_error.map_or(Ok(out), Err)
    }

    async fn read_batch(&self, keys: &[u64]) -> Reads {
        let vs = self.cache.get_many(keys).await.map_err(|e| e.to_string())?;
        Ok(vs.into_iter().map(|v| v.map(|v| (*v).clone())).collect())
    }
}

/// The values read, or the first error.
type Reads = Result<Vec<Option<String>>, String>;

#[derive(Debug, PartialEq)]
struct Snapshot {
    levels: [(u64, u64); 3],
    loads: u64,
    stale_served: u64,
    frames_rejected: u64,
    decode_errors: u64,
    l1: Vec<u64>,
    /// Per key: the creation time of the entry the tier holds.
    l2: BTreeMap<u64, Option<u64>>,
    l3: BTreeMap<u64, Option<u64>>,
    pending: Vec<(usize, bool)>,
}

#[derive(Debug, Clone)]
enum Step {
    Set(u64, u8, bool),
    Source(u64, Option<u8>),
    Invalidate(u64),
    InvalidateTag,
    DropFromL2(u64),
    ClearL1,
    Advance(u64),
    L2Reads(bool),
    L2Down(bool),
    LoaderFails(bool),
    Recover,
    Read(Vec<u64>),
}

fn step() -> impl Strategy<Value = Step> {
    let key = 1..=5u64;
    prop_oneof![
        3 => (key.clone(), any::<u8>(), any::<bool>()).prop_map(|(k, v, t)| Step::Set(k, v, t)),
        2 => (key.clone(), proptest::option::of(any::<u8>())).prop_map(|(k, v)| Step::Source(k, v)),
        2 => key.clone().prop_map(Step::Invalidate),
        1 => Just(Step::InvalidateTag),
        2 => key.clone().prop_map(Step::DropFromL2),
        2 => Just(Step::ClearL1),
        2 => (0..40_000u64).prop_map(Step::Advance),
        1 => any::<bool>().prop_map(Step::L2Reads),
        1 => any::<bool>().prop_map(Step::L2Down),
        1 => any::<bool>().prop_map(Step::LoaderFails),
        1 => Just(Step::Recover),
        // Distinct keys in any order (a batch naming a key twice coalesces its loads, which a
        // sequence of single reads cannot).
        4 => proptest::sample::subsequence(KEYS.to_vec(), 1..=5).prop_shuffle().prop_map(Step::Read),
    ]
}

/// Applies a non-read step to a rig.
async fn apply(rig: &Rig, s: &Step) {
    let c = &rig.cache;
    match s {
        Step::Set(k, v, tagged) => {
            let mut o = c.options().clone();
            if *tagged {
                o = o.tag("t");
            }
            // A tier that is down makes the write partial; the cache keeps going either way.
            let _ = c.set_with(*k, format!("set-{v}"), &o).await;
        }
        Step::Source(k, v) => {
            match v {
                Some(v) => rig.source.lock().insert(*k, format!("src-{v}")),
                None => rig.source.lock().remove(k),
            };
        }
        Step::Invalidate(k) => c.invalidate(k).await.expect("invalidate"),
        Step::InvalidateTag => {
            let _ = c.invalidate_tag("t").await;
        }
        Step::DropFromL2(k) => {
            // Fails (and drops nothing) while L2 is down.
            let _ = rig.l2.mem.delete(&Rig::skey(*k)).await;
        }
        Step::ClearL1 => c.clear_l1(),
        Step::Advance(ms) => rig.clock.advance(Duration::from_millis(*ms)),
        Step::L2Reads(fail) => rig.l2.fail_reads.store(*fail, Ordering::SeqCst),
        Step::L2Down(down) => rig.l2.mem.set_failing(*down),
        Step::LoaderFails(fail) => rig.loader_fails.store(*fail, Ordering::SeqCst),
        Step::Recover => {
            c.recover_now().await;
        }
        Step::Read(_) => unreachable!("reads are compared, not applied"),
    }
}

/// Replays `steps` on two rigs, one reading key by key, the other in batches.
async fn replay(steps: &[Step], with_loader: bool) -> Result<(), TestCaseError> {
    let (single, batch) = (Rig::build(with_loader).await, Rig::build(with_loader).await);
    for (i, s) in steps.iter().enumerate() {
        if let Step::Read(keys) = s {
            let a = single.read_single(keys, with_loader).await;
            let b = batch.read_batch(keys).await;
            prop_assert_eq!(&a, &b, "values differ at step {} ({:?})", i, s);
            prop_assert_eq!(single.snapshot(), batch.snapshot(), "state differs after step {} ({:?})", i, s);
        } else {
            apply(&single, s).await;
            apply(&batch, s).await;
        }
    }
    Ok(())
}

/// Runs `f` to completion on this thread, outside any tokio runtime (nothing in these histories
/// waits on a timer or another task, so polling again until ready is enough).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn batch_and_single_reads_agree(steps in proptest::collection::vec(step(), 1..40), with_loader in any::<bool>()) {
        // Built outside a tokio runtime: no background recovery task, so recovery happens only
        // at `Step::Recover` and both rigs stay in lockstep.
        block_on(replay(&steps, with_loader))?;
    }
}

/// What a raced read left behind.
#[derive(Debug, PartialEq)]
struct Raced {
    values: Reads,
    after: Reads,
    snapshot: Snapshot,
}

#[derive(Debug, Clone, Copy)]
enum Race {
    /// Invalidate key 1 while L3's read is in flight.
    TierRead,
    /// Invalidate key 1 while the hit is being copied into L2.
    UpperTierWrite,
    /// Invalidate key 1 while its load is in flight.
    Load,
    /// Invalidate the tag of key 1 while its load is in flight.
    TagWhileLoading,
}

async fn race(batch: bool, race: Race) -> Raced {
    let with_loader = matches!(race, Race::Load | Race::TagWhileLoading);
    let rig = Rig::build(with_loader).await;
    // One key: a sequence of single reads takes each key's epoch later than one batch does, so
    // with several keys the two paths may legitimately copy different keys under a race
    // (several keys are compared without races by the property test).
    let keys = [1];
    match race {
        Race::TierRead | Race::UpperTierWrite => {
            for k in keys {
                rig.cache.set(k, format!("old-{k}")).await.expect("set");
                rig.l2.mem.delete(&Rig::skey(k)).await.expect("delete");
            }
            rig.cache.clear_l1();
        }
        Race::Load | Race::TagWhileLoading => {
            for k in keys {
                rig.source.lock().insert(k, format!("src-{k}"));
            }
        }
    }
    let gate = match race {
        Race::TierRead => rig.l3.reads.clone(),
        Race::UpperTierWrite => rig.l2.writes.clone(),
        Race::Load | Race::TagWhileLoading => rig.load_gate.clone(),
    };
    gate.arm();
    let rig = Arc::new(rig);
    let reader = {
        let rig = rig.clone();
        tokio::spawn(async move {
            if batch { rig.read_batch(&keys).await } else { rig.read_single(&keys, with_loader).await }
        })
    };
    gate.entered.notified().await;
    match race {
        Race::TagWhileLoading => rig.cache.invalidate_tag("t").await.expect("tag"),
        _ => rig.cache.invalidate(&1).await.expect("invalidate"),
    }
    gate.open();
    let values = reader.await.expect("reader");
    let snapshot = rig.snapshot();
    let after = rig.read_single(&keys, false).await;
    Raced { values, after, snapshot }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raced_invalidations_give_the_same_answers_on_both_paths() {
    for r in [Race::TierRead, Race::UpperTierWrite, Race::Load, Race::TagWhileLoading] {
        let single = race(false, r).await;
        let batch = race(true, r).await;
        assert_eq!(single, batch, "{r:?}");
        // The invalidated key is never put in L1 by the raced read.
        assert!(!single.snapshot.l1.contains(&1), "{r:?}: invalidated key cached in L1: {single:?}");
        if matches!(r, Race::Load | Race::TagWhileLoading) {
            assert_eq!(single.values, Ok(vec![Some("src-1".to_owned())]), "the waiters still get the loaded value");
            assert_eq!(single.after, Ok(vec![None]), "nothing stored for the invalidated key");
        }
        if matches!(r, Race::TierRead) {
            assert_eq!(single.snapshot.l2[&1], None, "the invalidated value is not copied back into L2");
        }
    }
}

#[tokio::test]
async fn a_failing_tier_and_a_failing_loader_give_the_same_answers_on_both_paths() {
    let mut outcomes = Vec::new();
    for batch in [false, true] {
        let rig = Rig::build(true).await;
        for k in KEYS {
            rig.source.lock().insert(k, format!("src-{k}"));
        }
        // Keys 1-3 cached in both tiers, key 4 only in L3, key 5 nowhere.
        for k in [1, 2, 3, 4] {
            rig.cache.set(k, format!("v-{k}")).await.expect("set");
        }
        rig.l2.mem.delete(&Rig::skey(4)).await.expect("delete");
        rig.cache.clear_l1();
        rig.l2.fail_reads.store(true, Ordering::SeqCst);
        async fn read(rig: &Rig, batch: bool) -> Reads {
            if batch { rig.read_batch(&KEYS).await } else { rig.read_single(&KEYS, true).await }
        }
        let first = read(&rig, batch).await;
        // Everything goes stale; the source fails: fail-safe serves the stale copies.
        rig.clock.advance(Duration::from_secs(15));
        rig.cache.clear_l1();
        rig.loader_fails.store(true, Ordering::SeqCst);
        let stale = read(&rig, batch).await;
        outcomes.push((first, stale, rig.snapshot()));
    }
    assert_eq!(outcomes[0], outcomes[1]);
    let (first, stale, snap) = &outcomes[0];
    let first = first.as_ref().expect("no error");
    assert_eq!(first[0].as_deref(), Some("v-1"), "L3 answers while L2 fails");
    assert_eq!(first[4].as_deref(), Some("src-5"));
    assert_eq!(stale.as_ref().expect("fail-safe")[0].as_deref(), Some("v-1"), "stale served when the loader fails");
    assert!(snap.stale_served >= 4, "{snap:?}");
}
