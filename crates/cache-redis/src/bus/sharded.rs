//! Sharded pub/sub pushes (Redis 7 clusters): the bounded push queue and what each push means.

use deadpool_redis::redis::{PushInfo, PushKind, Value};

/// How many sharded pub/sub pushes wait for delivery before further ones are dropped (and a
/// resync is emitted).
pub(super) const PUSH_QUEUE: usize = 1024;

/// What a sharded subscriber does with a push.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PushAction {
    /// A message on the channel: deliver it.
    Deliver,
    /// The subscription is gone (connection lost, or the server unsubscribed us, e.g. because
    /// the channel's slot moved): reconnect and resync.
    Lost,
    /// Anything else (subscribe confirmations, other channels).
    Ignore,
}

pub(super) fn classify_push(push: &PushInfo, channel: &str) -> PushAction {
    match push.kind {
        PushKind::SMessage | PushKind::Message => PushAction::Deliver,
        PushKind::Disconnection => PushAction::Lost,
        PushKind::SUnsubscribe | PushKind::Unsubscribe => match push.data.first() {
            Some(Value::BulkString(c)) if c.as_slice() != channel.as_bytes() => PushAction::Ignore,
            Some(Value::SimpleString(c)) if c != channel => PushAction::Ignore,
            // Ours, or unreadable: assume the worst.
            _ => PushAction::Lost,
        },
        _ => PushAction::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(kind: PushKind, data: Vec<Value>) -> PushInfo {
        PushInfo { kind, data }
    }

    #[test]
    fn pushes_are_classified() {
        let ch = "strata:inv";
        let msg = vec![Value::BulkString(ch.into()), Value::BulkString(b"x".to_vec())];
        assert_eq!(classify_push(&push(PushKind::SMessage, msg.clone()), ch), PushAction::Deliver);
        assert_eq!(classify_push(&push(PushKind::Message, msg), ch), PushAction::Deliver);
        assert_eq!(classify_push(&push(PushKind::Disconnection, vec![]), ch), PushAction::Lost);
        // The server unsubscribed us (slot moved): lost, whether sharded or classic.
        let ours = vec![Value::BulkString(ch.into()), Value::Int(0)];
        assert_eq!(classify_push(&push(PushKind::SUnsubscribe, ours.clone()), ch), PushAction::Lost);
        assert_eq!(classify_push(&push(PushKind::Unsubscribe, ours), ch), PushAction::Lost);
        assert_eq!(
            classify_push(&push(PushKind::SUnsubscribe, vec![Value::SimpleString(ch.into())]), ch),
            PushAction::Lost
        );
        // Unreadable: assume the worst.
        assert_eq!(classify_push(&push(PushKind::SUnsubscribe, vec![]), ch), PushAction::Lost);
        // Another channel, or a confirmation: ignored.
        let other = vec![Value::BulkString(b"other".to_vec()), Value::Int(0)];
        assert_eq!(classify_push(&push(PushKind::SUnsubscribe, other), ch), PushAction::Ignore);
        let sub = vec![Value::BulkString(ch.into()), Value::Int(1)];
        assert_eq!(classify_push(&push(PushKind::SSubscribe, sub), ch), PushAction::Ignore);
        assert_eq!(classify_push(&push(PushKind::Invalidate, vec![]), ch), PushAction::Ignore);
    }
}
