//! Who may talk to the admin server, and how much: [`AdminConfig`] (Host allow-list, bearer
//! token, timeouts and limits) and [`AdminToken`].
//!
//! ## Access rules (applied to every request before routing)
//! 1. **Host allow-list.** The `Host` header (and the authority of an absolute-form request
//!    target, when one is sent) must match an allowed host; otherwise `421 Misdirected Request`.
//!    A missing, repeated or malformed `Host` is refused the same way. The default list is the
//!    loopback names `localhost`, `127.0.0.1` and `[::1]`, each with any port; the address the
//!    server is bound to (when it is not `0.0.0.0`/`[::]`) is added automatically. An entry
//!    without a port (`admin.example`) matches any port, one with a port (`admin.example:9464`)
//!    only that port; names compare case-insensitively. This defeats DNS rebinding: a page the
//!    operator visits can make the browser resolve its own name to 127.0.0.1, but the browser
//!    still sends that name as `Host`, which is not in the list.
//! 2. **Origin.** A request carrying an `Origin` header whose `host[:port]` is not allowed by the
//!    same list (or `Origin: null`, or an unparsable one) is refused with `403 Forbidden`.
//! 3. **Bearer token** (when configured): every route except the dashboard page itself (`/` and
//!    `/dashboard`, static HTML without data) needs `Authorization: Bearer <token>`; a missing or
//!    wrong token gets `401 Unauthorized` with `WWW-Authenticate: Bearer`. The comparison takes
//!    the same time wherever the first difference is. A token is **required** when the server is
//!    bound to a non-loopback address: [`serve_with`](super::serve_with) refuses to start without
//!    one ([`TelemetryError::AdminTokenRequired`]).
//!
//!    The dashboard page authenticates its own fetches with the same header: it takes the token
//!    from the URL fragment (`/dashboard#token=...`; a fragment is never sent to the server, and
//!    the page removes it from the address bar at once) or asks for it when a fetch answers 401,
//!    and keeps it in the tab's `sessionStorage` only. Without a configured token (the loopback
//!    default) the page works as before.
//! 4. **No request bodies.** The admin routes read none: a request declaring a body
//!    (`Content-Length` above zero, or any `Transfer-Encoding`) gets `413 Payload Too Large`.
//!
//! Every refusal closes the connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};

use crate::TelemetryError;

/// The hosts allowed by default: the loopback names, with any port.
pub const DEFAULT_ALLOWED_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// The longest timeout accepted (a day); longer ones are refused at start.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// A bearer token for the admin server. It is never logged, and its `Debug` shows no part of
/// it; there is deliberately no `Display`.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8]>);

impl AdminToken {
    /// The shortest token accepted.
    pub const MIN_LEN: usize = 16;
    /// The longest token accepted.
    pub const MAX_LEN: usize = 4096;

    /// A token of [`MIN_LEN`](Self::MIN_LEN)..=[`MAX_LEN`](Self::MAX_LEN) characters from the
    /// RFC 6750 token alphabet (`A-Z a-z 0-9 - . _ ~ + / =`).
    ///
    /// # Errors
    /// [`TelemetryError::Config`] naming the rule it breaks (never showing the token).
    pub fn new(token: impl Into<String>) -> Result<Self, TelemetryError> {
        let token = token.into();
        let bad = |why: &str| Err(TelemetryError::Config(format!("admin token: {why}")));
        if token.len() < Self::MIN_LEN {
            return bad(&format!("too short (at least {} characters)", Self::MIN_LEN));
        }
        if token.len() > Self::MAX_LEN {
            return bad(&format!("too long (at most {} characters)", Self::MAX_LEN));
        }
        if !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)) {
            return bad("only A-Z a-z 0-9 - . _ ~ + / = are allowed");
        }
        Ok(Self(Arc::from(token.into_bytes())))
    }

    /// Whether `presented` is this token; the time taken depends only on this token's length,
    /// not on where (or whether) `presented` differs.
    pub(crate) fn matches(&self, presented: &[u8]) -> bool {
        let expected: &[u8] = &self.0;
        let mut diff = u64::from(expected.len() != presented.len());
        for (i, e) in expected.iter().enumerate() {
            diff |= u64::from(e ^ presented.get(i).copied().unwrap_or(0));
        }
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// The admin server's access rules and limits. `Default`: loopback hosts, no token, 10 s header
/// timeout, 60 s idle timeout, 128 connections, 1,000 requests per connection, 16 KiB of request
/// head.
///
/// ```
/// use std::time::Duration;
/// use strata_telemetry::admin::{AdminConfig, AdminToken};
/// let config = AdminConfig::default()
///     .allow_host("metrics.internal:9464")
///     .token(AdminToken::new("correct-horse-battery-staple")?)
///     .header_timeout(Duration::from_secs(5))
///     .max_connections(64);
/// assert!(!format!("{config:?}").contains("horse"));
/// # Ok::<(), strata_telemetry::TelemetryError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct AdminConfig {
    pub(crate) allowed_hosts: Vec<String>,
    pub(crate) token: Option<AdminToken>,
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_requests_per_connection: u64,
    pub(crate) max_header_bytes: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: DEFAULT_ALLOWED_HOSTS.iter().map(|h| (*h).to_owned()).collect(),
            token: None,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 128,
            max_requests_per_connection: 1_000,
            max_header_bytes: 16 * 1024,
        }
    }
}

impl AdminConfig {
    /// The defaults (see the type's docs).
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the allowed hosts (`name`, `name:port`, `1.2.3.4[:port]`, `[v6][:port]`). An
    /// empty list allows only the bound address itself.
    pub fn allowed_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_hosts = hosts.into_iter().map(Into::into).collect();
        self
    }

    /// Adds one allowed host to the list.
    pub fn allow_host(mut self, host: impl Into<String>) -> Self {
        self.allowed_hosts.push(host.into());
        self
    }

    /// Requires `Authorization: Bearer <token>` (see the module docs for the routes it guards).
    pub fn token(mut self, token: AdminToken) -> Self {
        self.token = Some(token);
        self
    }

    /// Sets or clears the token.
    pub fn maybe_token(mut self, token: Option<AdminToken>) -> Self {
        self.token = token;
        self
    }

    /// How long a client has to send a complete request head, from the connection's start or
    /// the end of the previous response (so it also bounds how long an idle keep-alive
    /// connection waits for its next request). Over: `408` and the connection is closed.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// How long a connection may make no progress at all (no byte read or written while the
    /// server waits on it) before it is closed: an idle keep-alive connection, or a client that
    /// stops reading its response.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The most connections served at once; a connection over the limit is answered `503`
    /// and closed at once.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// The most requests served on one keep-alive connection; the last response carries
    /// `Connection: close`.
    pub fn max_requests_per_connection(mut self, n: u64) -> Self {
        self.max_requests_per_connection = n;
        self
    }

    /// The largest request head (request line and headers) accepted; over: `431`.
    pub fn max_header_bytes(mut self, n: usize) -> Self {
        self.max_header_bytes = n;
        self
    }

    /// Whether a token is configured.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Checks every setting for a server bound to `bind`.
    ///
    /// # Errors
    /// [`TelemetryError::AdminTokenRequired`] when `bind` is not a loopback address and no
    /// token is set; [`TelemetryError::Config`] naming a setting out of range or a malformed
    /// allowed host.
    pub fn validate(&self, bind: SocketAddr) -> Result<(), TelemetryError> {
        self.compile(bind).map(|_| ())
    }

    pub(crate) fn compile(&self, bind: SocketAddr) -> Result<Access, TelemetryError> {
        let bad = |what: &str, why: String| Err(TelemetryError::Config(format!("admin.{what}: {why}")));
        for (name, d) in [("header_timeout", self.header_timeout), ("idle_timeout", self.idle_timeout)] {
            if d.is_zero() || d > MAX_TIMEOUT {
                return bad(name, format!("{d:?} is out of range (above zero, at most one day)"));
            }
        }
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            return bad("max_connections", format!("{} is out of range (1..=1000000)", self.max_connections));
        }
        if self.max_requests_per_connection == 0 {
            return bad("max_requests_per_connection", "must be at least 1".to_owned());
        }
        if !(1024..=1 << 20).contains(&self.max_header_bytes) {
            return bad("max_header_bytes", format!("{} is out of range (1024..=1048576)", self.max_header_bytes));
        }
        let mut hosts = Vec::with_capacity(self.allowed_hosts.len() + 1);
        for h in &self.allowed_hosts {
            match Authority::parse(h.trim()) {
                Some(a) => hosts.push(a),
                None => {
                    return bad(
                        "allowed_hosts",
                        format!("{h:?} is not a host name or address with an optional port (e.g. \"localhost:9464\")"),
                    );
                }
            }
        }
        if !is_loopback(bind) && self.token.is_none() {
            return Err(TelemetryError::AdminTokenRequired { addr: bind });
        }
        Ok(Access { hosts, token: self.token.clone() })
    }
}

fn is_loopback(addr: SocketAddr) -> bool {
    match addr {
        SocketAddr::V4(a) => a.ip().is_loopback(),
        SocketAddr::V6(a) => a.ip().is_loopback() || a.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// A `host[:port]` as found in `Host`, an `Origin` or the allow-list: the host lower-cased
/// (IPv6 literals in brackets, in their canonical form) and the port when one was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Authority {
    host: String,
    port: Option<u16>,
}

impl Authority {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest.split_once(']')?;
            let ip: std::net::Ipv6Addr = inner.parse().ok()?;
            (format!("[{ip}]"), after)
        } else {
            let (host, after) = match s.find(':') {
                Some(i) => (&s[..i], &s[i..]),
                None => (s, ""),
            };
            let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_';
            if host.is_empty() || host.len() > 253 || !host.bytes().all(ok) {
                return None;
            }
            (host.to_ascii_lowercase(), after)
        };
        let port = match port {
            "" => None,
            p => {
                let digits = p.strip_prefix(':')?;
                if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some(digits.parse::<u16>().ok()?)
            }
        };
        Some(Self { host, port })
    }

    fn of_socket(addr: SocketAddr) -> Self {
        let host = match addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        Self { host, port: Some(addr.port()) }
    }

    /// Whether `self`, an allow-list entry, admits `other`, a presented authority.
    fn admits(&self, other: &Self) -> bool {
        self.host == other.host && (self.port.is_none() || self.port == other.port)
    }
}

/// Why a request was refused (the response says no more than this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Host,
    Origin,
    Token,
    Body,
}

impl Refusal {
    pub(crate) fn response(self) -> Response<Body> {
        let (status, text) = match self {
            Self::Host => (StatusCode::MISDIRECTED_REQUEST, "host not allowed\n"),
            Self::Origin => (StatusCode::FORBIDDEN, "origin not allowed\n"),
            Self::Token => (StatusCode::UNAUTHORIZED, "bearer token required\n"),
            Self::Body => (StatusCode::PAYLOAD_TOO_LARGE, "the admin routes take no request body\n"),
        };
        let mut r = Response::new(Body::from(text));
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self == Self::Token {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"strata-admin\""));
        }
        r
    }
}

/// The compiled rules of one running server.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    hosts: Vec<Authority>,
    token: Option<AdminToken>,
}

impl Access {
    /// Adds the address the server is bound to (unless it is the unspecified address).
    pub(crate) fn allow_bound(&mut self, local: SocketAddr) {
        if !local.ip().is_unspecified() {
            self.hosts.push(Authority::of_socket(local));
        }
    }

    fn allowed(&self, a: &Authority) -> bool {
        self.hosts.iter().any(|h| h.admits(a))
    }

    /// `Ok` when `req` may be routed.
    pub(crate) fn check<B>(&self, req: &Request<B>) -> Result<(), Refusal> {
        let headers = req.headers();
        let host = single(headers, &header::HOST).ok_or(Refusal::Host)?;
        let host = host.to_str().ok().and_then(Authority::parse).ok_or(Refusal::Host)?;
        if !self.allowed(&host) {
            return Err(Refusal::Host);
        }
        if let Some(target) = req.uri().authority() {
            let target = Authority::parse(target.as_str()).ok_or(Refusal::Host)?;
            if !self.allowed(&target) {
                return Err(Refusal::Host);
            }
        }
        let mut origins = headers.get_all(header::ORIGIN).iter();
        if let Some(origin) = origins.next() {
            if origins.next().is_some() {
                return Err(Refusal::Origin);
            }
            let origin = origin.to_str().map_err(|_| Refusal::Origin)?;
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .filter(|rest| !rest.contains('/'))
                .and_then(Authority::parse)
                .ok_or(Refusal::Origin)?;
            if !self.allowed(&authority) {
                return Err(Refusal::Origin);
            }
        }
        if let Some(token) = &self.token
            && !is_public_page(req.uri().path())
        {
            let presented = single(headers, &header::AUTHORIZATION).and_then(|v| bearer(v.as_bytes()));
            if !presented.is_some_and(|p| token.matches(p)) {
                return Err(Refusal::Token);
            }
        }
        let declared_body = headers.contains_key(header::TRANSFER_ENCODING)
            || headers.get_all(header::CONTENT_LENGTH).iter().any(|v| v.as_bytes() != b"0");
        if declared_body {
            return Err(Refusal::Body);
        }
        Ok(())
    }
}

impl Access {
    /// Whether the connection closes after answering `req` (which passed [`Access::check`]):
    /// when a token is configured, a request that did not present it (a public page) gets no
    /// keep-alive, so that a client without the token cannot hold a connection slot.
    pub(crate) fn closes_after<B>(&self, req: &Request<B>) -> bool {
        let Some(token) = &self.token else { return false };
        let presented = single(req.headers(), &header::AUTHORIZATION).and_then(|v| bearer(v.as_bytes()));
        !presented.is_some_and(|p| token.matches(p))
    }
}

/// The dashboard page is static HTML (no data): it loads without a token so that it can ask
/// for one.
fn is_public_page(path: &str) -> bool {
    path == "/" || path == "/dashboard"
}

/// The only value of `name`, or `None` when it is absent or repeated.
fn single<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}

/// The credentials of `Bearer <credentials>` (scheme compared ignoring case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let rest = value[7..].trim_ascii();
    (!rest.is_empty()).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_parse_strictly() {
        let a = |s| Authority::parse(s);
        assert_eq!(a("LocalHost:9464"), Some(Authority { host: "localhost".into(), port: Some(9464) }));
        assert_eq!(a("[0:0::1]"), Some(Authority { host: "[::1]".into(), port: None }));
        assert_eq!(a("127.0.0.1:0"), Some(Authority { host: "127.0.0.1".into(), port: Some(0) }));
        assert_eq!(a("h:65535").and_then(|x| x.port), Some(65535));
        for bad in [
            "",
            ":80",
            "localhost:",
            "localhost:65536",
            "localhost:99999999",
            "localhost:8a",
            "::1",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[evil]",
            "a b",
            "a/b",
            "a@b",
            "user@localhost",
            "localhost:80:80",
            "a\u{e9}",
            "localhost:+80",
        ] {
            assert_eq!(a(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn entries_without_a_port_admit_any_port() {
        let any = Authority::parse("localhost").unwrap();
        let one = Authority::parse("localhost:9464").unwrap();
        assert!(any.admits(&Authority::parse("localhost:1").unwrap()));
        assert!(any.admits(&Authority::parse("localhost").unwrap()));
        assert!(one.admits(&Authority::parse("LOCALHOST:9464").unwrap()));
        assert!(!one.admits(&Authority::parse("localhost:9465").unwrap()));
        assert!(!one.admits(&Authority::parse("localhost").unwrap()));
        assert!(!any.admits(&Authority::parse("localhost.evil.example").unwrap()));
    }

    #[test]
    fn token_comparison_and_rules() {
        let t = AdminToken::new("0123456789abcdef").unwrap();
        assert!(t.matches(b"0123456789abcdef"));
        for wrong in [&b""[..], b"0123456789abcde", b"0123456789abcdeF", b"0123456789abcdef0", b"1123456789abcdef"] {
            assert!(!t.matches(wrong), "{wrong:?}");
        }
        for bad in ["", "tiny1", "0123456789abcde", "0123456789abcdef with spaces", "0123456789abcdef\n"] {
            let e = AdminToken::new(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid telemetry configuration: admin token:"), "{e}");
            assert!(bad.len() < 5 || !e.contains(bad), "the error shows the token: {e}");
        }
        assert!(AdminToken::new("x".repeat(AdminToken::MAX_LEN)).is_ok());
        assert!(AdminToken::new("x".repeat(AdminToken::MAX_LEN + 1)).is_err());
        assert_eq!(format!("{t:?}"), "AdminToken(<redacted>)");
    }

    #[test]
    fn bearer_scheme() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bEaReR   abc  "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearerabc"), None);
        assert_eq!(bearer(b""), None);
    }

    #[test]
    fn settings_out_of_range_are_refused_by_name() {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let cases: Vec<(AdminConfig, &str)> = vec![
            (AdminConfig::new().header_timeout(Duration::ZERO), "admin.header_timeout"),
            (AdminConfig::new().header_timeout(Duration::MAX), "admin.header_timeout"),
            (AdminConfig::new().idle_timeout(Duration::ZERO), "admin.idle_timeout"),
            (AdminConfig::new().idle_timeout(MAX_TIMEOUT + Duration::from_nanos(1)), "admin.idle_timeout"),
            (AdminConfig::new().max_connections(0), "admin.max_connections"),
            (AdminConfig::new().max_connections(usize::MAX), "admin.max_connections"),
            (AdminConfig::new().max_requests_per_connection(0), "admin.max_requests_per_connection"),
            (AdminConfig::new().max_header_bytes(0), "admin.max_header_bytes"),
            (AdminConfig::new().max_header_bytes(1023), "admin.max_header_bytes"),
            (AdminConfig::new().max_header_bytes(usize::MAX), "admin.max_header_bytes"),
            (AdminConfig::new().allow_host("http://x"), "admin.allowed_hosts"),
            (AdminConfig::new().allow_host(""), "admin.allowed_hosts"),
        ];
        for (c, field) in cases {
            let e = c.validate(lo).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        let edges = [
            AdminConfig::new().header_timeout(MAX_TIMEOUT).idle_timeout(Duration::from_nanos(1)),
            AdminConfig::new().max_connections(1).max_requests_per_connection(u64::MAX),
            AdminConfig::new().max_header_bytes(1024),
            AdminConfig::new().max_header_bytes(1 << 20),
            AdminConfig::new().allowed_hosts(Vec::<String>::new()),
        ];
        for c in edges {
            c.validate(lo).unwrap();
        }
    }

    #[test]
    fn only_loopback_binds_may_go_without_a_token() {
        for ok in ["127.0.0.1:0", "127.9.9.9:1", "[::1]:0", "[::ffff:127.0.0.1]:0"] {
            AdminConfig::new().validate(ok.parse().unwrap()).unwrap();
        }
        for needs in ["0.0.0.0:0", "[::]:0", "10.0.0.1:9464", "[2001:db8::1]:1", "[::ffff:10.0.0.1]:0"] {
            let addr: SocketAddr = needs.parse().unwrap();
            assert!(
                matches!(AdminConfig::new().validate(addr), Err(TelemetryError::AdminTokenRequired { addr: a }) if a == addr),
                "{needs}"
            );
            let token = AdminToken::new("0123456789abcdef").unwrap();
            AdminConfig::new().token(token).validate(addr).unwrap();
        }
    }
}
