//! [`RedisTier`]: the L2 [`Tier`] on Redis or Redis Cluster.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_redis::redis::{self, Value};
use futures::future::join_all;
use strata_cache_core::{
    BreakerConfig, BreakerProbe, BreakerState, BreakerTier, CacheObserver, Clock, ConfigError, Key, StoredEntry,
    SystemClock, Tier, TierError, TierErrorKind, TierHealth, Timestamp,
};

use crate::breakers::{Breakers, NodeBreaker, counts_as_failure};
use crate::config::RedisConfig;
use crate::conn::{Backend, Conn, redis_error, with_timeout};
use crate::keys::{KeySpace, group_by_slot};

/// The largest value Redis accepts (512 MiB).
pub const MAX_REDIS_VALUE: usize = 512 * 1024 * 1024;

/// A tag set outlives the entries it lists by this much.
/// The longest `PX` the tier sends, in ms (2^53, about 285,000 years): Redis keeps absolute
/// expiry times as signed 64-bit ms, and a finite expiry past this is refused with
/// `InvalidRequest` rather than stored without one. Every TTL that
/// [`EntryOptions::validate`](strata_cache_core::EntryOptions::validate) accepts fits.
pub const MAX_PX_MS: u64 = 1 << 53;

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

/// How many keys one `DEL` of a tag invalidation carries.
const DEL_CHUNK: usize = 512;

/// The L2 tier on Redis (standalone or cluster), through a deadpool-redis pool.
///
/// - `get`/`set`/`delete`: `GET`, `SET .. PX <remaining ms>` (no `PX` for entries that never
///   expire; an entry already expired is not written and the old one is deleted), `DEL`.
/// - `get_many`/`set_many`: one `MGET` / one pipeline per batch on a standalone server; on a
///   cluster one per hash slot, sent concurrently.
/// - Tags: `set` adds the entry's Redis key to one set per tag (which lives at least as long as
///   the entry); [`Tier::invalidate_tag`] deletes the listed entries.
/// - On a cluster, every call goes through the circuit breaker of the master serving its hash
///   slot ([`RedisConfig::breaker`]): a failed or hung master fails fast for its slots only,
///   the other slots keep being served; after a failover the promoted replica serves them
///   again. On a standalone server wrap the tier with [`RedisTier::with_breaker`].
/// - Every call is bounded by [`RedisConfig::command_timeout`]; every failure is a
///   [`TierError`] (connection refused → `Unavailable`, timeouts → `Timeout`, pool exhausted →
///   `Overloaded`, `MOVED`/`CLUSTERDOWN` → `Unavailable`) with the Redis error as its source.
///
/// Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct RedisTier {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    backend: Backend,
    keys: KeySpace,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    /// One breaker per master (cluster only; a standalone tier is wrapped by the caller).
    breakers: Option<Arc<Breakers>>,
    /// Kept to rebuild the breakers with an observer.
    breaker_config: BreakerConfig,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("name", &self.inner.name)
            .field("backend", &self.inner.backend)
            .field("prefix", &self.inner.keys.prefix())
            .finish()
    }
}

impl RedisTier {
    /// A tier for `config` (validated). Connections open lazily: an unreachable server is
    /// reported by the calls (and [`Tier::health`]), not here.
    pub fn new(config: &RedisConfig) -> Result<Self, ConfigError> {
        let backend = config.backend()?;
        let name: Arc<str> = Arc::from(config.name.as_str());
        let breakers = Self::breakers(&name, &backend, config.breaker.clone(), config.command_timeout, None)?;
        Ok(Self {
            inner: Arc::new(Inner {
                name,
                backend,
                keys: config.key_space(),
                timeout: config.command_timeout,
                clock: Arc::new(SystemClock),
                breakers,
                breaker_config: config.breaker.clone(),
            }),
        })
    }

    fn breakers(
        name: &Arc<str>,
        backend: &Backend,
        config: BreakerConfig,
        timeout: Duration,
        observer: Option<Arc<dyn CacheObserver>>,
    ) -> Result<Option<Arc<Breakers>>, ConfigError> {
        if !backend.is_cluster() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Breakers::new(name.clone(), config, backend.clone(), timeout, observer)?)))
    }

    /// On a cluster, reports the state changes of each master's breaker to `observer` as
    /// [`CacheEvent::BreakerTransition`](strata_cache_core::CacheEvent::BreakerTransition)
    /// with the tier named `<name>@<host:port>` (the breakers start afresh). No effect on a
    /// standalone server (wrap the tier with [`BreakerTier::with_observer`] there).
    pub fn with_observer(self, observer: Arc<dyn CacheObserver>) -> Result<Self, ConfigError> {
        let i = &self.inner;
        let breakers = Self::breakers(&i.name, &i.backend, i.breaker_config.clone(), i.timeout, Some(observer))?;
        Ok(Self {
            inner: Arc::new(Inner {
                name: i.name.clone(),
                backend: i.backend.clone(),
                keys: i.keys.clone(),
                timeout: i.timeout,
                clock: i.clock.clone(),
                breakers,
                breaker_config: i.breaker_config.clone(),
            }),
        })
    }

    /// On a cluster, the state of the breaker of each master in the current slot map, by
    /// `host:port` (empty on a standalone server, or before the map was read).
    pub fn node_breakers(&self) -> Vec<(String, BreakerState)> {
        self.inner.breakers.as_ref().map(|b| b.node_states()).unwrap_or_default()
    }

    /// On a cluster, a probe of the worst state among the masters' breakers (open, then
    /// half-open, then closed); `None` on a standalone server, whose breaker is the
    /// [`BreakerTier`] around it ([`BreakerTier::probe`]).
    pub fn breaker_probe(&self) -> Option<BreakerProbe> {
        let b = self.inner.breakers.clone()?;
        Some(BreakerProbe::new(move || b.worst()))
    }

    /// On a cluster, the master serving `key` in the tier's current slot map (`host:port`).
    pub fn node_of(&self, key: &Key) -> Option<String> {
        let b = self.inner.breakers.as_ref()?;
        b.node_of(crate::keys::slot(self.redis_key(key).as_bytes()))
    }

    /// Uses `clock` to turn expiry timestamps into `PX` durations (default: the system clock;
    /// use the cache's clock when it has its own).
    #[must_use]
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        let i = &self.inner;
        Self {
            inner: Arc::new(Inner {
                name: i.name.clone(),
                backend: i.backend.clone(),
                keys: i.keys.clone(),
                timeout: i.timeout,
                clock,
                breakers: i.breakers.clone(),
                breaker_config: i.breaker_config.clone(),
            }),
        }
    }

    /// Wraps the tier in the core's circuit breaker (one for the whole tier: what a standalone
    /// server needs; a cluster tier already has one per master).
    pub fn with_breaker(self, config: BreakerConfig) -> Result<BreakerTier<RedisTier>, ConfigError> {
        BreakerTier::new(self, config)
    }

    /// The key layout.
    pub fn key_space(&self) -> &KeySpace {
        &self.inner.keys
    }

    /// The Redis key an entry is stored under.
    pub fn redis_key(&self, key: &Key) -> String {
        self.inner.keys.entry(key.cache(), key.namespace().as_str(), key.id())
    }

    /// The standalone pool (public as [`crate::raw::standalone_pool`]); `None` on a cluster.
    pub(crate) fn standalone_pool(&self) -> Option<&deadpool_redis::Pool> {
        match &self.inner.backend {
            Backend::Standalone(p) => Some(p),
            Backend::Cluster(_) => None,
        }
    }

    /// Whether the tier talks to a cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.backend.is_cluster()
    }

    fn err(&self, kind: TierErrorKind, message: impl Into<String>) -> TierError {
        TierError::new(self.inner.name.clone(), kind, message)
    }

    async fn conn(&self) -> Result<Conn, TierError> {
        self.inner.backend.get(&self.inner.name).await
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd, what: &'static str) -> Result<T, TierError> {
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
    async fn conn_within(&self, what: &'static str) -> Result<Conn, TierError> {
        with_timeout(&self.inner.name, self.inner.timeout, what, self.conn()).await
    }

    /// Runs one pipeline per hash-slot group on a cluster, each on the master serving its slot,
    /// through that master's breaker and within the call timeout. Fails fast (nothing is sent)
    /// when one of those breakers is open; otherwise records each master's outcome on its
    /// breaker.
    async fn per_node(
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
    fn scatter(
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
    async fn query_key<T: redis::FromRedisValue>(
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
    async fn run_ordered(
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

fn to_bytes(v: Value) -> Result<Option<Bytes>, &'static str> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(Bytes::from(b))),
        Value::SimpleString(s) => Ok(Some(Bytes::from(s.into_bytes()))),
        _ => Err("expected a string or nil"),
    }
}

#[async_trait]
impl Tier for RedisTier {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn get(&self, key: &Key) -> Result<Option<Bytes>, TierError> {
        let rkey = self.redis_key(key);
        let v: Value = self.query_key(&rkey, redis::cmd("GET").arg(&rkey).take(), "GET").await?;
        to_bytes(v).map_err(|m| self.err(TierErrorKind::Protocol, m))
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>, TierError> {
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

    async fn set(&self, key: &Key, entry: &StoredEntry) -> Result<(), TierError> {
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

    async fn set_many(&self, entries: &[(Key, StoredEntry)]) -> Result<(), TierError> {
        let now = self.inner.clock.now();
        let (mut tags, mut cmds) = (Vec::new(), Vec::with_capacity(entries.len()));
        for (k, e) in entries {
            self.set_cmds(k, e, now, &mut tags, &mut cmds)?;
        }
        self.run_ordered(tags, cmds, "SET pipeline").await.map(drop)
    }

    async fn delete(&self, key: &Key) -> Result<(), TierError> {
        let rkey = self.redis_key(key);
        let _: i64 = self.query_key(&rkey, redis::cmd("DEL").arg(&rkey).take(), "DEL").await?;
        Ok(())
    }

    async fn invalidate_tag(&self, cache: &str, namespace: &str, tag: &str) -> Result<u64, TierError> {
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

    /// Standalone only (`SCAN MATCH` + `DEL`; a cluster reports `Unsupported`): deletes the
    /// namespace's entries and tag sets. Used by the cache's auto-recovery after an outage that
    /// missed more writes than it could remember.
    async fn invalidate_namespace(&self, cache: &str, namespace: &str) -> Result<u64, TierError> {
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

    async fn health(&self) -> TierHealth {
        let started = std::time::Instant::now();
        match self.query::<String>(redis::cmd("PING"), "PING").await {
            Ok(_) if started.elapsed() > self.inner.timeout / 2 => {
                TierHealth::Degraded(format!("PING took {} ms", started.elapsed().as_millis()))
            }
            Ok(_) => TierHealth::Healthy,
            Err(e) => TierHealth::Unhealthy(e.to_string()),
        }
    }
}
