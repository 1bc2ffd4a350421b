//! `strata-audit verify`: a clean log verifies; an edited, deleted or truncated line fails.
#![cfg(feature = "security")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

use std::process::Command;

use strata::security::access::Action;
use strata::security::audit::{AuditRecord, AuditSink, JsonLinesAuditSink, Outcome};

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_strata-audit")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn verify_detects_edits_deletions_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let sink = JsonLinesAuditSink::open(&log).unwrap();
    for i in 0..10 {
        let outcome = if i % 3 == 0 { Outcome::Denied } else { Outcome::Allowed };
        let r = AuditRecord::now(
            &format!("user{i}"),
            Action::Read,
            "orders",
            "default",
            Some(format!("{i:032x}")),
            outcome,
        );
        sink.record(&r).unwrap();
    }
    drop(sink);
    let path = log.to_str().unwrap();
    let (code, text) = run(&["verify", path]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("10 line(s) verified"), "{text}");
    let last = text.trim().rsplit(' ').next().unwrap().to_owned();
    assert_eq!(run(&["verify", path, "--expect-last", &last]).0, 0);

    let original = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    // An edited line.
    std::fs::write(&log, original.replacen("user4", "user5", 1)).unwrap();
    let (code, text) = run(&["verify", path]);
    assert_eq!(code, 1, "edit not detected: {text}");
    // A deleted line.
    let mut without: Vec<&str> = lines.clone();
    without.remove(6);
    std::fs::write(&log, without.join("\n") + "\n").unwrap();
    assert_eq!(run(&["verify", path]).0, 1, "deletion not detected");
    // A truncated tail chains correctly but no longer ends at the anchored hash.
    std::fs::write(&log, lines[..7].join("\n") + "\n").unwrap();
    assert_eq!(run(&["verify", path]).0, 0);
    let (code, text) = run(&["verify", path, "--expect-last", &last]);
    assert_eq!(code, 1, "truncation not detected: {text}");
    assert_eq!(run(&["frobnicate"]).0, 2);
}
