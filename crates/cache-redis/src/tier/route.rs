//! Running commands: on one key, or as pipelines per batch (per hash slot on a cluster, each
//! on the master serving it, through that master's breaker).

use std::sync::Arc;

use deadpool_redis::redis::{self, Value};
use futures::future::join_all;
use strata_cache_core::{TierError, TierErrorKind};

use super::RedisTier;
use crate::breakers::{Breakers, NodeBreaker, counts_as_failure};
use crate::conn::{Conn, redis_error, with_timeout};
use crate::keys::group_by_slot;

impl RedisTier {
    pub(super) async fn conn(&self) -> Result<Conn, TierError> {
        self.inner.backend.get(&self.inner.name).await
    }

    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: redis::Cmd,
        what: &'static str,
    ) -> Result<T, TierError> {
        let name = &self.inner.name;
        with_timeout(name, self.inner.timeout, what, async {
            let mut c = self.conn().await?;
            cmd.query_async::<T>(&mut c).await.map_err(|e| redis_error(name, e))
        })
        .await
    }

    /// Runs commands, each routed by its key: one pipeline on a standalone server, one per hash
    /// slot (concurrently) on a cluster. Returns the replies in input order.
    async fn run(&self, cmds: Vec<(String, redis::Cmd)>, what: &'static str) -> Result<Vec<Value>, TierError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let name = &self.inner.name;
        match self.conn_within(what).await? {
            Conn::Standalone(mut c) => {
                let mut p = redis::pipe();
                for (_, cmd) in &cmds {
                    p.add_command(cmd.clone());
                }
                with_timeout(name, self.inner.timeout, what, async {
                    p.query_async::<Vec<Value>>(&mut *c).await.map_err(|e| redis_error(name, e))
                })
                .await
            }
            Conn::Cluster(_) => {
                let groups = group_by_slot(&cmds.iter().map(|(k, _)| k.as_bytes()).collect::<Vec<_>>());
                let pipes: Vec<redis::Pipeline> = groups
                    .iter()
                    .map(|(_, idx)| {
                        let mut p = redis::pipe();
                        for &i in idx {
                            p.add_command(cmds[i].1.clone());
                        }
                        p
                    })
                    .collect();
                let replies = self.per_node(&groups, &pipes, what).await?;
                self.scatter(&groups, replies, cmds.len(), "pipeline reply count mismatch")
            }
        }
    }

    /// A connection, within the call timeout (on a cluster, the shared connection: immediate
    /// once it is open).
    pub(super) async fn conn_within(&self, what: &'static str) -> Result<Conn, TierError> {
        with_timeout(&self.inner.name, self.inner.timeout, what, self.conn()).await
    }

    /// Runs one pipeline per hash-slot group on a cluster, each on the master serving its slot,
    /// through that master's breaker and within the call timeout. Fails fast (nothing is sent)
    /// when one of those breakers is open; otherwise records each master's outcome on its
    /// breaker.
    pub(super) async fn per_node(
        &self,
        groups: &[(u16, Vec<usize>)],
        pipes: &[redis::Pipeline],
        what: &'static str,
    ) -> Result<Vec<Vec<Value>>, TierError> {
        let breakers = self.cluster_breakers()?;
        let nbs: Vec<NodeBreaker> = groups.iter().map(|(slot, _)| breakers.for_slot(*slot)).collect();
        // One permit per distinct breaker (a batch over many slots of one master is one call
        // for that master's breaker).
        let mut distinct: Vec<usize> = Vec::new();
        let mut which = Vec::with_capacity(nbs.len());
        for (i, nb) in nbs.iter().enumerate() {
            match distinct.iter().position(|&d| Arc::ptr_eq(&nbs[d].breaker, &nb.breaker)) {
                Some(p) => which.push(p),
                None => {
                    distinct.push(i);
                    which.push(distinct.len() - 1);
                }
            }
        }
        let mut permits = Vec::with_capacity(distinct.len());
        for &d in &distinct {
            match nbs[d].breaker.try_call() {
                Ok(p) => permits.push(p),
                Err(()) => return Err(breakers.open_error(nbs[d].node.as_deref())),
            }
        }
        let (name, timeout) = (&self.inner.name, self.inner.timeout);
        let calls = nbs.iter().zip(pipes).map(|(nb, p)| with_timeout(name, timeout, what, self.on_node(nb, p)));
        let results = join_all(calls).await;
        // Per breaker: `Some(false)` once any of its calls failed in a way that counts.
        let mut outcome: Vec<Option<bool>> = vec![None; distinct.len()];
        for (r, &w) in results.iter().zip(&which) {
            match r {
                Ok(_) => {
                    outcome[w].get_or_insert(true);
                }
                Err(e) if counts_as_failure(e) => outcome[w] = Some(false),
                Err(_) => {}
            }
        }
        for (permit, o) in permits.into_iter().zip(outcome) {
            match o {
                Some(ok) => permit.record(ok),
                None => drop(permit),
            }
        }
        results.into_iter().collect()
    }

    fn cluster_breakers(&self) -> Result<&Arc<Breakers>, TierError> {
        self.inner.breakers.as_ref().ok_or_else(|| self.err(TierErrorKind::Other, "not a cluster tier"))
    }

    /// Runs `p` (commands on keys of one slot) on the master `nb` names. When that master
    /// answers with a redirect (the tier's slot map is out of date), asks for a new map and runs
    /// `p` once more through the cluster connection, which follows redirects; so it does when
    /// no map is known yet.
    async fn on_node(&self, nb: &NodeBreaker, p: &redis::Pipeline) -> Result<Vec<Value>, TierError> {
        let name = &self.inner.name;
        let Some(cluster) = self.inner.backend.cluster() else {
            return Err(self.err(TierErrorKind::Other, "not a cluster tier"));
        };
        if let Some(addr) = &nb.node {
            let mut c = cluster.node(name, addr).await?;
            match p.query_async::<Vec<Value>>(&mut c).await {
                Ok(v) if !v.iter().any(is_redirect_value) => return Ok(v),
                Ok(_) => {}
                Err(e) if is_redirect(&e) => {}
                Err(e) => {
                    if e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error() {
                        cluster.forget(addr);
                    }
                    return Err(redis_error(name, e));
                }
            }
            if let Some(b) = &self.inner.breakers {
                b.slot_moved();
            }
        }
        let mut c = self.conn().await?;
        p.query_async::<Vec<Value>>(&mut c).await.map_err(|e| redis_error(name, e))
    }

    /// Puts per-group replies back in input order.
    pub(super) fn scatter(
        &self,
        groups: &[(u16, Vec<usize>)],
        replies: Vec<Vec<Value>>,
        n: usize,
        mismatch: &'static str,
    ) -> Result<Vec<Value>, TierError> {
        let mut out = vec![Value::Nil; n];
        for ((_, idx), vals) in groups.iter().zip(replies) {
            if vals.len() != idx.len() {
                return Err(self.err(TierErrorKind::Protocol, mismatch));
            }
            for (&i, v) in idx.iter().zip(vals) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// One command on one key, through the breaker of the master serving the key's slot (on a
    /// cluster).
    pub(super) async fn query_key<T: redis::FromRedisValue>(
        &self,
        rkey: &str,
        cmd: redis::Cmd,
        what: &'static str,
    ) -> Result<T, TierError> {
        let Some(b) = &self.inner.breakers else { return self.query(cmd, what).await };
        let nb = b.for_key(rkey.as_bytes());
        let mut p = redis::pipe();
        p.add_command(cmd);
        let call = async {
            let mut replies = with_timeout(&self.inner.name, self.inner.timeout, what, self.on_node(&nb, &p)).await?;
            match (replies.pop(), replies.is_empty()) {
                (Some(Value::ServerError(e)), true) => Err(redis_error(&self.inner.name, e.into())),
                (Some(v), true) => T::from_redis_value(v).map_err(|e| redis_error(&self.inner.name, e.into())),
                _ => Err(self.err(TierErrorKind::Protocol, "expected one reply")),
            }
        };
        b.guarded(&nb, call).await
    }

    /// Runs `first`, then `then` (on a cluster, `then` only once every command of `first`
    /// succeeded; on a standalone server one pipeline, in order). Returns the replies of both,
    /// in input order.
    pub(super) async fn run_ordered(
        &self,
        mut first: Vec<(String, redis::Cmd)>,
        then: Vec<(String, redis::Cmd)>,
        what: &'static str,
    ) -> Result<Vec<Value>, TierError> {
        if !self.is_cluster() || first.is_empty() || then.is_empty() {
            first.extend(then);
            let replies = self.run(first, what).await?;
            self.check_replies(&replies)?;
            return Ok(replies);
        }
        let mut replies = self.run(first, what).await?;
        self.check_replies(&replies)?;
        let rest = self.run(then, what).await?;
        self.check_replies(&rest)?;
        replies.extend(rest);
        Ok(replies)
    }

    fn check_replies(&self, replies: &[Value]) -> Result<(), TierError> {
        match replies.iter().find_map(|v| match v {
            Value::ServerError(e) => Some(e.clone()),
            _ => None,
        }) {
            Some(e) => Err(redis_error(&self.inner.name, e.into())),
            None => Ok(()),
        }
    }
}

/// A `MOVED`/`ASK` redirect.
fn is_redirect(e: &redis::RedisError) -> bool {
    matches!(e.kind(), redis::ErrorKind::Server(redis::ServerErrorKind::Moved | redis::ServerErrorKind::Ask))
}

fn is_redirect_value(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if matches!(e.kind(), Some(redis::ServerErrorKind::Moved | redis::ServerErrorKind::Ask)))
}
