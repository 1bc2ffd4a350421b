//! A circuit breaker per tier (resilience4j-style, count-based sliding window) and
//! [`BreakerTier`], the [`Tier`] wrapper that applies it.
//!
//! - **Closed**: calls go through; the last `sliding_window` outcomes are kept. Once at least
//!   `minimum_calls` are recorded and the failure rate reaches `failure_rate_threshold`, the
//!   breaker opens.
//! - **Open**: calls fail fast with [`TierErrorKind::CircuitOpen`] for `open_wait`, then the
//!   breaker goes half-open.
//! - **Half-open**: up to `permitted_half_open_calls` probe calls go through; if they all
//!   succeed the breaker closes, the first failure opens it again.
//!
//! The settings ([`BreakerConfig`]) and states ([`BreakerState`]) are the shared definitions of
//! `strata-governance`, re-exported here; a config with `enabled: false` never opens.
//!
//! Errors of kind [`TierErrorKind::InvalidRequest`] and [`TierErrorKind::Unsupported`] say
//! nothing about the backend's health and count neither as failures nor as successes.
//!
//! ```
//! use std::time::Duration;
//! use strata_cache_core::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
//!
//! let b = CircuitBreaker::new(BreakerConfig { minimum_calls: 2, ..BreakerConfig::default() }).unwrap();
//! for _ in 0..2 {
//!     b.try_call().unwrap().record(false);
//! }
//! assert_eq!(b.state(), BreakerState::Open);
//! assert!(b.try_call().is_err());
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{ConfigError, TierError, TierErrorKind};
use crate::key::Key;
use crate::observer::{CacheEvent, CacheObserver};
use crate::tier::{StoredEntry, Tier, TierHealth};

pub use strata_governance::breaker::{BreakerConfig, BreakerState};

enum Phase {
    Closed { window: VecDeque<bool>, failures: u32 },
    Open { since: Instant },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

impl Phase {
    fn state(&self) -> BreakerState {
        match self {
            Self::Closed { .. } => BreakerState::Closed,
            Self::Open { .. } => BreakerState::Open,
            Self::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
    fn closed() -> Self {
        Self::Closed { window: VecDeque::new(), failures: 0 }
    }
}

/// A thread-safe circuit breaker. See the [module documentation](self).
pub struct CircuitBreaker {
    config: BreakerConfig,
    phase: Mutex<Phase>,
    on_transition: Option<Box<dyn Fn(BreakerState, BreakerState) + Send + Sync>>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker").field("config", &self.config).field("state", &self.state()).finish()
    }
}

/// Permission to make one call; record its outcome with [`Permit::record`]. Dropping a permit
/// without recording (a cancelled call) frees a half-open slot without counting anything.
#[must_use = "record the call's outcome"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    recorded: bool,
}

impl Permit<'_> {
    /// Records the outcome of the call.
    pub fn record(mut self, success: bool) {
        self.recorded = true;
        self.breaker.record(success);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            let mut phase = self.breaker.phase.lock();
            if let Phase::HalfOpen { in_flight, .. } = &mut *phase {
                *in_flight = in_flight.saturating_sub(1);
            }
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self { config, phase: Mutex::new(Phase::closed()), on_transition: None })
    }

    /// Calls `f(from, to)` on every state change (outside no lock guarantees: keep it cheap).
    #[must_use]
    pub fn on_transition(mut self, f: impl Fn(BreakerState, BreakerState) + Send + Sync + 'static) -> Self {
        self.on_transition = Some(Box::new(f));
        self
    }

    /// The settings.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The current state (an open breaker whose wait has passed reports `HalfOpen` only once a
    /// call was attempted).
    pub fn state(&self) -> BreakerState {
        self.phase.lock().state()
    }

    fn transition(&self, phase: &mut Phase, to: Phase) {
        let (from, to_state) = (phase.state(), to.state());
        *phase = to;
        if from != to_state {
            tracing::info!(from = from.as_str(), to = to_state.as_str(), "circuit breaker transition");
            if let Some(f) = &self.on_transition {
                f(from, to_state);
            }
        }
    }

    /// Asks to make a call: `Err(())` while open (or half-open with every probe slot taken).
    #[allow(clippy::result_unit_err)]
    pub fn try_call(&self) -> Result<Permit<'_>, ()> {
        if !self.config.enabled {
            return Ok(Permit { breaker: self, recorded: false });
        }
        let mut phase = self.phase.lock();
        if let Phase::Open { since } = &*phase {
            if since.elapsed() < self.config.open_wait {
                return Err(());
            }
            self.transition(&mut phase, Phase::HalfOpen { in_flight: 0, succeeded: 0 });
        }
        if let Phase::HalfOpen { in_flight, succeeded } = &mut *phase {
            if *in_flight + *succeeded >= self.config.permitted_half_open_calls {
                return Err(());
            }
            *in_flight += 1;
        }
        Ok(Permit { breaker: self, recorded: false })
    }

    fn record(&self, success: bool) {
        if !self.config.enabled {
            return;
        }
        let mut phase = self.phase.lock();
        match &mut *phase {
            Phase::Closed { window, failures } => {
                window.push_back(success);
                if !success {
                    *failures += 1;
                }
                if window.len() > self.config.sliding_window as usize
                    && let Some(false) = window.pop_front()
                {
                    *failures -= 1;
                }
                let n = window.len() as u32;
                if n >= self.config.minimum_calls
                    && f64::from(*failures) / f64::from(n) >= self.config.failure_rate_threshold
                {
                    self.transition(&mut phase, Phase::Open { since: Instant::now() });
                }
            }
            Phase::HalfOpen { in_flight, succeeded } => {
                *in_flight = in_flight.saturating_sub(1);
                if !success {
                    self.transition(&mut phase, Phase::Open { since: Instant::now() });
                } else {
                    *succeeded += 1;
                    if *succeeded >= self.config.permitted_half_open_calls {
                        self.transition(&mut phase, Phase::closed());
                    }
                }
            }
            // A call admitted before the breaker opened: its outcome changes nothing now.
            Phase::Open { .. } => {}
        }
    }
}

/// Whether an error says the backend is unhealthy (counted by the breaker).
fn counts_as_failure(e: &TierError) -> bool {
    !matches!(e.kind(), TierErrorKind::InvalidRequest | TierErrorKind::Unsupported)
}

/// A [`Tier`] behind a [`CircuitBreaker`]: while the breaker is open, calls fail fast with
/// [`TierErrorKind::CircuitOpen`] and the cache skips the tier without waiting on a dead
/// backend.
pub struct BreakerTier<T> {
    inner: T,
    breaker: Arc<CircuitBreaker>,
}

impl<T: Tier> std::fmt::Debug for BreakerTier<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerTier").field("tier", &self.inner.name()).field("breaker", &self.breaker).finish()
    }
}

impl<T: Tier> BreakerTier<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, config: BreakerConfig) -> Result<Self, ConfigError> {
        Ok(Self { inner, breaker: Arc::new(CircuitBreaker::new(config)?) })
    }

    /// Wraps `inner`, reporting state changes to `observer` as [`CacheEvent::BreakerTransition`].
    pub fn with_observer(
        inner: T,
        config: BreakerConfig,
        observer: Arc<dyn CacheObserver>,
    ) -> Result<Self, ConfigError> {
        let tier: Arc<str> = Arc::from(inner.name());
        let breaker = CircuitBreaker::new(config)?.on_transition(move |from, to| {
            observer.on_event(&CacheEvent::BreakerTransition { cache: "", tier: &tier, from, to });
        });
        Ok(Self { inner, breaker: Arc::new(breaker) })
    }

    /// The breaker's state.
    pub fn state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// A probe of the breaker's state that outlives this borrow (for metrics gauges and health
    /// reports: the [`Tier`] trait itself knows nothing of breakers).
    pub fn probe(&self) -> crate::tier::BreakerProbe {
        let breaker = self.breaker.clone();
        crate::tier::BreakerProbe::new(move || breaker.state())
    }

    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The wrapped tier.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    fn open_error(&self) -> TierError {
        TierError::new(self.inner.name().to_owned(), TierErrorKind::CircuitOpen, "circuit breaker is open")
    }

    async fn guarded<R>(&self, call: impl std::future::Future<Output = Result<R, TierError>>) -> Result<R, TierError> {
        let Ok(permit) = self.breaker.try_call() else { return Err(self.open_error()) };
        let r = call.await;
        match &r {
            Ok(_) => permit.record(true),
            Err(e) if counts_as_failure(e) => permit.record(false),
            // Says nothing about the backend (a request it refused, an unsupported operation):
            // neither a success nor a failure, and never a successful half-open probe.
            Err(_) => drop(permit),
        }
        r
    }
}

#[async_trait]
impl<T: Tier> Tier for BreakerTier<T> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn get(&self, key: &Key) -> Result<Option<Bytes>, TierError> {
        self.guarded(self.inner.get(key)).await
    }
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>, TierError> {
        self.guarded(self.inner.get_many(keys)).await
    }
    async fn set(&self, key: &Key, entry: &StoredEntry) -> Result<(), TierError> {
        self.guarded(self.inner.set(key, entry)).await
    }
    async fn set_many(&self, entries: &[(Key, StoredEntry)]) -> Result<(), TierError> {
        self.guarded(self.inner.set_many(entries)).await
    }
    async fn delete(&self, key: &Key) -> Result<(), TierError> {
        self.guarded(self.inner.delete(key)).await
    }
    async fn invalidate_tag(&self, cache: &str, namespace: &str, tag: &str) -> Result<u64, TierError> {
        self.guarded(self.inner.invalidate_tag(cache, namespace, tag)).await
    }
    async fn invalidate_namespace(&self, cache: &str, namespace: &str) -> Result<u64, TierError> {
        self.guarded(self.inner.invalidate_namespace(cache, namespace)).await
    }
    async fn health(&self) -> TierHealth {
        // Health checks bypass the breaker (they are how an operator sees the backend) but
        // report an open breaker.
        match (self.breaker.state(), self.inner.health().await) {
            (BreakerState::Closed, h) => h,
            (s, TierHealth::Healthy) => TierHealth::Degraded(format!("circuit breaker {}", s.as_str())),
            (_, h) => h,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_rate_threshold: 0.5,
            minimum_calls: 4,
            sliding_window: 8,
            open_wait: Duration::from_millis(30),
            permitted_half_open_calls: 2,
            enabled: true,
        }
    }

    #[test]
    fn opens_at_threshold_only_after_minimum_calls() {
        let b = CircuitBreaker::new(cfg()).unwrap();
        for _ in 0..3 {
            b.try_call().unwrap().record(false);
        }
        assert_eq!(b.state(), BreakerState::Closed, "3 calls < minimum 4");
        b.try_call().unwrap().record(true);
        assert_eq!(b.state(), BreakerState::Open, "3/4 failures >= 50 %");
        assert!(b.try_call().is_err());
    }

    #[test]
    fn stays_closed_below_threshold_and_window_slides() {
        let b = CircuitBreaker::new(cfg()).unwrap();
        for i in 0..100 {
            b.try_call().unwrap().record(i % 3 != 2); // 1/3 failures, never 1/2 in any prefix
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn half_open_closes_after_permitted_successes_and_reopens_on_failure() {
        let b = CircuitBreaker::new(cfg()).unwrap();
        for _ in 0..4 {
            b.try_call().unwrap().record(false);
        }
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(40));
        let p1 = b.try_call().unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let p2 = b.try_call().unwrap();
        assert!(b.try_call().is_err(), "only 2 probes");
        p1.record(true);
        p2.record(false);
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(40));
        b.try_call().unwrap().record(true);
        b.try_call().unwrap().record(true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn dropped_permit_frees_its_half_open_slot() {
        let b = CircuitBreaker::new(cfg()).unwrap();
        for _ in 0..4 {
            b.try_call().unwrap().record(false);
        }
        std::thread::sleep(Duration::from_millis(40));
        drop(b.try_call().unwrap());
        drop(b.try_call().unwrap());
        assert!(b.try_call().is_ok(), "cancelled probes do not use up the half-open budget");
    }

    #[test]
    fn invalid_config_is_a_typed_error() {
        for bad in [
            BreakerConfig { failure_rate_threshold: 0.0, ..cfg() },
            BreakerConfig { failure_rate_threshold: 1.5, ..cfg() },
            BreakerConfig { minimum_calls: 0, ..cfg() },
            BreakerConfig { sliding_window: 2, ..cfg() },
            BreakerConfig { permitted_half_open_calls: 0, ..cfg() },
        ] {
            assert!(CircuitBreaker::new(bad).is_err());
        }
        let e = CircuitBreaker::new(BreakerConfig { minimum_calls: 0, ..cfg() }).unwrap_err();
        assert_eq!(e.field, "breaker.minimum_calls");
    }

    #[test]
    fn a_disabled_breaker_never_opens() {
        let b = CircuitBreaker::new(BreakerConfig { enabled: false, ..cfg() }).unwrap();
        for _ in 0..20 {
            b.try_call().unwrap().record(false);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    /// Refuses every request as invalid (an error that says nothing about the backend).
    struct Refusing;

    #[async_trait]
    impl Tier for Refusing {
        fn name(&self) -> &str {
            "refusing"
        }
        async fn get(&self, _: &Key) -> Result<Option<Bytes>, TierError> {
            Err(TierError::new("refusing", TierErrorKind::InvalidRequest, "too large"))
        }
        async fn set(&self, _: &Key, _: &StoredEntry) -> Result<(), TierError> {
            Err(TierError::new("refusing", TierErrorKind::Unavailable, "down"))
        }
        async fn delete(&self, _: &Key) -> Result<(), TierError> {
            Ok(())
        }
        async fn health(&self) -> TierHealth {
            TierHealth::Healthy
        }
    }

    #[tokio::test]
    async fn refused_requests_are_not_successful_probes() {
        let tier = BreakerTier::new(Refusing, cfg()).unwrap();
        let key = Key::new("c", crate::key::Namespace::new("ns").unwrap(), "k").unwrap();
        let entry = StoredEntry {
            meta: crate::expiry::new_meta(
                &crate::options::EntryOptions::default(),
                crate::clock::Timestamp(0),
                Duration::ZERO,
                false,
                1,
                0.5,
            ),
            frame: Bytes::new(),
        };
        for _ in 0..4 {
            assert!(tier.set(&key, &entry).await.is_err());
        }
        assert_eq!(tier.state(), BreakerState::Open);
        tokio::time::sleep(Duration::from_millis(40)).await;
        for _ in 0..5 {
            assert_eq!(tier.get(&key).await.unwrap_err().kind(), TierErrorKind::InvalidRequest);
        }
        assert_eq!(tier.state(), BreakerState::HalfOpen, "invalid requests neither close nor reopen it");
        assert_eq!(tier.set(&key, &entry).await.unwrap_err().kind(), TierErrorKind::Unavailable);
        assert_eq!(tier.state(), BreakerState::Open, "a real failure while half-open reopens it");
    }

    #[tokio::test]
    async fn breaker_tier_fails_fast_when_open_and_recovers() {
        use crate::tier::MemoryTier;
        let tier = BreakerTier::new(MemoryTier::new("mem"), cfg()).unwrap();
        let key = Key::new("c", crate::key::Namespace::new("ns").unwrap(), "k").unwrap();
        tier.inner().set_failing(true);
        for _ in 0..4 {
            assert!(tier.get(&key).await.is_err());
        }
        assert_eq!(tier.state(), BreakerState::Open);
        let calls = tier.inner().calls();
        let e = tier.get(&key).await.unwrap_err();
        assert_eq!(e.kind(), TierErrorKind::CircuitOpen);
        assert_eq!(tier.inner().calls(), calls, "no call reaches the backend while open");
        assert_eq!(tier.probe().state(), BreakerState::Open);
        tier.inner().set_failing(false);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(tier.get(&key).await.unwrap(), None);
        assert_eq!(tier.get(&key).await.unwrap(), None);
        assert_eq!(tier.state(), BreakerState::Closed);
    }
}
