//! [`PgNotifySource`]: PostgreSQL `LISTEN` for invalidations published from outside the cache
//! (a trigger, another service: `NOTIFY channel, 'payload'` or `pg_notify(channel, payload)`).

use std::sync::Arc;

use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{DatabaseConnection, DbBackend, DbErr, RuntimeErr};
use strata_cache_core::{ConfigError, TierError};

use crate::error::{SqlError, tier_err};

/// A notification received on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgNotification {
    /// The channel.
    pub channel: String,
    /// The payload (for invalidations: a key id, a tag, ...).
    pub payload: String,
}

/// Listens on PostgreSQL channels through a connection of the sea-orm pool.
///
/// The listener reconnects on its own when its connection drops; notifications sent while it
/// was disconnected are lost (PostgreSQL does not queue them), so pair it with TTLs.
pub struct PgNotifySource {
    listener: PgListener,
    name: Arc<str>,
}

impl std::fmt::Debug for PgNotifySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgNotifySource").field("name", &self.name).finish()
    }
}

fn sqlx_err(name: &str, op: &str, e: sea_orm::sqlx::Error) -> TierError {
    tier_err(name, op, DbErr::Conn(RuntimeErr::SqlxError(Arc::new(e))))
}

impl PgNotifySource {
    /// Takes a connection from `db`'s pool and `LISTEN`s on every channel in `channels`.
    ///
    /// Errors: [`SqlError::Config`] when `db` is not PostgreSQL or no channel is given;
    /// [`SqlError::Tier`] when connecting or `LISTEN` fails.
    pub async fn listen(db: &DatabaseConnection, channels: &[&str]) -> Result<Self, SqlError> {
        if db.get_database_backend() != DbBackend::Postgres {
            return Err(ConfigError::new("sql.notify", "LISTEN/NOTIFY needs a PostgreSQL connection").into());
        }
        if channels.is_empty() || channels.iter().any(|c| c.is_empty() || c.len() > 63) {
            return Err(ConfigError::new("sql.notify", "give 1 or more channels of 1..=63 bytes").into());
        }
        let name: Arc<str> = Arc::from("pg-notify");
        let mut listener = PgListener::connect_with(db.get_postgres_connection_pool())
            .await
            .map_err(|e| sqlx_err(&name, "listen connect", e))?;
        listener.listen_all(channels.iter().copied()).await.map_err(|e| sqlx_err(&name, "listen", e))?;
        Ok(Self { listener, name })
    }

    /// Waits for the next notification.
    pub async fn recv(&mut self) -> Result<PgNotification, TierError> {
        let n = self.listener.recv().await.map_err(|e| sqlx_err(&self.name, "recv", e))?;
        Ok(PgNotification { channel: n.channel().to_owned(), payload: n.payload().to_owned() })
    }
}
