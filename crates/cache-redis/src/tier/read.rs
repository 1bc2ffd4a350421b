//! Reads: `GET` one key, `MGET` a batch (one per hash slot on a cluster).

use bytes::Bytes;
use deadpool_redis::redis::{self, Value};
use strata_cache_core::{Key, TierError, TierErrorKind};

use super::RedisTier;
use crate::conn::{Conn, redis_error, with_timeout};
use crate::keys::group_by_slot;

impl RedisTier {
    /// [`Tier::get`](strata_cache_core::Tier::get).
    pub(super) async fn read_one(&self, key: &Key) -> Result<Option<Bytes>, TierError> {
        let rkey = self.redis_key(key);
        let v: Value = self.query_key(&rkey, redis::cmd("GET").arg(&rkey).take(), "GET").await?;
        to_bytes(v).map_err(|m| self.err(TierErrorKind::Protocol, m))
    }

    /// [`Tier::get_many`](strata_cache_core::Tier::get_many).
    pub(super) async fn read_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>, TierError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rkeys: Vec<String> = keys.iter().map(|k| self.redis_key(k)).collect();
        let name = &self.inner.name;
        let values: Vec<Value> = match self.conn_within("MGET").await? {
            Conn::Standalone(mut c) => {
                with_timeout(name, self.inner.timeout, "MGET", async {
                    redis::cmd("MGET")
                        .arg(&rkeys)
                        .query_async::<Vec<Value>>(&mut *c)
                        .await
                        .map_err(|e| redis_error(name, e))
                })
                .await?
            }
            Conn::Cluster(_) => {
                let groups = group_by_slot(&rkeys);
                let pipes: Vec<redis::Pipeline> = groups
                    .iter()
                    .map(|(_, idx)| {
                        let mut cmd = redis::cmd("MGET");
                        for &i in idx {
                            cmd.arg(&rkeys[i]);
                        }
                        let mut p = redis::pipe();
                        p.add_command(cmd);
                        p
                    })
                    .collect();
                // One MGET per group: its reply is the group's array of values.
                let replies = self
                    .per_node(&groups, &pipes, "MGET")
                    .await?
                    .into_iter()
                    .map(|mut r| match r.pop() {
                        Some(Value::Array(vals)) if r.is_empty() => Ok(vals),
                        _ => Err(self.err(TierErrorKind::Protocol, "MGET reply is not an array")),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                self.scatter(&groups, replies, rkeys.len(), "MGET reply count mismatch")?
            }
        };
        if values.len() != keys.len() {
            return Err(self.err(TierErrorKind::Protocol, "MGET reply count mismatch"));
        }
        values.into_iter().map(|v| to_bytes(v).map_err(|m| self.err(TierErrorKind::Protocol, m))).collect()
    }
}

fn to_bytes(v: Value) -> Result<Option<Bytes>, &'static str> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(Bytes::from(b))),
        Value::SimpleString(s) => Ok(Some(Bytes::from(s.into_bytes()))),
        _ => Err("expected a string or nil"),
    }
}
