//! WIT glue for `berth:infra/messaging`: topic grants, payload and header
//! limits, and the mapping of [`MessagingError`] to the guest's `error`.

use std::time::Duration;

use tracing::Instrument as _;

use super::{Message as HostMessage, MessagingError, validate_topic};
use crate::bindings::ports::messaging::{self as wit, Error};
use crate::bindings::ports::messaging_types::{self, Message};
use crate::metrics::Port;
use crate::ports::error_chain;
use crate::state::InstanceState;

/// Most headers per message.
const MAX_HEADERS: usize = 64;

/// Whether `name` is in the namespace JetStream acts on (`Nats-Msg-Id`,
/// `Nats-Expected-Last-Sequence`, `Nats-Rollup`, `Nats-TTL`…): a guest's
/// header there would steer the stream (purge it, dedupe another message
/// away). Refused on every backend, so a guest behaves the same on each.
pub fn is_broker_header(name: &str) -> bool {
    name.get(..5)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("nats-"))
}

/// Whether `name` is in the host's own namespace, `berth-` in any case:
/// the dead-letter headers (`berth-error`, `berth-attempts`…), schedule
/// ticks' (`berth-tick`) and the adapters' (`berth-id`, `berth-attempt`,
/// `berth-reply-to`…). A guest's header there would pass for the host's
/// word (spoof a dead letter's cause, steer an adapter), so the port
/// refuses it on every backend.
pub fn is_host_header(name: &str) -> bool {
    name.get(..6)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("berth-"))
}

/// Longest a request may wait for its reply.
const MAX_REQUEST_TIMEOUT_MS: u32 = 60_000;

type Res<T> = wasmtime::Result<Result<T, Error>>;

/// Converts a host message to the WIT record.
pub fn message_to_wit(m: HostMessage) -> Message {
    Message {
        id: m.id,
        topic: m.topic,
        payload: m.payload,
        headers: m.headers,
        attempt: m.attempt,
    }
}

impl InstanceState {
    /// The one place a [`MessagingError`] becomes a guest error.
    fn messaging_error(&self, op: &str, e: MessagingError) -> Error {
        tracing::debug!(app = %self.env.app, component = %self.env.component, op, error = %error_chain(&e), "messaging error");
        match &e {
            MessagingError::NotGranted(t) => crate::audit::refused(
                &self.env.app,
                &self.env.component,
                "messaging.not-granted",
                t,
            ),
            MessagingError::TooLarge(_) => self.env.counters.limit("payload"),
            MessagingError::RateLimited => self.env.counters.limit("message_rate"),
            _ => {}
        }
        match e {
            MessagingError::NotGranted(t) => Error::NotGranted(t),
            MessagingError::InvalidInput(m) => Error::InvalidInput(m),
            MessagingError::TooLarge(m) => Error::TooLarge(m),
            MessagingError::Timeout => Error::Timeout,
            MessagingError::NoResponder => Error::NoResponder,
            MessagingError::Unavailable(_) => {
                Error::Unavailable("the broker is unavailable".into())
            }
            MessagingError::RateLimited => {
                Error::Unavailable("the app's message rate is reached; retry later".into())
            }
            MessagingError::Other(m) => Error::Other(m),
        }
    }

    fn check_publish(
        &self,
        topic: &str,
        payload: &[u8],
        headers: &[(String, String)],
    ) -> Result<(), MessagingError> {
        validate_topic(topic).map_err(MessagingError::InvalidInput)?;
        let granted = |t: &String| super::pattern::matches(t, topic);
        if !self.env.grants.publish.iter().any(granted) {
            return Err(MessagingError::NotGranted(topic.to_string()));
        }
        // Headers count too: brokers cap the whole message (NATS'
        // max_payload includes them), and a broker's refusal would reach
        // the guest as a retriable `unavailable`.
        let max = self.env.limits.payloads.message_max_bytes;
        let size = payload.len()
            + headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>();
        if size > max {
            return Err(MessagingError::TooLarge(format!(
                "the message is {size} bytes with its headers; at most {max} allowed"
            )));
        }
        check_headers(headers)?;
        // Last, so a message refused for its own faults takes no token.
        if let Some(rate) = &self.env.backends.publish_rate
            && !rate.take()
        {
            if crate::audit::app_warning_due(&self.env.app) {
                tracing::warn!(app = %self.env.app, component = %self.env.component, %topic, "the app's message publish rate is reached");
            }
            return Err(MessagingError::RateLimited);
        }
        Ok(())
    }
}

/// Checks the headers a guest gives `publish` or `request` (a reply
/// carries none): their number, their names and values, and neither the
/// broker's namespace (`nats-`) nor the host's (`berth-`).
fn check_headers(headers: &[(String, String)]) -> Result<(), MessagingError> {
    if headers.len() > MAX_HEADERS {
        return Err(MessagingError::InvalidInput(format!(
            "at most {MAX_HEADERS} headers allowed"
        )));
    }
    for (name, value) in headers {
        if is_broker_header(name) {
            return Err(MessagingError::InvalidInput(format!(
                "header {name:?}: names starting with `nats-` are reserved for the broker"
            )));
        }
        if is_host_header(name) {
            return Err(MessagingError::InvalidInput(format!(
                "header {name:?}: names starting with `berth-` are reserved for the host"
            )));
        }
        // RabbitMQ routes by these (sender-selected distribution) and
        // closes the channel on a string value: refused everywhere, so a
        // guest behaves alike on every broker.
        if ["cc", "bcc"].iter().any(|r| name.eq_ignore_ascii_case(r)) {
            return Err(MessagingError::InvalidInput(format!(
                "header {name:?}: `CC` and `BCC` are reserved for the broker (RabbitMQ routes by them)"
            )));
        }
        let bad_name = name.is_empty() || !name.chars().all(|c| c.is_ascii_graphic() && c != ':');
        if bad_name
            || value.chars().any(|c| c == '\r' || c == '\n' || c == '\0')
            || name.len() + value.len() > 8192
        {
            return Err(MessagingError::InvalidInput(format!(
                "invalid header {name:?}"
            )));
        }
    }
    Ok(())
}

impl messaging_types::Host for InstanceState {}

impl wit::Host for InstanceState {
    async fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Res<String> {
        let started = crate::metrics::Started::now();
        let bytes_in = payload.len();
        let r = match self.check_publish(&topic, &payload, &headers) {
            Err(e) => Err(self.messaging_error("publish", e)),
            Ok(()) => {
                let span = tracing::debug_span!("messaging", op = "publish", app = %self.env.app, component = %self.env.component, %topic);
                let broker = self.env.backends.messaging.clone();
                broker
                    .publish(&topic, payload, headers)
                    .instrument(span)
                    .await
                    .map_err(|e| self.messaging_error("publish", e))
            }
        };
        self.meter(
            Port::Messaging,
            "publish",
            &topic,
            started,
            &r,
            bytes_in,
            |_| 0,
        );
        Ok(r)
    }

    async fn request(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        timeout_ms: u32,
    ) -> Res<Message> {
        let started = crate::metrics::Started::now();
        let bytes_in = payload.len();
        let r = match self.check_publish(&topic, &payload, &headers) {
            Err(e) => Err(self.messaging_error("request", e)),
            Ok(()) => {
                let timeout =
                    Duration::from_millis(timeout_ms.clamp(1, MAX_REQUEST_TIMEOUT_MS).into());
                let span = tracing::debug_span!("messaging", op = "request", app = %self.env.app, component = %self.env.component, %topic);
                let broker = self.env.backends.messaging.clone();
                broker
                    .request(&topic, payload, headers, timeout)
                    .instrument(span)
                    .await
                    .map(message_to_wit)
                    .map_err(|e| self.messaging_error("request", e))
            }
        };
        self.meter(
            Port::Messaging,
            "request",
            &topic,
            started,
            &r,
            bytes_in,
            |m| m.payload.len(),
        );
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| (n.to_string(), "v".to_string()))
            .collect()
    }

    #[test]
    fn host_and_broker_header_namespaces_are_refused_in_any_case() {
        for name in [
            "berth-error",
            "BERTH-Attempts",
            "Berth-Original-Id",
            "berth-original-topic",
            "berth-id",
            "berth-reply-to",
            "berth-",
        ] {
            match check_headers(&headers(&["trace-id", name])) {
                Err(MessagingError::InvalidInput(m)) => {
                    assert!(m.contains("reserved for the host"), "{name}: {m}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        for name in ["Nats-Rollup", "nats-msg-id", "CC", "bcc"] {
            match check_headers(&headers(&[name])) {
                Err(MessagingError::InvalidInput(m)) => {
                    assert!(m.contains("reserved for the broker"), "{name}: {m}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn ordinary_headers_pass() {
        let ok = headers(&[
            "trace-id",
            "berth",
            "berthx-error",
            "x-berth-error",
            "seq",
            "ccx",
            "x-bcc",
        ]);
        assert_eq!(check_headers(&ok), Ok(()));
        assert!(!is_host_header("berth"));
        assert!(!is_host_header("bert\u{e9}-x"));
        assert!(is_host_header("BeRtH-x"));
        for bad in ["", "a b", "a:b"] {
            assert!(check_headers(&headers(&[bad])).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_HEADERS).map(|i| format!("h{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(check_headers(&headers(&many)).is_err());
    }
}
