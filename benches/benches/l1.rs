//! L1 benches: an L1 hit through the facade vs a raw `get` on quick_cache (the structure L1 is
//! built on) with the same key and value types; and the hit ratio on the shared traces beside
//! moka and quick_cache. Prints the ratios; criterion reports the times.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use futures::FutureExt;
use strata::{Cache, L1Config};
use strata_benches::*;

const KEYS: u64 = 10_000;

fn caches() -> (Cache<u64, String>, quick_cache::sync::Cache<u64, Arc<String>>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let cache =
        rt.block_on(Cache::<u64, String>::builder("bench").l1(L1Config::entries(2 * KEYS)).build()).expect("cache");
    let raw = quick_cache::sync::Cache::new(2 * KEYS as usize);
    for k in 0..KEYS {
        rt.block_on(cache.set(k, format!("value-{k}"))).expect("set");
        raw.insert(k, Arc::new(format!("value-{k}")));
    }
    (cache, raw)
}

fn l1_hit(c: &mut Criterion) {
    let (cache, raw) = caches();
    let mut i = 0u64;
    let mut next = move || {
        i = (i + 7) % KEYS;
        i
    };
    let mut g = c.benchmark_group("l1_hit");
    g.bench_function("strata_facade_get", |b| {
        b.iter(|| black_box(cache.get(&next()).now_or_never().expect("L1 hit completes at once").expect("ok")))
    });
    g.bench_function("quick_cache_raw_get", |b| b.iter(|| black_box(raw.get(&next()))));
    g.finish();
    let (mut i, mut j) = (0u64, 0u64);
    let (ours, peer, ratio) = paired_ratio(
        Duration::from_secs(3),
        10_000,
        || {
            i = (i + 7) % KEYS;
            black_box(cache.get(&i).now_or_never());
        },
        || {
            j = (j + 7) % KEYS;
            black_box(raw.get(&j));
        },
    );
    println!("\nl1_hit: strata {ours:.1} ns, quick_cache {peer:.1} ns, ratio {ratio:.2}x (target <= 1.25x)\n");
}

fn hit_ratios() {
    let traces = match (gli(), web12(), oltp()) {
        (Ok(a), Ok(b), Ok(c)) => [a, b, c],
        _ => {
            println!("hit ratio: traces not found at {}; skipped", traces_dir().display());
            return;
        }
    };
    println!("hit ratio (%), replay convention of shared/traces/README.md:");
    println!("{:>8} {:>5} {:>8} {:>8} {:>12} {:>10}", "trace", "cap", "strata", "moka", "quick_cache", "vs best");
    for (name, cap) in CASES {
        let t = traces.iter().find(|t| t.name == name).expect("trace");
        let (s, m, q) = (replay_strata(&t.keys, cap), replay_moka(&t.keys, cap), replay_quick_cache(&t.keys, cap));
        println!("{name:>8} {cap:>5} {s:>8.2} {m:>8.2} {q:>12.2} {:>+10.2}", s - m.max(q));
    }
    println!();
}

fn main() {
    hit_ratios();
    let mut c = Criterion::default().configure_from_args();
    l1_hit(&mut c);
    c.final_summary();
}
