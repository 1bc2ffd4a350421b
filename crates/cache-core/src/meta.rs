//! Entry metadata, shared by L1 and the frames of remote tiers.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Timestamp;

/// Metadata of a cached entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    /// When the value was produced.
    pub created: Timestamp,
    /// Until when the entry is fresh.
    pub fresh_until: Timestamp,
    /// Hard expiry: after this the entry must not be served at all (fresh TTL + stale limit).
    pub expires_at: Timestamp,
    /// A version number (monotonic per writer; used for last-writer-wins checks).
    pub version: u64,
    /// How long the load that produced the value took, in microseconds (XFetch's δ).
    pub load_cost_us: u32,
    /// Whether this entry records "not found" (negative caching).
    pub negative: bool,
    /// Tags for tag invalidation.
    pub tags: Arc<[String]>,
}

impl EntryMeta {
    /// Whether the entry is fresh at `now`.
    pub fn is_fresh(&self, now: Timestamp) -> bool {
        now < self.fresh_until
    }

    /// Whether the entry may still be served (fresh, or stale within its limit) at `now`.
    pub fn is_servable(&self, now: Timestamp) -> bool {
        now < self.expires_at
    }

    /// The load cost as a duration.
    pub fn load_cost(&self) -> Duration {
        Duration::from_micros(u64::from(self.load_cost_us))
    }
}
