//! Credentials out of URLs: the one function every crate uses before a backend URL reaches an
//! error, a log line, `/topology` or `Debug` output.
//!
//! [`redact_url`] removes the user info (user and password) and the query string (which may
//! carry `?password=`, `sslpassword=`, tokens) from a URL of any scheme, **well-formed or
//! not**. It does not parse the URL with a parser that could fail; it scans for the few
//! separators that matter and, where the text is ambiguous (an `@` that may sit in a
//! password or in the query, an authority that is not plainly `host[:port]`), hides more rather
//! than less. What remains is the scheme, the host and port and the path, which is what an
//! operator needs to tell which backend is meant.
//!
//! ```
//! use strata_cache_core::redact::redact_url;
//!
//! assert_eq!(redact_url("postgres://app:s3cret@db:5432/x?sslpassword=p"), "postgres://***@db:5432/x?***");
//! assert_eq!(redact_url("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
//! // Malformed: a port that is not a number, an unclosed IPv6 bracket.
//! assert_eq!(redact_url("postgres://app:s3cret@127.0.0.1:notaport/x"), "postgres://***@127.0.0.1:notaport/x");
//! assert_eq!(redact_url("postgres://app:s3cret@[::1"), "postgres://***@[::1");
//! // No `@`, but what follows `host:` is not a port: it may be a password.
//! assert_eq!(redact_url("mysql://app:s3cret/x"), "mysql://***");
//! ```
//!
//! [`redact_url_in`] cleans a message that a driver built around a URL (it may quote the URL
//! verbatim, or only its password, percent-decoded).

/// What replaces a hidden part.
const HIDDEN: &str = "***";

/// Schemes whose text after the scheme is a path, not `user@host:port`.
const PATH_SCHEMES: [&str; 4] = ["sqlite", "unix", "file", "redis+unix"];

/// `url` without user info and query string, for logs, errors, `/topology` and `Debug`.
///
/// Never fails and never panics, whatever the input (empty, non-ASCII, several `@`,
/// percent-encoded or unencoded separators in the password, unclosed `[`); see the module
/// documentation for what is kept.
pub fn redact_url(url: &str) -> String {
    let parts = Parts::of(url);
    let mut out = String::with_capacity(url.len().min(256) + 8);
    out.push_str(parts.prefix);
    let rest = parts.rest;
    if let Some(at) = rest.rfind('@') {
        if rest[..at].contains(['?', '#']) {
            // The `@` may be in the query (`?user=a@b&password=...`) or a `?` in the
            // password: there is no telling which part is the host, so show none of it.
            out.push_str(HIDDEN);
        } else {
            out.push_str(HIDDEN);
            out.push('@');
            push_without_query(&mut out, &rest[at + 1..]);
        }
        return out;
    }
    if parts.path_based {
        push_without_query(&mut out, rest);
    } else if !parts.hierarchical {
        // `postgres:app:secret/x`: no `//`, so no telling a host from a password.
        if !rest.is_empty() {
            out.push_str(HIDDEN);
        }
    } else {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.split(',').all(is_host_port) {
            out.push_str(authority);
            push_without_query(&mut out, tail);
        } else {
            // A password written without its `@` may go on past a `/` (`app:pa/ss`): hide the
            // rest as well.
            out.push_str(HIDDEN);
        }
    }
    out
}

/// `text` (typically a driver's error message about `url`) with `url` itself replaced by
/// [`redact_url`]'s form, and every remaining copy of its secrets (user info, password,
/// percent-decoded password, query string and its values; those of at least 3 bytes) replaced
/// by `***`.
///
/// ```
/// use strata_cache_core::redact::redact_url_in;
///
/// let url = "postgres://app:p%40ss-word@db:bad/x";
/// let msg = format!("The connection string '{url}' cannot be parsed (password p@ss-word)");
/// let clean = redact_url_in(&msg, url);
/// assert_eq!(clean, "The connection string 'postgres://***@db:bad/x' cannot be parsed (password ***)");
/// ```
pub fn redact_url_in(text: &str, url: &str) -> String {
    let mut out = if url.is_empty() { text.to_owned() } else { text.replace(url, &redact_url(url)) };
    let mut secrets = secrets(url);
    // Longest first, so that a part of a longer secret does not leave the rest behind.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(s.as_str(), HIDDEN);
    }
    out
}

/// `text` with every word that may be a URL with credentials (it holds `://` or `@`) replaced
/// by [`redact_url`]'s form; words end at whitespace, quotes and backticks. For messages that
/// quote input without saying which part is a URL (a TOML syntax error, a serde type error).
///
/// ```
/// use strata_cache_core::redact::redact_urls;
///
/// let msg = r#"invalid type: string "postgres://app:s3cret@db/x", expected u32"#;
/// assert_eq!(redact_urls(msg), r#"invalid type: string "postgres://***@db/x", expected u32"#);
/// ```
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains("://") || word.contains('@') {
            out.push_str(&redact_url(word));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() || matches!(c, '"' | '\'' | '`') {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// The parts of `url` that are secret: user info, password (raw and percent-decoded) and the
/// query string.
fn secrets(url: &str) -> Vec<String> {
    let rest = Parts::of(url).rest;
    let mut out = Vec::new();
    if let Some(at) = rest.rfind('@') {
        let info = &rest[..at];
        out.push(info.to_owned());
        let password = info.split_once(':').map_or(info, |(_, p)| p);
        out.push(password.to_owned());
        out.push(percent_decode(password));
        out.push(percent_decode(info));
    }
    if let Some(q) = url.find(['?', '#']) {
        let query = &url[q + 1..];
        out.push(query.to_owned());
        for value in query.split(['&', ';']).filter_map(|kv| kv.split_once('=').map(|(_, v)| v)) {
            out.push(value.to_owned());
            out.push(percent_decode(value));
        }
    }
    out
}

/// A URL cut after its scheme.
struct Parts<'a> {
    /// `scheme://`, `scheme:` or empty.
    prefix: &'a str,
    /// Everything after the prefix.
    rest: &'a str,
    /// Whether `rest` starts with an authority (`//` followed, or no scheme at all).
    hierarchical: bool,
    /// Whether the scheme names a path (`sqlite:`, `unix:`), not a server.
    path_based: bool,
}

impl<'a> Parts<'a> {
    fn of(url: &'a str) -> Self {
        match scheme_end(url) {
            Some(n) => {
                let path_based = PATH_SCHEMES.iter().any(|p| url[..n].eq_ignore_ascii_case(p));
                let after = &url[n + 1..];
                if after.starts_with("//") {
                    Parts { prefix: &url[..n + 3], rest: &url[n + 3..], hierarchical: true, path_based }
                } else {
                    Parts { prefix: &url[..=n], rest: after, hierarchical: false, path_based }
                }
            }
            None => Parts { prefix: "", rest: url, hierarchical: true, path_based: false },
        }
    }
}

/// The index of the `:` that ends a scheme (`[A-Za-z][A-Za-z0-9+.-]*:`), if `url` has one.
fn scheme_end(url: &str) -> Option<usize> {
    let b = url.as_bytes();
    if !b.first()?.is_ascii_alphabetic() {
        return None;
    }
    let end = b.iter().position(|&c| !(c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')))?;
    (b[end] == b':').then_some(end)
}

/// Appends `s` up to its query or fragment; a cut one is marked `?***` (or `#***`).
fn push_without_query(out: &mut String, s: &str) {
    match s.find(['?', '#']) {
        Some(q) => {
            out.push_str(&s[..q]);
            out.push_str(&s[q..=q]);
            out.push_str(HIDDEN);
        }
        None => out.push_str(s),
    }
}

/// Whether `a` is plainly `host[:port]` (a name, an IPv4 address or a closed `[IPv6]`, and a
/// numeric port): anything else may hold a password written without its `@`.
fn is_host_port(a: &str) -> bool {
    let (host_ok, port) = if let Some(inner) = a.strip_prefix('[') {
        let Some((v6, after)) = inner.split_once(']') else { return false };
        let ok = v6.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '%' | '-' | '_'));
        match after.strip_prefix(':') {
            Some(p) => (ok, p),
            None => (ok && after.is_empty(), ""),
        }
    } else {
        let (host, port) = a.split_once(':').unwrap_or((a, ""));
        (host.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '.' | '_' | '%')), port)
    };
    // A port is 1 to 5 digits, at most 65535, after a non-empty host: `app:123456` or `:1234`
    // may be a user and a digits-only password.
    let port_ok = port.is_empty()
        || (!a.starts_with(':')
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| p <= 65_535));
    host_ok && port_ok
}

/// `%XX` sequences decoded (invalid ones kept as they are; invalid UTF-8 replaced).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(url, secrets that must not appear, what must remain)`.
    const CASES: &[(&str, &[&str], &str)] = &[
        // Well-formed, every scheme.
        ("redis://user:SeCrEt1@127.0.0.1:6379/0", &["SeCrEt1", "user"], "redis://***@127.0.0.1:6379/0"),
        ("rediss://:SeCrEt1@cache.example.com:6380", &["SeCrEt1"], "rediss://***@cache.example.com:6380"),
        ("redis+unix:///run/redis.sock?db=0&pass=SeCrEt1", &["SeCrEt1"], "redis+unix:///run/redis.sock?***"),
        ("unix:///run/redis.sock?pass=SeCrEt1", &["SeCrEt1"], "unix:///run/redis.sock?***"),
        ("postgres://app:SeCrEt1@db:5432/x", &["SeCrEt1", "app:"], "postgres://***@db:5432/x"),
        ("postgresql://app:SeCrEt1@db/x?sslmode=require", &["SeCrEt1"], "postgresql://***@db/x?***"),
        ("mysql://root:SeCrEt1@127.0.0.1:3306/test", &["SeCrEt1"], "mysql://***@127.0.0.1:3306/test"),
        ("mariadb://root:SeCrEt1@db/test", &["SeCrEt1"], "mariadb://***@db/test"),
        ("sqlite://cache.db?mode=rwc&password=SeCrEt1", &["SeCrEt1"], "sqlite://cache.db?***"),
        ("sqlite::memory:", &[], "sqlite::memory:"),
        ("sqlite:///var/lib/app/cache.db?mode=rwc", &[], "sqlite:///var/lib/app/cache.db?***"),
        ("http://admin:SeCrEt1@example.com/metrics", &["SeCrEt1"], "http://***@example.com/metrics"),
        ("https://tok:SeCrEt1@example.com:8443/x#frag", &["SeCrEt1"], "https://***@example.com:8443/x#***"),
        ("postgres://db/x?password=SeCrEt1", &["SeCrEt1"], "postgres://db/x?***"),
        ("redis://127.0.0.1:6379", &[], "redis://127.0.0.1:6379"),
        ("postgres://h1:5432,h2:5433/x", &[], "postgres://h1:5432,h2:5433/x"),
        // Percent-encoded and raw separators in the password.
        ("postgres://app:p%40ss%3ASeCrEt1@db/x", &["SeCrEt1", "p%40ss"], "postgres://***@db/x"),
        ("postgres://app:p@ss@SeCrEt1@db/x", &["SeCrEt1", "p@ss"], "postgres://***@db/x"),
        ("postgres://app:pa/ss:SeCrEt1@db/x", &["SeCrEt1"], "postgres://***@db/x"),
        ("postgres://app:pa?ssSeCrEt1@db/x", &["SeCrEt1"], "postgres://***"),
        ("postgres://app:pa#ssSeCrEt1@db/x", &["SeCrEt1"], "postgres://***"),
        ("redis://h:1/0?user=a@b&password=SeCrEt1", &["SeCrEt1"], "redis://***"),
        // Malformed.
        ("postgres://app:SeCrEt1@127.0.0.1:notaport/x", &["SeCrEt1"], "postgres://***@127.0.0.1:notaport/x"),
        ("postgres://app:SeCrEt1@[::1", &["SeCrEt1"], "postgres://***@[::1"),
        ("postgres://app:SeCrEt1@[::1]:5432/x", &["SeCrEt1"], "postgres://***@[::1]:5432/x"),
        ("redis://[::1]:6379", &[], "redis://[::1]:6379"),
        ("redis://[::1:SeCrEt1", &["SeCrEt1"], "redis://***"),
        ("redis://[::1]SeCrEt1", &["SeCrEt1"], "redis://***"),
        // A user and a digits-only password without `@` look like `host:port`: a port is at
        // most 65535 after a non-empty host; a password with `/` hides everything after it.
        ("mysql://app:123456/x", &["123456"], "mysql://***"),
        ("redis://:12345678/0", &["12345678"], "redis://***"),
        ("redis://:6379/0", &["6379"], "redis://***"),
        ("postgres://app:pa/ssSECRET", &["ssSECRET", "pa/"], "postgres://***"),
        ("redis://cache:65535/0", &[], "redis://cache:65535/0"),
        ("redis://cache:65536/0", &["65536"], "redis://***"),
        ("mysql://app:SeCrEt1/x", &["SeCrEt1"], "mysql://***"),
        ("mysql://app:SeCrEt1", &["SeCrEt1"], "mysql://***"),
        ("postgres:app:SeCrEt1@db/x", &["SeCrEt1"], "postgres:***@db/x"),
        ("postgres:app:SeCrEt1", &["SeCrEt1"], "postgres:***"),
        ("app:SeCrEt1@db:5432", &["SeCrEt1"], "app:***@db:5432"),
        ("app:SeCrEt1", &["SeCrEt1"], "app:***"),
        ("//app:SeCrEt1@db", &["SeCrEt1"], "***@db"),
        ("postgres://app:SeCrEt1@", &["SeCrEt1"], "postgres://***@"),
        ("postgres://@@@SeCrEt1@", &["SeCrEt1"], "postgres://***@"),
        ("postgres://", &[], "postgres://"),
        ("postgres:", &[], "postgres:"),
        ("", &[], ""),
        ("@", &[], "***@"),
        ("?SeCrEt1", &["SeCrEt1"], "?***"),
        ("redis://user:SeCrEt1 with spaces@host", &["SeCrEt1", "spaces"], "redis://***@host"),
        ("redis://host name:6379", &[], "redis://***"),
        // Non-ASCII.
        ("postgres://ünïcode:SeCrEt1ü@bücher.example/db", &["SeCrEt1", "ünïcode"], "postgres://***@bücher.example/db"),
        ("redis://bücher.example:6379", &[], "redis://bücher.example:6379"),
        ("redis://bücher:SeCrEt1ü", &["SeCrEt1"], "redis://***"),
        ("пароль:SeCrEt1@хост", &["SeCrEt1"], "***@хост"),
    ];

    #[test]
    fn table_of_well_formed_and_malformed_urls() {
        for (url, secrets, expected) in CASES {
            let shown = redact_url(url);
            for s in *secrets {
                assert!(!shown.contains(s), "{url:?} -> {shown:?} still holds {s:?}");
            }
            assert_eq!(&shown, expected, "{url:?}");
            // Redacting twice changes nothing more and reveals nothing.
            assert_eq!(redact_url(&shown), shown, "{url:?} is not stable");
        }
    }

    #[test]
    fn every_prefix_of_every_case_is_handled() {
        // Truncations are malformed URLs of every shape: none may panic, and a password that
        // was complete up to its `@` must not show.
        for (url, _, _) in CASES {
            for (i, _) in url.char_indices() {
                let cut = &url[..i];
                let shown = redact_url(cut);
                if let Some(at) = cut.rfind('@') {
                    let info = &cut[Parts::of(cut).prefix.len().min(at)..at];
                    if info.len() >= 3 {
                        assert!(!shown.contains(info), "{cut:?} -> {shown:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn messages_lose_the_url_and_its_secrets() {
        let url = "postgres://app:p%40ss%2FSeCrEt1@127.0.0.1:notaport/x?sslpassword=Other2";
        let msg = format!(
            "The connection string '{url}' cannot be parsed; tried p@ss/SeCrEt1 with Other2 and app:p%40ss%2FSeCrEt1"
        );
        let clean = redact_url_in(&msg, url);
        for s in ["SeCrEt1", "Other2", "p@ss", "p%40ss"] {
            assert!(!clean.contains(s), "{clean}");
        }
        assert!(clean.contains("postgres://***@127.0.0.1:notaport/x?***"), "{clean}");
        // Short secrets are not replaced (they would garble the message), long ones are.
        assert_eq!(redact_url_in("no url here", ""), "no url here");
        assert_eq!(redact_url_in("port 12 refused", "redis://:12@h"), "port 12 refused");
    }

    proptest::proptest! {
        #[test]
        fn a_password_of_any_characters_never_shows(
            scheme in proptest::sample::select(vec!["redis", "rediss", "postgres", "postgresql", "mysql", "mariadb", "http", "https", "sqlite", "unix", "redis+unix", "weird"]),
            slashes in proptest::bool::ANY,
            password in "[a-z0-9@:/?#%\\[\\] .&=ü€]{0,16}",
            host in proptest::sample::select(vec!["db", "127.0.0.1", "[::1]", "[::1", "", "h:5432", "h:notaport", "bücher.example"]),
            tail in "(/[a-z]{0,4})?(\\?[a-z=&@]{0,8})?",
        ) {
            let url = format!("{scheme}:{}app:XQZ{password}@{host}{tail}", if slashes { "//" } else { "" });
            let shown = redact_url(&url);
            proptest::prop_assert!(!shown.contains("XQZ"), "{url:?} -> {shown:?}");
            proptest::prop_assert!(!shown.contains("app"), "{url:?} -> {shown:?}");
        }

        #[test]
        fn any_text_is_handled(text in "\\PC{0,40}") {
            let shown = redact_url(&text);
            proptest::prop_assert_eq!(redact_url(&shown), shown);
        }
    }

    #[test]
    fn urls_inside_free_text_are_redacted() {
        let text = "line 3: url = \"postgres://app:my SeCrEt1@db/x\"\n  `redis://:SeCrEt2@h:1` and mail a@b, path /x/y";
        let clean = redact_urls(text);
        for s in ["SeCrEt1", "SeCrEt2", "app:my"] {
            assert!(!clean.contains(s), "{clean}");
        }
        assert!(
            clean.contains("`redis://***@h:1`") && clean.contains("path /x/y") && clean.starts_with("line 3: url = \"")
        );
        assert_eq!(redact_urls(""), "");
        assert_eq!(redact_urls("plain words, no secrets"), "plain words, no secrets");
    }

    #[test]
    fn percent_decoding_is_lenient() {
        assert_eq!(percent_decode("a%40b%zz%4"), "a@b%zz%4");
        assert_eq!(percent_decode("%FF"), "\u{fffd}");
        assert_eq!(percent_decode(""), "");
    }
}
