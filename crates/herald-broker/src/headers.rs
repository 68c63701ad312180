//! The message headers Herald writes and reads, in one place: their names, and how a value is
//! written and read back. Publishers (ingest, replay, the worker's settler) and readers (the
//! worker's consumer and dead-letter recorder) use these and nothing else, so a header cannot be
//! spelled two ways.

use herald_core::execution::Envelope;
use lapin::types::{AMQPValue, FieldTable, LongString};

/// The W3C trace context of the span that published the message.
pub const TRACEPARENT: &str = "traceparent";
pub const ENVELOPE_VERSION: &str = "x-herald-envelope-version";
pub const EXECUTION_ID: &str = "x-herald-execution-id";
pub const CAMPAIGN_ID: &str = "x-herald-campaign-id";
/// Selects a retry tier on the retry exchange. No `x-` prefix: RabbitMQ ignores binding keys
/// that start with `x-` when matching headers (see `topology`).
pub const RETRY_TIER: &str = "herald-retry-tier";
/// The tier header of releases before that fix; only removed, never written.
pub(crate) const LEGACY_RETRY_TIER: &str = "x-herald-retry-tier";
/// Retry tiers the message has been through.
pub const TIERS_USED: &str = "x-herald-tiers-used";
/// Why Herald dead-lettered the message.
pub const DEAD_REASON: &str = "x-herald-dead-letter-reason";
/// The last (redacted) provider error of a dead-lettered message.
pub const LAST_ERROR: &str = "x-herald-last-error";
/// RabbitMQ's own record of a message's dead-letterings, newest first.
pub const X_DEATH: &str = "x-death";

/// A text header value.
pub fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.to_string()))
}

/// A count header value.
pub fn count(value: u64) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(value).unwrap_or(i64::MAX))
}

/// The text of header `name`, when it is one.
pub fn read_text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).to_string()),
        AMQPValue::ShortString(text) => Some(text.to_string()),
        _ => None,
    }
}

/// The count in header `name`; 0 when it is absent or not a count (a message from outside).
pub fn read_count(headers: Option<&FieldTable>, name: &str) -> u32 {
    match headers.and_then(|h| h.inner().get(name)) {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortInt(n)) => u32::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

/// Why the broker dead-lettered a message on its own (delivery limit, rejection, expiry), from
/// the newest `x-death` entry: `broker-delivery_limit`, ...
pub fn broker_reason(headers: Option<&FieldTable>) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = headers?.inner().get(X_DEATH)? else {
        return None;
    };
    let AMQPValue::FieldTable(latest) = deaths.as_slice().first()? else {
        return None;
    };
    read_text(Some(latest), "reason").map(|reason| format!("broker-{reason}"))
}

/// The headers ingest publishes an execution's message with.
pub fn for_envelope(envelope: &Envelope, traceparent: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(TRACEPARENT.into(), text(traceparent));
    headers.insert(ENVELOPE_VERSION.into(), AMQPValue::LongInt(i32::try_from(envelope.version).unwrap_or(i32::MAX)));
    headers.insert(EXECUTION_ID.into(), text(&envelope.execution_id.to_string()));
    headers.insert(CAMPAIGN_ID.into(), text(&envelope.campaign_id.to_string()));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_as_written() {
        let mut headers = FieldTable::default();
        headers.insert(DEAD_REASON.into(), text("max-attempts"));
        headers.insert(TIERS_USED.into(), count(3));
        headers.insert("wrong-type".into(), AMQPValue::Boolean(true));
        assert_eq!(read_text(Some(&headers), DEAD_REASON).as_deref(), Some("max-attempts"));
        assert_eq!(read_count(Some(&headers), TIERS_USED), 3);
        assert_eq!(read_count(Some(&headers), "wrong-type"), 0);
        assert_eq!(read_text(Some(&headers), "wrong-type"), None);
        assert_eq!(read_count(None, TIERS_USED), 0);
    }

    #[test]
    fn the_broker_reason_comes_from_the_newest_death() {
        let death = |reason: &str| {
            let mut entry = FieldTable::default();
            entry.insert("reason".into(), text(reason));
            AMQPValue::FieldTable(entry)
        };
        let mut headers = FieldTable::default();
        headers.insert(X_DEATH.into(), AMQPValue::FieldArray(vec![death("delivery_limit"), death("expired")].into()));
        assert_eq!(broker_reason(Some(&headers)).as_deref(), Some("broker-delivery_limit"));
        assert_eq!(broker_reason(Some(&FieldTable::default())), None);
    }
}
