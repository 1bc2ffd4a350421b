//! Random keys, values, versions and tags against a model, on SQLite.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use proptest::prelude::*;
use strata_cache_core::{EntryMeta, Key, Namespace, StoredEntry, Tier, Timestamp};

#[derive(Debug, Clone)]
enum Op {
    Set { id: String, frame: Vec<u8>, version: u64, tags: Vec<String> },
    Delete { id: String },
    Tag { tag: String },
}

fn id() -> impl Strategy<Value = String> {
    prop_oneof!["[a-c]{1,2}", ".{0,6}", Just("%".to_string()), Just("_".to_string())]
}

fn tag() -> impl Strategy<Value = String> {
    prop_oneof!["[ab|%_\\\\]{0,3}", Just("a".to_string())]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (id(), proptest::collection::vec(any::<u8>(), 0..40), 0u64..5, proptest::collection::vec(tag(), 0..3))
            .prop_map(|(id, frame, version, tags)| Op::Set { id, frame, version, tags }),
        1 => id().prop_map(|id| Op::Delete { id }),
        1 => tag().prop_map(|tag| Op::Tag { tag }),
    ]
}

fn key(id: &str) -> Key {
    Key::new("p", Namespace::new("ns").unwrap(), id).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn tier_matches_a_model(ops in proptest::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let env = common::sqlite();
            let tier = env.tier().await;
            // id -> (frame, version, tags)
            let mut model: HashMap<String, (Vec<u8>, u64, Vec<String>)> = HashMap::new();
            for op in &ops {
                match op {
                    Op::Set { id, frame, version, tags } => {
                        let meta = EntryMeta {
                            created: Timestamp(0),
                            fresh_until: Timestamp::MAX,
                            expires_at: Timestamp::MAX,
                            version: *version,
                            load_cost_us: 0,
                            negative: false,
                            tags: tags.clone().into(),
                        };
                        tier.set(&key(id), &StoredEntry { meta, frame: Bytes::from(frame.clone()) }).await.unwrap();
                        match model.get(id) {
                            Some((_, v, _)) if *v > *version => {}
                            _ => { model.insert(id.clone(), (frame.clone(), *version, tags.clone())); }
                        }
                    }
                    Op::Delete { id } => {
                        tier.delete(&key(id)).await.unwrap();
                        model.remove(id);
                    }
                    Op::Tag { tag } => {
                        let n = tier.invalidate_tag("p", "ns", tag).await.unwrap();
                        let before = model.len();
                        model.retain(|_, (_, _, tags)| !tags.contains(tag));
                        assert_eq!(n as usize, before - model.len(), "rows deleted for tag {tag:?}");
                    }
                }
            }
            let ids: Vec<String> = ops.iter().filter_map(|o| match o {
                Op::Set { id, .. } | Op::Delete { id } => Some(id.clone()),
                Op::Tag { .. } => None,
            }).collect();
            let keys: Vec<Key> = ids.iter().map(|i| key(i)).collect();
            let got = tier.get_many(&keys).await.unwrap();
            for (id, g) in ids.iter().zip(got) {
                assert_eq!(g.as_deref(), model.get(id).map(|(f, _, _)| &f[..]), "id {id:?}");
                assert_eq!(tier.get(&key(id)).await.unwrap().as_deref(), model.get(id).map(|(f, _, _)| &f[..]));
            }
        });
    }
}
