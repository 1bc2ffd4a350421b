//! Throwaway services for the facade's integration tests (the servers themselves come from
//! `strata_testkit::redis`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test binary uses a part

pub(crate) use strata_testkit::redis::Server;

/// Whether a missing service must fail the test (`CI=true`) rather than skip it.
pub(crate) fn ci() -> bool {
    strata_testkit::services_required()
}

/// A Redis server: ours (killed on drop) or the one `STRATA_TEST_REDIS_URL` names.
pub(crate) struct Redis {
    pub(crate) url: String,
    pub(crate) port: u16,
    _server: Option<Server>,
}

/// The server `STRATA_TEST_REDIS_URL` names, or a throwaway one.
pub(crate) fn redis() -> Option<Redis> {
    let s = strata_testkit::redis::standalone()?;
    Some(Redis { url: s.url.clone(), port: s.port(), _server: s.server })
}

/// A throwaway `redis-server` on a free loopback port, whatever the environment says (for tests
/// that scan or reconfigure the whole server). `None` (skip) only without `CI=true`.
pub(crate) fn own_redis() -> Option<Redis> {
    let server = Server::start(0, false)?;
    Some(Redis { url: server.url(), port: server.port, _server: Some(server) })
}
