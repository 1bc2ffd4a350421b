//! The Redis invalidation backplane ([`RedisBus`]) and a raw channel subscriber
//! ([`RedisChannelSource`]).
//!
//! Each subscription runs in a background task on the caller's runtime with its own dedicated
//! connection (never a pooled one). When that connection drops, the task reconnects with
//! exponential backoff (50 ms doubling to 5 s, with jitter), re-subscribes, and then emits
//! [`BusEvent::Resync`]: messages published while it was away are lost, so the cache clears its
//! L1. A keepalive `PING` every few seconds detects half-open connections. The task stops when
//! the subscription is dropped.
//!
//! Sharded pub/sub (cluster): when the channel's hash slot moves to another node (resharding,
//! failover), Redis 7 unsubscribes the client with a `SUNSUBSCRIBE` push; the subscriber treats
//! that like a lost connection (reconnect, re-subscribe on the slot's new owner, resync). The
//! keepalive `PING` is routed to the node serving the channel's slot. Pushes are buffered in a
//! bounded queue: when the consumer falls that far behind, further messages are dropped and a
//! [`BusEvent::Resync`] is emitted instead, so the cache clears its L1 rather than keeping stale
//! entries.
//!
//! Publishing goes through a circuit breaker and the call timeout. While Redis fails or hangs,
//! messages are not sent on the caller's path: they are queued (bounded by
//! [`RedisConfig::max_pending_invalidations`], duplicates once) and a task re-publishes them, in
//! order, once Redis answers again; when the queue overflows it is replaced by one resync
//! message ([`RESYNC_MESSAGE`]) that makes every subscriber clear its L1. So an invalidation
//! issued during an outage still reaches the other instances afterwards, or they all resync.
//!
//! [`PubSubMode::Auto`] asks a cluster node its version once. While it cannot tell (no node
//! answers `INFO`, or the ACL user may not run it), it never guesses: publishing fails with a
//! [`BusError`] and subscribers keep retrying, and the failure is remembered for a second so
//! that publishing does not ask again on every call. During a rolling Redis 6 → 7 upgrade,
//! processes may resolve `Auto` differently (and classic and sharded pub/sub do not see each
//! other's messages): set the mode explicitly for the whole fleet until the upgrade is done.
//!
//! The files of this folder:
//! - `mod.rs`: [`PubSubMode`], [`BusStats`], [`RESYNC_MESSAGE`], the `Shared` state of a bus or
//!   channel source (connection settings, breaker, outbox), [`RedisBus`] (the
//!   [`InvalidationBus`] impl) and [`RedisChannelSource`].
//! - `publish.rs`: publishing through the breaker, the `Outbox` of messages that could not be
//!   sent yet, and the task that re-publishes them (or one resync message after an overflow).
//! - `subscribe.rs`: the subscriber task: connect (classic or sharded), pump messages,
//!   keepalive, reconnect with backoff, resync after a gap.
//! - `sharded.rs`: sharded pub/sub pushes: the bounded push queue and how each push is
//!   classified (deliver, subscription lost, ignore).
//! - `mode.rs`: resolving [`PubSubMode::Auto`] (asking a server its version, remembering a
//!   failure briefly).

mod mode;
mod publish;
mod sharded;
mod subscribe;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use strata_cache_core::{BusError, BusEvent, CircuitBreaker, ConfigError, Invalidation, InvalidationBus, Subscription};
use tokio::sync::mpsc;

use crate::config::RedisConfig;
use crate::conn::Backend;
use mode::{Resolver, use_sharded};
use publish::Outbox;

/// How the channel is published and subscribed on a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubSubMode {
    /// Sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7+) on a cluster, classic on a standalone
    /// server; chosen by asking the server its version. While the version cannot be determined,
    /// publishing fails and subscribers retry (nothing is guessed). Set the mode explicitly
    /// while a fleet's cluster is upgraded from Redis 6 to 7.
    Auto,
    /// Classic `PUBLISH`/`SUBSCRIBE` (on a cluster, every message is broadcast to every node).
    Classic,
    /// Sharded `SPUBLISH`/`SSUBSCRIBE` (cluster only: the channel lives on one shard).
    Sharded,
}

/// Counters of a [`RedisBus`] or [`RedisChannelSource`] (all subscriptions together).
#[derive(Debug, Default)]
pub struct BusStats {
    received: AtomicU64,
    undecodable: AtomicU64,
    resyncs: AtomicU64,
    disconnects: AtomicU64,
    published: AtomicU64,
    deferred: AtomicU64,
    republished: AtomicU64,
    overflows: AtomicU64,
}

impl BusStats {
    /// Messages received (decodable or not).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    /// Messages that could not be decoded and were skipped.
    pub fn undecodable(&self) -> u64 {
        self.undecodable.load(Ordering::Relaxed)
    }
    /// Resyncs: re-subscriptions after a lost connection, and messages dropped because the
    /// consumer fell behind (each emitted a [`BusEvent::Resync`]).
    pub fn resyncs(&self) -> u64 {
        self.resyncs.load(Ordering::Relaxed)
    }
    /// Lost or failed subscriber connections.
    pub fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::Relaxed)
    }
    /// Messages published (on the first try or re-published).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
    /// Publishes that could not be sent at once and were queued for re-publication.
    pub fn deferred(&self) -> u64 {
        self.deferred.load(Ordering::Relaxed)
    }
    /// Queued messages published once Redis answered again (resync messages included).
    pub fn republished(&self) -> u64 {
        self.republished.load(Ordering::Relaxed)
    }
    /// Times the queue of unpublished messages overflowed and was replaced by one resync
    /// message (every instance clears its L1).
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct Spec {
    urls: Vec<String>,
    cluster: bool,
    channel: String,
    connect_timeout: Duration,
    keepalive: Duration,
}

/// The payload of a resync message: every [`RedisBus`] subscriber turns it into
/// [`BusEvent::Resync`] (never a valid [`Invalidation`], whose encoding starts with 1).
pub const RESYNC_MESSAGE: &[u8] = b"\x00strata:resync";

/// Shared by the bus and the channel source: pool for publishing, settings for subscribing.
struct Shared {
    name: String,
    backend: Backend,
    spec: Spec,
    mode: PubSubMode,
    resolved: Arc<Resolver>,
    timeout: Duration,
    stats: Arc<BusStats>,
    /// Every publish goes through it.
    breaker: CircuitBreaker,
    outbox: Mutex<Outbox>,
    max_pending: usize,
}

impl Shared {
    fn new(config: &RedisConfig, channel: String, mode: PubSubMode, name: &str) -> Result<Self, ConfigError> {
        if channel.is_empty() || channel.len() > 1024 {
            return Err(ConfigError::new("redis.channel", "must be 1..=1024 bytes"));
        }
        if mode == PubSubMode::Sharded && !config.is_cluster() {
            return Err(ConfigError::new("redis.pubsub_mode", "sharded pub/sub needs a cluster topology"));
        }
        Ok(Self {
            name: name.to_owned(),
            backend: config.backend()?,
            spec: Spec {
                urls: config.urls(),
                cluster: config.is_cluster(),
                channel,
                connect_timeout: config.connect_timeout,
                keepalive: Duration::from_secs(3),
            },
            mode,
            resolved: Arc::new(Resolver::default()),
            timeout: config.command_timeout,
            stats: Arc::new(BusStats::default()),
            breaker: CircuitBreaker::new(config.breaker.clone())?,
            outbox: Mutex::new(Outbox::default()),
            max_pending: config.max_pending_invalidations,
        })
    }

    async fn sharded(&self) -> Result<bool, BusError> {
        use_sharded(self.mode, &self.spec, &self.resolved).await.map_err(|message| BusError {
            bus: self.name.clone(),
            message,
            source: None,
        })
    }
}

/// An [`InvalidationBus`] over Redis pub/sub: one channel per prefix (`<prefix>inv`), messages
/// are [`Invalidation::to_bytes`]. Classic pub/sub on a standalone server; on a cluster,
/// sharded pub/sub when the servers support it (Redis 7+), else classic.
///
/// Undecodable messages are counted ([`BusStats::undecodable`]) and skipped. Receivers ignore
/// their own messages (the cache filters by origin).
#[derive(Clone)]
pub struct RedisBus {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus").field("channel", &self.shared.spec.channel).field("mode", &self.shared.mode).finish()
    }
}

impl RedisBus {
    /// A bus on `config`'s servers, on channel `<prefix>inv`, mode [`PubSubMode::Auto`].
    pub fn new(config: &RedisConfig) -> Result<Self, ConfigError> {
        Self::with_channel(config, config.key_space().channel(), PubSubMode::Auto)
    }

    /// A bus on a named channel and mode.
    pub fn with_channel(
        config: &RedisConfig,
        channel: impl Into<String>,
        mode: PubSubMode,
    ) -> Result<Self, ConfigError> {
        Ok(Self { shared: Arc::new(Shared::new(config, channel.into(), mode, "redis")?) })
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.shared.spec.channel
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<BusStats> {
        &self.shared.stats
    }

    /// Whether messages go over sharded pub/sub (asks the server once on a cluster, in
    /// [`PubSubMode::Auto`]; an error while its version cannot be determined).
    pub async fn is_sharded(&self) -> Result<bool, BusError> {
        self.shared.sharded().await
    }
}

#[async_trait]
impl InvalidationBus for RedisBus {
    fn name(&self) -> &str {
        "redis"
    }

    /// Publishes through the bus's circuit breaker, within the call timeout. A message that
    /// cannot be sent now (Redis down or hung, breaker open, earlier messages still waiting) is
    /// queued and re-published once Redis answers, and the call returns an error saying so
    /// without waiting; past [`RedisConfig::max_pending_invalidations`] the queue is replaced
    /// by one resync message, after which every subscriber clears its L1.
    async fn publish(&self, message: &Invalidation) -> Result<(), BusError> {
        self.shared.publish(&message.to_bytes()).await
    }

    /// Opens a subscription with its own connection. When Redis is unreachable the
    /// subscription is returned anyway and connects in the background, emitting
    /// [`BusEvent::Resync`] once subscribed.
    async fn subscribe(&self) -> Result<Subscription, BusError> {
        let (tx, rx) = mpsc::channel(1024);
        let map = Arc::new(|payload: Vec<u8>| match Invalidation::from_bytes(&payload) {
            _ if payload == RESYNC_MESSAGE => Some(BusEvent::Resync),
            Ok(m) => Some(BusEvent::Invalidate(m)),
            Err(e) => {
                tracing::warn!(error = %e, len = payload.len(), "undecodable invalidation message skipped");
                None
            }
        });
        self.shared.start(tx, map, Some(|| BusEvent::Resync)).await;
        Ok(Subscription::new(rx))
    }
}

/// Raw payloads from a user-named Redis channel, for event-driven invalidation from outside
/// (a database trigger, another service): the consistency layer turns them into invalidations.
///
/// Reconnects like [`RedisBus`]; messages published while disconnected are lost and counted as
/// a resync in [`RedisChannelSource::stats`].
#[derive(Debug)]
pub struct RedisChannelSource {
    rx: mpsc::Receiver<Vec<u8>>,
    stats: Arc<BusStats>,
}

impl RedisChannelSource {
    /// Subscribes to `channel` (classic pub/sub, or sharded with [`PubSubMode::Sharded`] on a
    /// cluster).
    pub async fn subscribe(config: &RedisConfig, channel: &str, mode: PubSubMode) -> Result<Self, ConfigError> {
        let shared = Shared::new(config, channel.to_owned(), mode, "redis-channel")?;
        let (tx, rx) = mpsc::channel(1024);
        shared.start(tx, Arc::new(Some), None).await;
        Ok(Self { rx, stats: shared.stats.clone() })
    }

    /// The next payload; `None` once the subscriber stopped.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        self.rx.recv().await
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<BusStats> {
        &self.stats
    }

    /// The payloads as a [`futures::Stream`].
    pub fn into_stream(self) -> impl futures::Stream<Item = Vec<u8>> + Send + 'static {
        futures::stream::unfold(self, |mut s| async move { s.next().await.map(|p| (p, s)) })
    }
}
