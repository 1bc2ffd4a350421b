//! Writes: `SET .. PX` (tag sets updated first, so an entry is never stored unlisted) and
//! `DEL`.

use std::time::Duration;

use deadpool_redis::redis::{self, Value};
use strata_cache_core::{Key, StoredEntry, TierError, TierErrorKind, Timestamp};

use super::{MAX_PX_MS, MAX_REDIS_VALUE, RedisTier};

/// A tag set outlives the entries it lists by this much.
const TAG_SET_SLACK: Duration = Duration::from_secs(1);

/// Adds a member to a tag set and makes the set live at least `ARGV[2]` ms (0: forever).
const TAG_ADD_SCRIPT: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if ttl <= 0 then
  redis.call('PERSIST', KEYS[1])
  return 1
end
local cur = redis.call('PTTL', KEYS[1])
if existed == 0 or (cur >= 0 and cur < ttl) then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
";

impl RedisTier {
    /// [`Tier::set`](strata_cache_core::Tier::set).
    pub(super) async fn write_one(&self, key: &Key, entry: &StoredEntry) -> Result<(), TierError> {
        let (mut tags, mut cmds) = (Vec::with_capacity(entry.meta.tags.len()), Vec::with_capacity(1));
        self.set_cmds(key, entry, self.inner.clock.now(), &mut tags, &mut cmds)?;
        if tags.is_empty()
            && let Some((rkey, cmd)) = cmds.pop()
        {
            let _: Value = self.query_key(&rkey, cmd, "SET").await?;
            return Ok(());
        }
        self.run_ordered(tags, cmds, "SET").await.map(drop)
    }

    /// [`Tier::set_many`](strata_cache_core::Tier::set_many).
    pub(super) async fn write_many(&self, entries: &[(Key, StoredEntry)]) -> Result<(), TierError> {
        let now = self.inner.clock.now();
        let (mut tags, mut cmds) = (Vec::new(), Vec::with_capacity(entries.len()));
        for (k, e) in entries {
            self.set_cmds(k, e, now, &mut tags, &mut cmds)?;
        }
        self.run_ordered(tags, cmds, "SET pipeline").await.map(drop)
    }

    /// [`Tier::delete`](strata_cache_core::Tier::delete).
    pub(super) async fn delete_one(&self, key: &Key) -> Result<(), TierError> {
        let rkey = self.redis_key(key);
        let _: i64 = self.query_key(&rkey, redis::cmd("DEL").arg(&rkey).take(), "DEL").await?;
        Ok(())
    }

    /// The commands that store one entry: `tags` index it in its tag sets, `writes` store it.
    /// The tag sets are updated first, so that an entry is never stored unlisted.
    fn set_cmds(
        &self,
        key: &Key,
        entry: &StoredEntry,
        now: Timestamp,
        tags: &mut Vec<(String, redis::Cmd)>,
        out: &mut Vec<(String, redis::Cmd)>,
    ) -> Result<(), TierError> {
        if entry.frame.len() > MAX_REDIS_VALUE {
            return Err(self.err(
                TierErrorKind::InvalidRequest,
                format!("value of {} bytes exceeds Redis's limit of {MAX_REDIS_VALUE}", entry.frame.len()),
            ));
        }
        let rkey = self.redis_key(key);
        let expires = entry.meta.expires_at;
        let ttl_ms = if expires == Timestamp::MAX {
            None
        } else if expires <= now {
            // Already expired: not written; whatever older value is there is removed.
            out.push((rkey.clone(), redis::cmd("DEL").arg(&rkey).take()));
            return Ok(());
        } else {
            let ms = expires.as_millis() - now.as_millis();
            if ms > MAX_PX_MS {
                // Redis refuses (or, past i64, misreads) such a PX; never store it unexpiring.
                return Err(self.err(
                    TierErrorKind::InvalidRequest,
                    format!(
                        "expiry {ms} ms away is past what the Redis tier stores ({MAX_PX_MS} ms); \
                         an entry that never expires has expires_at = Timestamp::MAX"
                    ),
                ));
            }
            Some(ms.max(1))
        };
        let mut set = redis::cmd("SET");
        set.arg(&rkey).arg(entry.frame.as_ref());
        if let Some(ms) = ttl_ms {
            set.arg("PX").arg(ms);
        }
        out.push((rkey.clone(), set));
        let set_ttl = ttl_ms.map_or(0, |ms| ms.saturating_add(TAG_SET_SLACK.as_millis() as u64));
        for tag in entry.meta.tags.iter() {
            let tkey = self.inner.keys.tag_set(key.cache(), key.namespace().as_str(), tag);
            let cmd = redis::cmd("EVAL").arg(TAG_ADD_SCRIPT).arg(1).arg(&tkey).arg(&rkey).arg(set_ttl).take();
            tags.push((tkey, cmd));
        }
        Ok(())
    }
}
