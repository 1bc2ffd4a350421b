//! Distributed invalidation: every write publishes an [`Invalidation`]; every other process
//! drops its L1 copy. [`LocalBus`] connects caches inside one process (and serves tests);
//! the Redis backplane lives in `strata-cache-redis`.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use crate::error::BusError;

/// Identifies one cache instance so that it can ignore its own messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InstanceId(pub u128);

impl InstanceId {
    /// A random id.
    pub fn random() -> Self {
        Self((u128::from(fastrand::u64(..)) << 64) | u128::from(fastrand::u64(..)))
    }
}

/// What to invalidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InvalidationTarget {
    /// One key id.
    Key(String),
    /// Every entry carrying a tag.
    Tag(String),
    /// A whole namespace.
    Namespace,
    /// Everything in the cache.
    All,
}

/// One invalidation message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidation {
    /// The publisher (receivers ignore their own).
    pub origin: InstanceId,
    /// The cache name.
    pub cache: String,
    /// The namespace.
    pub namespace: String,
    /// What to drop.
    pub target: InvalidationTarget,
}

/// The largest accepted encoded message.
pub const MAX_MESSAGE_LEN: usize = 8 * 1024;

impl Invalidation {
    /// Encodes for the wire (postcard, with a leading format byte).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![1u8];
        // Serializing a plain struct of strings into a Vec cannot fail.
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    /// Decodes from the wire; hostile input is an error, never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BusError> {
        let err = |m: String| BusError { bus: "wire".into(), message: m, source: None };
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(err(format!("message of {} bytes exceeds {MAX_MESSAGE_LEN}", bytes.len())));
        }
        match bytes.split_first() {
            Some((1, rest)) => postcard::from_bytes(rest).map_err(|e| err(format!("undecodable message: {e}"))),
            Some((v, _)) => Err(err(format!("unknown message format {v}"))),
            None => Err(err("empty message".into())),
        }
    }
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// An invalidation from some instance (possibly this one: receivers filter by origin).
    Invalidate(Invalidation),
    /// Messages may have been missed (subscription dropped and came back, or the receiver
    /// lagged): the receiver cannot know what changed and must resynchronise (clear its L1).
    Resync,
}

/// A stream of [`BusEvent`]s.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<BusEvent>,
}

impl Subscription {
    /// Wraps a channel receiver (for bus implementations).
    pub fn new(rx: mpsc::Receiver<BusEvent>) -> Self {
        Self { rx }
    }

    /// A subscription and the sender that feeds it, buffering up to `capacity` events: what a
    /// bus implementation returns from [`InvalidationBus::subscribe`] without naming tokio's
    /// channel types. The bus keeps the sender and delivers every message it receives, and a
    /// [`BusEvent::Resync`] whenever it may have lost some.
    pub fn channel(capacity: usize) -> (SubscriptionSender, Subscription) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (SubscriptionSender(tx), Self { rx })
    }

    /// The next event; `None` when the bus is gone.
    pub async fn recv(&mut self) -> Option<BusEvent> {
        self.rx.recv().await
    }
}

/// The sending half of a [`Subscription::channel`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SubscriptionSender(mpsc::Sender<BusEvent>);

impl SubscriptionSender {
    /// Delivers `event`, waiting while the subscriber's buffer is full. Returns `false` once the
    /// subscription was dropped (the bus can then forget this sender).
    pub async fn send(&self, event: BusEvent) -> bool {
        self.0.send(event).await.is_ok()
    }

    /// Whether the subscription was dropped.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// Publishes and subscribes to invalidations across processes.
///
/// # Implementing a bus
/// An in-process bus that hands each subscriber its own channel (a real one would publish to
/// a broker and feed the channels from the broker's subscription):
///
/// ```
/// use strata_cache_core::plugin::*;
/// use std::sync::{Arc, Mutex};
///
/// #[derive(Default)]
/// struct FanoutBus {
///     subscribers: Mutex<Vec<SubscriptionSender>>,
/// }
///
/// #[async_trait]
/// impl InvalidationBus for FanoutBus {
///     fn name(&self) -> &str {
///         "fanout"
///     }
///     async fn publish(&self, message: &Invalidation) -> Result<(), BusError> {
///         let subscribers: Vec<SubscriptionSender> = {
///             let mut subs = self.subscribers.lock().map_err(|_| BusError {
///                 bus: "fanout".into(),
///                 message: "poisoned".into(),
///                 source: None,
///             })?;
///             subs.retain(|s| !s.is_closed());
///             subs.clone()
///         };
///         for s in subscribers {
///             s.send(BusEvent::Invalidate(message.clone())).await;
///         }
///         Ok(())
///     }
///     async fn subscribe(&self) -> Result<Subscription, BusError> {
///         let (tx, sub) = Subscription::channel(256);
///         if let Ok(mut subs) = self.subscribers.lock() {
///             subs.push(tx);
///         }
///         Ok(sub)
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let bus = Arc::new(FanoutBus::default());
/// let mut watcher = bus.subscribe().await?;
/// let cache: Cache<u64, String> = Cache::builder("users").bus(bus.clone()).build().await?;
/// cache.set(7, "alice".to_string()).await?;
/// // Every write publishes an invalidation that the other subscribers receive.
/// match watcher.recv().await {
///     Some(BusEvent::Invalidate(m)) => {
///         assert_eq!((m.cache.as_str(), &m.target), ("users", &InvalidationTarget::Key("7".into())));
///         assert_eq!(m.origin, cache.instance_id());
///     }
///     other => panic!("expected an invalidation, got {other:?}"),
/// }
/// # Ok::<(), CacheError>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait InvalidationBus: Send + Sync + 'static {
    /// A short name (`local`, `redis`, ...).
    fn name(&self) -> &str;
    /// Publishes a message.
    async fn publish(&self, message: &Invalidation) -> Result<(), BusError>;
    /// Opens a subscription. Implementations deliver [`BusEvent::Resync`] whenever they may have
    /// lost messages.
    async fn subscribe(&self) -> Result<Subscription, BusError>;
}

/// An in-process bus on a tokio broadcast channel.
#[derive(Debug, Clone)]
pub struct LocalBus {
    tx: broadcast::Sender<Invalidation>,
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new(1024)
    }
}

impl LocalBus {
    /// A bus buffering up to `capacity` messages per slow subscriber (past that, the subscriber
    /// gets a [`BusEvent::Resync`]).
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self { tx }
    }
}

#[async_trait]
impl InvalidationBus for LocalBus {
    fn name(&self) -> &str {
        "local"
    }

    async fn publish(&self, message: &Invalidation) -> Result<(), BusError> {
        // No subscribers is not an error.
        let _ = self.tx.send(message.clone());
        Ok(())
    }

    async fn subscribe(&self) -> Result<Subscription, BusError> {
        let mut rx = self.tx.subscribe();
        let (tx, out) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let ev = match rx.recv().await {
                    Ok(m) => BusEvent::Invalidate(m),
                    Err(broadcast::error::RecvError::Lagged(_)) => BusEvent::Resync,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        });
        Ok(Subscription::new(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn wire_round_trip(cache in "[a-z]{1,10}", ns in "[a-z]{1,10}", id in ".{0,100}", tag in any::<bool>()) {
            let m = Invalidation {
                origin: InstanceId::random(),
                cache, namespace: ns,
                target: if tag { InvalidationTarget::Tag(id) } else { InvalidationTarget::Key(id) },
            };
            prop_assert_eq!(Invalidation::from_bytes(&m.to_bytes()).unwrap(), m);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Invalidation::from_bytes(&bytes);
        }
    }

    #[tokio::test]
    async fn local_bus_delivers_and_signals_lag() {
        let bus = LocalBus::new(2);
        let mut sub = bus.subscribe().await.unwrap();
        let m = Invalidation {
            origin: InstanceId(1),
            cache: "c".into(),
            namespace: "n".into(),
            target: InvalidationTarget::All,
        };
        bus.publish(&m).await.unwrap();
        assert_eq!(sub.recv().await, Some(BusEvent::Invalidate(m.clone())));
        for _ in 0..10 {
            bus.publish(&m).await.unwrap();
        }
        // The forwarding task lags behind a 2-slot channel at some point, or delivers all 10
        // (each within a generous deadline: the machine's speed is not what is tested).
        let mut seen = 0;
        while seen < 10 {
            let ev = tokio::time::timeout(std::time::Duration::from_secs(60), sub.recv()).await;
            let ev = ev.expect("a message or a resync").expect("the subscription stays open");
            seen += 1;
            if ev == BusEvent::Resync {
                return;
            }
        }
        // No more than the 10 published.
        assert!(tokio::time::timeout(std::time::Duration::from_millis(100), sub.recv()).await.is_err());
    }
}
