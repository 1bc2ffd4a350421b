//! Event-driven invalidation from outside the library: the consistency crate's
//! [`ExternalInvalidator`](strata_consistency::external::ExternalInvalidator) fed by a Redis
//! pub/sub channel ([`RedisChannel`]) or PostgreSQL `LISTEN` ([`PgNotify`]). A service that
//! writes the database directly publishes `{"cache":"users","namespace":"default","key":"42"}`
//! (or `"tag"` instead of `"key"`) and every process drops the entry.
//!
//! The leaf crates cannot depend on each other, so the glue between a transport and the
//! invalidator lives here, in the facade.

use async_trait::async_trait;
use strata_cache_core::BoxError;
use strata_consistency::external::ExternalSource;

/// A Redis pub/sub channel as an [`ExternalSource`].
#[cfg(feature = "redis")]
#[derive(Debug)]
pub struct RedisChannel(pub strata_cache_redis::RedisChannelSource);

#[cfg(feature = "redis")]
#[async_trait]
impl ExternalSource for RedisChannel {
    async fn next(&mut self) -> Option<Result<Vec<u8>, BoxError>> {
        self.0.next().await.map(Ok)
    }
}

/// PostgreSQL `LISTEN` as an [`ExternalSource`] (each notification's payload is one message).
#[cfg(feature = "sql")]
#[derive(Debug)]
pub struct PgNotify(pub strata_cache_sql::PgNotifySource);

#[cfg(feature = "sql")]
#[async_trait]
impl ExternalSource for PgNotify {
    async fn next(&mut self) -> Option<Result<Vec<u8>, BoxError>> {
        match self.0.recv().await {
            Ok(n) => Some(Ok(n.payload.into_bytes())),
            Err(e) => {
                // The listener reconnects on the next call; do not spin while the server is away.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                Some(Err(Box::new(e)))
            }
        }
    }
}
