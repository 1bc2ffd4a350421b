//! Resource kinds, quantities and resource lists.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use strata_gpu::{GPU_RESOURCE, MIG_RESOURCE_PREFIX, MigProfile, SHARED_SUFFIX};

use crate::QosError;

/// A kind of resource. Quantities are integers in the kind's unit:
/// CPU in millicores, memory in bytes, everything else in whole units.
///
/// Names follow Kubernetes: `cpu`, `memory`, `nvidia.com/gpu`, `nvidia.com/mig-1g.10gb`,
/// `nvidia.com/gpu.shared` (time-sliced share), `nvidia.com/mig-1g.10gb.shared`, and any other
/// `domain/name` as a custom resource.
///
/// ```
/// use strata_resource_qos::ResourceKind;
/// let k: ResourceKind = "nvidia.com/mig-3g.40gb".parse()?;
/// assert!(matches!(k, ResourceKind::Mig(ref p) if p.compute_slices() == 3));
/// assert_eq!("example.com/fpga".parse::<ResourceKind>()?.to_string(), "example.com/fpga");
/// assert!("gpus".parse::<ResourceKind>().is_err());
/// # Ok::<(), strata_resource_qos::QosError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    /// CPU, in millicores.
    Cpu,
    /// Memory, in bytes.
    Memory,
    /// Whole GPUs (`nvidia.com/gpu`).
    Gpu,
    /// MIG devices of one profile (`nvidia.com/mig-<profile>`).
    Mig(MigProfile),
    /// Time-sliced GPU replicas (`nvidia.com/gpu.shared`).
    GpuShare,
    /// Time-sliced replicas of a MIG profile (`nvidia.com/mig-<profile>.shared`).
    MigShare(MigProfile),
    /// Any other named resource (`domain/name`).
    Custom(Arc<str>),
}

impl ResourceKind {
    /// A custom resource; the name must look like `domain/name` (ASCII letters, digits, `.`, `-`,
    /// `_`; at most 253 bytes of domain and 63 of name, as Kubernetes qualified names).
    ///
    /// # Errors
    /// [`QosError::UnknownResource`] when the name is not of that form (the error carries the
    /// name escaped and cut to 64 characters).
    pub fn custom(name: &str) -> Result<Self, QosError> {
        let valid = name.split_once('/').is_some_and(|(d, n)| {
            !d.is_empty()
                && !n.is_empty()
                && d.len() <= 253
                && n.len() <= 63
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
        });
        if valid {
            Ok(Self::Custom(Arc::from(name)))
        } else {
            Err(QosError::UnknownResource(crate::name::sanitized(name)))
        }
    }

    /// Whether this is CPU or memory (the resources QoS classes look at, and the only ones that
    /// may have a limit different from the request).
    #[must_use]
    pub fn is_compute(&self) -> bool {
        matches!(self, Self::Cpu | Self::Memory)
    }

    /// Whether this is a GPU resource (whole, MIG, or shared).
    #[must_use]
    pub fn is_gpu(&self) -> bool {
        matches!(self, Self::Gpu | Self::Mig(_) | Self::GpuShare | Self::MigShare(_))
    }

    /// Parses a quantity for this kind: CPU `500m`, `2`, `0.5`; memory `512Mi`, `2Gi`, `1G`, `1024`;
    /// other kinds plain integers. Zero and negative values are refused.
    ///
    /// # Errors
    /// [`QosError::InvalidQuantity`].
    pub fn parse_quantity(&self, text: &str) -> Result<u64, QosError> {
        let err = |reason| QosError::InvalidQuantity { resource: self.to_string(), input: text.to_owned(), reason };
        let t = text.trim();
        if t.starts_with('-') {
            return Err(err("quantities must be positive"));
        }
        let v = match self {
            Self::Cpu => {
                if let Some(m) = t.strip_suffix('m') {
                    parse_int(m).ok_or_else(|| err("expected millicores like 500m"))?
                } else {
                    parse_decimal(t, 1000)
                        .ok_or_else(|| err("expected cores like 2 or 0.5, or millicores like 500m"))?
                }
            }
            Self::Memory => {
                const UNITS: [(&str, u64); 8] = [
                    ("Ki", 1 << 10),
                    ("Mi", 1 << 20),
                    ("Gi", 1 << 30),
                    ("Ti", 1 << 40),
                    ("k", 1_000),
                    ("M", 1_000_000),
                    ("G", 1_000_000_000),
                    ("T", 1_000_000_000_000),
                ];
                let (num, mult) = UNITS.iter().find_map(|(s, m)| t.strip_suffix(s).map(|n| (n, *m))).unwrap_or((t, 1));
                parse_decimal(num, mult).ok_or_else(|| err("expected bytes like 512Mi, 2Gi or 1000000"))?
            }
            _ => parse_int(t).ok_or_else(|| err("expected a whole number"))?,
        };
        if v == 0 {
            return Err(err("quantities must be positive"));
        }
        Ok(v)
    }
}

fn parse_int(t: &str) -> Option<u64> {
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// Parses `int[.frac]` × `mult`, rounding a fractional remainder up (as Kubernetes does).
fn parse_decimal(t: &str, mult: u64) -> Option<u64> {
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let i = if int.is_empty() { 0 } else { parse_int(int)? };
    let mut v = i.checked_mul(mult)?;
    if !frac.is_empty() {
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let f: u128 = frac.parse().ok()?;
        let scale = 10u128.pow(frac.len() as u32);
        let part = (f * u128::from(mult)).div_ceil(scale);
        v = v.checked_add(u64::try_from(part).ok()?)?;
    }
    Some(v)
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Memory => f.write_str("memory"),
            Self::Gpu => f.write_str(GPU_RESOURCE),
            Self::Mig(p) => write!(f, "{MIG_RESOURCE_PREFIX}{p}"),
            Self::GpuShare => write!(f, "{GPU_RESOURCE}{SHARED_SUFFIX}"),
            Self::MigShare(p) => write!(f, "{MIG_RESOURCE_PREFIX}{p}{SHARED_SUFFIX}"),
            Self::Custom(n) => f.write_str(n),
        }
    }
}

impl FromStr for ResourceKind {
    type Err = QosError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => return Ok(Self::Cpu),
            "memory" => return Ok(Self::Memory),
            GPU_RESOURCE => return Ok(Self::Gpu),
            _ => {}
        }
        if let Some(rest) = s.strip_prefix(GPU_RESOURCE)
            && rest == SHARED_SUFFIX
        {
            return Ok(Self::GpuShare);
        }
        if let Some(rest) = s.strip_prefix(MIG_RESOURCE_PREFIX) {
            let unknown = |_| QosError::UnknownResource(crate::name::sanitized(s));
            return match rest.strip_suffix(SHARED_SUFFIX) {
                Some(p) => Ok(Self::MigShare(p.parse().map_err(unknown)?)),
                None => Ok(Self::Mig(rest.parse().map_err(unknown)?)),
            };
        }
        Self::custom(s)
    }
}

impl Serialize for ResourceKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ResourceKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of `(kind, quantity)` pairs, at most one per kind, kept sorted.
///
/// Deserializes from a map of resource names to quantities, either integers in the kind's unit
/// or Kubernetes-style strings: `{ cpu = "500m", memory = "2Gi", "nvidia.com/gpu" = 1 }`.
///
/// ```
/// use strata_resource_qos::{ResourceKind, ResourceList};
/// let r = ResourceList::new().cpu_millis(500).memory_bytes(1 << 30).with(ResourceKind::Gpu, 1);
/// assert_eq!(r.get(&ResourceKind::Cpu), Some(500));
/// assert_eq!(r.len(), 3);
/// let parsed = ResourceList::parse([("cpu", "2"), ("memory", "1Gi")])?;
/// assert_eq!(parsed.get(&ResourceKind::Memory), Some(1 << 30));
/// # Ok::<(), strata_resource_qos::QosError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResourceList {
    items: Vec<(ResourceKind, u64)>,
}

impl ResourceList {
    /// An empty list.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `(name, quantity)` pairs.
    ///
    /// # Errors
    /// [`QosError::UnknownResource`] or [`QosError::InvalidQuantity`].
    pub fn parse<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, QosError> {
        let mut list = Self::new();
        for (name, qty) in pairs {
            let kind: ResourceKind = name.parse()?;
            let q = kind.parse_quantity(qty)?;
            list.set(kind, q);
        }
        Ok(list)
    }

    /// Sets `kind` to `quantity` (builder style). Zero is kept and refused at admission.
    #[must_use]
    pub fn with(mut self, kind: ResourceKind, quantity: u64) -> Self {
        self.set(kind, quantity);
        self
    }

    /// Sets CPU in millicores.
    #[must_use]
    pub fn cpu_millis(self, millis: u64) -> Self {
        self.with(ResourceKind::Cpu, millis)
    }

    /// Sets memory in bytes.
    #[must_use]
    pub fn memory_bytes(self, bytes: u64) -> Self {
        self.with(ResourceKind::Memory, bytes)
    }

    /// Sets `kind` to `quantity`, replacing any previous value.
    pub fn set(&mut self, kind: ResourceKind, quantity: u64) {
        match self.items.binary_search_by(|(k, _)| k.cmp(&kind)) {
            Ok(i) => self.items[i].1 = quantity,
            Err(i) => self.items.insert(i, (kind, quantity)),
        }
    }

    /// Removes `kind`, returning its quantity.
    pub fn remove(&mut self, kind: &ResourceKind) -> Option<u64> {
        self.items.binary_search_by(|(k, _)| k.cmp(kind)).ok().map(|i| self.items.remove(i).1)
    }

    /// The quantity of `kind`.
    #[must_use]
    pub fn get(&self, kind: &ResourceKind) -> Option<u64> {
        self.items.binary_search_by(|(k, _)| k.cmp(kind)).ok().map(|i| self.items[i].1)
    }

    /// Whether `kind` is present.
    #[must_use]
    pub fn contains(&self, kind: &ResourceKind) -> bool {
        self.get(kind).is_some()
    }

    /// Iterates `(kind, quantity)` in kind order.
    pub fn iter(&self) -> impl Iterator<Item = (&ResourceKind, u64)> + '_ {
        self.items.iter().map(|(k, q)| (k, *q))
    }

    /// Number of kinds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the list is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds `other` into `self` (saturating).
    pub fn add(&mut self, other: &ResourceList) {
        for (k, q) in other.iter() {
            let cur = self.get(k).unwrap_or(0);
            self.set(k.clone(), cur.saturating_add(q));
        }
    }
}

impl FromIterator<(ResourceKind, u64)> for ResourceList {
    fn from_iter<T: IntoIterator<Item = (ResourceKind, u64)>>(iter: T) -> Self {
        let mut l = Self::new();
        for (k, q) in iter {
            l.set(k, q);
        }
        l
    }
}

impl fmt::Display for ResourceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, q)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}: {q}")?;
        }
        f.write_str("}")
    }
}

impl Serialize for ResourceList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.items.iter().map(|(k, q)| (k.to_string(), *q)))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum QuantityValue {
    Int(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for ResourceList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, QuantityValue>::deserialize(deserializer)?;
        let mut list = Self::new();
        for (name, v) in raw {
            let kind: ResourceKind = name.parse().map_err(serde::de::Error::custom)?;
            let q = match v {
                QuantityValue::Int(i) => match u64::try_from(i) {
                    Ok(q) if q > 0 => q,
                    _ => {
                        return Err(serde::de::Error::custom(QosError::InvalidQuantity {
                            resource: name,
                            input: i.to_string(),
                            reason: "quantities must be positive",
                        }));
                    }
                },
                QuantityValue::Text(t) => kind.parse_quantity(&t).map_err(serde::de::Error::custom)?,
            };
            list.set(kind, q);
        }
        Ok(list)
    }
}
