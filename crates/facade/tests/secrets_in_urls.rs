//! A backend URL's password never reaches the configuration's `Debug`, a configuration or
//! connect error (`Display`, `Debug`, sources) or `/topology`, whatever the URL looks like.
//! Nothing here needs a running server: malformed URLs fail before connecting, and the
//! well-formed ones point at port 1 (refused) or are opened lazily.
#![cfg(all(feature = "redis", feature = "sql"))]
#![allow(clippy::unwrap_used)]

use strata::{Strata, StrataConfig};

const SECRET: &str = "SeCrEt";

fn assert_clean(what: &str, e: &(dyn std::error::Error + 'static)) {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let (shown, debug) = (err.to_string(), format!("{err:?}"));
        assert!(!shown.contains(SECRET), "{what}: {shown}");
        assert!(!debug.contains(SECRET), "{what}: {debug}");
        cur = err.source();
    }
}

#[tokio::test]
async fn no_configuration_or_connect_output_shows_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}?mode=rwc&password={SECRET}", dir.path().join("l3.db").display());
    let texts: Vec<(String, Vec<(String, String)>)> = [
        // SQL: malformed (the driver quotes these verbatim), refused, not SQL at all.
        "[sql]\nurl = \"postgres://app:SeCrEt@127.0.0.1:notaport/x\"".to_owned(),
        "[sql]\nurl = \"postgres://app:SeCrEt@[::1\"".to_owned(),
        "[sql]\nurl = \"postgresql://app:p%40SeCrEt@[::1/x\"".to_owned(),
        "[sql]\nurl = \"mariadb://app:SeCrEt@127.0.0.1:bad/x\"".to_owned(),
        "[sql]\nurl = \"mysql://app:SeCrEt@127.0.0.1:1/x\"".to_owned(),
        "[sql]\nurl = \"postgres://app:SeCrEt@127.0.0.1:1/x?sslpassword=SeCrEt\"".to_owned(),
        "[sql]\nurl = \"postgress://app:SeCrEt@db/x\"".to_owned(),
        "[sql]\nurl = \"app:SeCrEt@db/x\"".to_owned(),
        format!("[sql]\nurl = \"{sqlite}\"\nsweep_interval = \"0s\""),
        // Redis: malformed, TLS, wrong scheme, well-formed but unreachable (lazy pool).
        "[redis]\nurl = \"redis://app:SeCrEt@127.0.0.1:notaport/0\"\nbus = false".to_owned(),
        "[redis]\nurl = \"redis://app:SeCrEt@[::1\"\nbus = false".to_owned(),
        "[redis]\nurl = \"redis://app:SeCrEt\"\nbus = false".to_owned(),
        "[redis]\nurl = \"redis://app:p@SeCrEt@127.0.0.1:6379/notadb\"\nbus = false".to_owned(),
        "[redis]\ncluster = [\"redis://app:SeCrEt@[::1\", \"redis://127.0.0.1:1\"]\nbus = false".to_owned(),
        "[redis]\nurl = \"rediss://app:SeCrEt@127.0.0.1:6380\"\nbus = false".to_owned(),
        "[redis]\nurl = \"http://app:SeCrEt@h/x\"".to_owned(),
        "[redis]\nurl = \"redis://app:SeCrEt@127.0.0.1:1/0\"\nbus = false".to_owned(),
        // TOML syntax errors quote the line; type errors quote the value.
        "[sql]\nurl = \"postgres://app:SeCrEt@db/x".to_owned(),
        "[sql]\nurl = \"postgres://app:SeCrEt\\q@db/x\"".to_owned(),
        "[sql]\nurl = \"sqlite::memory:\"\nmax_connections = \"postgres://app:SeCrEt@db/y\"".to_owned(),
        "[redis]\nurl = 'redis://app:SeCrEt@h:1'\nurl = 'redis://app:SeCrEt@h:2'".to_owned(),
    ]
    .into_iter()
    .map(|t| (t, Vec::new()))
    .chain([
        ("".to_owned(), vec![("STRATA_SQL_URL".to_owned(), "mysql://app:SeCrEt@[::1".to_owned())]),
        (
            "[sql]\nurl = \"sqlite::memory:\"".to_owned(),
            vec![("STRATA_SQL_MAX_CONNECTIONS".to_owned(), "mysql://app:SeCrEt@h/x".to_owned())],
        ),
    ])
    .collect();
    let mut connected = 0;
    let mut refused = 0;
    for (text, env) in texts {
        let what = format!("{text:?} {env:?}");
        let config = match StrataConfig::from_toml_with_env(&text, env) {
            Ok(c) => c,
            Err(e) => {
                assert_clean(&what, &e);
                refused += 1;
                continue;
            }
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains(SECRET), "{what}: {debug}");
        match Strata::builder().config(config).connect().await {
            Ok(strata) => {
                let topology = serde_json::to_string(strata.topology()).unwrap();
                assert!(!topology.contains(SECRET), "{what}: {topology}");
                assert!(topology.contains("***"), "{what}: {topology}");
                connected += 1;
            }
            Err(e) => {
                assert_clean(&what, &e);
                refused += 1;
            }
        }
    }
    // Both paths ran: some configurations connect (lazily), most are refused.
    assert!(connected >= 1 && refused >= 15, "connected {connected}, refused {refused}");
}
