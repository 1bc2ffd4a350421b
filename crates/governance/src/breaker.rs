//! Circuit-breaker settings and states, shared by the cache tiers' breakers (cache-core) and
//! the resource manager's per-resource breakers (resource-qos). The state machines stay with
//! their users; what a breaker is configured with and what state it reports is defined once.
//!
//! Configuration files may use either the current keys (`failure_rate_threshold`,
//! `minimum_calls`, `sliding_window`, `open_wait` as a humantime string such as `"5s"`,
//! `permitted_half_open_calls`, `enabled`) or the resource manager's older ones
//! (`failure_rate`, `min_calls`, `window`, `open_ms`, `half_open_probes`). Serialization writes
//! the current names, with the open time as `open_ms` (milliseconds).
//!
//! ```
//! use std::time::Duration;
//! use strata_governance::BreakerConfig;
//!
//! let old: BreakerConfig = toml::from_str("window = 20\nmin_calls = 5\nopen_ms = 2500").unwrap();
//! assert_eq!((old.sliding_window, old.minimum_calls), (20, 5));
//! assert_eq!(old.open_wait, Duration::from_millis(2500));
//! let new: BreakerConfig = toml::from_str("sliding_window = 20\nminimum_calls = 5\nopen_wait = \"2500ms\"").unwrap();
//! assert_eq!(old, new);
//! assert!(BreakerConfig { minimum_calls: 0, ..BreakerConfig::default() }.validate().is_err());
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Largest accepted [`BreakerConfig::sliding_window`] (breakers keep one flag per slot).
pub const MAX_SLIDING_WINDOW: u32 = 1 << 20;

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BreakerState {
    /// Calls (admissions) go through.
    Closed,
    /// Calls fail fast.
    Open,
    /// A few probe calls go through.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// A [`BreakerConfig`] setting is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct BreakerConfigError {
    /// The setting (`failure_rate_threshold`, `minimum_calls`, …).
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// Circuit-breaker settings (count-based sliding window).
///
/// - **Closed**: the last `sliding_window` outcomes are kept; once at least `minimum_calls` are
///   recorded and the failure rate reaches `failure_rate_threshold`, the breaker opens.
/// - **Open**: calls fail fast for `open_wait`, then the breaker goes half-open.
/// - **Half-open**: `permitted_half_open_calls` probes; enough successes close it, a failure
///   opens it again.
///
/// [`Default`] suits a cache tier; [`BreakerConfig::resources`] is the resource manager's
/// default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Repr", into = "Repr")]
pub struct BreakerConfig {
    /// Failure rate (0 < r ≤ 1) at or above which the breaker opens.
    pub failure_rate_threshold: f64,
    /// Outcomes that must be recorded before the failure rate is considered.
    pub minimum_calls: u32,
    /// How many of the most recent outcomes are kept (at most [`MAX_SLIDING_WINDOW`]).
    pub sliding_window: u32,
    /// How long the breaker stays open before probing (saturating: a huge value means
    /// "practically forever").
    pub open_wait: Duration,
    /// Probe calls allowed while half-open.
    pub permitted_half_open_calls: u32,
    /// `false` disables the breaker (it never opens).
    pub enabled: bool,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate_threshold: 0.5,
            minimum_calls: 10,
            sliding_window: 50,
            open_wait: Duration::from_secs(1),
            permitted_half_open_calls: 3,
            enabled: true,
        }
    }
}

impl BreakerConfig {
    /// The resource manager's default: a window of 20 admissions, open for 5 s.
    pub fn resources() -> Self {
        Self { sliding_window: 20, open_wait: Duration::from_secs(5), ..Self::default() }
    }

    /// Checks the settings (also when `enabled` is false, so that a config turned on later is
    /// known to be valid).
    ///
    /// # Errors
    /// The first setting out of range.
    pub fn validate(&self) -> Result<(), BreakerConfigError> {
        let bad = |field, reason: String| Err(BreakerConfigError { field, reason });
        let r = self.failure_rate_threshold;
        if !(r > 0.0 && r <= 1.0) {
            return bad("failure_rate_threshold", format!("must be in (0, 1], got {r}"));
        }
        if self.minimum_calls == 0 {
            return bad("minimum_calls", "must be greater than zero".into());
        }
        if self.sliding_window < self.minimum_calls {
            return bad(
                "sliding_window",
                format!("must be at least minimum_calls ({}), got {}", self.minimum_calls, self.sliding_window),
            );
        }
        if self.sliding_window > MAX_SLIDING_WINDOW {
            return bad("sliding_window", format!("must be at most {MAX_SLIDING_WINDOW}, got {}", self.sliding_window));
        }
        if self.permitted_half_open_calls == 0 {
            return bad("permitted_half_open_calls", "must be greater than zero".into());
        }
        if self.open_wait.is_zero() {
            return bad("open_wait", "must be positive".into());
        }
        Ok(())
    }
}

/// The serialized form: current names, older aliases, the open time in either spelling.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Repr {
    #[serde(default, alias = "failure_rate", skip_serializing_if = "Option::is_none")]
    failure_rate_threshold: Option<f64>,
    #[serde(default, alias = "min_calls", skip_serializing_if = "Option::is_none")]
    minimum_calls: Option<u32>,
    #[serde(default, alias = "window", skip_serializing_if = "Option::is_none")]
    sliding_window: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    open_wait: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    open_ms: Option<u64>,
    #[serde(default, alias = "half_open_probes", skip_serializing_if = "Option::is_none")]
    permitted_half_open_calls: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
}

impl TryFrom<Repr> for BreakerConfig {
    type Error = BreakerConfigError;

    fn try_from(r: Repr) -> Result<Self, Self::Error> {
        let d = Self::default();
        let open_wait = match (r.open_wait, r.open_ms) {
            (Some(_), Some(_)) => {
                return Err(BreakerConfigError {
                    field: "open_wait",
                    reason: "give open_wait or open_ms, not both".into(),
                });
            }
            (Some(text), None) => humantime::parse_duration(&text)
                .map_err(|e| BreakerConfigError { field: "open_wait", reason: format!("{text:?}: {e}") })?,
            (None, Some(ms)) => Duration::from_millis(ms),
            (None, None) => d.open_wait,
        };
        Ok(Self {
            failure_rate_threshold: r.failure_rate_threshold.unwrap_or(d.failure_rate_threshold),
            minimum_calls: r.minimum_calls.unwrap_or(d.minimum_calls),
            sliding_window: r.sliding_window.unwrap_or(d.sliding_window),
            open_wait,
            permitted_half_open_calls: r.permitted_half_open_calls.unwrap_or(d.permitted_half_open_calls),
            enabled: r.enabled.unwrap_or(d.enabled),
        })
    }
}

impl From<BreakerConfig> for Repr {
    fn from(c: BreakerConfig) -> Self {
        Self {
            failure_rate_threshold: Some(c.failure_rate_threshold),
            minimum_calls: Some(c.minimum_calls),
            sliding_window: Some(c.sliding_window),
            open_wait: None,
            open_ms: Some(u64::try_from(c.open_wait.as_millis()).unwrap_or(u64::MAX)),
            permitted_half_open_calls: Some(c.permitted_half_open_calls),
            enabled: Some(c.enabled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_setting() {
        let ok = BreakerConfig::default();
        assert!(ok.validate().is_ok() && BreakerConfig::resources().validate().is_ok());
        let cases = [
            (BreakerConfig { failure_rate_threshold: 0.0, ..ok.clone() }, "failure_rate_threshold"),
            (BreakerConfig { failure_rate_threshold: f64::NAN, ..ok.clone() }, "failure_rate_threshold"),
            (BreakerConfig { minimum_calls: 0, ..ok.clone() }, "minimum_calls"),
            (BreakerConfig { sliding_window: 9, ..ok.clone() }, "sliding_window"),
            (BreakerConfig { sliding_window: u32::MAX, ..ok.clone() }, "sliding_window"),
            (BreakerConfig { permitted_half_open_calls: 0, ..ok.clone() }, "permitted_half_open_calls"),
            (BreakerConfig { open_wait: Duration::ZERO, ..ok.clone() }, "open_wait"),
        ];
        for (cfg, field) in cases {
            assert_eq!(cfg.validate().map_err(|e| e.field), Err(field), "{cfg:?}");
        }
        assert!(BreakerConfig { open_wait: Duration::MAX, ..ok }.validate().is_ok());
    }

    #[test]
    fn serde_round_trips_and_refuses_unknown_or_doubled_keys() {
        let cfg =
            BreakerConfig { open_wait: Duration::from_millis(1234), enabled: false, ..BreakerConfig::resources() };
        let text = toml::to_string(&cfg).expect("serializes");
        assert!(text.contains("open_ms = 1234"), "{text}");
        assert_eq!(toml::from_str::<BreakerConfig>(&text).expect("parses"), cfg);
        assert_eq!(toml::from_str::<BreakerConfig>("").expect("empty"), BreakerConfig::default());
        assert!(toml::from_str::<BreakerConfig>("nope = 1").is_err());
        assert!(toml::from_str::<BreakerConfig>("open_ms = 1\nopen_wait = \"1s\"").is_err());
        assert!(toml::from_str::<BreakerConfig>("open_wait = \"soon\"").is_err());
        let huge = BreakerConfig { open_wait: Duration::MAX, ..BreakerConfig::default() };
        let json = serde_json::to_value(&huge).expect("serializes");
        assert_eq!(json["open_ms"], u64::MAX, "saturates");
    }
}
