//! `strata-audit`: checks the hash chain of a JSON-lines audit log written by
//! `strata_governance::JsonLinesAuditSink` (re-exported as `strata_security::JsonLinesAuditSink`
//! and `strata_resource_qos::JsonLinesAuditSink`): cache access and resource-manager logs alike.
//!
//! ```text
//! strata-audit verify <log> [--expect-last <hash>] [--secret-env VAR]
//! ```
//!
//! Exit status 0 when every line chains to the one before (and, with `--expect-last`, the last
//! hash is the one anchored elsewhere, which detects a truncated tail); 1 with the first broken
//! line otherwise; 2 on bad usage. `--secret-env` names an environment variable holding the
//! secret of a keyed (HMAC) chain.

use std::process::ExitCode;

use strata::security::audit;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: strata-audit verify <log> [--expect-last <hash>] [--secret-env VAR]";
    let [cmd, path, rest @ ..] = args.as_slice() else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    if cmd != "verify" {
        eprintln!("{usage}");
        return ExitCode::from(2);
    }
    let (mut expect_last, mut secret_env) = (None, None);
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        match (flag.as_str(), it.next()) {
            ("--expect-last", Some(v)) => expect_last = Some(v.clone()),
            ("--secret-env", Some(v)) => secret_env = Some(v.clone()),
            _ => {
                eprintln!("{usage}");
                return ExitCode::from(2);
            }
        }
    }
    let report = match &secret_env {
        Some(var) => match std::env::var(var) {
            Ok(secret) => audit::verify_keyed(path, secret.as_bytes()),
            Err(_) => {
                eprintln!("strata-audit: environment variable {var} is not set");
                return ExitCode::from(2);
            }
        },
        None => audit::verify(path),
    };
    match report {
        Ok(r) => {
            if let Some(want) = expect_last.filter(|w| *w != r.last_hash) {
                eprintln!(
                    "strata-audit: {path}: {} line(s) chain correctly but the last hash is {}, expected {want}: \
                     the log was truncated or replaced",
                    r.lines, r.last_hash
                );
                return ExitCode::from(1);
            }
            println!("{path}: {} line(s) verified; last hash {}", r.lines, r.last_hash);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("strata-audit: {path}: {e}");
            ExitCode::from(1)
        }
    }
}
