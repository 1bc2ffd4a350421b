//! `Tier::invalidate_namespace` on every reachable SQL backend: exactly one cache/namespace goes
//! (used by the cache's auto-recovery when an outage missed more writes than it remembered).
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::DbEnv;
use strata_cache_core::{EntryMeta, Key, Namespace, StoredEntry, Tier, Timestamp};

fn key(cache: &str, ns: &str, id: &str) -> Key {
    Key::new(cache, Namespace::new(ns).unwrap(), id).unwrap()
}

fn entry() -> StoredEntry {
    StoredEntry {
        meta: EntryMeta {
            created: Timestamp(1),
            fresh_until: Timestamp(u64::MAX),
            expires_at: Timestamp(u64::MAX),
            version: 1,
            load_cost_us: 0,
            negative: false,
            tags: Vec::<String>::new().into(),
        },
        frame: Bytes::from_static(b"x"),
    }
}

async fn drops_one_namespace_only(env: DbEnv) {
    let tier = env.tier().await;
    let gone = [key("c", "n", "1"), key("c", "n", "2"), key("c", "n", "it's; --")];
    let kept = [key("c", "other", "1"), key("c2", "n", "1"), key("c", "n2", "1")];
    for k in gone.iter().chain(&kept) {
        tier.set(k, &entry()).await.unwrap();
    }
    assert_eq!(tier.invalidate_namespace("c", "n").await.unwrap(), 3);
    for k in &gone {
        assert_eq!(tier.get(k).await.unwrap(), None);
    }
    for k in &kept {
        assert!(tier.get(k).await.unwrap().is_some(), "another cache or namespace is untouched");
    }
    assert_eq!(tier.invalidate_namespace("c", "n").await.unwrap(), 0, "idempotent");
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drops_one_namespace_only() {
        super::drops_one_namespace_only(super::common::sqlite()).await;
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drops_one_namespace_only() {
        if let Some(env) = super::common::postgres().await {
            super::drops_one_namespace_only(env).await;
        }
    }
}

mod mysql {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drops_one_namespace_only() {
        if let Some(env) = super::common::mysql().await {
            super::drops_one_namespace_only(env).await;
        }
    }
}
