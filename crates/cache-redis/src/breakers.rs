//! Circuit breakers per Redis node: one for a standalone server, one per master on a cluster,
//! so that a failed (or hung) master costs only the hash slots it serves.
//!
//! On a cluster the slot → master map is read with `CLUSTER SLOTS` (from a node whose breaker
//! is closed) on first use, again while any node's breaker is not closed (that is how the
//! promotion of a replica is noticed: its slots get a new master, with a closed breaker, and
//! are served again), and every [`MAP_MAX_AGE`] otherwise. Until the first map arrives, every
//! call goes through one breaker for the whole cluster.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deadpool_redis::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use deadpool_redis::redis::{self, Value};
use parking_lot::{Mutex, RwLock};
use strata_cache_core::{
    BreakerConfig, BreakerState, CacheEvent, CacheObserver, CircuitBreaker, ConfigError, TierError, TierErrorKind,
};

use crate::conn::{Backend, Conn};

/// The slot map is re-read at least this often.
pub(crate) const MAP_MAX_AGE: Duration = Duration::from_secs(30);

/// The slot map is not re-read more often than this (also between failed attempts).
const MAP_MIN_AGE: Duration = Duration::from_millis(200);

/// Which master serves which slots.
#[derive(Debug, Default)]
struct SlotMap {
    /// `(first, last, master address)`, sorted by `first`.
    ranges: Vec<(u16, u16, Arc<str>)>,
}

impl SlotMap {
    fn node(&self, slot: u16) -> Option<&Arc<str>> {
        let i = self.ranges.partition_point(|(first, _, _)| *first <= slot);
        let (first, last, node) = self.ranges.get(i.checked_sub(1)?)?;
        (*first <= slot && slot <= *last).then_some(node)
    }

    /// Parses a `CLUSTER SLOTS` reply; `None` when it is not one.
    fn parse(reply: &Value) -> Option<Self> {
        let Value::Array(entries) = reply else { return None };
        let mut ranges = Vec::with_capacity(entries.len());
        for e in entries {
            let Value::Array(parts) = e else { return None };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
                Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            let Some(Value::Int(port)) = master.get(1) else { return None };
            let (first, last) = (u16::try_from(*first).ok()?, u16::try_from(*last).ok()?);
            if first > last || last >= 16_384 {
                return None;
            }
            ranges.push((first, last, Arc::from(format!("{host}:{port}"))));
        }
        ranges.sort_by_key(|r| r.0);
        Some(Self { ranges })
    }
}

/// The breaker a call goes through, and the node it stands for.
#[derive(Clone)]
pub(crate) struct NodeBreaker {
    /// `host:port` of the master; `None` for the whole server (or cluster).
    pub(crate) node: Option<Arc<str>>,
    pub(crate) breaker: Arc<CircuitBreaker>,
}

/// The breakers of one component (tier, lock) talking to one Redis deployment.
pub(crate) struct Breakers {
    name: Arc<str>,
    config: BreakerConfig,
    backend: Backend,
    timeout: Duration,
    observer: Option<Arc<dyn CacheObserver>>,
    /// A standalone server, or a cluster whose slot map is not known yet.
    whole: Arc<CircuitBreaker>,
    map: RwLock<Option<SlotMap>>,
    nodes: Mutex<HashMap<Arc<str>, Arc<CircuitBreaker>>>,
    refreshing: AtomicBool,
    /// When the map was last asked for (successfully or not).
    asked: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breakers").field("name", &self.name).field("state", &self.worst()).finish()
    }
}

/// Whether an error says the backend is unhealthy (counted by a breaker).
pub(crate) fn counts_as_failure(e: &TierError) -> bool {
    !matches!(e.kind(), TierErrorKind::InvalidRequest | TierErrorKind::Unsupported | TierErrorKind::CircuitOpen)
}

impl Breakers {
    pub(crate) fn new(
        name: Arc<str>,
        config: BreakerConfig,
        backend: Backend,
        timeout: Duration,
        observer: Option<Arc<dyn CacheObserver>>,
    ) -> Result<Self, ConfigError> {
        let whole = Arc::new(Self::make(&name, None, &config, observer.as_ref())?);
        Ok(Self {
            name,
            config,
            backend,
            timeout,
            observer,
            whole,
            map: RwLock::new(None),
            nodes: Mutex::new(HashMap::new()),
            refreshing: AtomicBool::new(false),
            asked: Mutex::new(None),
        })
    }

    fn make(
        name: &Arc<str>,
        node: Option<&str>,
        config: &BreakerConfig,
        observer: Option<&Arc<dyn CacheObserver>>,
    ) -> Result<CircuitBreaker, ConfigError> {
        let b = CircuitBreaker::new(config.clone())?;
        let Some(observer) = observer.cloned() else { return Ok(b) };
        let tier: Arc<str> = match node {
            Some(n) => Arc::from(format!("{name}@{n}")),
            None => name.clone(),
        };
        Ok(b.on_transition(move |from, to| {
            observer.on_event(&CacheEvent::BreakerTransition { cache: "", tier: &tier, from, to });
        }))
    }

    /// The breaker for a call on `slot` (ignored on a standalone server). May start a
    /// background refresh of the slot map.
    pub(crate) fn for_slot(self: &Arc<Self>, slot: u16) -> NodeBreaker {
        if !self.backend.is_cluster() {
            return NodeBreaker { node: None, breaker: self.whole.clone() };
        }
        let found = self.map.read().as_ref().and_then(|m| m.node(slot).cloned());
        let Some(node) = found else {
            self.maybe_refresh(true);
            return NodeBreaker { node: None, breaker: self.whole.clone() };
        };
        let breaker = self.node_breaker(&node);
        let stale = breaker.state() != BreakerState::Closed;
        self.maybe_refresh(stale);
        NodeBreaker { node: Some(node), breaker }
    }

    /// The breaker for a call on `key`.
    pub(crate) fn for_key(self: &Arc<Self>, key: &[u8]) -> NodeBreaker {
        self.for_slot(crate::keys::slot(key))
    }

    fn node_breaker(&self, node: &Arc<str>) -> Arc<CircuitBreaker> {
        let mut nodes = self.nodes.lock();
        if let Some(b) = nodes.get(node) {
            return b.clone();
        }
        // The settings were validated when `whole` was built: this cannot fail.
        let b = match Self::make(&self.name, Some(node), &self.config, self.observer.as_ref()) {
            Ok(b) => Arc::new(b),
            Err(_) => return self.whole.clone(),
        };
        nodes.insert(node.clone(), b.clone());
        b
    }

    /// The worst state among the breakers in use (open, then half-open, then closed).
    pub(crate) fn worst(&self) -> BreakerState {
        let rank = |s: BreakerState| match s {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        };
        let in_use: Vec<Arc<str>> = match &*self.map.read() {
            Some(m) => m.ranges.iter().map(|r| r.2.clone()).collect(),
            None => Vec::new(),
        };
        let nodes = self.nodes.lock();
        let mut worst = self.whole.state();
        for n in &in_use {
            if let Some(b) = nodes.get(n) {
                let s = b.state();
                if rank(s) > rank(worst) {
                    worst = s;
                }
            }
        }
        worst
    }

    /// The state of the breaker of each master in the current slot map (`host:port`); empty
    /// on a standalone server or before the map is known.
    pub(crate) fn node_states(&self) -> Vec<(String, BreakerState)> {
        let mut in_use: Vec<Arc<str>> = match &*self.map.read() {
            Some(m) => m.ranges.iter().map(|r| r.2.clone()).collect(),
            None => return Vec::new(),
        };
        in_use.sort();
        in_use.dedup();
        let nodes = self.nodes.lock();
        in_use
            .into_iter()
            .map(|n| {
                let s = nodes.get(&n).map_or(BreakerState::Closed, |b| b.state());
                (n.to_string(), s)
            })
            .collect()
    }

    /// A master answered with a redirect: the map is out of date; read it again soon.
    pub(crate) fn slot_moved(self: &Arc<Self>) {
        self.maybe_refresh(true);
    }

    /// The master serving `slot` in the current map.
    pub(crate) fn node_of(&self, slot: u16) -> Option<String> {
        self.map.read().as_ref().and_then(|m| m.node(slot).map(|n| n.to_string()))
    }

    fn maybe_refresh(self: &Arc<Self>, wanted: bool) {
        let age = self.asked.lock().map(|t| t.elapsed());
        let due = match age {
            None => true,
            Some(a) => (wanted && a >= MAP_MIN_AGE) || a >= MAP_MAX_AGE,
        };
        if !due || self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        *self.asked.lock() = Some(Instant::now());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.refreshing.store(false, Ordering::Release);
            return;
        };
        let this = Arc::clone(self);
        rt.spawn(async move {
            this.refresh().await;
            *this.asked.lock() = Some(Instant::now());
            this.refreshing.store(false, Ordering::Release);
        });
    }

    /// Reads the slot map from a master whose breaker is closed (or any node, before the map
    /// is known), trying a few in turn.
    async fn refresh(&self) {
        let mut candidates: Vec<Option<Arc<str>>> = {
            let map = self.map.read();
            let nodes = self.nodes.lock();
            let mut c: Vec<Option<Arc<str>>> = map
                .as_ref()
                .map(|m| m.ranges.iter().map(|r| r.2.clone()).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .filter(|n| nodes.get(n).is_none_or(|b| b.state() == BreakerState::Closed))
                .map(Some)
                .collect();
            c.dedup();
            c
        };
        fastrand::shuffle(&mut candidates);
        candidates.truncate(3);
        candidates.push(None);
        for node in candidates {
            let routing = match node.as_deref().and_then(|n| n.rsplit_once(':')) {
                Some((host, port)) => match port.parse() {
                    Ok(port) => SingleNodeRoutingInfo::ByAddress { host: host.to_owned(), port },
                    Err(_) => continue,
                },
                None => SingleNodeRoutingInfo::Random,
            };
            let ask = async {
                let Ok(Conn::Cluster(mut c)) = self.backend.get(&self.name).await else { return None };
                c.route_command(redis::cmd("CLUSTER").arg("SLOTS").take(), RoutingInfo::SingleNode(routing)).await.ok()
            };
            if let Ok(Some(reply)) = tokio::time::timeout(self.timeout, ask).await
                && let Some(map) = SlotMap::parse(&reply)
                && !map.ranges.is_empty()
            {
                *self.map.write() = Some(map);
                return;
            }
        }
        tracing::debug!(tier = %self.name, "could not read the cluster slot map; retrying later");
    }

    /// The error of a call refused by an open breaker.
    pub(crate) fn open_error(&self, node: Option<&str>) -> TierError {
        let message = match node {
            Some(n) => format!("circuit breaker is open for the master at {n}"),
            None => "circuit breaker is open".to_owned(),
        };
        TierError::new(self.name.clone(), TierErrorKind::CircuitOpen, message)
    }

    /// Runs `call` through `nb`'s breaker: fails fast while it is open, records the outcome.
    pub(crate) async fn guarded<T>(
        &self,
        nb: &NodeBreaker,
        call: impl Future<Output = Result<T, TierError>>,
    ) -> Result<T, TierError> {
        let Ok(permit) = nb.breaker.try_call() else { return Err(self.open_error(nb.node.as_deref())) };
        let r = call.await;
        match &r {
            Ok(_) => permit.record(true),
            Err(e) if counts_as_failure(e) => permit.record(false),
            Err(_) => drop(permit),
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(first: i64, last: i64, host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::Int(first),
            Value::Int(last),
            Value::Array(vec![Value::BulkString(host.into()), Value::Int(port), Value::BulkString(b"id".to_vec())]),
        ])
    }

    #[test]
    fn slot_map_is_parsed_and_looked_up() {
        let reply = Value::Array(vec![
            entry(10_923, 16_383, "127.0.0.1", 7002),
            entry(0, 5_460, "127.0.0.1", 7000),
            entry(5_461, 10_922, "127.0.0.1", 7001),
        ]);
        let m = SlotMap::parse(&reply).unwrap();
        assert_eq!(m.node(0).map(|n| &**n), Some("127.0.0.1:7000"));
        assert_eq!(m.node(5_460).map(|n| &**n), Some("127.0.0.1:7000"));
        assert_eq!(m.node(5_461).map(|n| &**n), Some("127.0.0.1:7001"));
        assert_eq!(m.node(16_383).map(|n| &**n), Some("127.0.0.1:7002"));
        assert_eq!(m.node(16_384), None);
        // A gap (slots nobody serves) has no node.
        let gap = SlotMap::parse(&Value::Array(vec![entry(100, 200, "h", 1)])).unwrap();
        assert_eq!(gap.node(99), None);
        assert_eq!(gap.node(100).map(|n| &**n), Some("h:1"));
        assert_eq!(gap.node(201), None);
    }

    #[test]
    fn malformed_slot_maps_are_refused() {
        for bad in [
            Value::Nil,
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![entry(5, 1, "h", 1)]),
            Value::Array(vec![entry(0, 16_384, "h", 1)]),
            Value::Array(vec![entry(-1, 3, "h", 1)]),
            Value::Array(vec![Value::Array(vec![Value::Int(0), Value::Int(1), Value::Array(vec![])])]),
        ] {
            assert!(SlotMap::parse(&bad).is_none(), "{bad:?}");
        }
    }
}
