//! The settings of a write-behind policy: [`WriteBehindConfig`], made only by
//! [`WriteBehindConfigBuilder::build`], which checks every value and names the wrong one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use strata_cache_core::{CodecPipeline, ConfigError};
use tokio::sync::Semaphore;

use super::observer::WriteBehindObserver;
use crate::journal::SyncPolicy;

/// The longest `enqueue_timeout`, `batch_delay` and `retry_max`.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The longest `dead_letter_after`.
const MAX_DEAD_LETTER_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest `SyncPolicy::Batched` delay.
const MAX_SYNC_DELAY: Duration = Duration::from_secs(10);
/// The bounds of `segment_bytes`.
const SEGMENT_BYTES: std::ops::RangeInclusive<u64> = 4096..=1 << 30;
/// The most flush lanes.
const MAX_FLUSH_CONCURRENCY: usize = 256;
/// The most attempts before a split.
const MAX_ATTEMPTS_BEFORE_SPLIT: u32 = 100;

/// Settings of a [`WriteBehind`](super::WriteBehind) policy, checked: made by
/// [`WriteBehindConfig::builder`] … [`build`](WriteBehindConfigBuilder::build).
///
/// ```
/// use std::time::Duration;
/// use strata_consistency::{SyncPolicy, WriteBehindConfig};
///
/// let config = WriteBehindConfig::builder("/var/lib/app/journal")
///     .sync(SyncPolicy::Batched { max_delay: Duration::from_millis(2) })
///     .max_batch(500)
///     .retry(Duration::from_millis(20), Duration::from_secs(5))
///     .build()?;
/// assert_eq!(config.dir(), std::path::Path::new("/var/lib/app/journal"));
///
/// let wrong = WriteBehindConfig::builder("/var/lib/app/journal").max_batch(0).build().unwrap_err();
/// assert_eq!(wrong.field, "write_behind.max_batch");
/// # Ok::<(), strata_cache_core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct WriteBehindConfig {
    pub(super) dir: PathBuf,
    pub(super) sync: SyncPolicy,
    pub(super) segment_bytes: u64,
    pub(super) max_backlog: usize,
    pub(super) enqueue_timeout: Duration,
    pub(super) max_batch: usize,
    pub(super) flush_concurrency: usize,
    pub(super) batch_delay: Duration,
    pub(super) retry_base: Duration,
    pub(super) retry_max: Duration,
    pub(super) max_attempts_before_split: u32,
    pub(super) dead_letter_after: Duration,
    pub(super) observer: Option<Arc<dyn WriteBehindObserver>>,
    pub(super) codecs: CodecPipeline,
    pub(super) replay_plaintext: bool,
}

impl std::fmt::Debug for WriteBehindConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehindConfig")
            .field("dir", &self.dir)
            .field("sync", &self.sync)
            .field("segment_bytes", &self.segment_bytes)
            .field("max_backlog", &self.max_backlog)
            .field("enqueue_timeout", &self.enqueue_timeout)
            .field("max_batch", &self.max_batch)
            .field("flush_concurrency", &self.flush_concurrency)
            .field("batch_delay", &self.batch_delay)
            .field("retry_base", &self.retry_base)
            .field("retry_max", &self.retry_max)
            .field("max_attempts_before_split", &self.max_attempts_before_split)
            .field("dead_letter_after", &self.dead_letter_after)
            .field("observer", &self.observer.is_some())
            .field("codecs", &self.codecs)
            .field("replay_plaintext", &self.replay_plaintext)
            .finish()
    }
}

impl WriteBehindConfig {
    /// A builder with the defaults and the journal in `dir` (created if missing; one process
    /// per directory).
    pub fn builder(dir: impl Into<PathBuf>) -> WriteBehindConfigBuilder {
        WriteBehindConfigBuilder(Self {
            dir: dir.into(),
            sync: SyncPolicy::Always,
            segment_bytes: 16 * 1024 * 1024,
            max_backlog: 100_000,
            enqueue_timeout: Duration::from_secs(1),
            max_batch: 1_000,
            flush_concurrency: 1,
            batch_delay: Duration::from_millis(5),
            retry_base: Duration::from_millis(50),
            retry_max: Duration::from_secs(10),
            max_attempts_before_split: 5,
            dead_letter_after: Duration::from_secs(300),
            observer: None,
            codecs: CodecPipeline::new(),
            replay_plaintext: false,
        })
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks the settings, naming the one that is wrong.
    fn validate(&self) -> Result<(), ConfigError> {
        let wrong = |field: &str, message: &str| Err(ConfigError::new(format!("write_behind.{field}"), message));
        if self.max_backlog == 0 || self.max_backlog > Semaphore::MAX_PERMITS {
            return wrong("max_backlog", "must be between 1 and 2^61");
        }
        if self.max_batch == 0 {
            return wrong("max_batch", "must be at least 1");
        }
        if self.flush_concurrency == 0 || self.flush_concurrency > MAX_FLUSH_CONCURRENCY {
            return wrong("flush_concurrency", "must be between 1 and 256");
        }
        if !SEGMENT_BYTES.contains(&self.segment_bytes) {
            return wrong("segment_bytes", "must be between 4096 and 1 GiB");
        }
        if self.enqueue_timeout > MAX_WAIT {
            return wrong("enqueue_timeout", "must be at most 1 hour (0: fail at once when the backlog is full)");
        }
        if self.batch_delay > MAX_WAIT {
            return wrong("batch_delay", "must be at most 1 hour (0: write each ready batch at once)");
        }
        if self.retry_base.is_zero() || self.retry_max < self.retry_base || self.retry_max > MAX_WAIT {
            return wrong("retry", "need 0 < retry_base <= retry_max <= 1 hour");
        }
        if self.max_attempts_before_split == 0 || self.max_attempts_before_split > MAX_ATTEMPTS_BEFORE_SPLIT {
            return wrong("max_attempts_before_split", "must be between 1 and 100");
        }
        if self.dead_letter_after.is_zero() || self.dead_letter_after > MAX_DEAD_LETTER_AFTER {
            return wrong(
                "dead_letter_after",
                "must be more than 0 (an outage would dead-letter good writes) and at most 7 days",
            );
        }
        if let SyncPolicy::Batched { max_delay } = self.sync
            && max_delay > MAX_SYNC_DELAY
        {
            return wrong("sync", "Batched max_delay must be at most 10 s");
        }
        Ok(())
    }
}

/// Builds a [`WriteBehindConfig`]; every setting has a default, [`build`](Self::build) checks
/// them all.
#[derive(Clone, Debug)]
#[must_use]
pub struct WriteBehindConfigBuilder(WriteBehindConfig);

impl WriteBehindConfigBuilder {
    /// When the journal syncs (default [`SyncPolicy::Always`], with group commit;
    /// `Batched { max_delay }` at most 10 s).
    pub fn sync(mut self, sync: SyncPolicy) -> Self {
        self.0.sync = sync;
        self
    }

    /// A journal segment is rolled past this size (default 16 MiB; 4 KiB to 1 GiB).
    pub fn segment_bytes(mut self, n: u64) -> Self {
        self.0.segment_bytes = n;
        self
    }

    /// Writes that may wait for the source at once (default 100,000; at least 1).
    pub fn max_backlog(mut self, n: usize) -> Self {
        self.0.max_backlog = n;
        self
    }

    /// How long `set` waits for room in a full backlog before
    /// [`ConsistencyError::Overloaded`](crate::ConsistencyError::Overloaded) (default 1 s; at
    /// most 1 hour; 0 fails at once).
    pub fn enqueue_timeout(mut self, d: Duration) -> Self {
        self.0.enqueue_timeout = d;
        self
    }

    /// The most writes per source batch (default 1,000; at least 1).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.0.max_batch = n;
        self
    }

    /// How many parts of one batch are written to the source at once (default 1; 1 to 256).
    /// Parts hold disjoint keys, so per-key order is kept; raise it for sources that take
    /// concurrent writes well (a PostgreSQL pool), keep 1 for SQLite.
    pub fn flush_concurrency(mut self, n: usize) -> Self {
        self.0.flush_concurrency = n;
        self
    }

    /// How long the flusher waits to gather a batch once a write is ready (default 5 ms; at
    /// most 1 hour; [`WriteBehind::flush`](super::WriteBehind::flush) cuts it short).
    pub fn batch_delay(mut self, d: Duration) -> Self {
        self.0.batch_delay = d;
        self
    }

    /// The retry backoff after a failed source write: `base` first (default 50 ms), doubled per
    /// attempt with jitter, never more than `max` (default 10 s). Needs
    /// `0 < base <= max <= 1 hour`.
    pub fn retry(mut self, base: Duration, max: Duration) -> Self {
        self.0.retry_base = base;
        self.0.retry_max = max;
        self
    }

    /// Consecutive failed attempts of a part of a batch before it is split in halves, or, for a
    /// single entry, moved to the dead-letter file (default 5; 1 to 100).
    pub fn max_attempts_before_split(mut self, n: u32) -> Self {
        self.0.max_attempts_before_split = n;
        self
    }

    /// How long a single entry may keep failing, with no other write succeeding meanwhile,
    /// before it is dead-lettered anyway (default 5 minutes; more than 0, at most 7 days).
    pub fn dead_letter_after(mut self, d: Duration) -> Self {
        self.0.dead_letter_after = d;
        self
    }

    /// Receives the policy's [`WriteBehindEvent`](super::WriteBehindEvent)s (backlog and
    /// flushes).
    pub fn observer(mut self, o: Arc<dyn WriteBehindObserver>) -> Self {
        self.0.observer = Some(o);
        self
    }

    /// Seals journal records and dead-letter lines with `codecs` (default none: plaintext).
    /// Pass the cache's codecs, e.g. its AES-256-GCM codec; an encrypting cache is refused
    /// without them (see the [module documentation](crate::write_behind)).
    pub fn codecs(mut self, codecs: CodecPipeline) -> Self {
        self.0.codecs = codecs;
        self
    }

    /// Whether an encrypting journal replays plaintext records found in it (default `false`:
    /// [`ConsistencyError::JournalPlaintext`](crate::ConsistencyError::JournalPlaintext)). Set
    /// it once to migrate a journal written without encryption; new records are sealed.
    pub fn replay_plaintext(mut self, allow: bool) -> Self {
        self.0.replay_plaintext = allow;
        self
    }

    /// The checked settings.
    ///
    /// # Errors
    /// [`ConfigError`] naming the wrong setting (`write_behind.max_batch`, ...) and its bounds.
    pub fn build(self) -> Result<WriteBehindConfig, ConfigError> {
        self.0.validate()?;
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn field(b: WriteBehindConfigBuilder) -> String {
        b.build().unwrap_err().field
    }

    #[test]
    fn defaults_are_valid() {
        let c = WriteBehindConfig::builder("/tmp/x").build().unwrap();
        assert_eq!(c.dir(), Path::new("/tmp/x"));
        assert_eq!(c.max_batch, 1_000);
        assert_eq!(c.dead_letter_after, Duration::from_secs(300));
    }

    #[test]
    fn every_wrong_value_names_its_field() {
        let b = || WriteBehindConfig::builder("/tmp/x");
        let secs = Duration::from_secs;
        let cases = [
            (b().max_backlog(0), "max_backlog"),
            (b().max_backlog(usize::MAX), "max_backlog"),
            (b().max_batch(0), "max_batch"),
            (b().flush_concurrency(0), "flush_concurrency"),
            (b().flush_concurrency(257), "flush_concurrency"),
            (b().segment_bytes(4095), "segment_bytes"),
            (b().segment_bytes(u64::MAX), "segment_bytes"),
            (b().enqueue_timeout(Duration::MAX), "enqueue_timeout"),
            (b().batch_delay(Duration::MAX), "batch_delay"),
            (b().retry(Duration::ZERO, secs(1)), "retry"),
            (b().retry(secs(2), secs(1)), "retry"),
            (b().retry(secs(1), Duration::MAX), "retry"),
            (b().max_attempts_before_split(0), "max_attempts_before_split"),
            (b().max_attempts_before_split(u32::MAX), "max_attempts_before_split"),
            (b().dead_letter_after(Duration::ZERO), "dead_letter_after"),
            (b().dead_letter_after(Duration::MAX), "dead_letter_after"),
            (b().sync(SyncPolicy::Batched { max_delay: secs(11) }), "sync"),
        ];
        for (builder, name) in cases {
            assert_eq!(field(builder), format!("write_behind.{name}"));
        }
    }

    #[test]
    fn bounds_themselves_are_accepted() {
        let b = || WriteBehindConfig::builder("/tmp/x");
        let ok = [
            b().enqueue_timeout(Duration::ZERO).batch_delay(Duration::ZERO),
            b().enqueue_timeout(MAX_WAIT).batch_delay(MAX_WAIT).retry(MAX_WAIT, MAX_WAIT),
            b().segment_bytes(4096).flush_concurrency(256).max_attempts_before_split(100),
            b().dead_letter_after(MAX_DEAD_LETTER_AFTER).sync(SyncPolicy::Batched { max_delay: MAX_SYNC_DELAY }),
            b().max_backlog(1).max_batch(1).segment_bytes(1 << 30),
        ];
        for builder in ok {
            builder.build().unwrap();
        }
    }
}
