//! The Redis invalidation backplane ([`RedisBus`]) and a raw channel subscriber
//! ([`RedisChannelSource`]).
//!
//! Each subscription runs in a background task on the caller's runtime with its own dedicated
//! connection (never a pooled one). When that connection drops, the task reconnects with
//! exponential backoff (50 ms doubling to 5 s, with jitter), re-subscribes, and then emits
//! [`BusEvent::Resync`]: messages published while it was away are lost, so the cache clears its
//! L1. A keepalive `PING` every few seconds detects half-open connections. The task stops when
//! the subscription is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::{self, PushKind, Value};
use futures::StreamExt;
use strata_cache_core::{BusError, BusEvent, ConfigError, Invalidation, InvalidationBus, Subscription};
use tokio::sync::{OnceCell, mpsc, oneshot};

use crate::config::{RedisConfig, redact};
use crate::conn::{Backend, redis_error, with_timeout};

/// How the channel is published and subscribed on a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubSubMode {
    /// Sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7+) on a cluster, classic on a standalone
    /// server; chosen by asking the server its version.
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
    /// Re-subscriptions after a lost connection (each emitted a [`BusEvent::Resync`]).
    pub fn resyncs(&self) -> u64 {
        self.resyncs.load(Ordering::Relaxed)
    }
    /// Lost or failed subscriber connections.
    pub fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::Relaxed)
    }
    /// Messages published.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
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

/// Shared by the bus and the channel source: pool for publishing, settings for subscribing.
struct Shared {
    name: String,
    backend: Backend,
    spec: Spec,
    mode: PubSubMode,
    resolved: Arc<OnceCell<u32>>,
    timeout: Duration,
    stats: Arc<BusStats>,
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
            resolved: Arc::new(OnceCell::new()),
            timeout: config.command_timeout,
            stats: Arc::new(BusStats::default()),
        })
    }

    async fn sharded(&self) -> bool {
        use_sharded(self.mode, &self.spec, &self.resolved).await
    }

    async fn publish(&self, payload: &[u8]) -> Result<(), BusError> {
        let cmd = if self.sharded().await { "SPUBLISH" } else { "PUBLISH" };
        let tier: Arc<str> = Arc::from(self.name.as_str());
        let r = with_timeout(&tier, self.timeout, "PUBLISH", async {
            let mut c = self.backend.get(&tier).await?;
            redis::cmd(cmd)
                .arg(&self.spec.channel)
                .arg(payload)
                .query_async::<i64>(&mut c)
                .await
                .map_err(|e| redis_error(&tier, e))
        })
        .await;
        match r {
            Ok(_) => {
                self.stats.published.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(BusError {
                bus: self.name.clone(),
                message: format!("publish failed: {e}"),
                source: Some(Arc::new(e)),
            }),
        }
    }

    /// Starts a subscriber task; waits for its first subscription attempt. If that fails the
    /// task keeps retrying in the background (and emits a resync once subscribed).
    async fn start<T: Send + 'static>(
        &self,
        tx: mpsc::Sender<T>,
        map: Arc<dyn Fn(Vec<u8>) -> Option<T> + Send + Sync>,
        resync: Option<fn() -> T>,
    ) {
        let (first_tx, first_rx) = oneshot::channel();
        let task = Subscriber {
            spec: self.spec.clone(),
            mode: self.mode,
            resolved: self.resolved.clone(),
            stats: self.stats.clone(),
            tx,
            map,
            resync,
        };
        tokio::spawn(task.run(first_tx));
        match tokio::time::timeout(self.spec.connect_timeout * 2, first_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::warn!(bus = %self.name, error = %e, "subscription not established yet; retrying in the background");
            }
            _ => tracing::warn!(bus = %self.name, "subscription still connecting; continuing in the background"),
        }
    }
}

/// Whether to use sharded pub/sub; in auto mode on a cluster, asks a server its version (and
/// remembers the answer once one replied).
async fn use_sharded(mode: PubSubMode, spec: &Spec, resolved: &OnceCell<u32>) -> bool {
    match mode {
        PubSubMode::Classic => false,
        PubSubMode::Sharded => true,
        PubSubMode::Auto if !spec.cluster => false,
        PubSubMode::Auto => {
            if let Some(&v) = resolved.get() {
                return v >= 7;
            }
            let v = server_major(spec).await;
            if v > 0 {
                let _ = resolved.set(v);
            }
            v >= 7
        }
    }
}

/// The major version of the first reachable node (0 when unknown).
async fn server_major(spec: &Spec) -> u32 {
    for url in &spec.urls {
        let Ok(client) = redis::Client::open(url.as_str()) else { continue };
        let info = tokio::time::timeout(spec.connect_timeout * 2, async {
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("INFO").arg("server").query_async::<String>(&mut c).await
        })
        .await;
        if let Ok(Ok(info)) = info {
            let v = info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("0");
            return v.split('.').next().and_then(|m| m.trim().parse().ok()).unwrap_or(0);
        }
    }
    0
}

struct Subscriber<T> {
    spec: Spec,
    mode: PubSubMode,
    resolved: Arc<OnceCell<u32>>,
    stats: Arc<BusStats>,
    tx: mpsc::Sender<T>,
    map: Arc<dyn Fn(Vec<u8>) -> Option<T> + Send + Sync>,
    resync: Option<fn() -> T>,
}

enum Ended {
    Stopped,
    Disconnected,
}

enum Session {
    Classic(redis::aio::PubSubSink, redis::aio::PubSubStream),
    Sharded(redis::cluster_async::ClusterConnection, mpsc::UnboundedReceiver<redis::PushInfo>),
}

impl<T: Send + 'static> Subscriber<T> {
    async fn run(self, first: oneshot::Sender<Result<(), String>>) {
        let mut first = Some(first);
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.tx.is_closed() {
                return;
            }
            match tokio::time::timeout(self.spec.connect_timeout * 2, self.connect()).await {
                Ok(Ok(session)) => {
                    backoff = Duration::from_millis(50);
                    match first.take() {
                        Some(f) => {
                            let _ = f.send(Ok(()));
                        }
                        None => {
                            // Back after a gap: whatever was published meanwhile is lost.
                            self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(channel_len = self.spec.channel.len(), "re-subscribed; resync");
                            if let Some(r) = self.resync
                                && self.tx.send(r()).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                    if let Ended::Stopped = self.pump(session).await {
                        return;
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "subscriber connection failed");
                    if let Some(f) = first.take() {
                        let _ = f.send(Err(e));
                    }
                }
                Err(_) => {
                    if let Some(f) = first.take() {
                        let _ = f.send(Err("connect timed out".into()));
                    }
                }
            }
            self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
            let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
            tokio::select! {
                () = tokio::time::sleep(backoff + jitter) => {}
                () = self.tx.closed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn connect(&self) -> Result<Session, String> {
        let channel = self.spec.channel.as_str();
        if use_sharded(self.mode, &self.spec, &self.resolved).await {
            let (utx, urx) = mpsc::unbounded_channel();
            let client = redis::cluster::ClusterClientBuilder::new(self.spec.urls.clone())
                .use_protocol(redis::ProtocolVersion::RESP3)
                .connection_timeout(self.spec.connect_timeout)
                .response_timeout(self.spec.connect_timeout)
                .push_sender(utx)
                .build()
                .map_err(|e| e.to_string())?;
            let mut conn = client.get_async_connection().await.map_err(|e| e.to_string())?;
            conn.ssubscribe(channel).await.map_err(|e| e.to_string())?;
            return Ok(Session::Sharded(conn, urx));
        }
        let mut last = String::from("no node URL");
        for url in &self.spec.urls {
            let attempt = async {
                let client = redis::Client::open(url.as_str())?;
                let (mut sink, stream) = client.get_async_pubsub().await?.split();
                sink.subscribe(channel).await?;
                Ok::<_, redis::RedisError>((sink, stream))
            };
            match attempt.await {
                Ok((sink, stream)) => return Ok(Session::Classic(sink, stream)),
                Err(e) => last = format!("{}: {e}", redact(url)),
            }
        }
        Err(last)
    }

    async fn deliver(&self, payload: Vec<u8>) -> bool {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        match (self.map)(payload) {
            Some(ev) => self.tx.send(ev).await.is_ok(),
            None => {
                self.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    }

    async fn pump(&self, session: Session) -> Ended {
        let mut keepalive = tokio::time::interval(self.spec.keepalive);
        keepalive.tick().await;
        match session {
            Session::Classic(mut sink, mut stream) => loop {
                tokio::select! {
                    msg = stream.next() => match msg {
                        Some(m) => {
                            if !self.deliver(m.get_payload_bytes().to_vec()).await {
                                return Ended::Stopped;
                            }
                        }
                        None => return Ended::Disconnected,
                    },
                    _ = keepalive.tick() => {
                        let ping = tokio::time::timeout(self.spec.connect_timeout, sink.ping::<Value>()).await;
                        if !matches!(ping, Ok(Ok(_))) {
                            return Ended::Disconnected;
                        }
                    }
                    () = self.tx.closed() => return Ended::Stopped,
                }
            },
            Session::Sharded(mut conn, mut pushes) => loop {
                tokio::select! {
                    push = pushes.recv() => match push {
                        Some(p) if matches!(p.kind, PushKind::SMessage | PushKind::Message) => {
                            if let Some(m) = redis::Msg::from_push_info(p)
                                && !self.deliver(m.get_payload_bytes().to_vec()).await
                            {
                                    return Ended::Stopped;
                            }
                        }
                        Some(p) if p.kind == PushKind::Disconnection => return Ended::Disconnected,
                        Some(_) => {}
                        None => return Ended::Disconnected,
                    },
                    _ = keepalive.tick() => {
                        let ping = tokio::time::timeout(
                            self.spec.connect_timeout,
                            redis::cmd("PING").query_async::<Value>(&mut conn),
                        ).await;
                        if !matches!(ping, Ok(Ok(_))) {
                            return Ended::Disconnected;
                        }
                    }
                    () = self.tx.closed() => return Ended::Stopped,
                }
            },
        }
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

    /// Whether messages go over sharded pub/sub (asks the server once on a cluster).
    pub async fn is_sharded(&self) -> bool {
        self.shared.sharded().await
    }
}

#[async_trait]
impl InvalidationBus for RedisBus {
    fn name(&self) -> &str {
        "redis"
    }

    async fn publish(&self, message: &Invalidation) -> Result<(), BusError> {
        self.shared.publish(&message.to_bytes()).await
    }

    /// Opens a subscription with its own connection. When Redis is unreachable the
    /// subscription is returned anyway and connects in the background, emitting
    /// [`BusEvent::Resync`] once subscribed.
    async fn subscribe(&self) -> Result<Subscription, BusError> {
        let (tx, rx) = mpsc::channel(1024);
        let map = Arc::new(|payload: Vec<u8>| match Invalidation::from_bytes(&payload) {
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
