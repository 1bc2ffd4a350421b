//! `[caches.NAME.security]` from TOML and the environment: a configured cache encrypts what it
//! writes to L2 (memory) and L3 (SQLite), hashes its key ids, audits refused frames into a
//! keyed hash-chained log; secrets come only from files or variables; bad settings fail with
//! errors that name the setting and never show a secret. Also: `docs/config-example.toml` loads.
#![cfg(all(feature = "security", feature = "sql"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

use std::path::Path;
use std::sync::Arc;

use strata::config::{CacheSecurity, SecurityConfigError};
use strata::security::{DataKey, KeyId};
use strata::{CacheStats, ConnectError, MemoryTier, Strata, StrataConfig};

const HASH_SECRET: &str = "pii-hash-secret-0123456789";
const AUDIT_SECRET: &str = "audit-chain-secret-0123456789";

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A keyring file with one fresh key; returns its text too (to check that no error shows it).
fn keyring_file(dir: &Path) -> (std::path::PathBuf, String) {
    let line = DataKey::generate(KeyId(1)).unwrap().to_line();
    let path = dir.join("people.keys");
    std::fs::write(&path, format!("{}\n", line.as_str())).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    (path, line.to_string())
}

fn secure_toml(dir: &Path, keys: &Path) -> String {
    std::fs::write(dir.join("hash.secret"), format!("{HASH_SECRET}\n")).unwrap();
    format!(
        r#"
        [sql]
        url = "sqlite://{db}?mode=rwc"

        [caches.people]
        ttl = "10m"
        stale_limit = "10m"

        [caches.people.security]
        encryption = {{ key_file = "{keys}" }}
        pii = {{ max_ttl = "1h", hash_secret_file = "{hash}" }}
        audit = {{ path = "{audit}", keyed_secret_env = "PEOPLE_AUDIT_SECRET" }}
        "#,
        db = dir.join("l3.db").display(),
        keys = keys.display(),
        hash = dir.join("hash.secret").display(),
        audit = dir.join("audit.jsonl").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_cache_encrypts_hashes_ids_and_audits() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, _) = keyring_file(dir.path());
    let config = StrataConfig::from_toml(&secure_toml(dir.path(), &keys)).unwrap();
    assert!(config.caches["people"].security.is_some());

    // The runtime resolves the security from the process environment; the audit secret's
    // variable is not set in this process, so resolve explicitly with a lookup (edition 2024:
    // tests cannot set variables) and check the environment path separately below.
    let settings = config.caches["people"].security.clone().unwrap();
    let lookup = |var: &str| (var == "PEOPLE_AUDIT_SECRET").then(|| AUDIT_SECRET.to_owned());
    let resolved = CacheSecurity::resolve_with("people", &settings, &lookup).unwrap();
    assert!(resolved.codec().is_some() && resolved.pii_policy().is_some() && resolved.audit_sink().is_some());
    drop(resolved);
    let missing = Strata::builder().config(config.clone()).connect().await.unwrap_err();
    assert!(
        matches!(&missing, ConnectError::Config(e) if e.field == "caches.people.security.audit"
            && e.message.contains("PEOPLE_AUDIT_SECRET")),
        "{missing}"
    );

    // Same configuration with the audit secret in a file: the runtime connects.
    std::fs::write(dir.path().join("audit.secret"), AUDIT_SECRET).unwrap();
    let text = secure_toml(dir.path(), &keys).replace(
        "keyed_secret_env = \"PEOPLE_AUDIT_SECRET\"",
        &format!("keyed_secret_file = \"{}\"", dir.path().join("audit.secret").display()),
    );
    let config = StrataConfig::from_toml(&text).unwrap();
    let l2 = MemoryTier::new("l2");
    let stats = CacheStats::new();
    let strata =
        Strata::builder().config(config).tier(Arc::new(l2.clone())).observer(stats.clone()).connect().await.unwrap();
    let people = strata.cache::<String, String>("people").build().await.unwrap();
    assert!(people.codec_names().contains(&"aes-256-gcm"), "{:?}", people.codec_names());
    assert!(people.hashes_key_ids());
    let security = strata.security("people").unwrap();
    security.pii_policy().unwrap().check(&people).unwrap();

    let data = [("alice@example.com", "Alice, SSN 123-45-6789"), ("bob@example.org", "Bob, IBAN DE89370400440532")];
    for (id, value) in data {
        people.set(id.to_owned(), value.to_owned()).await.unwrap();
    }
    people.clear_l1();
    for (id, value) in data {
        assert_eq!(people.get(&id.to_owned()).await.unwrap().as_deref().map(String::as_str), Some(value));
    }

    // L2: the stored frame under the hashed id is neither the value nor the id.
    let hashed = security.pii_policy().unwrap().key_ids().hash_id(data[0].0);
    let key = strata::core::Key::new("people", strata::Namespace::default_namespace(), &hashed).unwrap();
    let stored = l2.raw(&key).expect("the entry is in L2 under its hashed id");
    assert!(!contains(&stored.frame, data[0].1) && !contains(&stored.frame, "Alice"));
    // L3: the SQLite files hold neither values nor ids.
    let mut sqlite = Vec::new();
    for suffix in ["", "-wal"] {
        if let Ok(b) = std::fs::read(format!("{}{suffix}", dir.path().join("l3.db").display())) {
            sqlite.extend(b);
        }
    }
    assert!(sqlite.len() > 4096, "the SQLite tier wrote its file");
    for (id, value) in data {
        for needle in [id, value, id.split('@').next().unwrap()] {
            assert!(!contains(&sqlite, needle), "plaintext {needle:?} in SQLite");
        }
    }

    // A tampered L2 frame is refused (L3 answers) and audited.
    let mut bad = stored.clone();
    let mut frame = bad.frame.to_vec();
    let last = frame.len() - 1;
    frame[last] ^= 0x01;
    bad.frame = frame.into();
    l2.put_raw(&key, bad);
    people.clear_l1();
    assert_eq!(people.get(&data[0].0.to_owned()).await.unwrap().as_deref().map(String::as_str), Some(data[0].1));
    assert!(stats.decode_errors() >= 1);
    let log = dir.path().join("audit.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() >= 1 && text.contains("\"rejected\""), "{text}");
    assert!(!text.contains("alice"), "the audit log holds no key: {text}");
    let report = strata::security::audit::verify_keyed(&log, AUDIT_SECRET.as_bytes()).unwrap();
    assert!(report.lines >= 1);
    assert!(strata::security::audit::verify(&log).is_err(), "the chain is keyed");
}

#[test]
fn secrets_come_from_variables_named_in_the_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let line = DataKey::generate(KeyId(7)).unwrap().to_line().to_string();
    let text = format!(
        "[caches.people]\nttl = \"5m\"\n[caches.people.security]\nencryption = {{ key_env = \"STRATA_KEY_PEOPLE\" }}\n\
         audit = {{ path = \"{}\" }}\n",
        dir.path().join("a.jsonl").display()
    );
    // The secret's variable is a secret, not an unknown setting; nested overrides apply.
    let env =
        |pairs: &[(&str, &str)]| pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect::<Vec<_>>();
    let config = StrataConfig::from_toml_with_env(
        &text,
        env(&[
            ("STRATA_KEY_PEOPLE", &line),
            ("STRATA_CACHES__PEOPLE__SECURITY__PII__MAX_TTL", "1h"),
            ("STRATA_CACHES__PEOPLE__SECURITY__PII__HASH_SECRET_ENV", "STRATA_PII_PEOPLE"),
            ("STRATA_PII_PEOPLE", HASH_SECRET),
        ]),
    )
    .unwrap();
    let s = config.caches["people"].security.clone().unwrap();
    assert_eq!(s.pii.as_ref().unwrap().max_ttl.0, std::time::Duration::from_secs(3600));
    assert_eq!(s.pii.as_ref().unwrap().hash_secret_env.as_deref(), Some("STRATA_PII_PEOPLE"));
    assert!(!format!("{config:?}").contains(&line[3..]), "the key is not in the configuration");
    let lookup = |var: &str| match var {
        "STRATA_KEY_PEOPLE" => Some(line.clone()),
        "STRATA_PII_PEOPLE" => Some(HASH_SECRET.to_owned()),
        _ => None,
    };
    let r = CacheSecurity::resolve_with("people", &s, &lookup).unwrap();
    assert!(r.codec().is_some() && r.pii_policy().is_some());
    // An unrelated STRATA_ variable is still a typo.
    let err = StrataConfig::from_toml_with_env(&text, env(&[("STRATA_KEY_OTHER", "x")])).unwrap_err();
    assert_eq!(err.field, "STRATA_KEY_OTHER");
}

#[test]
fn bad_security_settings_fail_with_errors_that_name_the_setting() {
    const INLINE_KEY: &str = "1:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I=";
    let base = "[caches.p]\nttl = \"5m\"\n[caches.p.security]\n";
    type Case<'a> = (&'a str, &'a str, &'a str);
    let cases: &[Case<'_>] = &[
        (
            "encryption = { key = \"1:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I=\" }",
            "caches.p.security.encryption.key",
            "never written in the configuration",
        ),
        (
            "pii = { max_ttl = \"1h\", hash_secret = \"s3cr3t-s3cr3t-s3cr3t\" }",
            "caches.p.security.pii.hash_secret",
            "hash_secret_file",
        ),
        (
            "audit = { path = \"a\", keyed_secret = \"s3cr3t-s3cr3t-s3cr3t\" }",
            "caches.p.security.audit.keyed_secret",
            "keyed_secret_env",
        ),
        ("password = \"hunter2hunter2\"", "caches.p.security.password", "key_file"),
        ("encryption = { }", "caches.p.security.encryption", "exactly one of `key_file` and `key_env`"),
        ("encryption = { key_file = \"k\", key_env = \"K\" }", "caches.p.security.encryption", "exactly one"),
        (
            "encryption = { key_env = \"1-BAD\" }",
            "caches.p.security.encryption.key_env",
            "not an environment variable name",
        ),
        ("pii = { max_ttl = \"1h\", hash_secret_env = \"S\" }", "caches.p.security.pii", "must encrypt"),
        (
            "encryption = { key_env = \"K\" }\npii = { max_ttl = \"0s\", hash_secret_env = \"S\" }",
            "caches.p.security.pii.max_ttl",
            "greater than zero",
        ),
        (
            "encryption = { key_env = \"K\" }\npii = { max_ttl = \"1m\", hash_secret_env = \"S\" }",
            "caches.p.security.pii.max_ttl",
            "over the PII limit of 1m",
        ),
        (
            "encryption = { key_env = \"K\" }\npii = { max_ttl = \"soon\", hash_secret_env = \"S\" }",
            "config",
            "invalid duration",
        ),
        ("audit = { path = \"\" }", "caches.p.security.audit.path", "empty"),
        ("compress = 3", "config", "unknown field"),
    ];
    for (section, field, needle) in cases {
        let text = format!("{base}{section}\n");
        let err = StrataConfig::from_toml(&text).unwrap_err();
        assert_eq!(err.field, *field, "{section}: {err}");
        assert!(err.message.contains(needle), "{section}: {err}");
        for secret in [INLINE_KEY, "s3cr3t", "hunter2"] {
            assert!(!err.to_string().contains(secret), "{section}: the error shows the secret: {err}");
        }
    }

    // What the settings name is read when the runtime is built.
    let dir = tempfile::tempdir().unwrap();
    let resolve = |section: &str| {
        let text = format!("{base}{section}\n");
        let config = StrataConfig::from_toml(&text).unwrap();
        let s = config.caches["p"].security.clone().unwrap();
        CacheSecurity::resolve_with("p", &s, &|var| (var == "SHORT").then(|| "tiny5".to_owned())).unwrap_err()
    };
    let missing = dir.path().join("missing.keys");
    let e = resolve(&format!("encryption = {{ key_file = \"{}\" }}", missing.display()));
    assert!(matches!(&e, SecurityConfigError::File { path, .. } if path.contains("missing.keys")), "{e}");
    assert_eq!(e.field(), "caches.p.security.encryption.key_file");
    let short = dir.path().join("short.keys");
    std::fs::write(&short, "1:AAAAAAAAAAAAAAAAAAAAAA==\n").unwrap();
    let e = resolve(&format!("encryption = {{ key_file = \"{}\" }}", short.display()));
    assert!(matches!(e, SecurityConfigError::Key { .. }) && e.to_string().contains("must be 32 bytes"), "{e}");
    let e = resolve("encryption = { key_env = \"NOT_SET_ANYWHERE\" }");
    assert!(matches!(&e, SecurityConfigError::EnvMissing { var, .. } if var == "NOT_SET_ANYWHERE"), "{e}");
    let (keys, key_text) = keyring_file(dir.path());
    let e = resolve(&format!(
        "encryption = {{ key_file = \"{}\" }}\npii = {{ max_ttl = \"1h\", hash_secret_env = \"SHORT\" }}",
        keys.display()
    ));
    assert!(matches!(e, SecurityConfigError::Secret { .. }) && !e.to_string().contains("tiny5"), "{e}");
    assert!(e.to_string().contains("at least 16 bytes"), "{e}");
    let e = resolve(&format!("audit = {{ path = \"{}\" }}", dir.path().display()));
    assert!(matches!(e, SecurityConfigError::Audit { .. }), "{e}");
    assert!(!e.to_string().contains(&key_text[2..]));
}

/// `build()` cannot fail: a cache whose security cannot be resolved fails closed (writes are
/// refused with the reason) instead of running unprotected.
#[tokio::test]
async fn an_unresolvable_security_section_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[caches.p.security]\nencryption = {{ key_file = \"{}\" }}\n",
        dir.path().join("missing.keys").display()
    );
    let config = StrataConfig::from_toml(&text).unwrap();
    let l2 = MemoryTier::new("l2");
    let strata = Strata::builder().config(config).tier(Arc::new(l2.clone())).build();
    assert!(strata.security("p").is_none());
    let p = strata.cache::<u64, String>("p").build().await.unwrap();
    let err = p.set(1, "secret value".into()).await.unwrap_err();
    assert!(err.to_string().contains("missing.keys"), "{err}");
    assert!(l2.is_empty(), "nothing left the process");
}

#[test]
fn the_example_configuration_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config-example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = StrataConfig::from_toml(&text).unwrap();
    let s = config.caches["people"].security.as_ref().unwrap();
    assert!(s.encryption.is_some() && s.pii.is_some() && s.audit.is_some());
}
