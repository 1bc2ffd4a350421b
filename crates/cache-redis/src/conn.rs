//! The connection pool (standalone or cluster) and the mapping of Redis failures to
//! [`TierError`]s.

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::{self, ErrorKind, RedisError, ServerErrorKind, aio::ConnectionLike};
use deadpool_redis::{PoolError, TimeoutType};
use strata_cache_core::{TierError, TierErrorKind};

/// A pool of connections to a standalone server or to a cluster.
#[derive(Clone)]
pub(crate) enum Backend {
    Standalone(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Standalone(p) => f.debug_tuple("Standalone").field(&p.status()).finish(),
            Backend::Cluster(p) => f.debug_tuple("Cluster").field(&p.status()).finish(),
        }
    }
}

/// A pooled connection of either kind.
pub(crate) enum Conn {
    Standalone(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
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

    pub(crate) async fn get(&self, tier: &Arc<str>) -> Result<Conn, TierError> {
        match self {
            Backend::Standalone(p) => p.get().await.map(Conn::Standalone).map_err(|e| pool_error(tier, e)),
            Backend::Cluster(p) => p.get().await.map(Conn::Cluster).map_err(|e| pool_error(tier, e)),
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
