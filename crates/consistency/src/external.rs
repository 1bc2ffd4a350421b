//! Invalidations from outside the cache: a database trigger, a CDC pipeline, another service.
//!
//! An [`ExternalSource`] yields raw messages (a Redis channel and PostgreSQL `NOTIFY` implement
//! it elsewhere; [`ChannelSource`] is the in-process one for tests and embedding). An
//! [`ExternalInvalidator`] task reads them, parses each as JSON and applies it to the cache
//! registered under the message's `cache` in an [`InvalidationRegistry`]:
//!
//! ```json
//! {"cache": "users", "namespace": "default", "key": "42"}
//! {"cache": "users", "namespace": "tenant-7", "tag": "org:9"}
//! ```
//!
//! `namespace` may be omitted (`"default"`); exactly one of `key` (a key id, the
//! [`CacheKey::key_id`] form) and `tag` must be present; unknown fields are refused. Messages
//! over [`MAX_MESSAGE_BYTES`] are refused.
//!
//! Messages are hostile input: a malformed one, one for an unknown cache, or one that fails to
//! apply is counted ([`ExternalCounts`]) and logged without its key, never a panic and never
//! the end of the task. The task ends when the source ends or the handle is stopped/dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use serde::Deserialize;
use strata_cache_core::{BoxError, Cache, CacheError, CacheKey, Key, Namespace};
use tokio::sync::mpsc;

use crate::error::ConsistencyError;

/// The largest accepted message (64 KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A stream of raw invalidation messages from outside.
#[async_trait]
pub trait ExternalSource: Send + 'static {
    /// The next message; `None` when the source has ended. An `Err` is counted and logged, and
    /// reading continues (a source that cannot recover should end instead).
    async fn next(&mut self) -> Option<Result<Vec<u8>, BoxError>>;
}

/// An in-process [`ExternalSource`] fed through a [`ChannelSender`].
#[derive(Debug)]
pub struct ChannelSource {
    rx: mpsc::Receiver<Result<Vec<u8>, BoxError>>,
}

/// Feeds a [`ChannelSource`]. Dropping every sender ends the source.
#[derive(Debug, Clone)]
pub struct ChannelSender {
    tx: mpsc::Sender<Result<Vec<u8>, BoxError>>,
}

/// The [`ChannelSource`] was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the channel source was dropped")]
pub struct SourceClosed;

impl ChannelSource {
    /// A source holding up to `capacity` unread messages (at least 1), and its sender.
    pub fn new(capacity: usize) -> (ChannelSender, ChannelSource) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (ChannelSender { tx }, ChannelSource { rx })
    }
}

impl ChannelSender {
    /// Sends a message (waits while the channel is full).
    pub async fn send(&self, message: impl Into<Vec<u8>>) -> Result<(), SourceClosed> {
        self.tx.send(Ok(message.into())).await.map_err(|_| SourceClosed)
    }

    /// Sends a source error (as a broken connection would produce).
    pub async fn send_error(&self, error: BoxError) -> Result<(), SourceClosed> {
        self.tx.send(Err(error)).await.map_err(|_| SourceClosed)
    }
}

#[async_trait]
impl ExternalSource for ChannelSource {
    async fn next(&mut self) -> Option<Result<Vec<u8>, BoxError>> {
        self.rx.recv().await
    }
}

/// A type-erased invalidation target: what an external message can do to one cache.
#[async_trait]
pub trait Invalidate: Send + Sync + 'static {
    /// Drops the key with id `id` (its [`CacheKey::key_id`] form) in `namespace` from every
    /// level; `publish` also tells other instances over the cache's bus.
    async fn invalidate_id(&self, namespace: &str, id: &str, publish: bool) -> Result<(), ConsistencyError>;
    /// Drops every entry tagged `tag` in `namespace`; `publish` as above.
    async fn invalidate_tag(&self, namespace: &str, tag: &str, publish: bool) -> Result<(), ConsistencyError>;
}

#[async_trait]
impl<K: CacheKey, V: Send + Sync + 'static> Invalidate for Cache<K, V> {
    async fn invalidate_id(&self, namespace: &str, id: &str, publish: bool) -> Result<(), ConsistencyError> {
        let cache = self.in_namespace(namespace)?;
        if publish {
            cache.invalidate_id(id).await?;
        } else {
            cache.invalidate_id_unpublished(id).await?;
        }
        Ok(())
    }

    async fn invalidate_tag(&self, namespace: &str, tag: &str, publish: bool) -> Result<(), ConsistencyError> {
        let cache = self.in_namespace(namespace)?;
        if publish {
            cache.invalidate_tag(tag).await?;
        } else {
            cache.invalidate_tag_unpublished(tag).await?;
        }
        Ok(())
    }
}

/// Maps cache names to invalidation targets.
///
/// By default the source is taken to be a **broadcast** (every instance receives every message,
/// as with a Redis channel or Postgres `NOTIFY`), so an applied message is not republished on
/// the cache's bus — republishing would multiply each message by the fleet size. With a source
/// that delivers each message to one instance only (a work queue), call
/// [`InvalidationRegistry::republish`].
#[derive(Clone, Default)]
pub struct InvalidationRegistry {
    targets: HashMap<String, Arc<dyn Invalidate>>,
    republish: bool,
}

impl std::fmt::Debug for InvalidationRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.targets.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("InvalidationRegistry").field("caches", &names).field("republish", &self.republish).finish()
    }
}

impl InvalidationRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `target` under `name` (replacing any previous one).
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, target: Arc<dyn Invalidate>) -> Self {
        self.targets.insert(name.into(), target);
        self
    }

    /// Registers a cache under its own name.
    #[must_use]
    pub fn with_cache<K: CacheKey, V: Send + Sync + 'static>(self, cache: &Cache<K, V>) -> Self {
        let name = cache.name().to_owned();
        self.with(name, Arc::new(cache.clone()))
    }

    /// Republishes applied invalidations on each cache's bus (for sources that deliver a
    /// message to one instance only).
    #[must_use]
    pub fn republish(mut self, on: bool) -> Self {
        self.republish = on;
        self
    }

    /// The target registered under `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Invalidate>> {
        self.targets.get(name)
    }

    /// Parses one message and applies it. Never panics, whatever the bytes.
    pub async fn apply(&self, message: &[u8]) -> Result<Applied, MessageError> {
        let msg = Message::parse(message)?;
        let Some(target) = self.targets.get(&msg.cache) else {
            return Err(MessageError::UnknownCache);
        };
        match (&msg.key, &msg.tag) {
            (Some(id), None) => target.invalidate_id(&msg.namespace, id, self.republish).await.map(|()| Applied::Key),
            (None, Some(tag)) => {
                target.invalidate_tag(&msg.namespace, tag, self.republish).await.map(|()| Applied::Tag)
            }
            _ => return Err(MessageError::Malformed("exactly one of `key` and `tag` must be present".into())),
        }
        .map_err(|e| MessageError::Failed(Box::new(e)))
    }
}

/// What an applied message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// One key was invalidated.
    Key,
    /// A tag was invalidated.
    Tag,
}

/// Why a message was not applied.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// Not a valid message (bad JSON, wrong fields, too large). The reason never quotes the
    /// message's content.
    #[error("malformed invalidation message: {0}")]
    Malformed(String),
    /// No cache is registered under the message's `cache`.
    #[error("invalidation message for an unknown cache")]
    UnknownCache,
    /// The cache refused it (bad namespace, key id that does not parse, tier failure).
    #[error("invalidation failed: {0}")]
    Failed(#[source] Box<ConsistencyError>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    cache: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    tag: Option<String>,
}

fn default_namespace() -> String {
    Namespace::default_namespace().as_str().to_owned()
}

impl Message {
    fn parse(bytes: &[u8]) -> Result<Self, MessageError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(MessageError::Malformed(format!(
                "{} bytes, over the limit of {MAX_MESSAGE_BYTES}",
                bytes.len()
            )));
        }
        // serde_json's messages may quote the input: report only the category and position.
        serde_json::from_slice(bytes).map_err(|e| {
            MessageError::Malformed(format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column()))
        })
    }
}

/// Counters of an [`ExternalInvalidator`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExternalCounts {
    /// Messages read from the source.
    pub received: u64,
    /// Messages applied.
    pub applied: u64,
    /// Malformed messages.
    pub malformed: u64,
    /// Messages for a cache not in the registry.
    pub unknown_cache: u64,
    /// Messages the cache refused or failed to apply.
    pub failed: u64,
    /// Errors returned by the source itself.
    pub source_errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    applied: AtomicU64,
    malformed: AtomicU64,
    unknown_cache: AtomicU64,
    failed: AtomicU64,
    source_errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ExternalCounts {
        ExternalCounts {
            received: self.received.load(Ordering::Acquire),
            applied: self.applied.load(Ordering::Acquire),
            malformed: self.malformed.load(Ordering::Acquire),
            unknown_cache: self.unknown_cache.load(Ordering::Acquire),
            failed: self.failed.load(Ordering::Acquire),
            source_errors: self.source_errors.load(Ordering::Acquire),
        }
    }
}

/// Applies messages from an [`ExternalSource`] to the caches of an [`InvalidationRegistry`].
#[derive(Debug)]
pub struct ExternalInvalidator;

impl ExternalInvalidator {
    /// Starts the task on the current tokio runtime.
    pub fn spawn(source: impl ExternalSource, registry: InvalidationRegistry) -> ExternalInvalidatorHandle {
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(run(source, registry, counters.clone()));
        ExternalInvalidatorHandle { counters, task: Some(task) }
    }
}

/// The running adapter. Dropping it stops the task.
#[derive(Debug)]
pub struct ExternalInvalidatorHandle {
    counters: Arc<Counters>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ExternalInvalidatorHandle {
    /// The counters so far.
    pub fn counts(&self) -> ExternalCounts {
        self.counters.snapshot()
    }

    /// Whether the task has ended (the source ended).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits until the source ends; returns the final counters.
    pub async fn join(mut self) -> ExternalCounts {
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.counters.snapshot()
    }

    /// Stops the task now; returns the final counters.
    pub fn stop(mut self) -> ExternalCounts {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.counters.snapshot()
    }
}

impl Drop for ExternalInvalidatorHandle {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A loggable name for a message's cache: the name when it is a valid cache name, else a
/// placeholder (hostile input is not echoed).
fn loggable_cache(bytes: &[u8]) -> String {
    #[derive(Deserialize)]
    struct CacheOnly {
        cache: String,
    }
    match serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| serde_json::from_value::<CacheOnly>(v).ok())
    {
        Some(c) if Key::new(&c.cache, Namespace::default_namespace(), "").is_ok() => c.cache,
        _ => "<invalid>".to_owned(),
    }
}

/// The fingerprint of a message's key, for logs (never the key itself).
fn key_hash(bytes: &[u8]) -> String {
    let Ok(m) = serde_json::from_slice::<Message>(bytes) else { return "-".to_owned() };
    match (Namespace::new(&m.namespace), m.key) {
        (Ok(ns), Some(id)) => Key::new(&m.cache, ns, &id).map(|k| k.log_hash()).unwrap_or_else(|_| "-".into()),
        _ => "-".to_owned(),
    }
}

async fn run(mut source: impl ExternalSource, registry: InvalidationRegistry, c: Arc<Counters>) {
    while let Some(next) = source.next().await {
        let bytes = match next {
            Ok(b) => b,
            Err(error) => {
                c.source_errors.fetch_add(1, Ordering::AcqRel);
                tracing::warn!(%error, "external invalidation source error");
                continue;
            }
        };
        c.received.fetch_add(1, Ordering::AcqRel);
        match registry.apply(&bytes).await {
            Ok(_) => {
                c.applied.fetch_add(1, Ordering::AcqRel);
            }
            Err(MessageError::Malformed(reason)) => {
                c.malformed.fetch_add(1, Ordering::AcqRel);
                tracing::warn!(bytes = bytes.len(), %reason, "malformed external invalidation dropped");
            }
            Err(MessageError::UnknownCache) => {
                c.unknown_cache.fetch_add(1, Ordering::AcqRel);
                tracing::warn!(cache = %loggable_cache(&bytes), "external invalidation for an unknown cache dropped");
            }
            Err(MessageError::Failed(error)) => {
                c.failed.fetch_add(1, Ordering::AcqRel);
                // CacheError::InvalidKey messages describe lengths/characters, not the id.
                let error = match *error {
                    ConsistencyError::Cache(CacheError::InvalidKey(m)) => m,
                    other => other.to_string(),
                };
                tracing::warn!(
                    cache = %loggable_cache(&bytes),
                    key_hash = %key_hash(&bytes),
                    %error,
                    "external invalidation failed"
                );
            }
        }
    }
}
