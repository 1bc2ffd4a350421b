//! [`Topology`]: one source's part of `/topology`, a JSON object (schema in the
//! [module docs](super)), and how parts merge.

use serde::Serialize;

use crate::TelemetryError;

type Map = serde_json::Map<String, serde_json::Value>;

/// One [`TopologySource`](super::TopologySource)'s part of `/topology`: a JSON object. Build it
/// from anything that serializes to an object ([`Topology::from_serialize`]: a derived struct,
/// or a `serde_json::json!` value of whatever serde_json version you use).
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct Topology {
    fields: Map,
}

impl Topology {
    /// An empty object.
    pub fn new() -> Self {
        Self::default()
    }

    /// The object `value` serializes to.
    ///
    /// # Errors
    /// [`TelemetryError::Config`] when `value` does not serialize to a JSON object.
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self, TelemetryError> {
        match serde_json::to_value(value) {
            Ok(serde_json::Value::Object(fields)) => Ok(Self { fields }),
            Ok(other) => Err(TelemetryError::Config(format!("a topology must be a JSON object, not {other}"))),
            Err(e) => Err(TelemetryError::Config(format!("topology: {e}"))),
        }
    }

    pub(crate) fn from_value(value: serde_json::Value) -> Self {
        match value {
            serde_json::Value::Object(fields) => Self { fields },
            _ => Self::default(),
        }
    }

    /// Merges `other` into this one: arrays under the same key are concatenated, objects merged
    /// key by key, anything else overwritten by `other`'s value.
    pub fn merge(&mut self, other: Topology) {
        merge(&mut self.fields, other.fields);
    }

    /// Whether the object has no key.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The object as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::Value::Object(self.fields.clone()).to_string()
    }
}

impl Serialize for Topology {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.fields.serialize(serializer)
    }
}

fn merge(into: &mut Map, from: Map) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(serde_json::Value::Array(a)), serde_json::Value::Array(b)) => a.extend(b),
            (Some(serde_json::Value::Object(a)), serde_json::Value::Object(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Topology;

    #[test]
    fn parts_merge_arrays_objects_and_scalars() {
        let mut a = Topology::from_serialize(&serde_json::json!({"caches": [1], "r": {"x": 1}, "k": "a"})).unwrap();
        let b = Topology::from_serialize(&serde_json::json!({"caches": [2], "r": {"y": 2}, "k": "b"})).unwrap();
        a.merge(b);
        let text: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
        assert_eq!(text, serde_json::json!({"caches": [1, 2], "r": {"x": 1, "y": 2}, "k": "b"}));
        assert!(!a.is_empty() && Topology::new().is_empty());
    }

    #[test]
    fn only_objects_are_topologies() {
        assert!(Topology::from_serialize(&[1, 2]).is_err());
        assert!(Topology::from_serialize("text").is_err());
        #[derive(serde::Serialize)]
        struct Backplane {
            kind: &'static str,
        }
        let t = Topology::from_serialize(&Backplane { kind: "local" }).unwrap();
        assert_eq!(t.to_json(), r#"{"kind":"local"}"#);
    }
}
