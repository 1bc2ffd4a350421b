//! Resolving [`PubSubMode::Auto`]: ask a server its version once, never guess.

use std::sync::OnceLock;
use std::time::Duration;

use deadpool_redis::redis;
use tokio::time::Instant;

use super::{PubSubMode, Spec};
use crate::config::redact;

/// How long [`PubSubMode::Auto`] remembers that the server version could not be determined.
const VERSION_RETRY: Duration = Duration::from_secs(1);

/// The outcome of asking the servers their version ([`PubSubMode::Auto`] on a cluster).
#[derive(Default)]
pub(super) struct Resolver {
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
pub(super) async fn use_sharded(mode: PubSubMode, spec: &Spec, resolved: &Resolver) -> Result<bool, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
