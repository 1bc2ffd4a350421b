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

/// The resource manager writes the same hash-chained log: `strata-audit verify` accepts it as
/// written and names the first edited line.
#[cfg(feature = "gpu")]
#[test]
fn verify_checks_a_resource_managers_log() {
    use std::sync::Arc;
    use strata::resource_qos::{AllocationRequest, ResourceKind, ResourceManager};

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("resources.jsonl");
    let sink = Arc::new(JsonLinesAuditSink::open(&log).unwrap());
    let m = ResourceManager::builder().capacity(ResourceKind::Cpu, 1000).audit_sink(sink).build().unwrap();
    let a = m.try_allocate(AllocationRequest::new("ml", "alice").request(ResourceKind::Cpu, 600)).unwrap();
    assert!(m.try_allocate(AllocationRequest::new("ml", "bob").request(ResourceKind::Cpu, 600)).is_err());
    drop(a);
    drop(m);
    let path = log.to_str().unwrap();
    let (code, text) = run(&["verify", path]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("3 line(s) verified"), "{text}");

    let original = std::fs::read_to_string(&log).unwrap();
    assert!(original.lines().all(|l| l.contains("\"cache\":\"resources\"")), "{original}");
    // Rewriting who was denied breaks the chain at that line.
    std::fs::write(&log, original.replacen("\"bob\"", "\"eve\"", 1)).unwrap();
    let (code, text) = run(&["verify", path]);
    assert_eq!(code, 1, "edit not detected: {text}");
    assert!(text.contains("line 2"), "{text}");
}
