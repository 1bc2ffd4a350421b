//! The connection pool (standalone or cluster) and the mapping of Redis failures to
//! [`TierError`]s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::{self, ErrorKind, RedisError, ServerErrorKind, aio::ConnectionLike};
use deadpool_redis::{PoolError, TimeoutType};
use strata_cache_core::{TierError, TierErrorKind};

/// A pool of connections to a standalone server, or one shared connection to a cluster.
#[derive(Clone)]
pub(crate) enum Backend {
    Standalone(deadpool_redis::Pool),
    Cluster(Arc<ClusterBackend>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Standalone(p) => f.debug_tuple("Standalone").field(&p.status()).finish(),
            Backend::Cluster(c) => {
                f.debug_tuple("Cluster").field(&c.conn.try_lock().map(|c| c.is_some()).ok()).finish()
            }
        }
    }
}

/// One multiplexed cluster connection, opened on first use and shared by every call.
///
/// Not a pool on purpose: a pooled cluster connection is checked with a `PING` to every master
/// each time it is taken, so one dead or hung master would fail (or stall) every call, also
/// those for slots on healthy masters. The cluster connection keeps one connection per node and
/// reconnects to each on its own.
///
/// Beside it, one plain multiplexed connection per master, opened on first use: the tier sends
/// each call straight to the master its own slot map names ([`ClusterBackend::node`]), so that
/// a dead or hung master (and the cluster connection's reaction to it) cannot hold up calls
/// for the other masters.
pub(crate) struct ClusterBackend {
    client: redis::cluster::ClusterClient,
    connect_timeout: Duration,
    command_timeout: Duration,
    conn: tokio::sync::Mutex<Option<redis::cluster_async::ClusterConnection>>,
    /// Credentials and settings for the per-master connections (from the first node URL).
    base: redis::ConnectionInfo,
    nodes: parking_lot::Mutex<HashMap<Arc<str>, NodeSlot>>,
}

type NodeSlot = Arc<tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>>;

impl ClusterBackend {
    pub(crate) fn new(
        client: redis::cluster::ClusterClient,
        base: redis::ConnectionInfo,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Self {
        Self {
            client,
            connect_timeout,
            command_timeout,
            conn: tokio::sync::Mutex::new(None),
            base,
            nodes: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// The connection to the master at `addr` (`host:port`), opened on first use (and again
    /// after [`ClusterBackend::forget`]).
    pub(crate) async fn node(
        &self,
        tier: &Arc<str>,
        addr: &Arc<str>,
    ) -> Result<redis::aio::MultiplexedConnection, TierError> {
        let slot = self.nodes.lock().entry(addr.clone()).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let bad =
            || TierError::new(tier.clone(), TierErrorKind::Protocol, "the cluster named a malformed node address");
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let info = self.base.clone().set_addr(redis::ConnectionAddr::Tcp(host.to_owned(), port));
        let client = redis::Client::open(info).map_err(|e| redis_error(tier, e))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout));
        let c = client.get_multiplexed_async_connection_with_config(&config).await.map_err(|e| redis_error(tier, e))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Drops the connection to `addr` (after it failed): the next call opens a new one.
    pub(crate) fn forget(&self, addr: &Arc<str>) {
        let slot = self.nodes.lock().get(addr).cloned();
        if let Some(slot) = slot
            && let Ok(mut s) = slot.try_lock()
        {
            *s = None;
        }
    }

    async fn get(&self, tier: &Arc<str>) -> Result<redis::cluster_async::ClusterConnection, TierError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let c = match tokio::time::timeout(self.connect_timeout, self.client.get_async_connection()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(redis_error(tier, e)),
            Err(_) => {
                return Err(TierError::new(
                    tier.clone(),
                    TierErrorKind::Timeout,
                    "connecting to the cluster timed out",
                ));
            }
        };
        *slot = Some(c.clone());
        Ok(c)
    }
}

/// A connection of either kind.
pub(crate) enum Conn {
    Standalone(deadpool_redis::Connection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Backend {
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster(_))
    }

    pub(crate) fn cluster(&self) -> Option<&Arc<ClusterBackend>> {
        match self {
            Backend::Cluster(c) => Some(c),
            Backend::Standalone(_) => None,
        }
    }

    pub(crate) async fn get(&self, tier: &Arc<str>) -> Result<Conn, TierError> {
        match self {
            Backend::Standalone(p) => p.get().await.map(Conn::Standalone).map_err(|e| pool_error(tier, e)),
            Backend::Cluster(c) => c.get(tier).await.map(Conn::Cluster),
        }
    }
}

/// Runs `f` on a pooled connection within `timeout` (pool wait included).
pub(crate) async fn with_timeout<T>(
    tier: &Arc<str>,
    timeout: Duration,
    what: &'static str,
    f: impl Future<Output = Result<T, TierError>>,
) -> Result<T, TierError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r,
        Err(_) => Err(TierError::new(
            tier.clone(),
            TierErrorKind::Timeout,
            format!("{what} did not complete within {} ms", timeout.as_millis()),
        )),
    }
}

fn pool_error(tier: &Arc<str>, e: PoolError) -> TierError {
    match e {
        PoolError::Timeout(TimeoutType::Wait) => TierError::new(
            tier.clone(),
            TierErrorKind::Overloaded,
            "connection pool exhausted (no connection free within the pool wait timeout)",
        ),
        PoolError::Timeout(TimeoutType::Create) => {
            TierError::new(tier.clone(), TierErrorKind::Timeout, "connecting to Redis timed out")
        }
        PoolError::Timeout(TimeoutType::Recycle) => {
            TierError::new(tier.clone(), TierErrorKind::Timeout, "checking a pooled connection timed out")
        }
        PoolError::Backend(e) => redis_error(tier, e),
        PoolError::Closed => TierError::new(tier.clone(), TierErrorKind::Unavailable, "connection pool closed"),
        other => TierError::new(tier.clone(), TierErrorKind::Other, format!("connection pool: {other}")),
    }
}

/// Maps a Redis error to a [`TierError`], keeping it as the source.
pub(crate) fn redis_error(tier: &Arc<str>, e: RedisError) -> TierError {
    let kind = classify(&e);
    let message = match kind {
        TierErrorKind::Unavailable => "Redis unavailable",
        TierErrorKind::Timeout => "Redis timed out",
        TierErrorKind::Protocol => "unexpected Redis reply",
        TierErrorKind::InvalidRequest => "Redis refused the request",
        TierErrorKind::Overloaded => "Redis busy",
        _ => "Redis error",
    };
    TierError::new(tier.clone(), kind, message).with_source(e)
}

pub(crate) fn classify(e: &RedisError) -> TierErrorKind {
    if e.is_timeout() {
        return TierErrorKind::Timeout;
    }
    if e.is_connection_refusal() || e.is_connection_dropped() || e.is_io_error() {
        return TierErrorKind::Unavailable;
    }
    match e.kind() {
        ErrorKind::Server(k) => match k {
            ServerErrorKind::Moved
            | ServerErrorKind::Ask
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::BusyLoading
            | ServerErrorKind::ReadOnly => TierErrorKind::Unavailable,
            ServerErrorKind::CrossSlot | ServerErrorKind::NoPerm => TierErrorKind::InvalidRequest,
            ServerErrorKind::ResponseError if e.code() == Some("OOM") => TierErrorKind::Overloaded,
            ServerErrorKind::ResponseError if e.code() == Some("WRONGTYPE") => TierErrorKind::Protocol,
            _ => TierErrorKind::Other,
        },
        ErrorKind::ClusterConnectionNotFound | ErrorKind::Io => TierErrorKind::Unavailable,
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => TierErrorKind::Protocol,
        ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig => TierErrorKind::InvalidRequest,
        _ => TierErrorKind::Other,
    }
}
