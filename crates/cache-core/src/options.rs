//! Per-entry options: TTL, jitter, early refresh, fail-safe stale limit, negative caching,
//! timeouts and tags.

use std::time::Duration;

use crate::error::ConfigError;

/// The longest duration any entry or lock option may hold: 100 years (365-day years).
///
/// Every tier stores expiry times in 64-bit milliseconds; a TTL, jitter and stale limit of at
/// most this each keep an entry's expiry far inside what Redis (`PX`), the SQL `expires_at`
/// column and frames can represent, so an entry is always stored with a finite expiry.
/// Longer values (`Duration::MAX`, say) are refused by [`EntryOptions::validate`] with a
/// [`ConfigError`] naming the option, rather than saturating into "never expires".
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Checks that `d` is at most [`MAX_DURATION`]; the error names `field`.
pub fn check_max_duration(field: &str, d: Duration) -> Result<(), ConfigError> {
    if d > MAX_DURATION {
        return Err(ConfigError::new(
            field,
            format!("must be at most 100 years ({} s), got {d:?}", MAX_DURATION.as_secs()),
        ));
    }
    Ok(())
}

/// How entries of a cache (or of one `set`) live and are refreshed.
///
/// ```
/// use std::time::Duration;
/// use strata_cache_core::EntryOptions;
/// let opts = EntryOptions::new(Duration::from_secs(60))
///     .jitter(Duration::from_secs(5))
///     .early_refresh_beta(1.0)
///     .stale_limit(Duration::from_secs(3600))
///     .negative_ttl(Duration::from_secs(10))
///     .soft_timeout(Duration::from_millis(100))
///     .hard_timeout(Duration::from_secs(2));
/// assert!(opts.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct EntryOptions {
    /// How long an entry is fresh.
    pub ttl: Duration,
    /// A random extra `[0, jitter]` added to each entry's TTL so that keys written together do
    /// not expire together.
    pub jitter: Duration,
    /// XFetch β: 0 disables probabilistic early refresh; 1 is the paper's default; larger values
    /// refresh earlier.
    pub early_refresh_beta: f64,
    /// How long past its freshness an entry may still be served when the loader fails or is slow
    /// (fail-safe). Zero disables fail-safe.
    pub stale_limit: Duration,
    /// After serving a stale value because the loader failed, treat it as fresh for this long so
    /// that a failing source is not hammered.
    pub fail_safe_throttle: Duration,
    /// Cache "not found" answers for this long; `None` disables negative caching.
    pub negative_ttl: Option<Duration>,
    /// When a stale fallback exists, stop waiting for the loader after this long and serve the
    /// stale value (the load continues in the background and updates the cache).
    pub soft_timeout: Option<Duration>,
    /// Give up on the loader after this long.
    pub hard_timeout: Option<Duration>,
    /// Tags attached to entries (for tag invalidation).
    pub tags: Vec<String>,
}

impl Default for EntryOptions {
    fn default() -> Self {
        Self::new(Duration::from_secs(300))
    }
}

impl EntryOptions {
    /// Options with `ttl` and everything else off.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            jitter: Duration::ZERO,
            early_refresh_beta: 0.0,
            stale_limit: Duration::ZERO,
            fail_safe_throttle: Duration::from_secs(1),
            negative_ttl: None,
            soft_timeout: None,
            hard_timeout: None,
            tags: Vec::new(),
        }
    }

    /// Sets the TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the jitter.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the XFetch β.
    pub fn early_refresh_beta(mut self, beta: f64) -> Self {
        self.early_refresh_beta = beta;
        self
    }

    /// Sets the fail-safe stale limit.
    pub fn stale_limit(mut self, limit: Duration) -> Self {
        self.stale_limit = limit;
        self
    }

    /// Sets the fail-safe throttle.
    pub fn fail_safe_throttle(mut self, d: Duration) -> Self {
        self.fail_safe_throttle = d;
        self
    }

    /// Enables negative caching.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Sets the soft timeout.
    pub fn soft_timeout(mut self, d: Duration) -> Self {
        self.soft_timeout = Some(d);
        self
    }

    /// Sets the hard timeout.
    pub fn hard_timeout(mut self, d: Duration) -> Self {
        self.hard_timeout = Some(d);
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Checks the options, naming the setting that is wrong. Every duration must be at most
    /// [`MAX_DURATION`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ttl.is_zero() {
            return Err(ConfigError::new("ttl", "must be greater than zero"));
        }
        let durations = [
            ("ttl", Some(self.ttl)),
            ("jitter", Some(self.jitter)),
            ("stale_limit", Some(self.stale_limit)),
            ("fail_safe_throttle", Some(self.fail_safe_throttle)),
            ("negative_ttl", self.negative_ttl),
            ("soft_timeout", self.soft_timeout),
            ("hard_timeout", self.hard_timeout),
        ];
        for (field, d) in durations {
            if let Some(d) = d {
                check_max_duration(field, d)?;
            }
        }
        if !self.early_refresh_beta.is_finite() || self.early_refresh_beta < 0.0 {
            return Err(ConfigError::new(
                "early_refresh_beta",
                format!("must be a finite number >= 0, got {}", self.early_refresh_beta),
            ));
        }
        if self.negative_ttl.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new("negative_ttl", "must be greater than zero when set"));
        }
        if let (Some(s), Some(h)) = (self.soft_timeout, self.hard_timeout)
            && s > h
        {
            return Err(ConfigError::new("soft_timeout", format!("({s:?}) must not exceed hard_timeout ({h:?})")));
        }
        if self.soft_timeout.is_some_and(|d| d.is_zero()) || self.hard_timeout.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new("timeouts", "must be greater than zero when set"));
        }
        if self.tags.len() > crate::frame::MAX_TAGS {
            return Err(ConfigError::new(
                "tags",
                format!("at most {} tags per entry, got {}", crate::frame::MAX_TAGS, self.tags.len()),
            ));
        }
        if let Some(t) = self.tags.iter().find(|t| t.is_empty() || t.len() > crate::frame::MAX_TAG_LEN) {
            return Err(ConfigError::new(
                "tags",
                format!("each tag must be 1..={} bytes, got {}", crate::frame::MAX_TAG_LEN, t.len()),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: Duration = Duration::from_nanos(1);

    /// Every duration option over the class ZERO, 1 ns, the maximum and its neighbours, MAX.
    #[test]
    fn every_duration_is_bounded_by_max_duration() {
        type Set = fn(EntryOptions, Duration) -> EntryOptions;
        let fields: [(&str, Set, bool); 7] = [
            ("ttl", |o, d| o.ttl(d), false),
            ("jitter", |o, d| o.jitter(d), true),
            ("stale_limit", |o, d| o.stale_limit(d), true),
            ("fail_safe_throttle", |o, d| o.fail_safe_throttle(d), true),
            ("negative_ttl", |o, d| o.negative_ttl(d), false),
            ("soft_timeout", |o, d| o.soft_timeout(d).hard_timeout(d), false),
            ("hard_timeout", |o, d| o.hard_timeout(d), false),
        ];
        let base = EntryOptions::new(Duration::from_secs(60));
        for (field, set, zero_ok) in fields {
            for (d, ok) in [
                (Duration::ZERO, zero_ok),
                (NS, true),
                (Duration::from_secs(1), true),
                (MAX_DURATION - NS, true),
                (MAX_DURATION, true),
                (MAX_DURATION + NS, false),
                (MAX_DURATION * 2, false),
                (Duration::from_secs(u64::MAX), false),
                (Duration::MAX, false),
            ] {
                let r = set(base.clone(), d).validate();
                assert_eq!(r.is_ok(), ok, "{field} = {d:?}: {r:?}");
                if let Err(e) = r {
                    assert!(e.field == field || (field.ends_with("_timeout") && e.field == "timeouts"), "{field}: {e}");
                    if d > MAX_DURATION {
                        assert!(e.message.contains("at most 100 years"), "{e}");
                    }
                }
            }
        }
    }

    #[test]
    fn longest_accepted_options_give_a_finite_expiry_every_tier_can_store() {
        let o = EntryOptions::new(MAX_DURATION).jitter(MAX_DURATION).stale_limit(MAX_DURATION);
        o.validate().unwrap();
        let now = crate::Timestamp(4_102_444_800_000); // 2100-01-01
        for unit in [0.0, 0.5, 1.0] {
            let m = crate::expiry::new_meta(&o, now, Duration::ZERO, false, 1, unit);
            assert!(m.expires_at < crate::Timestamp::MAX);
            // Redis (signed 64-bit ms, PX below 2^53) and SQL (`i64` column) hold it.
            assert!(m.expires_at.as_millis() - now.as_millis() < 1 << 53);
            assert!(i64::try_from(m.expires_at.as_millis()).is_ok());
        }
    }
}
