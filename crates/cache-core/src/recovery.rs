//! Auto-recovery of remote tiers after an outage: what a tier missed is remembered and applied
//! to it before this process reads it again.
//!
//! A write ([`Tier::set`](crate::Tier::set)) or invalidation ([`Tier::delete`](crate::Tier::delete),
//! [`Tier::invalidate_tag`](crate::Tier::invalidate_tag)) that does not reach a tier — an error,
//! a timeout, or a call refused because the tier's circuit breaker is open — leaves that tier
//! holding an *older* value. If it came back with that value (a Redis restarted from its AOF or
//! RDB file, a replica promoted with lag, a network partition that healed), readers would be
//! served data older than a write that was acknowledged. So, per tier:
//!
//! 1. The key (as the tier sees it) or the tag is remembered as **pending**, in a bounded set.
//! 2. While a key is pending, this process does not read it from that tier (a miss there: the
//!    read goes on to the next tier, e.g. the SQL tier that took the write, or to the loader).
//! 3. A background task (on the runtime that built the cache) **replays** the pending set: it
//!    deletes each pending key and re-runs each pending tag invalidation. It retries at a fixed
//!    interval while the tier fails; behind a [`BreakerTier`](crate::BreakerTier) a retry while the
//!    breaker is open costs nothing, and the first retry after its wait is the half-open probe.
//!    Deleting rather than re-writing is enough: the next read fills the tier from below.
//! 4. When more than the bound is pending, the keys are forgotten and the tier is marked
//!    **overflowed**: this process reads nothing from it until the replay has invalidated every
//!    namespace that lost writes ([`Tier::invalidate_namespace`](crate::Tier::invalidate_namespace)).
//!    A tier that cannot do that gets a local **horizon** instead: entries created before the
//!    replay ran are misses for this process (other processes are not protected; see below).
//!
//! The residual window: another process (or a fresh one) that reads the restored tier between
//! its return and this process's replay can still see the older value (by default the replay
//! runs within [`DEFAULT_RETRY`] of the tier answering again). Run a bus so that the other
//! processes drop their L1 copies, keep TTLs bounded, and see [`crate::Cache::pending_recovery`]
//! to observe the backlog.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::clock::Timestamp;
use crate::key::{Key, Namespace};

/// The default bound on pending invalidations per tier.
pub const DEFAULT_MAX_PENDING: usize = 10_000;
/// The default interval between replay attempts while a tier fails.
pub const DEFAULT_RETRY: Duration = Duration::from_millis(250);
/// The most namespaces an overflowed tier remembers; beyond this it falls back to the horizon.
const MAX_OVERFLOW_NAMESPACES: usize = 1024;

/// The pending invalidations of one tier. All methods are cheap when nothing is pending (one
/// atomic load).
#[derive(Debug)]
pub(crate) struct TierRecovery {
    max_pending: usize,
    state: Mutex<State>,
    /// Whether anything is pending (read path fast check).
    dirty: AtomicBool,
    /// Entries created at or before this (ms) are misses when read from this tier (0: none).
    horizon: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// The last generation handed out; every record gets a new one.
    stamp: u64,
    keys: HashMap<Key, u64>,
    tags: HashMap<(Namespace, String), u64>,
    overflow: Option<Overflow>,
}

#[derive(Debug)]
struct Overflow {
    /// Namespaces that lost writes (`None`: too many to list).
    namespaces: Option<HashSet<Namespace>>,
    stamp: u64,
}

/// What a tier missed.
pub(crate) enum Missed<'a> {
    /// A write or delete of this key.
    Key(&'a Key),
    /// A tag invalidation.
    Tag(&'a Namespace, &'a str),
}

/// A snapshot of one tier's pending work, with the generations to clear once applied.
#[derive(Debug, Default)]
pub(crate) struct Work {
    pub(crate) keys: Vec<(Key, u64)>,
    pub(crate) tags: Vec<(Namespace, String, u64)>,
    /// `Some((namespaces, stamp))` when the tier overflowed (`namespaces` is `None` when there
    /// were too many to list).
    pub(crate) overflow: Option<(Option<Vec<Namespace>>, u64)>,
}

impl TierRecovery {
    pub(crate) fn new(max_pending: usize) -> Self {
        Self {
            max_pending,
            state: Mutex::new(State::default()),
            dirty: AtomicBool::new(false),
            horizon: AtomicU64::new(0),
        }
    }

    /// Remembers something the tier missed. Returns `true` when this record overflowed the
    /// bound (the tier is then unreadable here until a namespace-wide replay).
    pub(crate) fn record(&self, missed: Missed<'_>) -> bool {
        let mut s = self.state.lock();
        s.stamp += 1;
        let stamp = s.stamp;
        let ns = match &missed {
            Missed::Key(k) => k.namespace().clone(),
            Missed::Tag(ns, _) => (*ns).clone(),
        };
        self.dirty.store(true, Ordering::Release);
        if let Some(o) = &mut s.overflow {
            o.stamp = stamp;
            add_namespace(&mut o.namespaces, ns);
            return false;
        }
        match missed {
            Missed::Key(k) => {
                s.keys.insert(k.clone(), stamp);
            }
            Missed::Tag(ns, tag) => {
                s.tags.insert((ns.clone(), tag.to_owned()), stamp);
            }
        }
        if s.keys.len() + s.tags.len() <= self.max_pending {
            return false;
        }
        let mut namespaces = Some(HashSet::new());
        for k in std::mem::take(&mut s.keys).into_keys() {
            add_namespace(&mut namespaces, k.namespace().clone());
        }
        for (ns, _) in std::mem::take(&mut s.tags).into_keys() {
            add_namespace(&mut namespaces, ns);
        }
        s.overflow = Some(Overflow { namespaces, stamp });
        true
    }

    /// Whether a read of `key` from this tier must be treated as a miss.
    #[inline]
    pub(crate) fn blocks(&self, key: &Key) -> bool {
        if !self.dirty.load(Ordering::Acquire) {
            return false;
        }
        let s = self.state.lock();
        s.overflow.is_some() || s.keys.contains_key(key)
    }

    /// Whether an entry created at `created`, read from this tier, is older than the horizon.
    #[inline]
    pub(crate) fn below_horizon(&self, created: Timestamp) -> bool {
        let h = self.horizon.load(Ordering::Acquire);
        h != 0 && created.0 <= h
    }

    /// The latest generation handed out: a successful delete that started after this was
    /// taken supersedes every record up to it.
    pub(crate) fn ticket(&self) -> Option<u64> {
        if !self.dirty.load(Ordering::Acquire) {
            return None;
        }
        Some(self.state.lock().stamp)
    }

    /// A pending key was deleted from the tier by a call that started at generation `upto`.
    pub(crate) fn key_done(&self, key: &Key, upto: u64) {
        let mut s = self.state.lock();
        if s.keys.get(key).is_some_and(|&g| g <= upto) {
            s.keys.remove(key);
        }
        self.update_dirty(&s);
    }

    /// A pending tag invalidation was applied by a call that started at generation `upto`.
    pub(crate) fn tag_done(&self, ns: &Namespace, tag: &str, upto: u64) {
        let mut s = self.state.lock();
        let k = (ns.clone(), tag.to_owned());
        if s.tags.get(&k).is_some_and(|&g| g <= upto) {
            s.tags.remove(&k);
        }
        self.update_dirty(&s);
    }

    /// The overflow was resolved by a replay of generation `upto`. `horizon`: entries created at
    /// or before it are misses from now on (the tier could not drop the namespaces).
    pub(crate) fn overflow_done(&self, upto: u64, horizon: Option<Timestamp>) {
        if let Some(h) = horizon {
            // Before the overflow is lifted, so no read sees neither.
            self.horizon.fetch_max(h.0.max(1), Ordering::AcqRel);
        }
        let mut s = self.state.lock();
        if s.overflow.as_ref().is_some_and(|o| o.stamp <= upto) {
            s.overflow = None;
        }
        self.update_dirty(&s);
    }

    fn update_dirty(&self, s: &State) {
        let dirty = s.overflow.is_some() || !s.keys.is_empty() || !s.tags.is_empty();
        self.dirty.store(dirty, Ordering::Release);
    }

    /// A copy of the pending work, or `None` when there is none.
    pub(crate) fn snapshot(&self) -> Option<Work> {
        if !self.dirty.load(Ordering::Acquire) {
            return None;
        }
        let s = self.state.lock();
        let work = Work {
            keys: s.keys.iter().map(|(k, g)| (k.clone(), *g)).collect(),
            tags: s.tags.iter().map(|((ns, t), g)| (ns.clone(), t.clone(), *g)).collect(),
            overflow: s
                .overflow
                .as_ref()
                .map(|o| (o.namespaces.as_ref().map(|n| n.iter().cloned().collect()), o.stamp)),
        };
        Some(work)
    }

    /// How much is pending: keys + tags, plus one when overflowed.
    pub(crate) fn pending(&self) -> usize {
        if !self.dirty.load(Ordering::Acquire) {
            return 0;
        }
        let s = self.state.lock();
        s.keys.len() + s.tags.len() + usize::from(s.overflow.is_some())
    }

    /// Whether the tier is overflowed (unreadable here until replayed).
    pub(crate) fn overflowed(&self) -> bool {
        self.dirty.load(Ordering::Acquire) && self.state.lock().overflow.is_some()
    }
}

fn add_namespace(set: &mut Option<HashSet<Namespace>>, ns: Namespace) {
    if let Some(s) = set {
        s.insert(ns);
        if s.len() > MAX_OVERFLOW_NAMESPACES {
            *set = None;
        }
    }
}

/// What [`crate::Cache::pending_recovery`] reports for one tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierBacklog {
    /// The tier's name.
    pub tier: String,
    /// Keys and tag invalidations the tier missed and that are not yet replayed.
    pub pending: usize,
    /// Whether more than the bound was missed: the tier is not read by this process until a
    /// namespace-wide replay succeeds.
    pub overflowed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, id: &str) -> Key {
        Key::new("c", Namespace::new(ns).unwrap(), id).unwrap()
    }

    #[test]
    fn nothing_pending_blocks_nothing() {
        let r = TierRecovery::new(4);
        assert!(!r.blocks(&key("a", "1")));
        assert!(r.snapshot().is_none());
        assert_eq!(r.ticket(), None);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn a_pending_key_blocks_only_itself_until_done() {
        let r = TierRecovery::new(4);
        let (k1, k2) = (key("a", "1"), key("a", "2"));
        assert!(!r.record(Missed::Key(&k1)));
        assert!(r.blocks(&k1));
        assert!(!r.blocks(&k2));
        let w = r.snapshot().unwrap();
        assert_eq!(w.keys.len(), 1);
        r.key_done(&k1, w.keys[0].1);
        assert!(!r.blocks(&k1));
        assert_eq!(r.pending(), 0);
        assert!(r.snapshot().is_none(), "drained: the fast path is back");
    }

    #[test]
    fn a_record_newer_than_the_replay_survives_it() {
        let r = TierRecovery::new(4);
        let k = key("a", "1");
        r.record(Missed::Key(&k));
        let w = r.snapshot().unwrap();
        r.record(Missed::Key(&k)); // failed again while the replay ran
        r.key_done(&k, w.keys[0].1);
        assert!(r.blocks(&k), "the newer miss is still pending");
        let t = r.ticket().unwrap();
        r.key_done(&k, t);
        assert!(!r.blocks(&k));
    }

    #[test]
    fn tags_are_pending_without_blocking_keys() {
        let r = TierRecovery::new(4);
        let ns = Namespace::new("a").unwrap();
        r.record(Missed::Tag(&ns, "t"));
        assert!(!r.blocks(&key("a", "1")), "tag times hide tagged entries; keys stay readable");
        assert_eq!(r.pending(), 1);
        let w = r.snapshot().unwrap();
        r.tag_done(&ns, "t", w.tags[0].2);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn overflow_blocks_every_key_and_lists_namespaces() {
        for bound in [0usize, 1, 3] {
            let r = TierRecovery::new(bound);
            let mut overflowed = false;
            for i in 0..=bound {
                overflowed |= r.record(Missed::Key(&key(if i % 2 == 0 { "a" } else { "b" }, &i.to_string())));
            }
            assert!(overflowed, "bound {bound}");
            assert!(r.overflowed());
            assert!(r.blocks(&key("zzz", "never-written")), "an overflowed tier is not read at all");
            let w = r.snapshot().unwrap();
            assert!(w.keys.is_empty(), "keys are subsumed by the overflow");
            let (ns, stamp) = w.overflow.unwrap();
            let mut ns: Vec<String> = ns.unwrap().iter().map(|n| n.as_str().to_owned()).collect();
            ns.sort();
            let want: Vec<&str> = if bound == 0 { vec!["a"] } else { vec!["a", "b"] };
            assert_eq!(ns, want);
            r.overflow_done(stamp, None);
            assert!(!r.blocks(&key("zzz", "x")));
            assert_eq!(r.pending(), 0);
        }
    }

    #[test]
    fn horizon_hides_older_entries_only() {
        let r = TierRecovery::new(0);
        r.record(Missed::Key(&key("a", "1")));
        let (_, stamp) = r.snapshot().unwrap().overflow.unwrap();
        r.overflow_done(stamp, Some(Timestamp(1_000)));
        assert!(r.below_horizon(Timestamp(0)));
        assert!(r.below_horizon(Timestamp(1_000)));
        assert!(!r.below_horizon(Timestamp(1_001)));
    }

    #[test]
    fn too_many_namespaces_are_not_listed() {
        let r = TierRecovery::new(0);
        for i in 0..=MAX_OVERFLOW_NAMESPACES + 1 {
            r.record(Missed::Key(&key(&format!("n{i}"), "k")));
        }
        let (ns, _) = r.snapshot().unwrap().overflow.unwrap();
        assert!(ns.is_none());
    }
}
