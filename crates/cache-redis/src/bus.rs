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

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use deadpool_redis::redis::{self, PushInfo, PushKind, Value};
use futures::StreamExt;
use parking_lot::Mutex;
use strata_cache_core::{
    BusError, BusEvent, CircuitBreaker, ConfigError, Invalidation, InvalidationBus, Subscription, TierError,
    TierErrorKind,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::breakers::counts_as_failure;
use crate::config::{RedisConfig, redact};
use crate::conn::{Backend, redis_error, with_timeout};
use crate::keys;

/// How many sharded pub/sub pushes wait for delivery before further ones are dropped (and a
/// resync is emitted).
const PUSH_QUEUE: usize = 1024;

/// How long [`PubSubMode::Auto`] remembers that the server version could not be determined.
const VERSION_RETRY: Duration = Duration::from_secs(1);

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

/// Invalidations that could not be published yet.
#[derive(Default)]
struct Outbox {
    /// Payloads in arrival order, each with its sequence number; no duplicates.
    queue: VecDeque<(u64, Vec<u8>)>,
    members: HashSet<Vec<u8>>,
    next_seq: u64,
    /// The queue overflowed: a resync message must be published (before the queue).
    overflowed: bool,
    /// Bumped on each overflow (a resync sent before the latest overflow does not cover it).
    overflow_epoch: u64,
    /// Whether the re-publishing task runs.
    draining: bool,
    /// Why the latest publish failed (quoted in the errors of the messages queued after it).
    last_failure: Option<String>,
}

impl Outbox {
    fn pending(&self) -> bool {
        self.overflowed || !self.queue.is_empty()
    }
}

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

    /// One `PUBLISH` (or `SPUBLISH`) within the call timeout.
    async fn send(&self, payload: &[u8]) -> Result<(), TierError> {
        let tier: Arc<str> = Arc::from(self.name.as_str());
        let cmd = match self.sharded().await {
            Ok(true) => "SPUBLISH",
            Ok(false) => "PUBLISH",
            Err(e) => return Err(TierError::new(tier, TierErrorKind::Unavailable, e.message)),
        };
        with_timeout(&tier, self.timeout, "PUBLISH", async {
            let mut c = self.backend.get(&tier).await?;
            redis::cmd(cmd)
                .arg(&self.spec.channel)
                .arg(payload)
                .query_async::<i64>(&mut c)
                .await
                .map_err(|e| redis_error(&tier, e))
        })
        .await
        .map(drop)
    }

    /// Publishes at once when nothing is waiting and the breaker lets the call through;
    /// otherwise (or when that fails) queues the message for the re-publishing task and
    /// returns an error saying so.
    async fn publish(self: &Arc<Self>, payload: &[u8]) -> Result<(), BusError> {
        if self.outbox.lock().pending() {
            // Earlier messages wait: this one waits with them (no call on the write path while
            // Redis is known to be failing).
            return Err(self.defer(payload, "earlier invalidations are waiting for Redis", None));
        }
        let Ok(permit) = self.breaker.try_call() else {
            return Err(self.defer(payload, "circuit breaker is open", None));
        };
        match self.send(payload).await {
            Ok(()) => {
                permit.record(true);
                self.stats.published.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if !counts_as_failure(&e) => {
                // A refusal (e.g. an ACL without PUBLISH): retrying would not help.
                drop(permit);
                Err(BusError {
                    bus: self.name.clone(),
                    message: format!("publish failed: {e}"),
                    source: Some(Arc::new(e)),
                })
            }
            Err(e) => {
                permit.record(false);
                let message = format!("publish failed: {e}");
                self.outbox.lock().last_failure = Some(message.clone());
                Err(self.defer(payload, &message, Some(e)))
            }
        }
    }

    /// Queues `payload` (once; an overflow turns the queue into one resync) and makes sure the
    /// re-publishing task runs.
    fn defer(self: &Arc<Self>, payload: &[u8], why: &str, source: Option<TierError>) -> BusError {
        self.stats.deferred.fetch_add(1, Ordering::Relaxed);
        let start = {
            let mut o = self.outbox.lock();
            if !o.members.contains(payload) {
                if o.queue.len() >= self.max_pending {
                    if !o.overflowed {
                        tracing::warn!(
                            bus = %self.name,
                            capacity = self.max_pending,
                            "too many unpublished invalidations; a resync will be published instead"
                        );
                    }
                    o.overflowed = true;
                    o.overflow_epoch += 1;
                    o.queue.clear();
                    o.members.clear();
                } else {
                    let seq = o.next_seq;
                    o.next_seq += 1;
                    o.queue.push_back((seq, payload.to_vec()));
                    o.members.insert(payload.to_vec());
                }
            }
            !std::mem::replace(&mut o.draining, true)
        };
        if start {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(drain(Arc::downgrade(self)));
                }
                Err(_) => self.outbox.lock().draining = false,
            }
        }
        let last = match self.outbox.lock().last_failure.as_deref() {
            Some(f) if f != why => format!(" (latest failure: {f})"),
            _ => String::new(),
        };
        BusError {
            bus: self.name.clone(),
            message: format!("{why}{last}; invalidation queued for re-publication"),
            source: source.map(|e| Arc::new(e) as Arc<dyn std::error::Error + Send + Sync>),
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

/// Re-publishes queued messages (a pending resync first) once Redis answers again, one at a
/// time through the breaker, backing off while it fails. Stops when the queue is empty or the
/// bus is gone.
async fn drain(weak: Weak<Shared>) {
    let mut backoff = Duration::from_millis(20);
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let next = {
            let mut o = shared.outbox.lock();
            if o.overflowed {
                Some((None, RESYNC_MESSAGE.to_vec(), o.overflow_epoch))
            } else if let Some((seq, p)) = o.queue.front() {
                Some((Some(*seq), p.clone(), o.overflow_epoch))
            } else {
                o.draining = false;
                o.last_failure = None;
                None
            }
        };
        let Some((seq, payload, epoch)) = next else { return };
        let wait = match shared.breaker.try_call() {
            Err(()) => Some(shared.breaker.config().open_wait.min(Duration::from_millis(250))),
            Ok(permit) => match shared.send(&payload).await {
                Ok(()) => {
                    permit.record(true);
                    shared.stats.published.fetch_add(1, Ordering::Relaxed);
                    shared.stats.republished.fetch_add(1, Ordering::Relaxed);
                    let mut o = shared.outbox.lock();
                    match seq {
                        None if o.overflow_epoch == epoch => {
                            o.overflowed = false;
                            shared.stats.overflows.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {}
                        Some(seq) => {
                            if o.queue.front().is_some_and(|(s, _)| *s == seq)
                                && let Some((_, p)) = o.queue.pop_front()
                            {
                                o.members.remove(&p);
                            }
                        }
                    }
                    backoff = Duration::from_millis(20);
                    None
                }
                Err(e) => {
                    if counts_as_failure(&e) {
                        permit.record(false);
                    } else {
                        drop(permit);
                    }
                    tracing::debug!(bus = %shared.name, error = %e, "re-publishing failed; retrying");
                    shared.outbox.lock().last_failure = Some(format!("publish failed: {e}"));
                    let w = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    Some(w)
                }
            },
        };
        drop(shared);
        if let Some(w) = wait {
            tokio::time::sleep(w).await;
        }
    }
}

/// The outcome of asking the servers their version ([`PubSubMode::Auto`] on a cluster).
#[derive(Default)]
struct Resolver {
    /// Whether to use sharded pub/sub, once a server answered.
    known: OnceLock<bool>,
    /// The last failure to find out, and until when it stands.
    failed: parking_lot::Mutex<Option<(Instant, String)>>,
    /// One probe at a time.
    probe: tokio::sync::Mutex<()>,
}

impl Resolver {
    fn recent_failure(&self) -> Option<String> {
        match &*self.failed.lock() {
            Some((until, e)) if Instant::now() < *until => Some(e.clone()),
            _ => None,
        }
    }

    async fn resolve(&self, spec: &Spec) -> Result<bool, String> {
        if let Some(&s) = self.known.get() {
            return Ok(s);
        }
        if let Some(e) = self.recent_failure() {
            return Err(e);
        }
        let _probe = self.probe.lock().await;
        if let Some(&s) = self.known.get() {
            return Ok(s);
        }
        if let Some(e) = self.recent_failure() {
            return Err(e);
        }
        match server_major(spec).await {
            Ok(v) => {
                let sharded = v >= 7;
                let _ = self.known.set(sharded);
                *self.failed.lock() = None;
                Ok(sharded)
            }
            Err(e) => {
                let message = format!(
                    "pub/sub mode auto: cannot determine the Redis version ({e}); \
                     not guessing between classic and sharded pub/sub (set the mode explicitly)"
                );
                *self.failed.lock() = Some((Instant::now() + VERSION_RETRY, message.clone()));
                Err(message)
            }
        }
    }
}

/// Whether to use sharded pub/sub; in auto mode on a cluster, asks a server its version
/// (remembering the answer once one replied, and a failure for [`VERSION_RETRY`]).
async fn use_sharded(mode: PubSubMode, spec: &Spec, resolved: &Resolver) -> Result<bool, String> {
    match mode {
        PubSubMode::Classic => Ok(false),
        PubSubMode::Sharded => Ok(true),
        PubSubMode::Auto if !spec.cluster => Ok(false),
        PubSubMode::Auto => resolved.resolve(spec).await,
    }
}

/// The major version of the first node that answers `INFO server`.
async fn server_major(spec: &Spec) -> Result<u32, String> {
    let mut last = String::from("no node URL");
    for url in &spec.urls {
        let client = match redis::Client::open(url.as_str()) {
            Ok(c) => c,
            Err(e) => {
                last = format!("{}: {e}", redact(url));
                continue;
            }
        };
        let info = tokio::time::timeout(spec.connect_timeout * 2, async {
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("INFO").arg("server").query_async::<String>(&mut c).await
        })
        .await;
        match info {
            Ok(Ok(info)) => match parse_major(&info) {
                Some(v) => return Ok(v),
                None => last = format!("{}: no redis_version in INFO", redact(url)),
            },
            Ok(Err(e)) => last = format!("{}: INFO failed: {e}", redact(url)),
            Err(_) => last = format!("{}: INFO timed out", redact(url)),
        }
    }
    Err(last)
}

/// The major version in an `INFO server` reply (`None` when absent or unreadable).
fn parse_major(info: &str) -> Option<u32> {
    let v = info.lines().find_map(|l| l.strip_prefix("redis_version:"))?;
    v.split('.').next()?.trim().parse().ok().filter(|&m| m > 0)
}

/// What a sharded subscriber does with a push.
#[derive(Debug, PartialEq, Eq)]
enum PushAction {
    /// A message on the channel: deliver it.
    Deliver,
    /// The subscription is gone (connection lost, or the server unsubscribed us, e.g. because
    /// the channel's slot moved): reconnect and resync.
    Lost,
    /// Anything else (subscribe confirmations, other channels).
    Ignore,
}

fn classify_push(push: &PushInfo, channel: &str) -> PushAction {
    match push.kind {
        PushKind::SMessage | PushKind::Message => PushAction::Deliver,
        PushKind::Disconnection => PushAction::Lost,
        PushKind::SUnsubscribe | PushKind::Unsubscribe => match push.data.first() {
            Some(Value::BulkString(c)) if c.as_slice() != channel.as_bytes() => PushAction::Ignore,
            Some(Value::SimpleString(c)) if c != channel => PushAction::Ignore,
            // Ours, or unreadable: assume the worst.
            _ => PushAction::Lost,
        },
        _ => PushAction::Ignore,
    }
}

struct Subscriber<T> {
    spec: Spec,
    mode: PubSubMode,
    resolved: Arc<Resolver>,
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
    Sharded {
        conn: redis::cluster_async::ClusterConnection,
        pushes: mpsc::Receiver<PushInfo>,
        /// Set when a push was dropped because `pushes` was full.
        overflow: Arc<AtomicBool>,
    },
}

impl<T: Send + 'static> Subscriber<T> {
    async fn run(self, first: oneshot::Sender<Result<(), String>>) {
        let mut first = Some(first);
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.tx.is_closed() {
                return;
            }
            // Outside the connect timeout: asking for the version has its own per-node timeouts.
            let attempt = match use_sharded(self.mode, &self.spec, &self.resolved).await {
                Ok(sharded) => tokio::time::timeout(self.spec.connect_timeout * 2, self.connect(sharded)).await,
                Err(e) => Ok(Err(e)),
            };
            match attempt {
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

    async fn connect(&self, sharded: bool) -> Result<Session, String> {
        let channel = self.spec.channel.as_str();
        if sharded {
            let (ptx, pushes) = mpsc::channel(PUSH_QUEUE);
            let overflow = Arc::new(AtomicBool::new(false));
            let flag = overflow.clone();
            let sender = move |p: PushInfo| match ptx.try_send(p) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    flag.store(true, Ordering::Release);
                    Ok(())
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(redis::aio::SendError),
            };
            let client = redis::cluster::ClusterClientBuilder::new(self.spec.urls.clone())
                .use_protocol(redis::ProtocolVersion::RESP3)
                .connection_timeout(self.spec.connect_timeout)
                .response_timeout(self.spec.connect_timeout)
                .push_sender(sender)
                .build()
                .map_err(|e| e.to_string())?;
            let mut conn = client.get_async_connection().await.map_err(|e| e.to_string())?;
            conn.ssubscribe(channel).await.map_err(|e| e.to_string())?;
            return Ok(Session::Sharded { conn, pushes, overflow });
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
            Session::Sharded { mut conn, mut pushes, overflow } => {
                // The node serving the channel's slot carries the subscription: ping that one.
                let slot = keys::slot(self.spec.channel.as_bytes());
                let route =
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master)));
                loop {
                    // Pushes were dropped while delivery was blocked: the receiver must resync.
                    if overflow.swap(false, Ordering::AcqRel) {
                        self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(capacity = PUSH_QUEUE, "subscriber fell behind; messages dropped; resync");
                        if let Some(r) = self.resync
                            && self.tx.send(r()).await.is_err()
                        {
                            return Ended::Stopped;
                        }
                    }
                    tokio::select! {
                        push = pushes.recv() => match push {
                            Some(p) => match classify_push(&p, &self.spec.channel) {
                                PushAction::Deliver => {
                                    if let Some(m) = redis::Msg::from_push_info(p)
                                        && !self.deliver(m.get_payload_bytes().to_vec()).await
                                    {
                                        return Ended::Stopped;
                                    }
                                }
                                PushAction::Lost => {
                                    tracing::info!(kind = %p.kind, "sharded subscription lost; re-subscribing");
                                    return Ended::Disconnected;
                                }
                                PushAction::Ignore => {}
                            },
                            None => return Ended::Disconnected,
                        },
                        _ = keepalive.tick() => {
                            let ping = tokio::time::timeout(
                                self.spec.connect_timeout,
                                conn.route_command(redis::cmd("PING"), route.clone()),
                            ).await;
                            if !matches!(ping, Ok(Ok(_))) {
                                return Ended::Disconnected;
                            }
                        }
                        () = self.tx.closed() => return Ended::Stopped,
                    }
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn push(kind: PushKind, data: Vec<Value>) -> PushInfo {
        PushInfo { kind, data }
    }

    #[test]
    fn pushes_are_classified() {
        let ch = "strata:inv";
        let msg = vec![Value::BulkString(ch.into()), Value::BulkString(b"x".to_vec())];
        assert_eq!(classify_push(&push(PushKind::SMessage, msg.clone()), ch), PushAction::Deliver);
        assert_eq!(classify_push(&push(PushKind::Message, msg), ch), PushAction::Deliver);
        assert_eq!(classify_push(&push(PushKind::Disconnection, vec![]), ch), PushAction::Lost);
        // The server unsubscribed us (slot moved): lost, whether sharded or classic.
        let ours = vec![Value::BulkString(ch.into()), Value::Int(0)];
        assert_eq!(classify_push(&push(PushKind::SUnsubscribe, ours.clone()), ch), PushAction::Lost);
        assert_eq!(classify_push(&push(PushKind::Unsubscribe, ours), ch), PushAction::Lost);
        assert_eq!(
            classify_push(&push(PushKind::SUnsubscribe, vec![Value::SimpleString(ch.into())]), ch),
            PushAction::Lost
        );
        // Unreadable: assume the worst.
        assert_eq!(classify_push(&push(PushKind::SUnsubscribe, vec![]), ch), PushAction::Lost);
        // Another channel, or a confirmation: ignored.
        let other = vec![Value::BulkString(b"other".to_vec()), Value::Int(0)];
        assert_eq!(classify_push(&push(PushKind::SUnsubscribe, other), ch), PushAction::Ignore);
        let sub = vec![Value::BulkString(ch.into()), Value::Int(1)];
        assert_eq!(classify_push(&push(PushKind::SSubscribe, sub), ch), PushAction::Ignore);
        assert_eq!(classify_push(&push(PushKind::Invalidate, vec![]), ch), PushAction::Ignore);
    }

    #[test]
    fn version_is_parsed_or_unknown() {
        assert_eq!(parse_major("# Server\r\nredis_version:7.0.15\r\nredis_mode:cluster\r\n"), Some(7));
        assert_eq!(parse_major("redis_version:6.2.1\n"), Some(6));
        assert_eq!(parse_major("# Server\r\nredis_mode:cluster\r\n"), None);
        assert_eq!(parse_major("redis_version:x.y\n"), None);
        assert_eq!(parse_major("redis_version:0.1\n"), None);
    }

    // Paused time: "remembered for VERSION_RETRY" is checked against a clock that a busy machine
    // cannot move.
    #[tokio::test(start_paused = true)]
    async fn unknown_version_is_an_error_remembered_briefly() {
        // Nobody listens: the version cannot be determined.
        let spec = Spec {
            urls: vec!["redis://127.0.0.1:1".into()],
            cluster: true,
            channel: "c".into(),
            connect_timeout: Duration::from_millis(200),
            keepalive: Duration::from_secs(3),
        };
        let r = Resolver::default();
        let e = use_sharded(PubSubMode::Auto, &spec, &r).await.unwrap_err();
        assert!(e.contains("cannot determine the Redis version"), "{e}");
        assert!(r.known.get().is_none(), "a failure is not an answer");
        // Remembered: the next call fails without asking again.
        let until = r.failed.lock().as_ref().map(|(u, _)| *u).unwrap();
        assert!(until > Instant::now() + VERSION_RETRY / 2);
        assert_eq!(use_sharded(PubSubMode::Auto, &spec, &r).await.unwrap_err(), e);
        assert_eq!(r.failed.lock().as_ref().map(|(u, _)| *u), Some(until), "not probed again");
        // Explicit modes and standalone servers never ask.
        assert_eq!(use_sharded(PubSubMode::Classic, &spec, &r).await, Ok(false));
        assert_eq!(use_sharded(PubSubMode::Sharded, &spec, &r).await, Ok(true));
        let standalone = Spec { cluster: false, ..spec };
        assert_eq!(use_sharded(PubSubMode::Auto, &standalone, &Resolver::default()).await, Ok(false));
    }
}
