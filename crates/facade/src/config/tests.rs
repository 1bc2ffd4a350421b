//! The configuration's unit tests: files, environment overrides, errors that name the setting.

use std::path::Path;

use super::source::read_config_file;
use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
}

const FILE: &str = r#"
        [l1]
        max_entries = 500
        [defaults]
        ttl = "90s"
        [caches.rules]
        preset = "rule"
        ttl = "2h"
        [caches.sessions]
        preset = "session"
    "#;

#[test]
fn file_presets_and_overrides() {
    let c = StrataConfig::from_toml(FILE).unwrap();
    assert_eq!(c.entry_options_for("rules").ttl, Duration::from_secs(7200));
    assert_eq!(c.entry_options_for("rules").stale_limit, Duration::from_secs(86_400), "from the preset");
    assert_eq!(c.entry_options_for("other").ttl, Duration::from_secs(90), "from [defaults]");
    assert_eq!(c.l1_for("other").max_entries, Some(500));
    assert_eq!(c.l1_for("sessions").max_weight, Some(64 * 1024 * 1024));
}

#[test]
fn environment_overrides_the_file() {
    let c = StrataConfig::from_toml_with_env(
        FILE,
        env(&[
            ("STRATA_REDIS_URL", "redis://127.0.0.1:6390"),
            ("STRATA_L1_MAX_ENTRIES", "42"),
            ("STRATA_CACHES__RULES__TTL", "30m"),
            ("STRATA_CACHES__NEW__PRESET", "analytics"),
            ("STRATA_CONFIG", "/ignored"),
        ]),
    )
    .unwrap();
    assert_eq!(c.redis.as_ref().unwrap().url.as_deref(), Some("redis://127.0.0.1:6390"));
    assert!(c.redis.as_ref().unwrap().bus, "the backplane is on by default");
    let c2 = StrataConfig::from_toml_with_env(
        "",
        env(&[
            ("STRATA_REDIS_CLUSTER", "redis://127.0.0.1:7001, redis://127.0.0.1:7002"),
            ("STRATA_SQL_URL", "sqlite://strata.db?mode=rwc"),
            ("STRATA_ADMIN_LISTEN", "127.0.0.1:0"),
        ]),
    )
    .unwrap();
    assert_eq!(c2.redis.as_ref().unwrap().cluster, ["redis://127.0.0.1:7001", "redis://127.0.0.1:7002"]);
    assert_eq!(c2.sql.as_ref().unwrap().url, "sqlite://strata.db?mode=rwc");
    assert_eq!(c.l1.max_entries, Some(42));
    assert_eq!(c.entry_options_for("rules").ttl, Duration::from_secs(1800));
    assert_eq!(c.caches["new"].preset, Some(Preset::Analytics));
    // Mixed-case cache names in the file are found by their upper-case variables.
    let c3 = StrataConfig::from_toml_with_env(
        "[caches.userProfiles]\nttl = \"10m\"",
        env(&[("STRATA_CACHES__USERPROFILES__TTL", "1m")]),
    )
    .unwrap();
    assert_eq!(c3.caches.len(), 1);
    assert_eq!(c3.entry_options_for("userProfiles").ttl, Duration::from_secs(60));
}

#[test]
fn clear_errors_name_the_setting() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("[defaults]\nttl = \"soon\"", &[], "invalid duration"),
        ("[defaults]\nttl = \"0s\"", &[], "defaults.ttl"),
        ("[caches.x]\npreset = \"turbo\"", &[], "unknown variant"),
        ("[caches.x]\nttll = \"1s\"", &[], "ttll"),
        ("[l1]\nmax_entries = 0", &[], "l1.max_entries"),
        ("[caches.\"bad name\"]", &[], "caches.bad name"),
        ("[redis]\nurl = \"localhost\"", &[], "redis.url"),
        ("[redis]\nprefix = \"x:\"", &[], "set `url` (standalone) or `cluster`"),
        ("[redis]\nurl = \"redis://a:1\"\ncluster = [\"redis://b:1\"]", &[], "not both"),
        ("[sql]\nurl = \"oracle://x\"", &[], "sql.url"),
        ("[admin]\nlisten = \"nowhere\"", &[], "admin.listen"),
        ("[sql]\nurl = \"sqlite://x\"\nsweep_interval = \"1ms\"", &[], "sql.sweep_interval"),
        ("[caches.ab]\n[caches.AB]", &[("STRATA_CACHES__AB__TTL", "1m")], "several caches"),
        ("[sql]\nurl = \"postgress://app:s3cret@db/x\"", &[], "postgress://***@db/x"),
        ("", &[("STRATA_REDIS_ULR", "x")], "ulr"),
        ("", &[("STRATA_TURBO", "1")], "STRATA_TURBO"),
        ("", &[("STRATA_CACHES__X", "1")], "STRATA_CACHES__X"),
        ("[caches.y]\nsoft_timeout = \"5s\"\nhard_timeout = \"1s\"", &[], "caches.y.soft_timeout"),
        ("not toml ===", &[], "toml"),
    ];
    for (text, vars, needle) in cases {
        let err = StrataConfig::from_toml_with_env(text, env(vars)).unwrap_err();
        assert!(err.to_string().contains(needle), "{text:?} {vars:?}: {err}");
    }
}

#[test]
fn the_admin_token_comes_from_the_environment_and_is_never_shown() {
    const TOKEN: &str = "98765432109876543";
    // Digits only: still a string, not a number.
    let c = StrataConfig::from_toml_with_env(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        env(&[("STRATA_ADMIN_TOKEN", TOKEN), ("STRATA_ADMIN_ALLOWED_HOSTS", "a.internal, b.internal:9464")]),
    )
    .unwrap();
    let a = c.admin.as_ref().unwrap();
    assert_eq!(a.token.as_ref().map(Secret::expose), Some(TOKEN));
    assert_eq!(a.allowed_hosts, ["a.internal", "b.internal:9464"]);
    assert!(!format!("{c:?}").contains(TOKEN), "Debug shows the token");
    assert!(format!("{c:?}").contains("Secret(<redacted>)"));
    // A token of the wrong type in the file is refused without echoing it.
    let err = StrataConfig::from_toml(&format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = {TOKEN}")).unwrap_err();
    assert!(!err.to_string().contains(TOKEN), "{err}");
    assert!(err.to_string().contains("quoted string"), "{err}");
    // Nor does a syntax error on the token's line (or any line) quote the file.
    for bad in [
        format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = {TOKEN}{TOKEN}"),
        format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = un{TOKEN}quoted"),
        format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}"),
    ] {
        let err = StrataConfig::from_toml(&bad).unwrap_err();
        assert!(!err.to_string().contains(TOKEN), "{err}");
        assert!(err.to_string().contains("line 3"), "{err}");
    }
}

#[cfg(feature = "admin")]
#[test]
fn admin_settings_are_checked_at_load() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("[admin]\nlisten = \"0.0.0.0:9464\"", &[], "admin.token"),
        ("[admin]\nlisten = \"[::]:0\"", &[], "admin.token"),
        ("[admin]\nlisten = \"10.1.2.3:0\"", &[], "admin.token"),
        ("[admin]\nlisten = \"127.0.0.1:0\"", &[("STRATA_ADMIN_TOKEN", "tiny1")], "admin.token"),
        ("[admin]\nlisten = \"127.0.0.1:0\"", &[("STRATA_ADMIN_TOKEN", "has spaces in it, 12345")], "admin.token"),
        ("[admin]\nlisten = \"127.0.0.1:0\"\nallowed_hosts = [\"http://x\"]", &[], "admin.allowed_hosts"),
        ("[admin]\nlisten = \"127.0.0.1:0\"\nheader_timeout = \"0s\"", &[], "admin.header_timeout"),
        ("[admin]\nlisten = \"127.0.0.1:0\"\nidle_timeout = \"400days\"", &[], "admin.idle_timeout"),
        ("[admin]\nlisten = \"127.0.0.1:0\"\nmax_connections = 0", &[], "admin.max_connections"),
    ];
    for (text, vars, field) in cases {
        let err = StrataConfig::from_toml_with_env(text, env(vars)).unwrap_err();
        assert_eq!(err.field, *field, "{text:?} {vars:?}: {err}");
        for (_, v) in *vars {
            assert!(!err.to_string().contains(v), "the error shows the token: {err}");
        }
    }
    let ok = StrataConfig::from_toml_with_env(
        "[admin]\nlisten = \"0.0.0.0:0\"\nallowed_hosts = \"metrics.internal\"\nheader_timeout = \"5s\"",
        env(&[("STRATA_ADMIN_TOKEN", "a-long-enough-admin-token")]),
    )
    .unwrap();
    let (addr, config) = ok.admin.unwrap().admin_config().unwrap();
    assert!(addr.ip().is_unspecified() && config.has_token());
    let (_, plain) = AdminSettings::new("127.0.0.1:0").admin_config().unwrap();
    assert!(!plain.has_token());
}

/// `STRATA_CONFIG` naming something that is not a small regular file: refused with an error
/// naming the path, without reading (a FIFO would block, `/dev/zero` never ends).
#[test]
fn config_files_must_be_small_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |path: &Path, needle: &str| {
        let e = StrataConfig::load(Some(path)).expect_err(needle);
        assert_eq!(e.field, "STRATA_CONFIG");
        assert!(e.message.contains(&path.display().to_string()), "{e}");
        assert!(e.message.contains(needle), "{e}");
    };
    #[cfg(unix)]
    {
        refused(Path::new("/dev/zero"), "a character device");
        refused(Path::new("/dev/null"), "a character device");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        refused(&fifo, "a FIFO");
        let to_zero = dir.path().join("to-zero.toml");
        std::os::unix::fs::symlink("/dev/zero", &to_zero).unwrap();
        refused(&to_zero, "a character device");
    }
    refused(dir.path(), "a directory");
    refused(&dir.path().join("missing.toml"), "cannot read");

    // Sizes: the limit is accepted, one byte over is not.
    let write_comment = |name: &str, len: u64| {
        let path = dir.path().join(name);
        let mut text = String::from("#");
        text.push_str(&"x".repeat(usize::try_from(len).unwrap() - 2));
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        path
    };
    let at_limit = write_comment("at-limit.toml", MAX_CONFIG_BYTES);
    assert_eq!(read_config_file(&at_limit).unwrap().len() as u64, MAX_CONFIG_BYTES);
    refused(&write_comment("over.toml", MAX_CONFIG_BYTES + 1), "at most 1048576");
    refused(&write_comment("far-over.toml", 8 * MAX_CONFIG_BYTES), "at most 1048576");
    let not_utf8 = dir.path().join("latin1.toml");
    std::fs::write(&not_utf8, b"# caf\xe9\n").unwrap();
    refused(&not_utf8, "not UTF-8");

    // A regular file, directly or through a link, is read.
    let file = dir.path().join("strata.toml");
    std::fs::write(&file, "[defaults]\nttl = \"90s\"\n").unwrap();
    let text = read_config_file(&file).unwrap();
    assert_eq!(StrataConfig::from_toml(&text).unwrap().entry_options_for("x").ttl, Duration::from_secs(90));
    #[cfg(unix)]
    {
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read_config_file(&link).unwrap(), text);
    }
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    assert_eq!(read_config_file(&empty).unwrap(), "");
}

/// Durations a tier cannot represent are refused at configuration time, from the file and
/// from the environment, for every duration setting: ZERO, 1 ns, the 100-year maximum and
/// its neighbours, and values far past it.
#[test]
fn durations_past_the_maximum_are_refused() {
    // 100 years of 365 days is 3,153,600,000 s.
    let cases: &[(&str, bool)] = &[
        ("1ns", true),
        ("3153599999s", true),
        ("3153600000s", true),
        ("3153600000s 1ns", false),
        ("3153600001s", false),
        ("101years", false),
        ("18446744073709551615s", false),
    ];
    let fields = [
        ("[defaults]", "ttl", "defaults.ttl", "STRATA_DEFAULTS_TTL"),
        ("[defaults]", "stale_limit", "defaults.stale_limit", "STRATA_DEFAULTS_STALE_LIMIT"),
        ("[defaults]", "jitter", "defaults.jitter", "STRATA_DEFAULTS_JITTER"),
        ("[defaults]", "negative_ttl", "defaults.negative_ttl", "STRATA_DEFAULTS_NEGATIVE_TTL"),
        ("[defaults]", "fail_safe_throttle", "defaults.fail_safe_throttle", "STRATA_DEFAULTS_FAIL_SAFE_THROTTLE"),
        ("[defaults]", "hard_timeout", "defaults.hard_timeout", "STRATA_DEFAULTS_HARD_TIMEOUT"),
        (
            "[caches.rules]\npreset = \"rule\"",
            "stale_limit",
            "caches.rules.stale_limit",
            "STRATA_CACHES__RULES__STALE_LIMIT",
        ),
        ("[redis]\nurl = \"redis://h:1\"", "timeout", "redis.timeout", "STRATA_REDIS_TIMEOUT"),
        ("[sql]\nurl = \"sqlite::memory:\"", "acquire_timeout", "sql.acquire_timeout", "STRATA_SQL_ACQUIRE_TIMEOUT"),
    ];
    for (section, key, field, var) in fields {
        for (value, ok) in cases {
            let text = format!("{section}\n{key} = \"{value}\"");
            let from_file = StrataConfig::from_toml(&text);
            let from_env = StrataConfig::from_toml_with_env(section, env(&[(var, value)]));
            for (how, r) in [("file", from_file), ("env", from_env)] {
                match (r, ok) {
                    (Ok(_), true) => {}
                    (Err(e), false) => {
                        // Either the value is refused as over the maximum, or it does not
                        // even parse as a duration (u64::MAX seconds).
                        let named = e.field == field && e.message.contains("at most 100 years");
                        assert!(named || e.to_string().contains("invalid duration"), "{how} {text}: {e}");
                    }
                    (r, _) => panic!("{how} {text}: expected ok={ok}, got {r:?}"),
                }
            }
        }
    }
    // `sweep_interval`: 0s turns the sweeper off; otherwise 1s ..= 100 years.
    for (value, ok) in [("0s", true), ("1s", true), ("3153600000s", true), ("3153600001s", false)] {
        let text = format!("[sql]\nurl = \"sqlite::memory:\"\nsweep_interval = \"{value}\"");
        assert_eq!(StrataConfig::from_toml(&text).is_ok(), ok, "{text}");
    }
}
