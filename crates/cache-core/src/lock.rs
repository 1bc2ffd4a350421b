//! Fleet-wide stampede protection: on an L1 and tier miss, one process in the fleet takes a
//! [`LoadLock`] on the key and runs the loader; the others poll the tiers for the value it
//! writes (bounded by [`LockOptions::max_wait`]) and load it themselves only if it does not
//! appear in time. The Redis implementation lives in `strata-cache-redis`.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::{ConfigError, TierError};
use crate::key::Key;

/// Proof of holding a lock: a random token, released by compare-and-delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockToken(pub String);

impl LockToken {
    /// A random 128-bit token, hex encoded.
    pub fn random() -> Self {
        Self(format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)))
    }
}

/// How a cache uses its [`LoadLock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOptions {
    /// How long a lock is held at most (the loader's expected time plus margin; a crashed holder
    /// frees it after this).
    pub ttl: Duration,
    /// How long a process that did not get the lock waits for the value before loading itself.
    pub max_wait: Duration,
    /// How often a waiting process re-reads the tiers.
    pub poll_interval: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            max_wait: Duration::from_secs(2),
            poll_interval: Duration::from_millis(10),
        }
    }
}

impl LockOptions {
    /// Checks the options (every duration at most [`MAX_DURATION`](crate::options::MAX_DURATION)).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, d) in
            [("lock.ttl", self.ttl), ("lock.max_wait", self.max_wait), ("lock.poll_interval", self.poll_interval)]
        {
            crate::options::check_max_duration(field, d)?;
        }
        if self.ttl.is_zero() {
            return Err(ConfigError::new("lock.ttl", "must be greater than zero"));
        }
        if self.poll_interval.is_zero() {
            return Err(ConfigError::new("lock.poll_interval", "must be greater than zero"));
        }
        if self.poll_interval > self.max_wait && !self.max_wait.is_zero() {
            return Err(ConfigError::new("lock.poll_interval", "must not exceed max_wait"));
        }
        Ok(())
    }
}

/// A lock shared by every process of a fleet (e.g. Redis `SET NX PX` + compare-and-delete).
#[async_trait]
pub trait LoadLock: Send + Sync + 'static {
    /// A short name for errors and metrics.
    fn name(&self) -> &str;

    /// One attempt to take the lock for `key` for at most `ttl`. `Ok(None)`: someone else
    /// holds it.
    async fn try_acquire(&self, key: &Key, ttl: Duration) -> Result<Option<LockToken>, TierError>;

    /// Releases the lock only if it is still held with `token`.
    async fn release(&self, key: &Key, token: &LockToken) -> Result<(), TierError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::MAX_DURATION;

    #[test]
    fn lock_durations_are_bounded() {
        let ns = Duration::from_nanos(1);
        for d in [MAX_DURATION + ns, Duration::MAX] {
            for (o, field) in [
                (LockOptions { ttl: d, ..LockOptions::default() }, "lock.ttl"),
                (LockOptions { max_wait: d, ..LockOptions::default() }, "lock.max_wait"),
                (LockOptions { poll_interval: d, max_wait: d, ..LockOptions::default() }, "lock.max_wait"),
            ] {
                assert_eq!(o.validate().unwrap_err().field, field, "{d:?}");
            }
        }
        let longest = LockOptions { ttl: MAX_DURATION, max_wait: MAX_DURATION, poll_interval: MAX_DURATION };
        assert!(longest.validate().is_ok());
    }
}
