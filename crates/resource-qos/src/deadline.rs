//! Instants computed from caller-supplied durations, saturating instead of overflowing.
//!
//! `Instant + Duration` panics when the sum does not fit the clock (`Duration::MAX` always does
//! that). Every deadline the manager computes from a caller's or a configuration's duration goes
//! through [`after`]: a duration too long to represent means "no deadline", expressed as an instant
//! about thirty years away (tokio's own "far future" for `sleep(Duration::MAX)`), which every timer
//! and ordered set handles like any other instant.

use std::time::Duration;

use tokio::time::Instant;

/// Longest wait the manager represents: about thirty years. Longer durations are clamped to it.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `now + d`, clamped to `now + FAR_FUTURE`; never panics.
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    let d = d.min(FAR_FUTURE);
    // Cannot fail for 30 years on any real monotonic clock; if it ever did, the latest
    // representable of the candidates is still a valid (if nearer) deadline, never a panic.
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
        .or_else(|| now.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(now)
}

/// Milliseconds of `d` for a `*_ms` setting, saturating at `u64::MAX` instead of truncating.
pub(crate) fn millis_saturating(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::ZERO), now);
        assert_eq!(after(now, Duration::from_millis(5)), now + Duration::from_millis(5));
        assert_eq!(after(now, Duration::MAX), now + FAR_FUTURE);
        assert_eq!(after(now, FAR_FUTURE + Duration::from_nanos(1)), now + FAR_FUTURE);
        assert_eq!(after(now, Duration::from_secs(u64::MAX)), now + FAR_FUTURE);
        assert_eq!(millis_saturating(Duration::MAX), u64::MAX);
        assert_eq!(millis_saturating(Duration::from_millis(u64::MAX)), u64::MAX);
        assert_eq!(millis_saturating(Duration::from_millis(7)), 7);
    }
}
