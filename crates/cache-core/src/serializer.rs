//! Serializers: value ↔ bytes. Postcard (compact, the default) and JSON (readable, interoperable).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::SerializeError;

/// Turns values into bytes and back. The id is recorded in every frame.
///
/// Ids follow [the id-range rule](crate::ids), the same as codecs': 0–63 are reserved for
/// Strata (1 postcard, 2 JSON), third-party serializers use 64–255; building a cache with a
/// third-party serializer in the reserved range fails with an
/// [`IdError`](crate::ids::IdError).
///
/// # Implementing a serializer
/// Plain UTF-8 for `String` values, in the third-party id range:
///
/// ```
/// use strata_cache_core::plugin::*;
/// use std::sync::Arc;
///
/// struct Utf8;
///
/// impl Serializer<String> for Utf8 {
///     fn id(&self) -> u8 {
///         130 // third-party range: 64-255
///     }
///     fn name(&self) -> &'static str {
///         "utf8"
///     }
///     fn serialize(&self, value: &String) -> Result<Vec<u8>, SerializeError> {
///         Ok(value.as_bytes().to_vec())
///     }
///     fn deserialize(&self, bytes: &[u8]) -> Result<String, SerializeError> {
///         // Any input may arrive here: an error, never a panic.
///         String::from_utf8(bytes.to_vec())
///             .map_err(|e| SerializeError { format: "utf8", op: "deserialize", message: e.to_string() })
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let l2 = MemoryTier::new("l2");
/// let cache: Cache<u64, String> =
///     Cache::builder("notes").no_l1().tier(Arc::new(l2.clone())).serializer(Utf8).build().await?;
/// cache.set(1, "hello".to_string()).await?;
/// assert_eq!(cache.get(&1).await?.as_deref().map(String::as_str), Some("hello"));
/// let key = Key::new("notes", Namespace::default_namespace(), "1")?;
/// let frame = l2.raw(&key).unwrap().frame;
/// assert!(frame.windows(5).any(|w| w == b"hello"), "stored as plain UTF-8");
/// assert!(Serializer::<String>::deserialize(&Utf8, &[0xff]).is_err());
/// # Ok::<(), CacheError>(())
/// # }).unwrap();
/// ```
pub trait Serializer<V>: Send + Sync + 'static {
    /// The id written into frames (see [the id-range rule](crate::ids)).
    fn id(&self) -> u8;
    /// A short name for errors (default `custom`); with the id, it is what
    /// [the id-range rule](crate::ids) checks.
    fn name(&self) -> &'static str {
        "custom"
    }
    /// Serializes a value.
    fn serialize(&self, value: &V) -> Result<Vec<u8>, SerializeError>;
    /// Deserializes bytes; must not panic on any input.
    fn deserialize(&self, bytes: &[u8]) -> Result<V, SerializeError>;
}

/// [postcard](https://docs.rs/postcard): compact, fast, serde-based.
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

/// JSON through serde_json.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

/// A shared serializer is a serializer: [`CacheBuilder::serializer`](crate::CacheBuilder::serializer)
/// takes `Arc<S>` and `Arc<dyn Serializer<V>>` as well as a plain value.
impl<V, S: Serializer<V> + ?Sized> Serializer<V> for std::sync::Arc<S> {
    fn id(&self) -> u8 {
        (**self).id()
    }
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn serialize(&self, value: &V) -> Result<Vec<u8>, SerializeError> {
        (**self).serialize(value)
    }
    fn deserialize(&self, bytes: &[u8]) -> Result<V, SerializeError> {
        (**self).deserialize(bytes)
    }
}

impl<V: Serialize + DeserializeOwned + Send + Sync + 'static> Serializer<V> for Postcard {
    fn id(&self) -> u8 {
        1
    }
    fn name(&self) -> &'static str {
        "postcard"
    }
    fn serialize(&self, value: &V) -> Result<Vec<u8>, SerializeError> {
        postcard::to_allocvec(value).map_err(|e| SerializeError {
            format: "postcard",
            op: "serialize",
            message: e.to_string(),
        })
    }
    fn deserialize(&self, bytes: &[u8]) -> Result<V, SerializeError> {
        postcard::from_bytes(bytes).map_err(|e| SerializeError {
            format: "postcard",
            op: "deserialize",
            message: e.to_string(),
        })
    }
}

impl<V: Serialize + DeserializeOwned + Send + Sync + 'static> Serializer<V> for Json {
    fn id(&self) -> u8 {
        2
    }
    fn name(&self) -> &'static str {
        "json"
    }
    fn serialize(&self, value: &V) -> Result<Vec<u8>, SerializeError> {
        serde_json::to_vec(value).map_err(|e| SerializeError {
            format: "json",
            op: "serialize",
            message: e.to_string(),
        })
    }
    fn deserialize(&self, bytes: &[u8]) -> Result<V, SerializeError> {
        serde_json::from_slice(bytes).map_err(|e| SerializeError {
            format: "json",
            op: "deserialize",
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Rec {
        id: u64,
        name: String,
        tags: Vec<String>,
        attrs: BTreeMap<String, i64>,
        score: Option<i32>,
    }

    fn arb_rec() -> impl Strategy<Value = Rec> {
        (
            any::<u64>(),
            ".{0,40}",
            proptest::collection::vec(".{0,8}", 0..5),
            proptest::collection::btree_map(".{0,8}", any::<i64>(), 0..5),
            any::<Option<i32>>(),
        )
            .prop_map(|(id, name, tags, attrs, score)| Rec { id, name, tags, attrs, score })
    }

    #[test]
    fn strata_serializers_follow_the_id_rule() {
        use crate::ids::{IdKind, check};
        let p: &dyn Serializer<Rec> = &Postcard;
        let j: &dyn Serializer<Rec> = &Json;
        for s in [p, j] {
            assert_eq!(check(IdKind::Serializer, s.id(), s.name()), Ok(()));
        }
    }

    proptest! {
        #[test]
        fn postcard_round_trip(r in arb_rec()) {
            let b = Serializer::<Rec>::serialize(&Postcard, &r).unwrap();
            prop_assert_eq!(Serializer::<Rec>::deserialize(&Postcard, &b).unwrap(), r);
        }

        #[test]
        fn json_round_trip(r in arb_rec()) {
            let b = Serializer::<Rec>::serialize(&Json, &r).unwrap();
            prop_assert_eq!(Serializer::<Rec>::deserialize(&Json, &b).unwrap(), r);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Serializer::<Rec>::deserialize(&Postcard, &bytes);
            let _ = Serializer::<Rec>::deserialize(&Json, &bytes);
        }
    }
}
