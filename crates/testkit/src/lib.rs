//! Test support shared by Strata's integration tests and `cargo xtask` (a dev-dependency only;
//! the standard library only).
//!
//! - `lib.rs`: when a missing service fails a test ([`services_required`], [`missing_service`]).
//! - [`redis`]: throwaway `redis-server` processes (standalone, AOF, clusters with replicas).
//!
//! One rule decides whether a missing service (Redis, PostgreSQL, MariaDB, …) fails a test or
//! skips it: [`services_required`]. It is true when the `CI` environment variable is set to
//! `true` or `1` (any case) — which `cargo xtask test` and `cargo xtask ci` always set — and false
//! otherwise, so a contributor without a database can still run `cargo test` and see what was
//! skipped.
//!
//! ```
//! use strata_testkit::{missing_service, services_required};
//!
//! fn connect() -> Result<(), String> { Err("connection refused".into()) }
//! if !services_required() {
//!     // Skips (prints a line) instead of failing.
//!     if let Err(e) = connect() {
//!         missing_service("PostgreSQL at 127.0.0.1:5432", &e);
//!     }
//! }
//! ```

pub mod redis;

/// Whether a missing service must fail the test (`CI=true` or `CI=1`, any case) rather than skip
/// it.
#[must_use]
pub fn services_required() -> bool {
    std::env::var("CI").is_ok_and(|v| is_strict(&v))
}

fn is_strict(value: &str) -> bool {
    let v = value.trim();
    v == "1" || v.eq_ignore_ascii_case("true")
}

/// Reports a service the test needs and cannot reach: panics (the test fails) when
/// [`services_required`], otherwise prints a `SKIPPED:` line and returns, and the caller skips.
///
/// # Panics
/// When [`services_required`] is true: a missing service is a failure in CI.
pub fn missing_service(what: &str, error: &dyn std::fmt::Display) {
    assert!(!services_required(), "{what} is unreachable and CI is set: {error} (a missing service is a failure)");
    eprintln!("SKIPPED: {what} unreachable ({error}); set CI=true to make this a failure");
}

#[cfg(test)]
mod tests {
    use super::is_strict;

    #[test]
    fn strict_values() {
        for v in ["true", "TRUE", "True", "1", " true "] {
            assert!(is_strict(v), "{v:?}");
        }
        for v in ["", "0", "false", "yes", "no", "2"] {
            assert!(!is_strict(v), "{v:?}");
        }
    }
}
