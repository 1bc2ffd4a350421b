//! Tag invalidation (unlist, then delete; re-list on failure) and namespace invalidation.

use deadpool_redis::redis::{self, Value};
use strata_cache_core::{TierError, TierErrorKind};

use super::RedisTier;
use crate::keys::group_by_slot;

/// How many keys one `DEL` of a tag invalidation carries.
const DEL_CHUNK: usize = 512;

impl RedisTier {
    /// [`Tier::invalidate_tag`](strata_cache_core::Tier::invalidate_tag).
    pub(super) async fn delete_tagged(&self, cache: &str, namespace: &str, tag: &str) -> Result<u64, TierError> {
        let tkey = self.inner.keys.tag_set(cache, namespace, tag);
        let members: Vec<Vec<u8>> = self.query_key(&tkey, redis::cmd("SMEMBERS").arg(&tkey).take(), "SMEMBERS").await?;
        if members.is_empty() {
            return Ok(0);
        }
        // Unlist first, then delete: an entry re-written (and re-listed) in between is deleted
        // but stays listed (harmless), never kept while unlisted. Only the members read are
        // removed (entries tagged meanwhile stay listed).
        let srem: Vec<(String, redis::Cmd)> = members
            .chunks(DEL_CHUNK)
            .map(|chunk| (tkey.clone(), redis::cmd("SREM").arg(&tkey).arg(chunk).take()))
            .collect();
        let n_srem = srem.len();
        let mut dels = Vec::new();
        let groups = if self.is_cluster() { group_by_slot(&members) } else { vec![(0, (0..members.len()).collect())] };
        for (_, idx) in groups {
            for chunk in idx.chunks(DEL_CHUNK) {
                let mut del = redis::cmd("DEL");
                for &i in chunk {
                    del.arg(&members[i]);
                }
                let route = String::from_utf8_lossy(&members[chunk[0]]).into_owned();
                dels.push((route, del));
            }
        }
        let replies = match self.run_ordered(srem, dels, "tag invalidation").await {
            Ok(r) => r,
            Err(e) => {
                // Some entries may have been unlisted but not deleted: list them again (best
                // effort; listing an entry already deleted is harmless).
                for chunk in members.chunks(DEL_CHUNK) {
                    let relist = redis::cmd("SADD").arg(&tkey).arg(chunk).take();
                    if let Err(again) = self.query_key::<Value>(&tkey, relist, "SADD").await {
                        tracing::warn!(error = %again, "could not re-list tag members after a failed invalidation");
                        break;
                    }
                }
                return Err(e);
            }
        };
        let mut deleted = 0u64;
        for v in &replies[n_srem..] {
            if let Value::Int(n) = v {
                deleted += u64::try_from(*n).unwrap_or(0);
            }
        }
        Ok(deleted)
    }

    /// [`Tier::invalidate_namespace`](strata_cache_core::Tier::invalidate_namespace).
    pub(super) async fn delete_namespace(&self, cache: &str, namespace: &str) -> Result<u64, TierError> {
        if self.is_cluster() {
            return Err(self.err(TierErrorKind::Unsupported, "namespace invalidation is not supported on a cluster"));
        }
        // Cache and namespace names are `[A-Za-z0-9_.-]`: only the prefix can hold glob
        // characters. Entries are `cache:ns:id` or `cache:ns#hash`; tag sets `!tag:cache:ns:tag`.
        let prefix = strata_cache_core::text::escape_glob(self.inner.keys.prefix());
        let patterns = [
            format!("{prefix}{cache}:{namespace}:*"),
            format!("{prefix}{cache}:{namespace}#*"),
            format!("{prefix}!tag:{cache}:{namespace}:*"),
            format!("{prefix}!tag:{cache}:{namespace}#*"),
        ];
        let mut deleted = 0u64;
        for pattern in patterns {
            let mut cursor = 0u64;
            loop {
                let scan = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).take();
                let (next, keys): (u64, Vec<Vec<u8>>) = self.query(scan, "SCAN").await?;
                if !keys.is_empty() {
                    let n: u64 = self.query(redis::cmd("DEL").arg(&keys).take(), "DEL").await?;
                    deleted += n;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(deleted)
    }
}
