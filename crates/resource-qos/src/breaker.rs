//! Per-resource circuit breaker: opens when admissions keep failing for exhaustion, so callers
//! fail fast instead of piling into the wait queue.
//!
//! Exhaustion is backpressure, not a fault of the resource: an open breaker therefore only refuses
//! requests that do **not** fit right now (the manager consults it after the capacity check). A
//! request that fits is always admitted, and such admissions while the breaker is open count as
//! successful probes: `half_open_probes` of them in a row close it, so the breaker closes as soon
//! as work flows again rather than after `open_wait`.
//!
//! The settings are the shared [`BreakerConfig`] of `strata-governance` (one definition for
//! cache tiers and resources; older `window`/`min_calls`/`open_ms`… keys still parse); this
//! manager's default is [`BreakerConfig::resources`].

use std::time::Duration;

use tokio::time::Instant;

pub use strata_governance::breaker::BreakerConfig;

use crate::BreakerState;
use crate::deadline::after;

#[derive(Debug)]
pub(crate) struct Breaker {
    state: BreakerState,
    ring: Vec<bool>,
    pos: usize,
    filled: usize,
    failures: usize,
    until: Option<Instant>,
    probes_started: u32,
    probes_ok: u32,
}

impl Breaker {
    pub(crate) fn new(cfg: &BreakerConfig) -> Self {
        Self {
            state: BreakerState::Closed,
            ring: vec![false; cfg.sliding_window as usize],
            pos: 0,
            filled: 0,
            failures: 0,
            until: None,
            probes_started: 0,
            probes_ok: 0,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.state
    }

    fn reset_window(&mut self) {
        self.ring.iter_mut().for_each(|b| *b = false);
        self.pos = 0;
        self.filled = 0;
        self.failures = 0;
    }

    /// May an admission involving this resource proceed? `Err(retry_after)` when not. The second
    /// value reports a state change.
    pub(crate) fn check(&mut self, cfg: &BreakerConfig, now: Instant) -> (Result<(), Duration>, Option<BreakerState>) {
        let open_for = cfg.open_wait;
        match self.state {
            BreakerState::Closed => (Ok(()), None),
            BreakerState::Open => {
                let until = self.until.unwrap_or(now);
                if now < until {
                    return (Err(until - now), None);
                }
                self.state = BreakerState::HalfOpen;
                self.until = Some(after(now, open_for));
                self.probes_started = 1;
                self.probes_ok = 0;
                (Ok(()), Some(BreakerState::HalfOpen))
            }
            BreakerState::HalfOpen => {
                if self.probes_started < cfg.permitted_half_open_calls {
                    self.probes_started += 1;
                    return (Ok(()), None);
                }
                // Probes whose outcome never came (cancelled callers) must not wedge the breaker.
                let until = self.until.unwrap_or(now);
                if now >= until {
                    self.until = Some(after(now, open_for));
                    self.probes_started = 1;
                    self.probes_ok = 0;
                    return (Ok(()), None);
                }
                (Err(until - now), None)
            }
        }
    }

    /// An admission involving this resource succeeded. While open, that is evidence the resource
    /// is no longer exhausted (the manager admits work that fits whatever the breaker says):
    /// `half_open_probes` such admissions in a row, with no failure between them, close it. No
    /// intermediate state change is reported, so a breaker at the edge of exhaustion does not
    /// flap between open and half-open on every release.
    pub(crate) fn on_success(&mut self, cfg: &BreakerConfig) -> Option<BreakerState> {
        if self.state == BreakerState::Closed {
            self.push(false);
            return None;
        }
        self.probes_ok = self.probes_ok.saturating_add(1);
        if self.probes_ok >= cfg.permitted_half_open_calls {
            self.state = BreakerState::Closed;
            self.reset_window();
            return Some(BreakerState::Closed);
        }
        None
    }

    pub(crate) fn on_failure(&mut self, cfg: &BreakerConfig, now: Instant) -> Option<BreakerState> {
        let open = |b: &mut Self| {
            b.state = BreakerState::Open;
            b.until = Some(after(now, cfg.open_wait));
            b.probes_ok = 0;
            b.reset_window();
            Some(BreakerState::Open)
        };
        match self.state {
            BreakerState::Closed => {
                self.push(true);
                if self.filled >= cfg.minimum_calls as usize
                    && self.failures as f64 >= cfg.failure_rate_threshold * self.filled as f64
                {
                    open(self)
                } else {
                    None
                }
            }
            BreakerState::HalfOpen => open(self),
            BreakerState::Open => {
                // Successes while open must be consecutive to close it.
                self.probes_ok = 0;
                None
            }
        }
    }

    fn push(&mut self, failed: bool) {
        if self.filled == self.ring.len() {
            if self.ring[self.pos] {
                self.failures -= 1;
            }
        } else {
            self.filled += 1;
        }
        self.ring[self.pos] = failed;
        if failed {
            self.failures += 1;
        }
        self.pos = (self.pos + 1) % self.ring.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_on_failure_rate_and_recovers_through_half_open() {
        let cfg = BreakerConfig {
            sliding_window: 4,
            minimum_calls: 4,
            failure_rate_threshold: 0.5,
            open_wait: Duration::from_millis(100),
            permitted_half_open_calls: 2,
            enabled: true,
        };
        let mut b = Breaker::new(&cfg);
        let t0 = Instant::now();
        assert_eq!(b.on_success(&cfg), None);
        assert_eq!(b.on_success(&cfg), None);
        assert_eq!(b.on_failure(&cfg, t0), None);
        assert_eq!(b.on_failure(&cfg, t0), Some(BreakerState::Open), "2 of 4 failed = 50 %");
        assert!(b.check(&cfg, t0).0.is_err());
        let later = t0 + Duration::from_millis(100);
        assert_eq!(b.check(&cfg, later), (Ok(()), Some(BreakerState::HalfOpen)));
        assert_eq!(b.check(&cfg, later).0, Ok(()));
        assert!(b.check(&cfg, later).0.is_err(), "only two probes");
        assert_eq!(b.on_success(&cfg), None);
        assert_eq!(b.on_success(&cfg), Some(BreakerState::Closed));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn half_open_failure_reopens_and_old_failures_slide_out() {
        let cfg = BreakerConfig {
            sliding_window: 3,
            minimum_calls: 3,
            failure_rate_threshold: 1.0,
            open_wait: Duration::from_millis(10),
            permitted_half_open_calls: 1,
            enabled: true,
        };
        let mut b = Breaker::new(&cfg);
        let t0 = Instant::now();
        b.on_failure(&cfg, t0);
        b.on_failure(&cfg, t0);
        b.on_success(&cfg);
        assert_eq!(b.on_failure(&cfg, t0), None, "window is [F, S, F]: 2/3 < 100 %");
        assert_eq!(b.on_failure(&cfg, t0), None, "window is [S, F, F]");
        assert_eq!(b.on_failure(&cfg, t0), Some(BreakerState::Open));
        let later = t0 + Duration::from_millis(10);
        assert!(b.check(&cfg, later).0.is_ok());
        assert_eq!(b.on_failure(&cfg, later), Some(BreakerState::Open));
        assert!(BreakerConfig { failure_rate_threshold: 0.0, ..cfg.clone() }.validate().is_err());
        assert!(BreakerConfig { minimum_calls: 4, ..cfg.clone() }.validate().is_err());
        assert!(BreakerConfig { sliding_window: u32::MAX, minimum_calls: 1, ..cfg }.validate().is_err());
    }

    #[test]
    fn success_while_open_half_opens_and_closes_after_enough_probes() {
        let cfg = BreakerConfig {
            sliding_window: 2,
            minimum_calls: 2,
            failure_rate_threshold: 1.0,
            open_wait: Duration::from_millis(60_000),
            permitted_half_open_calls: 2,
            enabled: true,
        };
        let mut b = Breaker::new(&cfg);
        let t0 = Instant::now();
        b.on_failure(&cfg, t0);
        assert_eq!(b.on_failure(&cfg, t0), Some(BreakerState::Open));
        assert_eq!(b.on_success(&cfg), None, "work that fits was admitted: one probe of two");
        assert_eq!(b.state(), BreakerState::Open, "no flapping through half-open");
        assert_eq!(b.on_failure(&cfg, t0), None, "a failure while open resets the count");
        assert_eq!(b.on_success(&cfg), None);
        assert_eq!(b.on_success(&cfg), Some(BreakerState::Closed), "two in a row");
        // One probe is enough when so configured; the window starts afresh.
        let one = BreakerConfig { permitted_half_open_calls: 1, ..cfg.clone() };
        b.on_failure(&one, t0);
        assert_eq!(b.on_failure(&one, t0), Some(BreakerState::Open));
        assert_eq!(b.on_success(&one), Some(BreakerState::Closed));
        assert_eq!(b.on_failure(&one, t0), None, "fresh window: one failure of two needed");
    }

    #[test]
    fn huge_open_time_saturates() {
        let cfg = BreakerConfig {
            sliding_window: 1,
            minimum_calls: 1,
            failure_rate_threshold: 1.0,
            open_wait: Duration::MAX,
            permitted_half_open_calls: u32::MAX,
            enabled: true,
        };
        assert!(cfg.validate().is_ok());
        let mut b = Breaker::new(&cfg);
        let t0 = Instant::now();
        assert_eq!(b.on_failure(&cfg, t0), Some(BreakerState::Open));
        let (res, _) = b.check(&cfg, t0 + Duration::from_secs(3600));
        assert!(res.is_err());
        assert_eq!(b.on_success(&cfg), None, "u32::MAX probes needed");
        assert_eq!(b.state(), BreakerState::Open);
    }
}
