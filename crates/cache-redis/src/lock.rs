//! [`RedisLock`]: the fleet-wide stampede lock (`SET NX PX` + compare-and-delete).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::{self, Value};
use strata_cache_core::{BreakerState, ConfigError, Key, LoadLock, LockToken, TierError, TierErrorKind};

use crate::breakers::Breakers;
use crate::config::RedisConfig;
use crate::conn::{Backend, redis_error, with_timeout};
use crate::keys::KeySpace;

/// Deletes `KEYS[1]` only if it still holds `ARGV[1]`.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A [`LoadLock`] on Redis: `SET <prefix>!lock:cache:namespace:id <random token> NX PX <ttl>`
/// to acquire; a Lua compare-and-delete (`EVALSHA`, falling back to `EVAL`) to release, so a
/// holder whose lock expired never deletes someone else's.
///
/// Works on a standalone server and on a cluster (one key per lock). Every call goes through a
/// circuit breaker (one per master on a cluster) and the call timeout, so a failed or hung
/// Redis costs a load at most one timeout until the breaker opens, then nothing.
#[derive(Clone)]
pub struct RedisLock {
    name: Arc<str>,
    backend: Backend,
    keys: KeySpace,
    timeout: Duration,
    release: Arc<redis::Script>,
    breakers: Arc<Breakers>,
}

impl std::fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLock").field("name", &self.name).field("prefix", &self.keys.prefix()).finish()
    }
}

impl RedisLock {
    /// A lock on `config`'s servers (its own pool).
    pub fn new(config: &RedisConfig) -> Result<Self, ConfigError> {
        let name: Arc<str> = Arc::from(format!("{}-lock", config.name));
        let backend = config.backend()?;
        let breakers = Arc::new(Breakers::new(
            name.clone(),
            config.breaker.clone(),
            backend.clone(),
            config.command_timeout,
            None,
        )?);
        Ok(Self {
            name,
            backend,
            keys: config.key_space(),
            timeout: config.command_timeout,
            release: Arc::new(redis::Script::new(RELEASE_SCRIPT)),
            breakers,
        })
    }

    /// The state of the lock's circuit breaker (on a cluster, the worst of its masters').
    pub fn breaker_state(&self) -> BreakerState {
        self.breakers.worst()
    }

    /// The Redis key of the lock of `key`.
    pub fn lock_key(&self, key: &Key) -> String {
        self.keys.lock(key.cache(), key.namespace().as_str(), key.id())
    }
}

#[async_trait]
impl LoadLock for RedisLock {
    fn name(&self) -> &str {
        &self.name
    }

    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Option<LockToken>, TierError> {
        if ttl.is_zero() {
            return Err(TierError::new(self.name.clone(), TierErrorKind::InvalidRequest, "lock ttl must be > 0"));
        }
        let token = LockToken::random();
        let lkey = self.lock_key(key);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let name = &self.name;
        let nb = self.breakers.for_key(lkey.as_bytes());
        let call = with_timeout(name, self.timeout, "lock SET NX", async {
            let mut c = self.backend.get(name).await?;
            redis::cmd("SET")
                .arg(&lkey)
                .arg(&token.0)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query_async::<Value>(&mut c)
                .await
                .map_err(|e| redis_error(name, e))
        });
        let reply = self.breakers.guarded(&nb, call).await?;
        Ok(match reply {
            Value::Nil => None,
            _ => Some(token),
        })
    }

    async fn release(&self, key: &Key, token: &LockToken) -> Result<(), TierError> {
        let lkey = self.lock_key(key);
        let name = &self.name;
        let nb = self.breakers.for_key(lkey.as_bytes());
        let call = with_timeout(name, self.timeout, "lock release", async {
            let mut c = self.backend.get(name).await?;
            self.release.key(&lkey).arg(&token.0).invoke_async::<i64>(&mut c).await.map_err(|e| redis_error(name, e))
        });
        self.breakers.guarded(&nb, call).await?;
        Ok(())
    }
}
