//! Helpers shared by Strata's benches and their tests: trace readers, replay of a trace
//! through Strata's L1, moka and quick_cache, and a paired timing loop that prints ratios.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_cache_core::{EntryMeta, L1Cache, L1Config, Namespace, Timestamp};

/// Where the shared traces are: `$STRATA_TRACES_DIR`, else `../shared/traces` beside the
/// workspace.
pub fn traces_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STRATA_TRACES_DIR") {
        return PathBuf::from(d);
    }
    let ws = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    ws.join("../shared/traces")
}

/// A trace: its name and the requested keys in order.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Short name.
    pub name: &'static str,
    /// Keys requested, in order.
    pub keys: Vec<u64>,
}

fn read_file(name: &str) -> std::io::Result<Vec<u8>> {
    std::fs::read(traces_dir().join(name))
}

/// `gli.trace.gz`: gzip text, one decimal key per line; `*` lines skipped.
pub fn gli() -> std::io::Result<Trace> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(&read_file("gli.trace.gz")?[..]).read_to_string(&mut text)?;
    let keys =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && *l != "*").filter_map(|l| l.parse().ok()).collect();
    Ok(Trace { name: "glimpse", keys })
}

/// `web12.trace.xz`: xz of big-endian u32 keys.
pub fn web12() -> std::io::Result<Trace> {
    let raw = read_file("web12.trace.xz")?;
    let mut out = Vec::new();
    lzma_rs::xz_decompress(&mut &raw[..], &mut out).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let keys = out.chunks_exact(4).map(|c| u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))).collect();
    Ok(Trace { name: "web12", keys })
}

/// `trace-oltp.trc.bin.gz`: gzip of big-endian i32 keys.
pub fn oltp() -> std::io::Result<Trace> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&read_file("trace-oltp.trc.bin.gz")?[..]).read_to_end(&mut out)?;
    let keys = out.chunks_exact(4).map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u32 as u64).collect();
    Ok(Trace { name: "oltp", keys })
}

/// The (trace, capacity) pairs of the reference table in `shared/traces/README.md`.
pub const CASES: [(&str, u64); 6] =
    [("glimpse", 500), ("glimpse", 1000), ("web12", 300), ("web12", 1200), ("oltp", 1000), ("oltp", 2000)];

/// Hit ratio (%) of Strata's L1 (entries-bounded) replaying `keys`: get, insert on miss.
pub fn replay_strata(keys: &[u64], capacity: u64) -> f64 {
    let l1 = L1Cache::<u64, ()>::standalone(L1Config::entries(capacity)).expect("valid capacity");
    let ns = Namespace::default_namespace();
    let meta = Arc::new(EntryMeta {
        created: Timestamp(0),
        fresh_until: Timestamp::MAX,
        expires_at: Timestamp::MAX,
        version: 0,
        load_cost_us: 0,
        negative: false,
        tags: Arc::from(Vec::new()),
    });
    let value = Arc::new(());
    let now = Timestamp(1);
    hit_ratio(keys, |k| {
        let hit = l1.get(&ns, &k, now).is_some();
        if !hit {
            l1.insert(&ns, k, Some(value.clone()), meta.clone(), 1);
        }
        hit
    })
}

/// Hit ratio (%) of moka 0.12 `sync::Cache`, pending work run after every insert.
pub fn replay_moka(keys: &[u64], capacity: u64) -> f64 {
    let c = moka::sync::Cache::<u64, ()>::new(capacity);
    hit_ratio(keys, |k| {
        let hit = c.get(&k).is_some();
        if !hit {
            c.insert(k, ());
            c.run_pending_tasks();
        }
        hit
    })
}

/// Hit ratio (%) of quick_cache `sync::Cache`.
pub fn replay_quick_cache(keys: &[u64], capacity: u64) -> f64 {
    let c = quick_cache::sync::Cache::<u64, ()>::new(capacity as usize);
    hit_ratio(keys, |k| {
        let hit = c.get(&k).is_some();
        if !hit {
            c.insert(k, ());
        }
        hit
    })
}

/// The replay convention: every request is a lookup (`access` returns whether it hit and
/// inserts on a miss); the result is hits / requests in percent.
fn hit_ratio(keys: &[u64], mut access: impl FnMut(u64) -> bool) -> f64 {
    let hits = keys.iter().filter(|k| access(**k)).count();
    100.0 * hits as f64 / keys.len() as f64
}

/// Times `ours` and `peer` in alternating rounds of `batch` calls for about `budget`, and
/// returns (ns per call ours, ns per call peer, ratio ours/peer) using each side's median round.
pub fn paired_ratio(budget: Duration, batch: u32, mut ours: impl FnMut(), mut peer: impl FnMut()) -> (f64, f64, f64) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while start.elapsed() < budget {
        let t = Instant::now();
        for _ in 0..batch {
            ours();
        }
        a.push(t.elapsed().as_nanos() as f64 / f64::from(batch));
        let t = Instant::now();
        for _ in 0..batch {
            peer();
        }
        b.push(t.elapsed().as_nanos() as f64 / f64::from(batch));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (x, y) = (med(&mut a), med(&mut b));
    (x, y, x / y)
}
