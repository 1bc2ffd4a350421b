//! SecureCache: the access matrix (no cross-namespace access without a grant), denials as
//! typed errors and audit records, audit on file with a verified chain, PII policy checks.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use strata_cache_core::{Cache, EntryOptions, MemoryTier, Postcard};
use strata_security::audit::{self, AuditRecord, AuditSink};
use strata_security::{
    AccessPolicy, Action, AesGcmCodec, AuditError, AuditLevel, HmacKeyIds, JsonLinesAuditSink, Keyring,
    MemoryAuditSink, Outcome, PiiPolicy, PiiViolation, Principal, RoleBasedPolicy, SecureCache, SecureError,
    correlation,
};

const NAMESPACES: [&str; 3] = ["tenant-a", "tenant-b", "shared"];

fn policy() -> RoleBasedPolicy {
    RoleBasedPolicy::builder()
        .grant("a-rw", [Action::Read, Action::Write], "users", "tenant-a")
        .grant("b-rw", [Action::Read, Action::Write, Action::Invalidate], "users", "tenant-b")
        .grant("shared-read", [Action::Read], "users", "shar?d")
        .grant("admin", [Action::Admin], "*", "*")
        .build()
        .unwrap()
}

async fn secure(audit: Arc<dyn AuditSink>) -> SecureCache<String, String> {
    let cache: Cache<String, String> = Cache::builder("users").namespace("tenant-a").build().await.unwrap();
    SecureCache::new(cache, Arc::new(policy()), audit, HmacKeyIds::new(&[9; 32]).unwrap())
}

#[tokio::test]
async fn access_matrix_has_no_cross_namespace_access_without_a_grant() {
    let audit = Arc::new(MemoryAuditSink::new());
    let base = secure(audit.clone()).await;
    let admin = Principal::new("root", ["admin"]);
    for ns in NAMESPACES {
        base.in_namespace(ns).unwrap().set(&admin, "k".into(), format!("{ns} data")).await.unwrap();
    }
    let principals = [
        (Principal::new("alice", ["a-rw"]), vec!["tenant-a"]),
        (Principal::new("bob", ["b-rw"]), vec!["tenant-b"]),
        (Principal::new("carol", ["shared-read"]), vec!["shared"]),
        (Principal::new("dave", ["a-rw", "shared-read"]), vec!["tenant-a", "shared"]),
        (Principal::new("eve", [] as [&str; 0]), vec![]),
        (Principal::new("mallory", ["A-RW", "a-rw "]), vec![]),
    ];
    let mut checked = 0;
    for (p, readable) in &principals {
        for ns in NAMESPACES {
            let h = base.in_namespace(ns).unwrap();
            let got = h.get(p, &"k".to_string()).await;
            if readable.contains(&ns) {
                assert_eq!(got.unwrap().as_deref(), Some(&format!("{ns} data")), "{} in {ns}", p.id());
            } else {
                match got {
                    Err(SecureError::Denied(d)) => {
                        assert_eq!((d.principal.as_str(), d.action, d.namespace.as_str()), (p.id(), Action::Read, ns));
                    }
                    other => panic!("{} read {ns}: {other:?}", p.id()),
                }
                // Writes and invalidations without a grant are refused too, and change nothing.
                assert!(matches!(h.set(p, "k".into(), "overwritten".into()).await, Err(SecureError::Denied(_))));
                assert!(matches!(h.invalidate(p, &"k".to_string()).await, Err(SecureError::Denied(_))));
                assert_eq!(h.get(&admin, &"k".to_string()).await.unwrap().as_deref(), Some(&format!("{ns} data")));
            }
            checked += 1;
        }
    }
    assert_eq!(checked, principals.len() * NAMESPACES.len());
    let records = audit.records();
    let denied = records.iter().filter(|r| r.outcome == Outcome::Denied).count();
    // 6 principals × 3 namespaces = 18 cells, 5 readable: 13 denied cells × 3 denied calls.
    assert_eq!(denied, 13 * 3);
    let hash = HmacKeyIds::new(&[9; 32]).unwrap().hash_parts(&[b"users", b"tenant-b", b"k"]);
    assert!(records.iter().any(|r| r.namespace == "tenant-b" && r.key_hash.as_deref() == Some(hash.as_str())));
    assert!(records.iter().all(|r| r.key_hash.as_deref().is_some_and(|h| h.len() == 32 && h != "k")));
}

#[tokio::test]
async fn invalidate_and_tags_need_the_invalidate_action() {
    let audit = Arc::new(MemoryAuditSink::new());
    let s = secure(audit.clone()).await.in_namespace("tenant-b").unwrap();
    let bob = Principal::new("bob", ["b-rw"]);
    let carol = Principal::new("carol", ["shared-read"]);
    s.set(&bob, "k".into(), "v".into()).await.unwrap();
    assert!(matches!(s.invalidate_tag(&carol, "t").await, Err(SecureError::Denied(_))));
    s.invalidate_tag(&bob, "t").await.unwrap();
    s.invalidate(&bob, &"k".to_string()).await.unwrap();
    assert_eq!(s.get(&bob, &"k".to_string()).await.unwrap(), None);
    let actions: Vec<(Action, Outcome)> = audit.records().iter().map(|r| (r.action, r.outcome)).collect();
    assert_eq!(
        actions,
        vec![
            (Action::Write, Outcome::Allowed),
            (Action::Invalidate, Outcome::Denied),
            (Action::Invalidate, Outcome::Allowed),
            (Action::Invalidate, Outcome::Allowed),
            (Action::Read, Outcome::Allowed),
        ]
    );
}

#[tokio::test]
async fn audit_levels_and_correlation_ids() {
    let audit = Arc::new(MemoryAuditSink::new());
    let s = secure(audit.clone()).await.audit_level(AuditLevel::Changes);
    let alice = Principal::new("alice", ["a-rw"]);
    let eve = Principal::new("eve", ["nobody"]);
    correlation::scope(correlation::CorrelationId::new("req-1").unwrap(), async {
        s.set(&alice, "k".into(), "v".into()).await.unwrap();
        s.get(&alice, &"k".to_string()).await.unwrap();
        let _ = s.get(&eve, &"k".to_string()).await;
    })
    .await;
    let recs = audit.records();
    assert_eq!(recs.len(), 2, "the allowed read is not audited at AuditLevel::Changes");
    assert!(recs.iter().all(|r| r.correlation_id.as_deref() == Some("req-1")));
    assert_eq!((recs[1].principal.as_str(), recs[1].outcome), ("eve", Outcome::Denied));
}

struct FailingSink;
impl AuditSink for FailingSink {
    fn record(&self, _: &AuditRecord) -> Result<(), AuditError> {
        Err(AuditError::Io { path: "x".into(), message: "disk full".into() })
    }
}

#[tokio::test]
async fn an_unauditable_operation_is_not_performed() {
    let s = secure(Arc::new(FailingSink)).await;
    let alice = Principal::new("alice", ["a-rw"]);
    assert!(matches!(s.set(&alice, "k".into(), "v".into()).await, Err(SecureError::Audit(_))));
    let open = secure(Arc::new(MemoryAuditSink::new())).await;
    assert_eq!(open.get(&alice, &"k".to_string()).await.unwrap(), None, "the refused set wrote nothing");
}

#[tokio::test]
async fn file_audit_chain_verifies_after_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let sink = Arc::new(JsonLinesAuditSink::open(&path).unwrap());
    let s = secure(sink).await;
    let alice = Principal::new("alice", ["a-rw"]);
    let eve = Principal::new("eve", ["x"]);
    for i in 0..20 {
        s.set(&alice, format!("user-{i}@example.com"), "v".into()).await.unwrap();
        let _ = s.get(&eve, &format!("user-{i}@example.com")).await;
    }
    let report = audit::verify(&path).unwrap();
    assert_eq!(report.lines, 40);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("example.com"), "keys never appear in the log");
}

#[tokio::test]
async fn pii_policy_requires_encryption_and_bounded_lifetime() {
    let policy = PiiPolicy::new(Duration::from_secs(3600), &[3; 32]).unwrap();
    let builder = |encrypt: bool, ttl: u64, stale: u64| {
        let mut b = Cache::<u64, String>::builder("people")
            .tier(Arc::new(MemoryTier::new("l2")))
            .serializer(Postcard)
            .options(EntryOptions::new(Duration::from_secs(ttl)).stale_limit(Duration::from_secs(stale)));
        if encrypt {
            b = b.codec(Arc::new(AesGcmCodec::new(Arc::new(Keyring::generate().unwrap())).unwrap()));
        }
        b
    };
    assert!(policy.build(builder(true, 1800, 1800)).await.is_ok());
    let plain = builder(false, 60, 0).build().await.unwrap();
    assert!(matches!(policy.check(&plain), Err(PiiViolation::NotEncrypted { .. })));
    let unhashed = builder(true, 60, 0).build().await.unwrap();
    assert!(matches!(policy.check(&unhashed), Err(PiiViolation::PlaintextKeys { .. })));
    let built = policy.build(builder(true, 60, 0)).await.unwrap();
    assert!(built.hashes_key_ids(), "PiiPolicy::build installs the keyed key-id hash");
    let long = builder(true, 1800, 1801).key_id_hasher(policy.key_id_hasher()).build().await.unwrap();
    match policy.check(&long) {
        Err(PiiViolation::TtlTooLong { lifetime, .. }) => assert_eq!(lifetime, Duration::from_secs(3601)),
        other => panic!("{other:?}"),
    }
    let e = policy.build(builder(true, 7200, 0)).await.unwrap_err();
    assert!(e.to_string().contains("over the PII limit"), "{e}");
    assert!(PiiPolicy::new(Duration::from_secs(1), b"short").is_err());
    assert!(PiiPolicy::new(Duration::ZERO, &[1; 32]).is_err());
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<SecureCache<String, String>>();
    check::<SecureError>();
    check::<Keyring>();
    check::<strata_security::NamespaceKeyring>();
    check::<AesGcmCodec>();
    check::<JsonLinesAuditSink>();
    check::<RoleBasedPolicy>();
    check::<PiiPolicy>();
    check::<strata_security::Reencryptor>();
    let _: Arc<dyn AccessPolicy> = Arc::new(policy());
}
