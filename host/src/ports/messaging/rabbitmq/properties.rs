//! How Berth's metadata rides on AMQP message properties: the id as
//! `message-id`, the guest's headers, the attempt and, on a retried copy,
//! the topic; and what a delivery's properties tell back.

use super::*;

/// Header carrying the delivery attempt of a republished message.
pub(super) const ATTEMPT_HEADER: &str = "berth-attempt";
/// Header carrying the topic of a republished message, which its routing
/// key (the queue's name) does not tell.
pub(super) const TOPIC_HEADER: &str = "berth-topic";
/// Headers the host sets: a guest's headers named like them are left out,
/// because the host's values win.
pub(super) const RESERVED_HEADERS: [&str; 2] = [ATTEMPT_HEADER, TOPIC_HEADER];
/// Persistent delivery mode.
pub(super) const PERSISTENT: u8 = 2;

/// A header's value as text, if it is a string (other producers may send
/// either kind).
fn text_of(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// Message properties carrying `id` and `headers` (plus the attempt).
pub(super) fn properties(id: &str, headers: &[(String, String)], attempt: u32) -> BasicProperties {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        if !RESERVED_HEADERS.contains(&k.as_str()) {
            table.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
        }
    }
    if attempt > 1 {
        table.insert(ATTEMPT_HEADER.into(), AMQPValue::LongUInt(attempt));
    }
    BasicProperties::default()
        .with_message_id(id.into())
        .with_delivery_mode(PERSISTENT)
        .with_headers(table)
}

/// The headers (without Berth's own) and the attempt recorded in them.
pub(super) fn headers_of(properties: &BasicProperties) -> (Vec<(String, String)>, u32) {
    let mut headers = Vec::new();
    let mut attempt = 1;
    for (k, v) in properties.headers().iter().flat_map(|t| t.inner()) {
        match (k.as_str(), v) {
            (ATTEMPT_HEADER, AMQPValue::LongUInt(n)) => attempt = (*n).max(1),
            // Berth's own, whatever its type: never a guest's header.
            (TOPIC_HEADER, _) => {}
            (name, _) if retry::is_dead_letter_header(name) => {}
            (name, value) => {
                if let Some(text) = text_of(value) {
                    headers.push((name.to_string(), text));
                }
            }
        }
    }
    headers.sort();
    (headers, attempt)
}

/// The properties of the copy of failed `message` that is republished
/// straight to its trigger's queue: the next attempt, and the message's
/// topic, since the copy's routing key is the queue's name.
pub(super) fn retry_properties(message: &Message) -> BasicProperties {
    let props = properties(
        &message.id,
        &message.headers,
        message.attempt.saturating_add(1),
    );
    let mut table = props.headers().clone().unwrap_or_default();
    table.insert(
        TOPIC_HEADER.into(),
        AMQPValue::LongString(message.topic.as_str().into()),
    );
    props.with_headers(table)
}

/// The topic recorded in a republished copy's [`TOPIC_HEADER`].
pub(super) fn topic_header(properties: &BasicProperties) -> Option<String> {
    text_of(properties.headers().as_ref()?.inner().get(TOPIC_HEADER)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_with_the_attempt() {
        let headers = vec![
            ("a".to_string(), "1".to_string()),
            ("b".into(), "x y".into()),
        ];
        let props = properties("id-1", &headers, 3);
        assert_eq!(props.message_id().as_ref().unwrap().as_str(), "id-1");
        assert_eq!(headers_of(&props), (headers.clone(), 3));
        assert_eq!(topic_header(&props), None);
        assert_eq!(headers_of(&properties("id-1", &headers, 1)), (headers, 1));
    }

    #[test]
    fn a_retry_carries_its_topic_apart_from_the_headers() {
        let headers = vec![("a".to_string(), "1".to_string())];
        let message = Message {
            id: "id-1".into(),
            topic: "orders.eu".into(),
            payload: b"x".to_vec(),
            headers: headers.clone(),
            attempt: 2,
        };
        let props = retry_properties(&message);
        assert_eq!(props.message_id().as_ref().unwrap().as_str(), "id-1");
        assert_eq!(topic_header(&props).as_deref(), Some("orders.eu"));
        assert_eq!(headers_of(&props), (headers.clone(), 3));
        // A guest's headers named like Berth's own are left out.
        let spoofed = vec![
            (TOPIC_HEADER.to_string(), "other.topic".to_string()),
            (ATTEMPT_HEADER.to_string(), "9".to_string()),
            ("a".into(), "1".into()),
        ];
        let props = properties("id-2", &spoofed, 1);
        assert_eq!(topic_header(&props), None);
        assert_eq!(headers_of(&props), (headers, 1));
    }
}
