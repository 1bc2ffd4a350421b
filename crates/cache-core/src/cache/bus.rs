//! The bus side of a cache: the listener task, publishing invalidations, and applying the
//! invalidations other instances publish.

use std::sync::Weak;
use std::sync::atomic::Ordering;

use super::Inner;
use super::tags::validate_tag;
use crate::bus::{BusEvent, Invalidation, InvalidationTarget, Subscription};
use crate::clock::Timestamp;
use crate::freshness::MAX_CLOCK_SKEW;
use crate::key::{CacheKey, Key, Namespace};
use crate::observer::CacheEvent;

/// The listener task: applies every bus event while the cache lives.
pub(super) async fn listen<K: CacheKey, V: Send + Sync + 'static>(weak: Weak<Inner<K, V>>, mut sub: Subscription) {
    while let Some(ev) = sub.recv().await {
        let Some(inner) = weak.upgrade() else { return };
        inner.apply_bus_event(ev);
    }
}

impl<K, V> Inner<K, V>
where
    K: CacheKey,
    V: Send + Sync + 'static,
{
    /// Tells other instances about an invalidation (no-op without a bus); a failure is counted
    /// and logged, never returned.
    pub(super) async fn publish(&self, ns: &Namespace, target: InvalidationTarget) {
        let Some(bus) = &self.bus else { return };
        let msg = Invalidation {
            origin: self.instance,
            cache: self.name.to_string(),
            namespace: ns.as_str().to_owned(),
            target,
        };
        if let Err(error) = bus.publish(&msg).await {
            self.observers.emit(&CacheEvent::BusError { cache: &self.name, error: &error });
            // Throttled: during an outage every write fails to publish (the error is counted
            // through the observer either way).
            if self.publish_warned.swap(true, Ordering::Relaxed) {
                tracing::debug!(cache = %self.name, %error, "invalidation not published");
            } else {
                tracing::warn!(cache = %self.name, %error, "invalidation not published (further failures at debug level until one succeeds)");
            }
        } else {
            self.publish_warned.store(false, Ordering::Relaxed);
        }
    }

    fn apply_bus_event(&self, ev: BusEvent) {
        match ev {
            BusEvent::Invalidate(m) if m.origin != self.instance && *m.cache == *self.name => {
                self.observers.emit(&CacheEvent::InvalidationReceived { cache: &self.name });
                let ns = Namespace::new(&m.namespace).ok();
                if let (InvalidationTarget::Tag(tag), Some(ns)) = (&m.target, &ns) {
                    // Also hides entries carrying the tag when read from tiers later. A tag no
                    // local call would accept cannot have been set here: ignore it.
                    if validate_tag(tag).is_ok() {
                        self.apply_tag_invalidation(ns, tag);
                    }
                    return;
                }
                if let (InvalidationTarget::Key(id), Some(ns)) = (&m.target, &ns)
                    && let Ok(k) = Key::with_cache(self.name.clone(), ns.clone(), id)
                {
                    // Another instance wrote this key; its clock may be behind ours, so the floor
                    // is lowered to what we saw up to `MAX_CLOCK_SKEW` ago — never forgotten: an
                    // unauthenticated bus message must not switch rollback detection off (frames
                    // older than that stay refused).
                    let horizon = Timestamp(self.clock.now().0.saturating_sub(MAX_CLOCK_SKEW.as_millis() as u64));
                    self.floor.lower_to(&k, horizon.0.saturating_mul(1 << 16));
                }
                let Some(l1) = &self.l1 else { return };
                match (m.target, ns) {
                    (InvalidationTarget::Key(id), Some(ns)) => match &self.key_hasher {
                        None => match K::from_key_id(&id) {
                            Some(k) => {
                                self.epochs.bump(&ns, &k);
                                l1.remove(&ns, &k);
                            }
                            None => self.resync(),
                        },
                        Some(h) => {
                            self.epochs.bump_all();
                            l1.remove_where(|n, k, _| *n == ns && h(&k.key_id()) == id);
                        }
                    },
                    (InvalidationTarget::Namespace, Some(ns)) => {
                        self.epochs.bump_all();
                        l1.remove_where(|n, _, _| *n == ns);
                    }
                    _ => self.resync(),
                }
            }
            BusEvent::Resync => {
                self.observers.emit(&CacheEvent::Resync { cache: &self.name });
                self.resync();
            }
            BusEvent::Invalidate(_) => {}
        }
    }

    pub(super) fn resync(&self) {
        self.epochs.bump_all();
        if let Some(l1) = &self.l1 {
            l1.clear();
        }
    }
}
