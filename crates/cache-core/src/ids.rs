//! The one id-range rule for the one-byte ids that frames record: [`Codec::id`] and
//! [`Serializer::id`] follow the same rule.
//!
//! | ids      | who                                                                  |
//! |----------|----------------------------------------------------------------------|
//! | 0–63     | reserved for Strata; 0 is never assigned                             |
//! | 64–255   | third-party codecs and serializers (pick one; ask before publishing) |
//!
//! Strata's assigned ids: codecs 1 `zstd`, 2 `aes-256-gcm` (in `strata-security`);
//! serializers 1 `postcard`, 2 `json`. A codec or serializer in the reserved range is accepted
//! only when its id and name are one of these assignments; anything else is refused with an
//! [`IdError`] when it is registered ([`CodecPipeline::push`], `CacheBuilder::build`), before a
//! frame is ever written with it. Frames written earlier are not affected: the rule is checked
//! on registration, never on decode.
//!
//! ```
//! use strata_cache_core::ids::{self, IdError, IdKind};
//!
//! assert!(ids::check(IdKind::Codec, 200, "my-xor").is_ok());
//! assert!(ids::check(IdKind::Codec, 1, "zstd").is_ok());
//! assert!(matches!(ids::check(IdKind::Codec, 3, "my-xor"), Err(IdError::Reserved { id: 3, .. })));
//! assert!(matches!(ids::check(IdKind::Serializer, 0, "custom"), Err(IdError::Reserved { id: 0, .. })));
//! ```
//!
//! [`Codec::id`]: crate::Codec::id
//! [`Serializer::id`]: crate::Serializer::id
//! [`CodecPipeline::push`]: crate::CodecPipeline::push

use std::fmt;
use std::ops::RangeInclusive;

/// Ids reserved for Strata's own codecs and serializers (0 is never assigned).
pub const RESERVED: RangeInclusive<u8> = 0..=63;

/// Ids free for third-party codecs and serializers.
pub const THIRD_PARTY: RangeInclusive<u8> = 64..=255;

/// Strata's assigned codec ids and names.
pub const STRATA_CODECS: &[(u8, &str)] = &[(1, "zstd"), (2, "aes-256-gcm")];

/// Strata's assigned serializer ids and names.
pub const STRATA_SERIALIZERS: &[(u8, &str)] = &[(1, "postcard"), (2, "json")];

/// What an id belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    /// A [`Codec`](crate::Codec).
    Codec,
    /// A [`Serializer`](crate::Serializer).
    Serializer,
}

impl IdKind {
    /// `codec` or `serializer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Codec => "codec",
            Self::Serializer => "serializer",
        }
    }

    fn assigned(self) -> &'static [(u8, &'static str)] {
        match self {
            Self::Codec => STRATA_CODECS,
            Self::Serializer => STRATA_SERIALIZERS,
        }
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A codec or serializer id that breaks the [id-range rule](self).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// A third-party codec or serializer uses an id reserved for Strata.
    #[error(
        "{kind} `{name}` uses id {id}, which is reserved for Strata (0-63); \
         third-party {kind}s use ids 64-255"
    )]
    Reserved {
        /// Codec or serializer.
        kind: IdKind,
        /// The offending id.
        id: u8,
        /// The name it reported.
        name: String,
    },
    /// Two codecs of one pipeline share an id (a frame could not say which one ran).
    #[error("codecs `{first}` and `{second}` share id {id}")]
    Duplicate {
        /// The shared id.
        id: u8,
        /// The codec registered first.
        first: String,
        /// The codec registered second.
        second: String,
    },
}

/// Checks `id` (reported with `name`) against the [id-range rule](self).
///
/// # Errors
/// [`IdError::Reserved`] when `id` is in [`RESERVED`] and `(id, name)` is not one of Strata's
/// assignments ([`STRATA_CODECS`], [`STRATA_SERIALIZERS`]).
pub fn check(kind: IdKind, id: u8, name: &str) -> Result<(), IdError> {
    if THIRD_PARTY.contains(&id) || kind.assigned().iter().any(|(i, n)| *i == id && *n == name) {
        Ok(())
    } else {
        Err(IdError::Reserved { kind, id, name: name.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_id_once() {
        for id in 0..=u8::MAX {
            assert_ne!(RESERVED.contains(&id), THIRD_PARTY.contains(&id), "id {id}");
        }
        for (id, _) in STRATA_CODECS.iter().chain(STRATA_SERIALIZERS) {
            assert!(RESERVED.contains(id) && *id != 0);
        }
    }

    #[test]
    fn reserved_ids_need_a_strata_assignment() {
        assert_eq!(check(IdKind::Codec, 1, "zstd"), Ok(()));
        assert_eq!(check(IdKind::Codec, 2, "aes-256-gcm"), Ok(()));
        assert_eq!(check(IdKind::Serializer, 1, "postcard"), Ok(()));
        assert_eq!(check(IdKind::Serializer, 2, "json"), Ok(()));
        // A Strata name under the other kind, or a right name with a wrong id, is refused.
        assert!(check(IdKind::Serializer, 1, "zstd").is_err());
        assert!(check(IdKind::Codec, 2, "zstd").is_err());
        for id in [0u8, 3, 17, 63] {
            let e = check(IdKind::Codec, id, "mine").unwrap_err();
            assert_eq!(e, IdError::Reserved { kind: IdKind::Codec, id, name: "mine".into() });
            assert!(e.to_string().contains("64-255"), "{e}");
        }
        for id in [64u8, 128, 255] {
            assert_eq!(check(IdKind::Codec, id, "mine"), Ok(()));
            assert_eq!(check(IdKind::Serializer, id, "mine"), Ok(()));
        }
    }
}
