//! Property tests of key building and slot grouping with hostile ids.

use proptest::prelude::*;
use strata_cache_redis::KeySpace;
use strata_cache_redis::keys::{SLOTS, group_by_slot, hashtag, slot};

fn hostile_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "[{}*?\\[\\] a-z\u{e9}\u{2713}\u{1F600}:#!]{0,40}",
        ".{0,64}",
        "[{}a-z]{0,8}".prop_map(|s| s.repeat(200)),
        Just(String::new()),
    ]
}

proptest! {
    #[test]
    fn keys_are_prefixed_distinct_and_bounded(a in hostile_id(), b in hostile_id(), max in 128usize..2048) {
        let ks = KeySpace::new("strata:", max);
        let (ka, kb) = (ks.entry("users", "eu", &a), ks.entry("users", "eu", &b));
        prop_assert!(ka.starts_with("strata:users:eu"));
        prop_assert_eq!(ka == kb, a == b, "distinct ids, distinct keys");
        // Long ids are hashed: the key stays near the limit.
        prop_assert!(ka.len() <= max.max(200) + 100, "{} > {}", ka.len(), max);
        // Families never collide.
        prop_assert_ne!(ks.tag_set("users", "eu", &a), ks.entry("users", "eu", &a));
        prop_assert_ne!(ks.lock("users", "eu", &a), ks.entry("users", "eu", &b));
        prop_assert_ne!(ks.lock("users", "eu", &a), ks.tag_set("users", "eu", &b));
        // A short id is kept literally; a hashed id keeps its hashtag's slot when it is short.
        if ka.len() <= max && !ka.contains('#') {
            prop_assert!(ka.ends_with(a.as_str()));
        }
        if let Some(tag) = hashtag(a.as_bytes())
            && ka.contains('#')
            && tag.len() <= 64
        {
            prop_assert_eq!(slot(ka.as_bytes()), slot(format!("{{{}}}", String::from_utf8_lossy(tag)).as_bytes()));
        }
    }

    #[test]
    fn grouping_is_a_partition_by_slot(ids in proptest::collection::vec(hostile_id(), 0..200)) {
        let ks = KeySpace::new("p:", 512);
        let keys: Vec<String> = ids.iter().map(|i| ks.entry("c", "n", i)).collect();
        let groups = group_by_slot(&keys);
        let mut seen = vec![false; keys.len()];
        let mut slots = std::collections::HashSet::new();
        for (s, idx) in &groups {
            prop_assert!(*s < SLOTS);
            prop_assert!(slots.insert(*s), "one group per slot");
            prop_assert!(idx.windows(2).all(|w| w[0] < w[1]), "input order kept");
            for &i in idx {
                prop_assert!(!seen[i], "index twice");
                seen[i] = true;
                prop_assert_eq!(slot(keys[i].as_bytes()), *s);
            }
        }
        prop_assert!(seen.iter().all(|s| *s), "every index once");
    }
}
