#![allow(clippy::unwrap_used)]
//! The admin server's access rules and limits, over raw TCP sockets writing HTTP/1.1 by hand:
//! Host allow-list, Origin, bearer token, non-loopback binds, header and idle timeouts,
//! per-connection limits and the connection limit.
//!
//! Timeouts are configured short (hundreds of milliseconds) and every wait is on the condition
//! with a generous deadline ([`PATIENCE`]), so a busy machine slows these tests down without
//! failing them.

use std::net::SocketAddr;
use std::time::Duration;

use strata_telemetry::admin::{self, AdminConfig, AdminState, AdminToken};
use strata_telemetry::{PrometheusObserver, TelemetryError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest any condition is waited for. Well below hyper's built-in 30 s header timeout,
/// so a connection closed in time was closed by the configured limit.
const PATIENCE: Duration = Duration::from_secs(20);

const TOKEN: &str = "s3cr3t-Admin-T0ken-0123456789";

async fn start(config: AdminConfig) -> (SocketAddr, admin::AdminServer) {
    start_on("127.0.0.1:0", config).await
}

async fn start_on(addr: &str, config: AdminConfig) -> (SocketAddr, admin::AdminServer) {
    let state = AdminState::new(PrometheusObserver::new().unwrap());
    admin::serve_with(addr.parse().unwrap(), state, config).await.unwrap()
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One client connection that can read several responses (keep-alive).
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        Self { stream: TcpStream::connect(addr).await.unwrap(), buf: Vec::new() }
    }

    async fn send(&mut self, raw: &str) -> std::io::Result<()> {
        self.stream.write_all(raw.as_bytes()).await
    }

    /// Reads more bytes; `Ok(0)` at the end of the stream.
    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no byte and no close within {PATIENCE:?}"))?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next response (content-length, chunked, or up to the close).
    async fn response(&mut self) -> Reply {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            let n = self.fill().await.unwrap();
            assert!(n > 0, "closed before a complete response head: {:?}", String::from_utf8_lossy(&self.buf));
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).unwrap();
        self.buf.drain(..head_end + 4);
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let body = if let Some(len) = get("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                assert!(self.fill().await.unwrap() > 0, "closed inside a body");
            }
            self.buf.drain(..len).collect()
        } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    assert!(self.fill().await.unwrap() > 0, "closed inside a chunk size");
                };
                let size =
                    usize::from_str_radix(std::str::from_utf8(&self.buf[..line_end]).unwrap().trim(), 16).unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await.unwrap() > 0, "closed inside a chunk");
                }
                body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break body;
                }
            }
        } else {
            while self.fill().await.unwrap() > 0 {}
            std::mem::take(&mut self.buf)
        };
        Reply { status, headers, body }
    }

    /// The first line of the next response, or `None` when the connection ends before one.
    async fn status_line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                return Some(String::from_utf8_lossy(&self.buf[..i]).into_owned());
            }
            match self.fill().await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Waits until the server closes the connection (end of stream or reset); returns what was
    /// read meanwhile. Panics if it is still open after [`PATIENCE`].
    async fn closed(&mut self) -> Vec<u8> {
        loop {
            match self.fill().await {
                Ok(0) | Err(_) => return std::mem::take(&mut self.buf),
                Ok(_) => {}
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn get_req(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n")
}

/// One request on a fresh connection.
async fn once(addr: SocketAddr, raw: &str) -> Reply {
    let mut c = Conn::open(addr).await;
    c.send(raw).await.unwrap();
    c.response().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_hosts_are_answered() {
    let (addr, server) = start(AdminConfig::default()).await;
    let p = addr.port();
    let allowed = [
        format!("127.0.0.1:{p}"),
        "127.0.0.1".to_owned(),
        format!("localhost:{p}"),
        "LocalHost".to_owned(),
        "localhost:1".to_owned(),
        format!("[::1]:{p}"),
        "[0:0:0:0:0:0:0:1]".to_owned(),
    ];
    for host in &allowed {
        let r = once(addr, &get_req("/health", host, "Connection: close\r\n")).await;
        assert_eq!(r.status, 200, "Host {host:?} should be answered");
    }
    let refused = [
        "evil.example".to_owned(),
        format!("evil.example:{p}"),
        format!("localhost.evil.example:{p}"),
        format!("127.0.0.1.nip.io:{p}"),
        format!("127.0.0.2:{p}"),
        format!("0.0.0.0:{p}"),
        "localhost.".to_owned(),
        format!("localhost:{p}:{p}"),
        "localhost:99999".to_owned(),
        "localhost:".to_owned(),
        "[::1".to_owned(),
        "::1".to_owned(),
        "user@localhost".to_owned(),
        String::new(),
    ];
    for host in &refused {
        for path in ["/metrics", "/health", "/topology", "/api/stats", "/dashboard", "/", "/nope"] {
            let r = once(addr, &get_req(path, host, "")).await;
            assert_eq!(r.status, 421, "Host {host:?} on {path} should be refused");
            assert_eq!(r.header("connection"), Some("close"));
            assert!(!String::from_utf8_lossy(&r.body).contains("strata"), "a refusal leaks content");
        }
    }
    // No Host at all, two Host headers, an absolute-form target naming another host.
    let r = once(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, 421);
    let r = once(addr, &format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nHost: evil.example\r\n\r\n")).await;
    assert!(r.status == 421 || r.status == 400, "{r:?}");
    let r = once(addr, &format!("GET http://evil.example/metrics HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n\r\n")).await;
    assert!(r.status == 421 || r.status == 400, "{r:?}");
    let r = once(addr, &format!("GET http://127.0.0.1:{p}/metrics HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n\r\n")).await;
    assert_eq!(r.status, 200);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_is_configurable_and_keeps_the_bound_address() {
    let (addr, server) = start(AdminConfig::default().allowed_hosts(["Admin.Internal", "metrics.internal:9464"])).await;
    let p = addr.port();
    for (host, status) in [
        ("admin.internal".to_owned(), 200),
        (format!("ADMIN.internal:{p}"), 200),
        ("metrics.internal:9464".to_owned(), 200),
        ("metrics.internal:9465".to_owned(), 421),
        ("metrics.internal".to_owned(), 421),
        // The bound address itself stays reachable; the other loopback names are no longer listed.
        (format!("127.0.0.1:{p}"), 200),
        ("127.0.0.1:1".to_owned(), 421),
        (format!("localhost:{p}"), 421),
        (format!("[::1]:{p}"), 421),
    ] {
        assert_eq!(once(addr, &get_req("/metrics", &host, "")).await.status, status, "Host {host:?}");
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_requests_are_refused() {
    let (addr, server) = start(AdminConfig::default()).await;
    let p = addr.port();
    let host = format!("127.0.0.1:{p}");
    for origin in [format!("http://127.0.0.1:{p}"), format!("http://localhost:{p}"), "https://localhost".to_owned()] {
        let r = once(addr, &get_req("/api/stats", &host, &format!("Origin: {origin}\r\n"))).await;
        assert_eq!(r.status, 200, "same-site Origin {origin:?}");
    }
    for origin in [
        "http://evil.example".to_owned(),
        format!("http://evil.example:{p}"),
        format!("https://127.0.0.1.evil.example:{p}"),
        "null".to_owned(),
        String::new(),
        format!("http://127.0.0.1:{p}/path"),
        format!("ftp://127.0.0.1:{p}"),
        format!("127.0.0.1:{p}"),
        format!("http://user@127.0.0.1:{p}"),
    ] {
        for path in ["/api/stats", "/metrics", "/dashboard"] {
            let r = once(addr, &get_req(path, &host, &format!("Origin: {origin}\r\n"))).await;
            assert_eq!(r.status, 403, "Origin {origin:?} on {path}");
        }
    }
    let two = format!("Origin: http://127.0.0.1:{p}\r\nOrigin: http://evil.example\r\n");
    assert_eq!(once(addr, &get_req("/metrics", &host, &two)).await.status, 403);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_guards_every_data_route() {
    let config = AdminConfig::default().token(AdminToken::new(TOKEN).unwrap());
    assert!(!format!("{config:?}").contains(TOKEN), "Debug shows the token");
    let (addr, server) = start(config).await;
    let host = format!("127.0.0.1:{}", addr.port());
    let wrong_same_len: String = TOKEN.chars().rev().collect();
    let refused = [
        String::new(),
        "Authorization: Bearer\r\n".to_owned(),
        "Authorization: Bearer \r\n".to_owned(),
        format!("Authorization: Bearer {wrong_same_len}\r\n"),
        format!("Authorization: Bearer {}\r\n", &TOKEN[..TOKEN.len() - 1]),
        format!("Authorization: Bearer {TOKEN}x\r\n"),
        format!("Authorization: Bearer x{TOKEN}\r\n"),
        format!("Authorization: Basic {TOKEN}\r\n"),
        format!("Authorization: {TOKEN}\r\n"),
        format!("Authorization: Bearer {}\r\n", TOKEN.to_ascii_uppercase()),
        format!("Authorization: Bearer {TOKEN}\r\nAuthorization: Bearer {TOKEN}\r\n"),
    ];
    for path in ["/metrics", "/health", "/topology", "/api/stats", "/nope"] {
        for auth in &refused {
            let r = once(addr, &get_req(path, &host, auth)).await;
            assert_eq!(r.status, 401, "{path} with {auth:?}");
            assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"strata-admin\""));
            assert!(!String::from_utf8_lossy(&r.body).contains(TOKEN));
        }
        for auth in [format!("Authorization: Bearer {TOKEN}\r\n"), format!("authorization: bearer   {TOKEN}\r\n")] {
            let r = once(addr, &get_req(path, &host, &auth)).await;
            assert_eq!(r.status, if path == "/nope" { 404 } else { 200 }, "{path} with the right token");
        }
    }
    // The page itself (static, no data) loads without the token, and knows how to send one.
    for path in ["/dashboard", "/"] {
        let r = once(addr, &get_req(path, &host, "")).await;
        assert_eq!(r.status, 200);
        let closes = r.header("connection") == Some("close");
        let page = String::from_utf8(r.body).unwrap();
        assert!(page.contains("\"Authorization\": \"Bearer \" + token") && page.contains("sessionStorage"));
        // Without the token no keep-alive: a client that cannot authenticate cannot hold one of
        // the connection slots by re-fetching the public page.
        assert!(closes, "{path} without the token keeps the connection open");
        let r = once(addr, &get_req(path, &host, &format!("Authorization: Bearer {TOKEN}\r\n"))).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), None, "{path} with the token stays open");
    }
    // The Host check comes first: the right token from a wrong Host is still refused.
    let r = once(addr, &get_req("/metrics", "evil.example", &format!("Authorization: Bearer {TOKEN}\r\n"))).await;
    assert_eq!(r.status, 421);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_bind_needs_a_token() {
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let state = AdminState::new(PrometheusObserver::new().unwrap());
        let err = admin::serve(addr.parse().unwrap(), state.clone()).await.unwrap_err();
        assert!(matches!(err, TelemetryError::AdminTokenRequired { .. }), "{err:?}");
        assert!(err.to_string().contains("bearer token is required"), "{err}");
        let err = admin::serve_with(addr.parse().unwrap(), state, AdminConfig::default().allow_host("x.internal"))
            .await
            .unwrap_err();
        assert!(matches!(err, TelemetryError::AdminTokenRequired { .. }), "{err:?}");
    }
    // With a token it starts; the token is then required even from loopback.
    let (addr, server) = start_on("0.0.0.0:0", AdminConfig::default().token(AdminToken::new(TOKEN).unwrap())).await;
    let local: SocketAddr = ([127, 0, 0, 1], addr.port()).into();
    let host = local.to_string();
    assert_eq!(once(local, &get_req("/metrics", &host, "")).await.status, 401);
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    assert_eq!(once(local, &get_req("/metrics", &host, &auth)).await.status, 200);
    // Bound to the unspecified address, no address is added to the list by itself.
    assert_eq!(once(local, &get_req("/metrics", &format!("0.0.0.0:{}", addr.port()), &auth)).await.status, 421);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_a_body_or_an_oversized_head_are_refused() {
    let (addr, server) = start(AdminConfig::default().max_header_bytes(4096)).await;
    let host = addr.to_string();
    let r = once(addr, &format!("POST /metrics HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nhello")).await;
    assert_eq!(r.status, 413);
    let r = once(addr, &get_req("/metrics", &host, "Transfer-Encoding: chunked\r\n")).await;
    assert_eq!(r.status, 413);
    let r = once(addr, &get_req("/metrics", &host, "Content-Length: 0\r\n")).await;
    assert_eq!(r.status, 200);
    let big = format!("X-Filler: {}\r\n", "a".repeat(8000));
    let r = once(addr, &get_req("/metrics", &host, &big)).await;
    assert_eq!(r.status, 431);
    let many: String = (0..100).map(|i| format!("X-{i}: 1\r\n")).collect();
    let r = once(addr, &get_req("/metrics", &host, &many)).await;
    assert_eq!(r.status, 431, "more header fields than allowed");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_serves_at_most_the_configured_requests() {
    for max in [1u64, 2, 5] {
        let (addr, server) = start(AdminConfig::default().max_requests_per_connection(max)).await;
        let mut c = Conn::open(addr).await;
        for i in 1..=max {
            c.send(&get_req("/health", &addr.to_string(), "")).await.unwrap();
            let r = c.response().await;
            assert_eq!(r.status, 200);
            let close = r.header("connection") == Some("close");
            assert_eq!(close, i == max, "request {i} of {max}");
        }
        let rest = c.closed().await;
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
        server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_dropped_after_the_header_timeout() {
    let config = AdminConfig::default().header_timeout(Duration::from_secs(1)).idle_timeout(Duration::from_secs(60));
    let (addr, server) = start(config).await;
    // 1. Connects and sends nothing.
    let mut silent = Conn::open(addr).await;
    // 2. Sends a head that never ends, one byte every 50 ms (so the idle timer never fires).
    let mut trickle = Conn::open(addr).await;
    let (mut rd, mut wr) = trickle.stream.into_split();
    let writer = tokio::spawn(async move {
        let head = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ");
        for b in head.bytes().chain(std::iter::repeat(b'a')) {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // 3. A complete request line, then the headers stop.
    let mut partial = Conn::open(addr).await;
    partial.send(&format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n")).await.unwrap();
    for (name, c) in [("silent", &mut silent), ("partial", &mut partial)] {
        let got = c.closed().await;
        assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 408"), "{name}: {:?}", String::from_utf8_lossy(&got));
    }
    let mut got = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, async {
        let mut chunk = [0u8; 512];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the trickling client is still connected after {PATIENCE:?}");
    assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 408"), "{:?}", String::from_utf8_lossy(&got));
    writer.abort();
    trickle = Conn::open(addr).await;
    trickle.send(&get_req("/health", &addr.to_string(), "")).await.unwrap();
    assert_eq!(trickle.response().await.status, 200, "a prompt client is still served");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let config = AdminConfig::default().header_timeout(Duration::from_secs(60)).idle_timeout(Duration::from_secs(1));
    let (addr, server) = start(config).await;
    let mut c = Conn::open(addr).await;
    // Three requests in one write (pipelined), so that a slow test machine cannot leave the
    // connection idle between them; all three are answered on the one kept-alive connection.
    let req = get_req("/health", &addr.to_string(), "");
    c.send(&req.repeat(3)).await.unwrap();
    for _ in 0..3 {
        let r = c.response().await;
        assert_eq!(r.status, 200);
        assert_ne!(r.header("connection"), Some("close"), "kept alive");
    }
    // Then nothing: the idle timeout (not the 60 s header timeout) closes it.
    assert!(c.closed().await.is_empty());
    // The header timeout bounds the wait for the next request as well.
    let config = AdminConfig::default().header_timeout(Duration::from_secs(1)).idle_timeout(Duration::from_secs(60));
    let (addr2, server2) = start(config).await;
    let mut c = Conn::open(addr2).await;
    c.send(&get_req("/health", &addr2.to_string(), "")).await.unwrap();
    assert_eq!(c.response().await.status, 200);
    let rest = c.closed().await;
    assert!(rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"), "{:?}", String::from_utf8_lossy(&rest));
    server.abort();
    server2.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_and_frees_its_slot() {
    let config = AdminConfig::default()
        .max_connections(1)
        .header_timeout(Duration::from_secs(60))
        .idle_timeout(Duration::from_millis(300))
        .max_requests_per_connection(u64::MAX);
    let (addr, server) = start(config).await;
    // Pipelines far more response bytes than the socket buffers hold, and never reads.
    let hog = TcpStream::connect(addr).await.unwrap();
    let (_rd, mut wr) = hog.into_split();
    let req = get_req("/dashboard", &addr.to_string(), "");
    let writer = tokio::spawn(async move {
        for _ in 0..5_000 {
            if wr.write_all(req.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    // The hog holds the only slot until its stalled writes time out; then a reader is served.
    served_within_patience(addr).await;
    writer.abort();
    server.abort();
}

/// Waits (up to [`PATIENCE`]) until a fresh connection gets `200` for `/health`.
async fn served_within_patience(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut c = Conn::open(addr).await;
        if c.send(&get_req("/health", &addr.to_string(), "Connection: close\r\n")).await.is_ok() {
            let got = c.closed().await;
            if got.starts_with(b"HTTP/1.1 200") {
                return;
            }
            assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 503"), "{:?}", String::from_utf8_lossy(&got));
        }
        assert!(tokio::time::Instant::now() < deadline, "no connection was served within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What an over-the-limit connection sees: `503`, or the end of the stream, or a reset; never
/// a hang and never an answer.
async fn assert_refused(c: &mut Conn, what: &str) {
    let got = c.closed().await;
    assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 503"), "{what}: {:?}", String::from_utf8_lossy(&got));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_refuses_the_excess_and_frees_slots() {
    for limit in [1usize, 3] {
        let config = AdminConfig::default()
            .max_connections(limit)
            .header_timeout(Duration::from_secs(60))
            .idle_timeout(Duration::from_secs(60));
        let (addr, server) = start(config).await;
        let host = addr.to_string();
        let mut held = Vec::new();
        for _ in 0..limit {
            let mut c = Conn::open(addr).await;
            c.send(&get_req("/health", &host, "")).await.unwrap();
            assert_eq!(c.response().await.status, 200);
            held.push(c);
        }
        for k in 0..limit + 2 {
            let mut extra = Conn::open(addr).await;
            let _ = extra.send(&get_req("/health", &host, "")).await;
            assert_refused(&mut extra, &format!("extra connection {k} over {limit}")).await;
        }
        // The first ones still work.
        for c in &mut held {
            c.send(&get_req("/metrics", &host, "")).await.unwrap();
            assert_eq!(c.response().await.status, 200);
        }
        // Closing them frees their slots: `limit` new connections are held and served again.
        drop(held);
        served_within_patience(addr).await;
        let mut again = Vec::new();
        for _ in 0..limit {
            let deadline = tokio::time::Instant::now() + PATIENCE;
            loop {
                let mut c = Conn::open(addr).await;
                let _ = c.send(&get_req("/health", &host, "")).await;
                if c.status_line().await.is_some_and(|l| l.starts_with("HTTP/1.1 200")) {
                    again.push(c);
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "slot not freed within {PATIENCE:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let mut extra = Conn::open(addr).await;
        let _ = extra.send(&get_req("/health", &host, "")).await;
        assert_refused(&mut extra, "over the limit again").await;
        server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_open_connections_is_shed_and_the_server_recovers() {
    let config = AdminConfig::default()
        .max_connections(16)
        .header_timeout(Duration::from_millis(500))
        .idle_timeout(Duration::from_secs(60));
    let (addr, server) = start(config).await;
    let mut flood = Vec::new();
    for _ in 0..300 {
        let mut c = Conn::open(addr).await;
        // Half a request: a request line, no end of head.
        let _ = c.send("GET /metrics HTTP/1.1\r\n").await;
        flood.push(c);
    }
    // Every one of them ends: the 16 admitted by the header timeout, the rest at once (no hyper
    // default could close them: its own header timeout is 30 s, above PATIENCE).
    for (i, c) in flood.iter_mut().enumerate() {
        let got = c.closed().await;
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 503") || got.starts_with(b"HTTP/1.1 408"),
            "connection {i}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    served_within_patience(addr).await;
    server.abort();
}
