//! `cargo xtask features`: what a user compiles for the features they pick, checked with
//! `cargo tree` (normal and build dependencies, every target).
//!
//! Each case names a package and its features and the crates that must stay out of its tree
//! (a crate name also covers its `-`/`_` suffixed family: `hyper` covers `hyper-util`). Control
//! cases name crates that must be in a tree, so a change in `cargo tree`'s output cannot make
//! the check pass by finding nothing.

use crate::{Result, cargo};

/// What a cache-only service that wants metrics must not compile.
const NOT_FOR_CACHE_ONLY: &[&str] =
    &["nvml-wrapper", "axum", "hyper", "opentelemetry", "tracing-opentelemetry", "strata-resource-qos", "strata-gpu"];

/// One `cargo tree` and what it must (not) contain.
struct Case {
    /// The package and feature arguments.
    args: &'static [&'static str],
    /// Crates that must not appear.
    absent: &'static [&'static str],
    /// Crates that must appear (controls).
    present: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        args: &["-p", "strata-telemetry", "--no-default-features", "--features", "prometheus"],
        absent: NOT_FOR_CACHE_ONLY,
        present: &["prometheus"],
    },
    Case {
        args: &["-p", "strata", "--no-default-features", "--features", "prometheus"],
        absent: NOT_FOR_CACHE_ONLY,
        present: &["strata-telemetry", "prometheus"],
    },
    Case {
        args: &["-p", "strata", "--no-default-features", "--features", "redis,sql,consistency,security,prometheus"],
        absent: NOT_FOR_CACHE_ONLY,
        present: &["prometheus", "deadpool-redis", "sea-orm"],
    },
    Case { args: &["-p", "strata", "--no-default-features"], absent: NOT_FOR_CACHE_ONLY, present: &[] },
    Case {
        args: &["-p", "strata-telemetry", "--no-default-features", "--features", "otel"],
        absent: &["prometheus", "axum", "hyper", "nvml-wrapper", "strata-resource-qos", "strata-gpu"],
        present: &["opentelemetry"],
    },
    Case {
        args: &["-p", "strata-telemetry", "--no-default-features", "--features", "admin"],
        absent: &["opentelemetry", "nvml-wrapper", "strata-resource-qos", "strata-gpu"],
        present: &["axum", "hyper", "prometheus"],
    },
    Case {
        args: &["-p", "strata", "--no-default-features", "--features", "resources,telemetry"],
        absent: &["nvml-wrapper"],
        present: &["strata-resource-qos", "strata-gpu", "axum"],
    },
    Case { args: &["-p", "strata-gpu", "--no-default-features"], absent: &["nvml-wrapper"], present: &[] },
    Case { args: &["-p", "strata-resource-qos"], absent: &["nvml-wrapper"], present: &["strata-gpu"] },
    // Controls: the defaults and `full` still bring what they promise.
    Case { args: &["-p", "strata-gpu"], absent: &[], present: &["nvml-wrapper"] },
    Case {
        args: &["-p", "strata", "--no-default-features", "--features", "full"],
        absent: &[],
        present: &["nvml-wrapper", "axum", "hyper", "opentelemetry", "prometheus", "strata-resource-qos"],
    },
];

/// Whether crate `name` belongs to the family `pattern` (itself or `pattern-…` / `pattern_…`).
fn in_family(name: &str, pattern: &str) -> bool {
    name == pattern || name.strip_prefix(pattern).is_some_and(|rest| rest.starts_with(['-', '_']))
}

/// The crate names in one `cargo tree`.
fn tree(args: &[&str]) -> Result<Vec<String>> {
    let mut c = cargo();
    c.args(["tree", "-e", "no-dev", "--target", "all", "--prefix", "none", "--format", "{p}"]).args(args);
    let out = c.output().map_err(|e| format!("cargo tree: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo tree {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)));
    }
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Runs every case; all problems are reported together.
pub(crate) fn check() -> Result {
    let mut problems = Vec::new();
    for case in CASES {
        let shown = case.args.join(" ");
        let names = tree(case.args)?;
        for bad in case.absent {
            for n in names.iter().filter(|n| in_family(n, bad)) {
                problems.push(format!("`{shown}` compiles {n} (see `cargo tree -e no-dev -i {n} {shown}`)"));
            }
        }
        for want in case.present {
            if !names.iter().any(|n| n == want) {
                problems.push(format!("`{shown}` no longer compiles {want}"));
            }
        }
        eprintln!("  {shown}: {} crates", names.len());
    }
    if problems.is_empty() {
        eprintln!("features: ok ({} dependency trees)", CASES.len());
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::in_family;

    #[test]
    fn families_cover_suffixed_crates_only() {
        assert!(in_family("hyper", "hyper"));
        assert!(in_family("hyper-util", "hyper"));
        assert!(in_family("opentelemetry_sdk", "opentelemetry"));
        assert!(in_family("nvml-wrapper-sys", "nvml-wrapper"));
        assert!(!in_family("hyperx", "hyper"));
        assert!(!in_family("tracing-opentelemetry", "opentelemetry"));
    }
}
