//! The `messaging` port: publish, request/reply, and the subscriptions that
//! feed message triggers.
//!
//! Delivery is at-least-once at the seam: a subscriber receives
//! [`Delivery`]s and acknowledges each with `ack` or asks for redelivery
//! with `nack`. Brokers with durable consumers (NATS JetStream) implement the
//! same trait.

pub mod embedded;
pub mod host;
pub mod inprocess;
pub mod kafka;
pub mod mqtt;
pub mod nats;
pub mod pattern;
pub mod rabbitmq;
mod requests;

pub use requests::QUEUED_BYTES;
pub(crate) use requests::{
    AbortOnDrop, HeldBytes, InboxRequest, NoAck, QueuedBytes, RequestInbox, answer_within,
    time_left,
};

use std::time::Duration;

use async_trait::async_trait;

/// Why a messaging operation failed, as adapters report it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessagingError {
    /// Topic not granted.
    #[error("topic {0:?} is not granted to this component")]
    NotGranted(String),
    /// Bad topic or header.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Payload over the limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// No reply in time.
    #[error("no reply before the timeout")]
    Timeout,
    /// Nobody consumes the topic.
    #[error("no handler consumes this topic")]
    NoResponder,
    /// Broker unreachable.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The app's publish rate (`app_limits.messages_per_second`) is
    /// reached; the guest sees a retriable `unavailable`.
    #[error("the app's message rate is reached")]
    RateLimited,
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// A message as handed to a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Stable id (idempotency key).
    pub id: String,
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// 1 on first delivery.
    pub attempt: u32,
}

/// One delivery of a message to a subscription.
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// Where a request's reply goes, for request/reply.
    pub reply: Option<tokio::sync::oneshot::Sender<Vec<u8>>>,
    /// Settles the delivery with the broker.
    pub acker: Box<dyn Acker>,
}

/// Settles one delivery.
#[async_trait]
pub trait Acker: Send + Sync {
    /// The message was handled; do not deliver it again.
    async fn ack(self: Box<Self>);
    /// Handling failed; deliver it again after `delay`.
    async fn nack(self: Box<Self>, delay: Duration);
    /// When a handler still running should first say so with
    /// [`Acker::in_progress`], and how often after that: `Some` for brokers
    /// that redeliver a message left unsettled for a while (JetStream's ack
    /// wait, which runs from the delivery), `None` otherwise.
    fn progress_schedule(&self) -> Option<(std::time::Instant, Duration)> {
        None
    }
    /// The handler is still running: restart the broker's redelivery timer.
    async fn in_progress(&self) {}
}

/// The id of a message its producer gave none (a producer other than
/// Berth): `<prefix>-` and a hash of its topic, payload and headers, so a
/// redelivery keeps its id. Identical messages share it: producers that
/// need them told apart set an id (AMQP `message-id`, MQTT `berth-id`).
pub(crate) fn content_id(
    prefix: &str,
    topic: &str,
    payload: &[u8],
    headers: &[(String, String)],
) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    for part in [topic.as_bytes(), payload] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    for (k, v) in headers {
        for part in [k, v] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
    }
    format!("{prefix}-{}", hex::encode(&hash.finalize()[..16]))
}

/// What a guest is told when `broker` failed: its detail (which may name
/// hosts) is only logged, at debug.
pub(crate) fn unreachable(broker: &str, e: impl std::fmt::Display) -> MessagingError {
    tracing::debug!(broker, error = %e, "broker failure");
    MessagingError::Unavailable("the broker cannot be reached".into())
}

/// A stream of deliveries for one trigger.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery; `None` when the broker shuts down.
    async fn next(&mut self) -> Option<Delivery>;
    /// The trigger takes no more deliveries (its app is stopping) but its
    /// running handlers still settle theirs: a broker whose client fetches
    /// ahead (NATS) stops fetching and hands back what it holds, so that
    /// another host or the app's next version gets those messages now, not
    /// once the handlers have finished. Nothing by default.
    fn stop_fetching(&mut self) {}
}

/// An app's message broker.
#[async_trait]
pub trait MessagingBackend: Send + Sync {
    /// Publishes under a new id; returns the id once the broker accepted
    /// the message.
    async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<String, MessagingError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.publish_with_id(topic, &id, payload, headers).await?;
        Ok(id)
    }
    /// Publishes a message of the host's own (a dead letter) past the
    /// bounds the host puts on a broker's queues ([`QUEUED_BYTES`],
    /// `[app_limits] embedded_queue_mb`): a full queue whose messages fail
    /// must still be able to move them to their dead-letter topic, since
    /// only that settles them and frees their room. By default the bounds
    /// are the broker server's own, and this is [`Self::publish`]: a new
    /// id, never the claims a schedule tick's id takes on some brokers
    /// (see [`Self::publish_with_id`]), which a handler failing at will
    /// would otherwise make once a message.
    async fn publish_unbounded(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<String, MessagingError> {
        self.publish(topic, payload, headers).await
    }
    /// Publishes under the caller's `id`. A broker that deduplicates by id
    /// (NATS JetStream, within its duplicate window) stores a message once
    /// however many hosts publish it: that is how schedule ticks fire once.
    async fn publish_with_id(
        &self,
        topic: &str,
        id: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<(), MessagingError>;
    /// Publishes a request and waits for the reply.
    async fn request(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Message, MessagingError>;
    /// Subscribes a trigger to `topic`, a topic or a pattern of them (see
    /// [`pattern`]; each delivered [`Message`] names its own topic).
    /// `consumer` names the trigger's durable consumer: every host process
    /// subscribing with the same name shares its messages.
    async fn subscribe(
        &self,
        topic: &str,
        consumer: &str,
    ) -> Result<Box<dyn Subscription>, MessagingError>;
    /// Tells the broker every trigger of the app's version now starting,
    /// as (topic or pattern, consumer), once the manifest's triggers
    /// subscribed and before any of them takes a delivery: a broker that
    /// fans messages out to the triggers it knows (the embedded one) then
    /// stops keeping copies for triggers no longer there. Nothing by
    /// default: the other brokers' subscriptions are durable on their own.
    async fn declare_triggers(&self, _triggers: &[(String, String)]) -> Result<(), MessagingError> {
        Ok(())
    }

    /// Whether a message that several hosts publish under one id (a
    /// schedule tick, see [`MessagingBackend::publish_with_id`]) reaches the
    /// triggers once. Only MQTT needs a setting for it (`tick_claims`).
    fn publishes_ids_once(&self) -> bool {
        true
    }
    /// Lets go of the broker once the subscriptions are dropped, before the
    /// host exits: a Kafka trigger leaves its group so that its partitions
    /// go to the other hosts at once. Bounded in time; nothing by default.
    async fn close(&self) {}
}

/// Checks a topic name: 1-255 characters of `a-z A-Z 0-9 . - _`, no empty
/// segments, not starting with `_`. Wildcards, broker-internal names (`$`,
/// `_INBOX`) and the host's own topics (`_schedule.…`) are not topics a
/// guest or a manifest may name.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    let ok = !topic.is_empty()
        && topic.len() <= 255
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
        && !topic.split('.').any(str::is_empty)
        && !topic.starts_with('_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "topic {topic:?} must be 1-255 characters of a-z, A-Z, 0-9, `.`, `-`, `_` without empty segments, not starting with `_`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ids_are_stable_and_tell_contents_apart() {
        let h = vec![("k".to_string(), "v".to_string())];
        let a = content_id("amqp", "t", b"x", &h);
        assert_eq!(a, content_id("amqp", "t", b"x", &h));
        assert!(a.starts_with("amqp-") && a.len() == 5 + 32, "{a}");
        assert_ne!(a, content_id("amqp", "t", b"y", &h));
        assert_ne!(a, content_id("amqp", "t", b"x", &[]));
        assert_ne!(
            content_id("amqp", "ab", b"c", &[]),
            content_id("amqp", "a", b"bc", &[])
        );
    }

    #[test]
    fn topics() {
        for ok in ["user.created", "a", "a-b_c.d1"] {
            assert!(validate_topic(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            ".a",
            "a.*",
            "a.>",
            "$JS.API",
            "_INBOX.x",
            "_schedule.x",
            "a b",
            "a/b",
        ] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
    }
}

/// The app's broker (`[messaging]` in the host config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(remote = "Self", rename_all = "kebab-case", deny_unknown_fields)]
pub enum MessagingConfig {
    /// The embedded default: durable, in `<state>/<app>/messaging.db`.
    Embedded {},
    /// In memory only: queued messages are lost when the host stops.
    InProcess {},
    /// NATS JetStream: a stream per app, durable consumers per trigger.
    Nats {
        /// `nats://host:port`; credentials in it must be references.
        url: String,
        /// Connect timeout, and that of each JetStream API call making or
        /// looking up the app's stream and consumers, in ms; default 5000.
        timeout_ms: Option<u64>,
        /// Redelivery of messages left unacknowledged (by a host that died,
        /// or queued in a host's prefetch), in ms; default 60000, at least
        /// 1000. A handler still running sends progress acks.
        ack_wait_ms: Option<u64>,
        /// Messages a host fetches ahead per trigger; default 200.
        prefetch: Option<u16>,
        /// The most the app's stream keeps, in bytes; unset, no cap. A
        /// full stream drops its oldest messages (handled ones stay until
        /// they age out, so refusing new ones would stop the app).
        max_bytes: Option<u64>,
        /// How long the app's stream keeps a message, in seconds; default
        /// 604800 (a week), 0 for ever.
        max_age_s: Option<u64>,
    },
    /// RabbitMQ: an exchange per app, a durable queue per trigger.
    Rabbitmq {
        /// `amqp://user@host:port/vhost`; the password must be a reference.
        url: String,
        /// Connect timeout, in ms; default 5000.
        timeout_ms: Option<u64>,
        /// Deliveries a host holds unacknowledged per trigger; default 32.
        prefetch: Option<u16>,
    },
    /// Kafka: a topic per topic, a consumer group per trigger shared by
    /// every host.
    Kafka {
        /// `kafka://host:port[,host:port…]`.
        url: String,
        /// Timeout of each broker operation, in ms; default 5000.
        timeout_ms: Option<u64>,
        /// Replicas of the topics Berth creates; default 1, at least 1.
        replication_factor: Option<i16>,
        /// Partitions of the topics Berth creates: at most this many hosts
        /// share a topic's messages; default 6, 1 to 10000.
        partitions: Option<i32>,
        /// How long a host may go without a heartbeat before its partitions
        /// go to the other hosts, in ms; default 10000, 6000 to 1800000
        /// (Kafka's own bounds by default).
        session_timeout_ms: Option<u64>,
        /// The most Kafka topics the app may have (each of its topics has
        /// one for messages and, once a trigger or a request used it, one
        /// for requests; one more holds replies): past it, creating a topic
        /// is refused; default 1000, 1 to 1000000.
        max_topics: Option<usize>,
    },
    /// MQTT 5 (Mosquitto 2 and others): a topic subtree per app, a shared
    /// subscription per trigger.
    Mqtt {
        /// `redis://…` that every host of the app shares: each schedule tick
        /// is published by the one host that claims it there. Without it,
        /// a schedule served by N hosts runs N times per tick.
        tick_claims: Option<String>,
        /// `mqtt://[user@]host:port`; a password must be a reference.
        url: String,
        /// Connect, subscribe and acknowledgement timeout, in ms; default 5000.
        timeout_ms: Option<u64>,
        /// This host's MQTT client id, stable across its restarts (e.g.
        /// `${env:HOSTNAME}` for a StatefulSet pod), so its sessions, and
        /// the messages the broker holds for them, are resumed; default a
        /// random id per process.
        client_id: Option<String>,
        /// How long the broker keeps a trigger's session, and the messages
        /// it was dealt, after the host disconnects, in seconds; default 60,
        /// at most 604800 (a week). Raise it only with a stable `client_id`,
        /// so that a restarted host finds its messages again.
        session_expiry_s: Option<u64>,
    },
}

crate::config::by_type::deserialize_by_type!(MessagingConfig);

impl Default for MessagingConfig {
    fn default() -> Self {
        MessagingConfig::Embedded {}
    }
}
