//! Expiry math: jittered TTLs and XFetch probabilistic early refresh.
//!
//! XFetch (Vattani, Chierichetti, Lowenstein, "Optimal Probabilistic Cache Stampede
//! Prevention", VLDB 2015): a reader refreshes early when
//! `now − δ·β·ln(u) ≥ expiry`, with `u` uniform in (0, 1], δ the cost of the last recompute and
//! β ≥ 0 a tuning knob. The chance of an early refresh rises smoothly as expiry approaches, and
//! readers spread their refreshes so that one usually happens before expiry.

use std::time::Duration;

use crate::clock::Timestamp;
use crate::meta::EntryMeta;
use crate::options::EntryOptions;

/// Where an entry stands at a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within its TTL.
    Fresh,
    /// Past its TTL but within its stale limit: usable as a fail-safe fallback.
    Stale,
    /// Past its hard expiry: unusable.
    Expired,
}

/// Classifies `meta` at `now`.
pub fn freshness(meta: &EntryMeta, now: Timestamp) -> Freshness {
    if meta.is_fresh(now) {
        Freshness::Fresh
    } else if meta.is_servable(now) {
        Freshness::Stale
    } else {
        Freshness::Expired
    }
}

/// `ttl` plus a uniform random extra in `[0, jitter]`; `unit` is a uniform sample in `[0, 1)`.
pub fn jittered_ttl(ttl: Duration, jitter: Duration, unit: f64) -> Duration {
    if jitter.is_zero() {
        return ttl;
    }
    let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.0 };
    // Not `mul_f64`: it panics when rounding takes a huge jitter past `Duration::MAX`.
    let extra = Duration::try_from_secs_f64(jitter.as_secs_f64() * unit).map_or(jitter, |d| d.min(jitter));
    ttl.saturating_add(extra)
}

/// XFetch's test: should a reader at `now` refresh an entry fresh until `fresh_until`, whose
/// recompute took `delta`, with knob `beta` and uniform sample `u` in (0, 1]?
///
/// Never true when `beta` is 0 or `delta` is zero (except at or past `fresh_until`).
pub fn should_refresh_early(now: Timestamp, fresh_until: Timestamp, delta: Duration, beta: f64, u: f64) -> bool {
    if now >= fresh_until {
        return true;
    }
    if beta <= 0.0 || !beta.is_finite() || delta.is_zero() {
        return false;
    }
    // u in (0, 1]: ln(u) <= 0, so the gap is >= 0.
    let u = if u.is_finite() && u > 0.0 { u.min(1.0) } else { f64::MIN_POSITIVE };
    let gap_ms = delta.as_secs_f64() * 1000.0 * beta * -u.ln();
    let remaining_ms = (fresh_until.0 - now.0) as f64;
    gap_ms >= remaining_ms
}

/// Builds the metadata of a new entry written at `now` with `opts`.
pub fn new_meta(
    opts: &EntryOptions,
    now: Timestamp,
    load_cost: Duration,
    negative: bool,
    version: u64,
    unit: f64,
) -> EntryMeta {
    let ttl = if negative { opts.negative_ttl.unwrap_or(opts.ttl) } else { jittered_ttl(opts.ttl, opts.jitter, unit) };
    let fresh_until = now.saturating_add(ttl);
    // Negative entries are never served stale.
    let expires_at = if negative { fresh_until } else { fresh_until.saturating_add(opts.stale_limit) };
    EntryMeta {
        created: now,
        fresh_until,
        expires_at,
        version,
        load_cost_us: u32::try_from(load_cost.as_micros()).unwrap_or(u32::MAX),
        negative,
        tags: opts.tags.clone().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn jitter_stays_in_bounds(ttl_ms in 1u64..10_000_000, jit_ms in 0u64..1_000_000, u in 0.0f64..1.0) {
            let ttl = Duration::from_millis(ttl_ms);
            let jitter = Duration::from_millis(jit_ms);
            let t = jittered_ttl(ttl, jitter, u);
            prop_assert!(t >= ttl);
            prop_assert!(t <= ttl + jitter);
        }

        #[test]
        fn beta_zero_never_refreshes_before_expiry(now in 0u64..1_000_000, ahead in 1u64..1_000_000, delta_ms in 0u64..100_000, u in 0.0f64..=1.0) {
            prop_assert!(!should_refresh_early(Timestamp(now), Timestamp(now + ahead), Duration::from_millis(delta_ms), 0.0, u));
        }

        #[test]
        fn always_refreshes_at_or_after_expiry(exp in 0u64..1_000_000, late in 0u64..1_000_000, beta in 0.0f64..10.0, u in 0.0f64..=1.0) {
            prop_assert!(should_refresh_early(Timestamp(exp + late), Timestamp(exp), Duration::from_millis(5), beta, u));
        }

        #[test]
        fn refresh_is_monotonic_in_time(now in 0u64..1_000_000, d1 in 0u64..1_000, d2 in 0u64..1_000, beta in 0.1f64..5.0, u in 0.0001f64..=1.0) {
            // If a reader at time t refreshes, a reader at a later time with the same u refreshes too.
            let exp = Timestamp(now + 2_000);
            let (a, b) = (now + d1.min(d2), now + d1.max(d2));
            let delta = Duration::from_millis(300);
            if should_refresh_early(Timestamp(a), exp, delta, beta, u) {
                prop_assert!(should_refresh_early(Timestamp(b), exp, delta, beta, u));
            }
        }

        #[test]
        fn meta_orders_its_times(now in 0u64..u64::MAX / 4, ttl_s in 1u64..100_000, stale_s in 0u64..100_000, neg in any::<bool>()) {
            let opts = EntryOptions::new(Duration::from_secs(ttl_s)).stale_limit(Duration::from_secs(stale_s)).negative_ttl(Duration::from_secs(1));
            let m = new_meta(&opts, Timestamp(now), Duration::from_millis(3), neg, 1, 0.5);
            prop_assert!(m.created <= m.fresh_until);
            prop_assert!(m.fresh_until <= m.expires_at);
            prop_assert_eq!(freshness(&m, Timestamp(now)), Freshness::Fresh);
            prop_assert_eq!(freshness(&m, m.expires_at), Freshness::Expired);
            if neg { prop_assert_eq!(m.fresh_until, m.expires_at); }
        }
    }

    #[test]
    fn extreme_jitter_neither_panics_nor_exceeds_its_bounds() {
        for jitter in
            [Duration::MAX, Duration::from_secs(u64::MAX), Duration::new(u64::MAX / 2, 7), Duration::from_nanos(1)]
        {
            for unit in [0.0, 1e-12, 0.5, 0.999_999_999, 1.0, f64::NAN, f64::INFINITY, -1.0] {
                let t = jittered_ttl(Duration::from_secs(1), jitter, unit);
                assert!(t >= Duration::from_secs(1), "{jitter:?} {unit}");
                assert!(t <= Duration::from_secs(1).saturating_add(jitter), "{jitter:?} {unit}");
            }
        }
    }

    #[test]
    fn early_refresh_probability_rises_toward_expiry() {
        // δ = 100 ms, β = 1: P(refresh) = exp(-remaining/δ).
        let exp = Timestamp(10_000);
        let delta = Duration::from_millis(100);
        let rate = |remaining: u64| {
            let n = 20_000;
            let hits = (0..n)
                .filter(|i| {
                    let u = (f64::from(*i) + 0.5) / f64::from(n);
                    should_refresh_early(Timestamp(exp.0 - remaining), exp, delta, 1.0, u)
                })
                .count();
            hits as f64 / f64::from(n)
        };
        let far = rate(500);
        let near = rate(50);
        assert!((far - (-5.0f64).exp()).abs() < 0.01, "far {far}");
        assert!((near - (-0.5f64).exp()).abs() < 0.01, "near {near}");
        assert!(near > far);
    }
}
