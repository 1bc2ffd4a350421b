//! Time: a [`Clock`] seam so that expiry can be tested without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch. Stored in frames, so it survives process restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The earliest timestamp.
    pub const ZERO: Timestamp = Timestamp(0);
    /// The latest timestamp (never expires).
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    /// Milliseconds since the epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating.
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// `self - other`, or zero when `other` is later.
    pub fn saturating_since(self, other: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(other.0))
    }
}

/// A source of wall-clock time. Implementations must be cheap: L1 hits read it.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system clock, made cheap to read.
///
/// Wall time is sampled once (at first use) and advanced by a TSC-backed monotonic clock
/// ([quanta](https://docs.rs/quanta)), re-anchored to the wall clock once a minute. Reading it
/// costs a few nanoseconds instead of a `clock_gettime` call, which matters because every L1 hit
/// reads the time; and between re-anchorings time never jumps backwards when NTP steps the
/// system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

struct Anchor {
    wall_ms: AtomicU64,
    mono_ns: AtomicU64,
    clock: quanta::Clock,
}

const REANCHOR_NS: u64 = 60_000_000_000;

fn wall_ms() -> u64 {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

fn anchor() -> &'static Anchor {
    static ANCHOR: std::sync::OnceLock<Anchor> = std::sync::OnceLock::new();
    ANCHOR.get_or_init(|| {
        let clock = quanta::Clock::new();
        let mono_ns = clock.raw();
        Anchor { wall_ms: AtomicU64::new(wall_ms()), mono_ns: AtomicU64::new(clock.delta_as_nanos(0, mono_ns)), clock }
    })
}

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Timestamp {
        let a = anchor();
        let now_ns = a.clock.delta_as_nanos(0, a.clock.raw());
        let base_ns = a.mono_ns.load(Ordering::Relaxed);
        let elapsed = now_ns.saturating_sub(base_ns);
        if elapsed > REANCHOR_NS {
            // Re-anchor; a racing reader may use either anchor, both are within NTP slew.
            let w = wall_ms();
            a.wall_ms.store(w, Ordering::Relaxed);
            a.mono_ns.store(now_ns, Ordering::Relaxed);
            return Timestamp(w);
        }
        Timestamp(a.wall_ms.load(Ordering::Relaxed).saturating_add(elapsed / 1_000_000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_tracks_wall_time() {
        // Each reading is bracketed by wall-clock readings, so a thread descheduled between
        // two of them (a busy machine) does not count against the clock.
        let (w0, a, w1) = (wall_ms(), SystemClock.now().0, wall_ms());
        assert!(a + 50 > w0 && a < w1 + 50, "{w0} <= {a} <= {w1}");
        std::thread::sleep(Duration::from_millis(30));
        let (w2, b, w3) = (wall_ms(), SystemClock.now().0, wall_ms());
        assert!(b + 50 > w2 && b < w3 + 50, "{w2} <= {b} <= {w3}");
        assert!(b >= a + 25, "{a} -> {b}");
    }
}

/// A clock moved by hand, for tests (yours and ours).
///
/// ```
/// use std::time::Duration;
/// use strata_cache_core::{Clock, ManualClock};
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now().as_millis(), 3_000);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock at `start_ms` milliseconds since the epoch.
    pub fn new(start_ms: u64) -> Self {
        Self(Arc::new(AtomicU64::new(start_ms)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}
