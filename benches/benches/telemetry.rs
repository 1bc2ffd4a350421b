//! Telemetry overhead: an L1 hit with the `PrometheusObserver` attached vs the same hit with no
//! observer, measured in one run (interleaved batches, medians). Prints the ratio; the target is
//! an observer cost of at most 15 % of the hit's time.

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use futures::FutureExt;
use strata_benches::paired_ratio;
use strata_cache_core::{Cache, L1Config};
use strata_telemetry::PrometheusObserver;

const KEYS: u64 = 10_000;

fn cache(observer: Option<std::sync::Arc<PrometheusObserver>>) -> Cache<u64, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut b = Cache::<u64, String>::builder("bench").l1(L1Config::entries(2 * KEYS));
    if let Some(o) = observer {
        b = b.observer(o);
    }
    let cache = rt.block_on(b.build()).expect("cache");
    for k in 0..KEYS {
        rt.block_on(cache.set(k, format!("value-{k}"))).expect("set");
    }
    cache
}

fn main() {
    let metrics = PrometheusObserver::new().expect("observer");
    let observed = cache(Some(metrics.clone()));
    let plain = cache(None);
    let mut c = Criterion::default().configure_from_args();
    {
        let mut g = c.benchmark_group("telemetry_l1_hit");
        let mut i = 0u64;
        g.bench_function("no_observer", |b| {
            b.iter(|| {
                i = (i + 7) % KEYS;
                black_box(plain.get(&i).now_or_never().expect("L1 hit completes at once").expect("ok"))
            })
        });
        let mut j = 0u64;
        g.bench_function("prometheus_observer", |b| {
            b.iter(|| {
                j = (j + 7) % KEYS;
                black_box(observed.get(&j).now_or_never().expect("L1 hit completes at once").expect("ok"))
            })
        });
        g.finish();
    }
    let (mut i, mut j) = (0u64, 0u64);
    let (with, without, ratio) = paired_ratio(
        Duration::from_secs(3),
        10_000,
        || {
            i = (i + 7) % KEYS;
            black_box(observed.get(&i).now_or_never());
        },
        || {
            j = (j + 7) % KEYS;
            black_box(plain.get(&j).now_or_never());
        },
    );
    let hits = metrics
        .encode_text()
        .lines()
        .find(|l| l.starts_with(r#"strata_cache_requests_total{cache="bench",result="hit",tier="l1"}"#))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(!hits.is_empty() && !hits.ends_with(" 0"), "the observer counted no hit: {hits:?}");
    println!(
        "\ntelemetry l1_hit: with PrometheusObserver {with:.1} ns, without {without:.1} ns, ratio {ratio:.3}x \
         (observer cost {:.1} % of the hit; target <= 15 %)\n",
        (ratio - 1.0) * 100.0
    );
    c.final_summary();
}
