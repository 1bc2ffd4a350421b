//! Serializers: value ↔ bytes. Postcard (compact, the default) and JSON (readable, interoperable).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::SerializeError;

/// Turns values into bytes and back. The id is recorded in every frame.
pub trait Serializer<V>: Send + Sync + 'static {
    /// The id written into frames (1 postcard, 2 JSON; plugins use 128–255).
    fn id(&self) -> u8;
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

impl<V: Serialize + DeserializeOwned + Send + Sync + 'static> Serializer<V> for Postcard {
    fn id(&self) -> u8 {
        1
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
