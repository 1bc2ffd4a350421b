//! Presets: named starting points for common cache roles. Every field can be overridden in
//! configuration (`[caches.NAME]`) or in code.

use std::time::Duration;

use serde::Deserialize;
use strata_cache_core::{EntryOptions, L1Config};

/// A cache role with sensible defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// Rules, configuration, feature flags: read-heavy, rarely changing, must stay available.
    /// TTL 1 h (+≤5 min jitter), early refresh β = 1, stale for up to 24 h when the source
    /// fails, "not found" cached 1 min, soft timeout 100 ms, hard 5 s. L1: 10,000 entries.
    Rule,
    /// Sessions: correctness over availability. TTL 30 min, no early refresh, never served
    /// stale, no negative caching, hard timeout 2 s. L1: 100,000 entries, 64 MiB.
    Session,
    /// Analytics aggregates: expensive to compute, fine to serve a little old. TTL 5 min
    /// (+≤30 s jitter), β = 1, stale up to 1 h, not-found 30 s, soft 200 ms, hard 10 s.
    /// L1: 1,000 entries, 256 MiB.
    Analytics,
    /// LLM prompt/completion results: large, deterministic, very expensive. TTL 24 h (+≤1 h),
    /// β = 0.5, stale up to 7 days, soft 500 ms, hard 60 s. L1: 5,000 entries, 512 MiB.
    Prompt,
}

impl Preset {
    /// Every preset, for listings and tests.
    pub const ALL: [Preset; 4] = [Preset::Rule, Preset::Session, Preset::Analytics, Preset::Prompt];

    /// The preset's name as written in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Rule => "rule",
            Preset::Session => "session",
            Preset::Analytics => "analytics",
            Preset::Prompt => "prompt",
        }
    }

    /// The preset's entry options.
    pub fn entry_options(self) -> EntryOptions {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        match self {
            Preset::Rule => EntryOptions::new(s(3600))
                .jitter(s(300))
                .early_refresh_beta(1.0)
                .stale_limit(s(86_400))
                .negative_ttl(s(60))
                .soft_timeout(ms(100))
                .hard_timeout(s(5)),
            Preset::Session => EntryOptions::new(s(1800)).hard_timeout(s(2)),
            Preset::Analytics => EntryOptions::new(s(300))
                .jitter(s(30))
                .early_refresh_beta(1.0)
                .stale_limit(s(3600))
                .negative_ttl(s(30))
                .soft_timeout(ms(200))
                .hard_timeout(s(10)),
            Preset::Prompt => EntryOptions::new(s(86_400))
                .jitter(s(3600))
                .early_refresh_beta(0.5)
                .stale_limit(s(7 * 86_400))
                .soft_timeout(ms(500))
                .hard_timeout(s(60)),
        }
    }

    /// The preset's L1 bounds.
    pub fn l1(self) -> L1Config {
        const MIB: u64 = 1024 * 1024;
        match self {
            Preset::Rule => L1Config::entries(10_000),
            Preset::Session => L1Config::entries(100_000).max_weight(64 * MIB),
            Preset::Analytics => L1Config::entries(1_000).max_weight(256 * MIB),
            Preset::Prompt => L1Config::entries(5_000).max_weight(512 * MIB),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid() {
        for p in Preset::ALL {
            p.entry_options().validate().unwrap();
            p.l1().validate().unwrap();
        }
    }
}
