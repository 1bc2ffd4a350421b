//! The cache side of [`PrometheusObserver`]: the [`CacheObserver`] implementation, with the
//! per-thread memo that keeps hits and misses to a few string compares and one atomic increment.

use std::sync::Arc;

use strata_cache_core::{CacheEvent, CacheObserver, LoadOutcome, TierErrorKind};

use super::{PrometheusObserver, TierChildren, breaker_value};

fn load_index(outcome: LoadOutcome) -> usize {
    match outcome {
        LoadOutcome::Found => 0,
        LoadOutcome::NotFound => 1,
        LoadOutcome::Error => 2,
        LoadOutcome::Timeout => 3,
    }
}

fn tier_error_kind(kind: TierErrorKind) -> &'static str {
    match kind {
        TierErrorKind::Unavailable => "unavailable",
        TierErrorKind::Timeout => "timeout",
        TierErrorKind::Overloaded => "overloaded",
        TierErrorKind::CircuitOpen => "circuit_open",
        TierErrorKind::Protocol => "protocol",
        TierErrorKind::InvalidRequest => "invalid_request",
        _ => "other",
    }
}

/// Per-thread memo of the last few `(observer, cache, tier)` children, so that the hot path
/// (hits and misses) costs a few string compares and one atomic increment: no lock, no hash,
/// no reference-count traffic.
struct Memo {
    observer: u64,
    cache: Box<str>,
    tier: Box<str>,
    children: Arc<TierChildren>,
}

const MEMO_SLOTS: usize = 4;

thread_local! {
    static MEMO: std::cell::RefCell<(usize, [Option<Memo>; MEMO_SLOTS])> =
        const { std::cell::RefCell::new((0, [None, None, None, None])) };
}

impl PrometheusObserver {
    #[inline]
    fn count(&self, cache: &str, tier: &str, hit: bool) {
        let done = MEMO
            .try_with(|m| {
                let m = m.try_borrow().ok()?;
                let slot =
                    m.1.iter().flatten().find(|s| s.observer == self.id && *s.tier == *tier && *s.cache == *cache)?;
                if hit {
                    slot.children.hit.inc()
                } else {
                    slot.children.miss.inc()
                }
                Some(())
            })
            .ok()
            .flatten();
        if done.is_none() {
            self.count_slow(cache, tier, hit);
        }
    }

    #[cold]
    #[inline(never)]
    fn count_slow(&self, cache: &str, tier: &str, hit: bool) {
        let children = self.tier(cache, tier);
        if hit {
            children.hit.inc()
        } else {
            children.miss.inc()
        }
        let _ = MEMO.try_with(|m| {
            if let Ok(mut m) = m.try_borrow_mut() {
                let i = m.0 % MEMO_SLOTS;
                m.0 = m.0.wrapping_add(1);
                m.1[i] = Some(Memo { observer: self.id, cache: cache.into(), tier: tier.into(), children });
            }
        });
    }
}

impl CacheObserver for PrometheusObserver {
    #[inline]
    fn on_event(&self, event: &CacheEvent<'_>) {
        match event {
            CacheEvent::Hit { cache, tier } => self.count(cache, tier, true),
            CacheEvent::Miss { cache, tier } => self.count(cache, tier, false),
            other => self.on_rare_event(other),
        }
    }
}

impl PrometheusObserver {
    #[inline(never)]
    fn on_rare_event(&self, event: &CacheEvent<'_>) {
        match event {
            CacheEvent::StaleServed { cache, .. } => self.cache(cache).stale.inc(),
            CacheEvent::Load { cache, duration, outcome } => {
                self.cache(cache).loads[load_index(*outcome)].observe(duration.as_secs_f64());
            }
            CacheEvent::Coalesced { cache } => self.cache(cache).coalesced.inc(),
            CacheEvent::EarlyRefresh { cache } => self.cache(cache).early_refresh.inc(),
            CacheEvent::TierError { cache, error } => {
                self.tier(cache, error.tier()).error.inc();
                let c = self.cache(cache);
                let t = self.tier_label(error.tier());
                self.f.tier_errors.with_label_values(&[c.label.as_str(), &t, tier_error_kind(error.kind())]).inc();
            }
            CacheEvent::DecodeError { cache, tier, .. } => self.decode_error(cache, tier, "frame"),
            CacheEvent::CodecRejected { cache, tier, .. } => self.decode_error(cache, tier, "codec"),
            CacheEvent::Eviction { cache } => self.cache(cache).evictions.inc(),
            CacheEvent::InvalidationReceived { cache } => self.cache(cache).received.inc(),
            CacheEvent::BusError { cache, .. } => self.cache(cache).bus_errors.inc(),
            CacheEvent::Resync { cache } => self.cache(cache).resyncs.inc(),
            CacheEvent::BreakerTransition { tier, to, .. } => {
                let t = self.tier_label(tier);
                self.f.breaker_transitions.with_label_values(&[&t, to.as_str()]).inc();
                self.pull.cache_breakers.with_label_values(&[&t]).set(breaker_value(*to));
            }
            CacheEvent::LockAcquired { cache } => self.cache(cache).lock_acquired.inc(),
            CacheEvent::LockWaited { cache, found } => {
                let c = self.cache(cache);
                if *found { c.lock_found.inc() } else { c.lock_timeout.inc() }
            }
            CacheEvent::WriteBehindBacklog { cache, backlog } => {
                let c = self.cache(cache);
                let gauge = c.backlog.get_or_init(|| self.f.backlog.with_label_values(&[c.label.as_str()]));
                gauge.set(i64::try_from(*backlog).unwrap_or(i64::MAX));
            }
            CacheEvent::WriteBehindFlush { cache, entries, duration, ok } => {
                let c = self.cache(cache);
                let result = if *ok { "ok" } else { "error" };
                self.f.flush.with_label_values(&[c.label.as_str(), result]).observe(duration.as_secs_f64());
                self.f.flushed_entries.with_label_values(&[c.label.as_str(), result]).inc_by(*entries as u64);
            }
            CacheEvent::TagInvalidated { cache } => self.cache(cache).tag_invalidations.inc(),
            _ => {}
        }
    }

    fn decode_error(&self, cache: &str, tier: &str, kind: &str) {
        let c = self.cache(cache);
        let t = self.tier_label(tier);
        self.f.decode_errors.with_label_values(&[c.label.as_str(), &t, kind]).inc();
    }
}
