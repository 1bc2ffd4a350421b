//! Throwaway services for the facade's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test binary uses a part

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether a missing service must fail the test (`CI=true`) rather than skip it.
pub(crate) fn ci() -> bool {
    strata_testkit::services_required()
}

/// A Redis server: ours (killed on drop) or the one `STRATA_TEST_REDIS_URL` names.
pub(crate) struct Redis {
    pub(crate) url: String,
    pub(crate) port: u16,
    child: Option<Child>,
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The server `STRATA_TEST_REDIS_URL` names, or a throwaway one.
pub(crate) fn redis() -> Option<Redis> {
    if let Ok(url) = std::env::var("STRATA_TEST_REDIS_URL") {
        let port = url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).unwrap_or(6379);
        return Some(Redis { url, port, child: None });
    }
    own_redis()
}

/// A throwaway `redis-server` on a free loopback port, whatever the environment says (for tests
/// that scan or reconfigure the whole server). `None` (skip) only without `CI=true`.
pub(crate) fn own_redis() -> Option<Redis> {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            strata_testkit::missing_service("redis-server (cannot start)", &e);
            return None;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Redis { url: format!("redis://127.0.0.1:{port}"), port, child: Some(child) })
}
