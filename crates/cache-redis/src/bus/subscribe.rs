//! The subscriber task: one dedicated connection per subscription, reconnecting with backoff and
//! resyncing after a gap.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_redis::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use deadpool_redis::redis::{self, PushInfo, Value};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::mode::{Resolver, use_sharded};
use super::sharded::{PUSH_QUEUE, PushAction, classify_push};
use super::{BusStats, PubSubMode, Shared, Spec};
use crate::config::redact;
use crate::keys;

impl Shared {
    /// Starts a subscriber task; waits for its first subscription attempt. If that fails the
    /// task keeps retrying in the background (and emits a resync once subscribed).
    pub(super) async fn start<T: Send + 'static>(
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
