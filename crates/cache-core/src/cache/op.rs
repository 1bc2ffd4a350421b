//! [`Op`]: the cache operations that get a tracing span, and their spans.

use tracing::field::Empty;

use crate::key::Namespace;

/// An operation of the cache that is traced. The span's name is [`Op::as_str`]; its fields are
/// `cache.name` and `cache.namespace`, plus `cache.key_hash` for single-key operations (the key
/// only as its fingerprint) and `cache.level`/`cache.hit` for reads (recorded by the read path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// A single-key read below L1 (`get`, `get_or_load`).
    Get,
    /// A batched read (`get_many`); `cache.keys` is the batch size.
    GetMany,
    /// A write (`set`, `set_with`).
    Set,
    /// A single-key invalidation.
    Invalidate,
    /// A tag invalidation.
    InvalidateTag,
}

impl Op {
    /// The span's name.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Op::Get => "cache.get",
            Op::GetMany => "cache.get_many",
            Op::Set => "cache.set",
            Op::Invalidate => "cache.invalidate",
            Op::InvalidateTag => "cache.invalidate_tag",
        }
    }

    /// The operation's span (info level) for cache `name`, namespace `ns`; the key fields are
    /// left empty for the caller to record.
    pub(super) fn span(self, name: &str, ns: &Namespace) -> tracing::Span {
        // `tracing` needs the name as a literal: one arm per operation, the names as in `as_str`.
        match self {
            Op::Get => tracing::info_span!(
                "cache.get",
                cache.name = %name,
                cache.namespace = %ns,
                cache.key_hash = Empty,
                cache.level = Empty,
                cache.hit = Empty
            ),
            Op::GetMany => tracing::info_span!(
                "cache.get_many",
                cache.name = %name,
                cache.namespace = %ns,
                cache.keys = Empty,
                cache.level = Empty,
                cache.hit = Empty
            ),
            Op::Set => tracing::info_span!(
                "cache.set",
                cache.name = %name,
                cache.namespace = %ns,
                cache.key_hash = Empty
            ),
            Op::Invalidate => tracing::info_span!(
                "cache.invalidate",
                cache.name = %name,
                cache.namespace = %ns,
                cache.key_hash = Empty
            ),
            Op::InvalidateTag => tracing::info_span!(
                "cache.invalidate_tag",
                cache.name = %name,
                cache.namespace = %ns
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Enables every span, records nothing.
    struct All;

    impl tracing::Subscriber for All {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {}
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn each_op_opens_the_span_named_by_as_str() {
        tracing::subscriber::with_default(All, || {
            let ns = Namespace::default_namespace();
            for op in [Op::Get, Op::GetMany, Op::Set, Op::Invalidate, Op::InvalidateTag] {
                let span = op.span("c", &ns);
                let meta = span.metadata().expect("enabled span");
                assert_eq!(meta.name(), op.as_str());
                assert!(meta.fields().field("cache.name").is_some());
                let keyed = !matches!(op, Op::GetMany | Op::InvalidateTag);
                assert_eq!(meta.fields().field("cache.key_hash").is_some(), keyed, "{op:?}");
            }
        });
    }
}
