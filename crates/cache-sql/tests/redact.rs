//! A connection URL's password never reaches an error's `Display` or `Debug`, nor the config's
//! `Debug`, whatever the URL looks like (malformed ones included: the driver quotes those
//! verbatim).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use strata_cache_sql::{SqlConfig, SqlTier};

const URLS: &[&str] = &[
    // Do not parse: sea-orm's message quotes the whole string.
    "postgres://app:SeCrEt@127.0.0.1:notaport/x",
    "postgres://app:SeCrEt@[::1",
    "postgresql://app:SeCrEt@[::1/x",
    "mysql://app:SeCrEt@127.0.0.1:notaport/x",
    "mariadb://app:SeCrEt@[::1:3306/x",
    "postgres://app:p%40SeCrEt@127.0.0.1:99999/x",
    "postgres://app:p@SeCrEt@127.0.0.1:bad/x",
    "postgres://app:SeCrEt",
    "mysql://app:SeCrEt/x",
    "postgres://app:SeCrEt@ /x",
    "postgres://üser:SeCrEtü@hôst:bad/x",
    "postgres:app:SeCrEt@127.0.0.1/x",
    // Parse, but nothing listens there (port 1) or the file cannot be opened.
    "postgres://app:SeCrEt@127.0.0.1:1/x?sslpassword=SeCrEt",
    "mysql://app:SeCrEt@127.0.0.1:1/x",
    "sqlite:///nonexistent-dir/x.db?mode=ro&password=SeCrEt",
    // Not a SQL URL at all.
    "postgress://app:SeCrEt@db/x",
    "app:SeCrEt@db/x",
];

#[tokio::test]
async fn connect_errors_and_debug_never_show_the_password() {
    for url in URLS {
        let config =
            SqlConfig::new(*url).connect_timeout(Duration::from_secs(2)).acquire_timeout(Duration::from_secs(2));
        let debug = format!("{config:?}");
        assert!(!debug.contains("SeCrEt"), "{url}: {debug}");
        let err = SqlTier::connect(config).await.expect_err(url);
        let (shown, debug) = (err.to_string(), format!("{err:?}"));
        assert!(!shown.contains("SeCrEt"), "{url}: {shown}");
        assert!(!debug.contains("SeCrEt"), "{url}: {debug}");
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            assert!(!s.to_string().contains("SeCrEt") && !format!("{s:?}").contains("SeCrEt"), "{url}: {s:?}");
            source = s.source();
        }
    }
}

#[tokio::test]
async fn a_malformed_url_error_still_says_what_is_wrong() {
    let url = "postgres://app:SeCrEt@127.0.0.1:notaport/x";
    let err = SqlTier::connect(SqlConfig::new(url)).await.unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("postgres://***@127.0.0.1:notaport/x"), "{shown}");
    assert!(shown.contains("cannot be parsed"), "{shown}");
    // The driver's error, which quotes the URL, is replaced by a redacted stand-in.
    let strata_cache_sql::SqlError::Tier(te) = &err else { panic!("{err}") };
    let source = std::error::Error::source(te).expect("a source is kept");
    assert!(source.to_string().contains("postgres://***@127.0.0.1:notaport/x"), "{source}");
    assert!(!format!("{source:?}").contains("SeCrEt"), "{source:?}");
}
