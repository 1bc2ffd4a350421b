//! `cargo xtask fuzz [CASES]`: the long fuzz run of strata-security's decoders (frame, zstd,
//! AES-GCM, codec pipeline, bus messages, audit lines, keyring text) in a release build.
//!
//! CASES (default 10,000,000; `_` separators allowed) is passed as `STRATA_FUZZ_LONG_CASES` to
//! the ignored `fuzz_long` test, which prints how many inputs it executed and fails on the first
//! panic with the input that caused it.

use crate::{Result, cargo, run};

/// Runs the long fuzz test.
pub(crate) fn fuzz(args: &[String]) -> Result {
    let cases = match args.first() {
        Some(n) => {
            let digits = n.replace('_', "");
            digits.parse::<u64>().map_err(|_| format!("CASES must be a number, got {n:?}"))?;
            digits
        }
        None => "10000000".to_owned(),
    };
    eprintln!("fuzzing strata-security decoders with {cases} inputs (release build)");
    run(cargo()
        .args(["test", "-p", "strata-security", "--release", "--test", "fuzz", "--", "--ignored", "--nocapture"])
        .arg("fuzz_long")
        .env("STRATA_FUZZ_LONG_CASES", cases))
}
