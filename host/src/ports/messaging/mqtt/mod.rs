//! MQTT 5 adapter (`rumqttc::v5`), for brokers such as Mosquitto 2.
//!
//! - Each segment of a topic is an MQTT level, so MQTT's wildcards can
//!   match them: topic `a.b` of app `<app>` is the MQTT topic
//!   `berth/<app>/msg/a/b`, and requests to it go to `berth/<app>/req/a/b`.
//!   The mapping is injective (segments are never empty and never hold
//!   `/`), so a received MQTT topic tells the Berth topic back. Topic
//!   segments and consumer names holding `/`, `+` or `#` are refused, so
//!   nothing names an MQTT topic outside its app's subtree.
//! - A trigger on a pattern subscribes to its filter: `*` becomes `+`, and
//!   `>` becomes `+/#` (MQTT's `#` alone also matches its parent level, and
//!   `>` stands for at least one segment). Each delivery names its own
//!   topic, read from its MQTT topic.
//! - Every publish is QoS 1 and returns once the broker's PUBACK for it
//!   came. The Berth id travels as the user property `berth-id`, each
//!   header as a user property, and the attempt of a republished message
//!   as `berth-attempt`.
//! - Each message trigger gets its own MQTT client and session, subscribed
//!   to the shared subscription `$share/berth-<app>-<consumer>/berth/<app>/msg/<levels>`
//!   at QoS 1: the broker hands each message to one of the app's hosts.
//!   Acks are manual, so a message is PUBACKed only once its handler
//!   succeeded. The session (clean start off, expiry [`SESSION_EXPIRY`]
//!   unless the settings say otherwise)
//!   keeps what the broker queued for a host over a short disconnect, and
//!   the broker sends unacknowledged messages again (DUP set, counted as
//!   one more attempt) when the client comes back.
//! - MQTT (3.1.1 and 5) has no negative acknowledgement. So `nack` waits
//!   for the backoff, publishes a copy with `berth-attempt` incremented
//!   (and waits for its PUBACK), then acknowledges the original. The copy
//!   goes to the trigger's own retry subtree
//!   `berth/<app>/retry/<consumer>/<trigger topic>/<levels>`,
//!   not to the message's topic, where every other trigger on it would get
//!   it again: each trigger also subscribes, in the same share, to its
//!   filter under that subtree. The copy may go to another host of the
//!   share. A host that dies before that leaves the original
//!   unacknowledged in its session.
//! - Request/reply is MQTT 5's: the request carries the response topic
//!   `berth/<app>/reply/<client id>`, which the publishing client
//!   subscribes to at connect, and a fresh correlation id. Triggers take
//!   requests through `$share/berth-<app>-<consumer>-req/berth/<app>/req/<levels>`
//!   at QoS 0, so requests are never stored. A request carries its
//!   caller's timeout as its message expiry: one that waited past it for
//!   a handler is dropped, and a trigger's client holds at most
//!   [`MAX_QUEUED_REQUESTS`] of them. Plain MQTT cannot tell that
//!   nobody listens. But a broker may answer the request's PUBACK with "no
//!   matching subscribers" (Mosquitto does), and that becomes
//!   `no-responder`. On a broker that does not, a request nobody consumes
//!   ends in `timeout`.
//!
//! - Mosquitto deals out a share's messages round-robin, disconnected
//!   sessions included, and keeps those dealt to a host that died in its
//!   session (MQTT 5 lets a broker pass them to another member; Mosquitto
//!   does not). So each trigger client has a will, and the host that hears
//!   of it finishes the dead host's session (see [`takeover`]). A
//!   trigger that stops unsubscribes its share filters first, so it is
//!   dealt nothing more, and its client never sends DISCONNECT, which
//!   would discard the will: a host that stops, or an app version a
//!   reload replaces, has its session finished in the same way, what it
//!   was dealt and did not settle handed out by another host.
//! - MQTT cannot drop a copy by id, so with `tick_claims` (a Redis URL the
//!   hosts share) a host publishes an id every host publishes (a schedule
//!   tick) only if it claims the id there first (`SET NX`, kept an hour).
//!
//! Limits compared with the NATS and RabbitMQ adapters:
//! - The broker keeps nothing for topics nobody subscribes to: a message
//!   published before any trigger subscribed to its topic is dropped. Its
//!   PUBACK says so, and the drop is logged at debug.
//! - Without `tick_claims`, a schedule tick published by N hosts is
//!   delivered N times, each time under the same id.
//! - The broker bounds what it queues per session (Mosquitto's
//!   `max_queued_messages`, 1,000 by default) and drops the rest: size it
//!   for the bursts a trigger must absorb.
//! - A publish that ends in `unavailable` (no PUBACK in time) may still
//!   reach the broker later, because the client retransmits it when it
//!   reconnects. Delivery is at least once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectProperties, Filter, LastWill, LastWillProperties, Packet, PubAckReason,
    Publish, PublishProperties,
};
use rumqttc::v5::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Request, StateError,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    Acker, Delivery, Message, MessagingBackend, MessagingError, NoAck, Subscription, answer_within,
    pattern, time_left,
};
use crate::ports::kv::redis::RedisBucket;
use crate::secret::Secret;

mod acks;
mod driver;
mod link;
mod subscription;
mod takeover;
mod wire;

use acks::*;
use driver::*;
use link::*;
use subscription::*;
pub use takeover::WILL_DELAY;
use wire::*;

/// The port of `mqtt://host` URLs without one.
pub const DEFAULT_PORT: u16 = 1883;
/// How long, by default, the broker keeps a trigger's session (its
/// subscription, queued and unacknowledged messages) after the connection
/// drops. It covers reconnects of a running host. A host with a random
/// client id never comes back, so a longer expiry would only strand more
/// of the messages dealt to it (see the module docs); a host with a stable
/// `client_id` may set a longer `session_expiry_s`, up to
/// [`MAX_SESSION_EXPIRY`], to find its messages after a restart.
pub const SESSION_EXPIRY: Duration = Duration::from_secs(60);
/// How long a tick's claim is kept: far longer than any host may publish
/// it late.
const TICK_CLAIM_TTL: Duration = Duration::from_secs(3600);
/// The longest session expiry a host config may set: a week.
pub const MAX_SESSION_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);
/// User property carrying Berth's message id.
const ID_PROPERTY: &str = "berth-id";
/// User property carrying the delivery attempt of a republished message.
const ATTEMPT_PROPERTY: &str = "berth-attempt";
/// User property carrying a request's timeout in ms, finer than the
/// message expiry's whole seconds.
const TIMEOUT_PROPERTY: &str = "berth-timeout-ms";
/// Unacknowledged messages the broker sends each trigger's client at once
/// (the MQTT 5 receive maximum, like RabbitMQ's prefetch).
const RECEIVE_MAXIMUM: u16 = 32;
/// MQTT's largest packet. Without it rumqttc refuses incoming packets over
/// 10 KiB: it drops the connection, the broker redelivers, and the client
/// reconnects forever. The host's own limits bound payloads.
const MAX_PACKET_SIZE: u32 = 268_435_455;
/// Outgoing QoS 1 publishes in flight per client. rumqttc allocates a slot
/// per packet id up to this bound (65535 slots by default).
const PUBLISHER_INFLIGHT: u16 = 256;
/// Triggers' clients only publish replies and republished copies.
const TRIGGER_INFLIGHT: u16 = 16;
/// Requests queued between an `AsyncClient` and its event loop.
const REQUEST_CAPACITY: usize = 64;
/// Requests (QoS 0 publishes, which the broker sends without flow control)
/// a trigger's client holds for its handlers at once: past it they are
/// dropped, as QoS 0 allows, rather than queued in the host's memory
/// without end; their callers time out.
const MAX_QUEUED_REQUESTS: usize = 1024;
/// Keep-alive ping interval: a dead connection is noticed within about
/// twice this.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Pause between reconnect attempts.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Pause before connecting again after another client took the session:
/// the two versions of a reload swap it every few seconds rather than
/// every second, and it stays under the will's delay
/// ([`takeover::WILL_DELAY`]), so that when the client that took it goes
/// away (a new version refused at load) this one is back before its will
/// sends another host to finish the session.
const TAKEN_OVER_DELAY: Duration = Duration::from_secs(4);
/// How long a stopping client may take to send its DISCONNECT (or, a
/// trigger's, its last acks).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Settings of an app's MQTT broker.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// `mqtt://[user[:password]@]host[:port]`. The port defaults to
    /// [`DEFAULT_PORT`], and the user and password are percent-decoded.
    /// The password must be a reference.
    pub url: Secret,
    /// The app, naming the MQTT topic subtree.
    pub app: String,
    /// The timeout for connecting (CONNACK and SUBACK) and for a PUBACK.
    pub timeout: Duration,
    /// This host process's MQTT client id, unique per process (generated at
    /// startup, say), without `/`, `+` or `#`. Triggers' clients add a
    /// suffix to it.
    pub client_id: String,
    /// How long the broker keeps a trigger's session after its connection
    /// drops (whole seconds; see [`SESSION_EXPIRY`]).
    pub session_expiry: Duration,
    /// Where the hosts claim the ids they all publish (schedule ticks), so
    /// that one of them publishes each: MQTT cannot drop a copy by id.
    pub tick_claims: Option<Arc<RedisBucket>>,
}

/// An app's broker on MQTT 5.
pub struct MqttBroker {
    /// The client that publishes and receives replies.
    link: Link,
    /// Requests waiting for their reply, by correlation data.
    replies: Replies,
    /// `berth/<app>/reply/<client id>`.
    reply_topic: String,
    target: Target,
    app: String,
    client_id: String,
    timeout: Duration,
    /// The session expiry of the triggers' clients, in seconds.
    session_expiry_secs: u32,
    /// How many subscriptions each trigger's client id was given, telling
    /// apart two triggers of the same component and topic.
    subscriptions: Mutex<HashMap<String, u32>>,
    tick_claims: Option<Arc<RedisBucket>>,
}

fn unavailable(e: impl std::fmt::Display) -> MessagingError {
    super::unreachable("mqtt", e)
}

/// Locks `m`. A panic elsewhere must not also stop the event loops.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MqttBroker {
    /// Connects, subscribes to this host's reply topic, and waits (at most
    /// `s.timeout`) for both to be acknowledged, so a broker that is down
    /// is an error at startup.
    pub async fn connect(s: &MqttSettings) -> Result<MqttBroker, MessagingError> {
        let target = parse_url(s.url.expose())?;
        if !mqtt_safe(&s.client_id) || !mqtt_safe(&s.app) {
            return Err(MessagingError::InvalidInput(
                "the MQTT client id and the app name must be non-empty, without `/`, `+`, `#`"
                    .into(),
            ));
        }
        let reply_topic = reply_topic(&s.app, &s.client_id);
        let replies = Replies::default();
        // A suffix of its own per load: a reload under a stable
        // `client_id` runs the app's old and new versions side by side for
        // a while, and two clients under one id would take the connection
        // from each other, back and forth, until the old one went. Its
        // session is clean, so nothing is lost with the id.
        let publisher_id = format!("{}-p{:08x}", s.client_id, rand::random::<u32>());
        let link = Link::connect(
            mqtt_options(&target, &publisher_id, s.timeout, Role::Publisher),
            vec![Filter::new(reply_topic.clone(), QoS::AtLeastOnce)],
            Inbox::Replies(replies.clone()),
            s.timeout,
        )
        .await?;
        Ok(MqttBroker {
            link,
            replies,
            reply_topic,
            target,
            app: s.app.clone(),
            client_id: s.client_id.clone(),
            timeout: s.timeout,
            session_expiry_secs: s.session_expiry.min(MAX_SESSION_EXPIRY).as_secs().max(1) as u32,
            subscriptions: Mutex::default(),
            tick_claims: s.tick_claims.clone(),
        })
    }
}

impl MqttBroker {
    /// The client id of trigger `consumer` on `topic`: this host's id and
    /// [`trigger_key`], with a count past the first for a second trigger
    /// of the same component and topic.
    fn trigger_client_id(&self, consumer: &str, topic: &str) -> String {
        let key = trigger_key(consumer, topic);
        let mut used = lock(&self.subscriptions);
        let n = used.entry(key.clone()).or_insert(0);
        *n += 1;
        match *n {
            1 => format!("{}-{key}", self.client_id),
            n => format!("{}-{key}-{n}", self.client_id),
        }
    }

    /// Publishes `payload` to `topic` under `id` and waits for its PUBACK.
    async fn send(
        &self,
        topic: &str,
        id: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<(), MessagingError> {
        check_topic(topic)?;
        let reason = self
            .link
            .publish(
                message_topic(&self.app, topic),
                Bytes::from(payload),
                publish_properties(id, &headers, 1),
                self.timeout,
            )
            .await?;
        if reason == PubAckReason::NoMatchingSubscribers {
            tracing::debug!(
                topic,
                id,
                "no trigger subscribes to this topic: the broker dropped the message"
            );
        }
        Ok(())
    }

    /// Publishes a request and waits for its reply (the caller bounds the
    /// wait). A PUBACK saying nobody subscribes means no responder.
    async fn exchange(
        &self,
        topic: &str,
        payload: Bytes,
        properties: PublishProperties,
        reply: oneshot::Receiver<Publish>,
    ) -> Result<Publish, MessagingError> {
        let reason = self
            .link
            .publish(
                request_topic(&self.app, topic),
                payload,
                properties,
                self.timeout,
            )
            .await?;
        if reason == PubAckReason::NoMatchingSubscribers {
            return Err(MessagingError::NoResponder);
        }
        reply
            .await
            .map_err(|_| MessagingError::Unavailable("the reply channel closed".into()))
    }
}

#[async_trait]
impl MessagingBackend for MqttBroker {
    async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<String, MessagingError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.send(topic, &id, payload, headers).await?;
        Ok(id)
    }

    async fn publish_with_id(
        &self,
        topic: &str,
        id: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<(), MessagingError> {
        if let Some(claims) = &self.tick_claims {
            let claimed = claims
                .claim(id, &self.client_id, TICK_CLAIM_TTL)
                .await
                .map_err(|e| unavailable(format!("tick claims: {e}")))?;
            if !claimed {
                tracing::debug!(topic, id, "another host publishes this id");
                return Ok(());
            }
            let sent = self.send(topic, id, payload, headers).await;
            // Given back when the tick surely was not published, so the
            // retry of this id (the schedule's, here or on another host)
            // can claim it again; kept, it would make every retry skip
            // the tick. Not when its PUBACK was only late: it may have
            // gone out, and the client sends it once it reconnects.
            let not_published = match &sent {
                Err(MessagingError::TooLarge(_)) => true,
                Err(MessagingError::Unavailable(m)) => m == link::NOT_SENT || m == link::REFUSED,
                _ => false,
            };
            if not_published && let Err(e) = claims.release_claim(id, &self.client_id).await {
                tracing::warn!(topic, id, error = %e, "cannot give back the claim of a tick that was not published; it lapses with its TTL");
            }
            return sent;
        }
        self.send(topic, id, payload, headers).await
    }

    fn publishes_ids_once(&self) -> bool {
        self.tick_claims.is_some()
    }

    async fn request(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Message, MessagingError> {
        check_topic(topic)?;
        let id = uuid::Uuid::new_v4().to_string();
        let correlation = Bytes::from(uuid::Uuid::new_v4().to_string());
        let (reply_tx, reply_rx) = oneshot::channel();
        let _pending = PendingReply::register(&self.replies, correlation.clone(), reply_tx);
        let mut properties = publish_properties(&id, &headers, 1);
        properties.response_topic = Some(self.reply_topic.clone());
        properties.correlation_data = Some(correlation);
        // The broker drops it once its caller stopped waiting (a session
        // that was dealt it and is away), and the trigger that takes it
        // counts down what is left (see `MqttSubscription::request`).
        properties.message_expiry_interval = Some(expiry_secs(timeout));
        properties
            .user_properties
            .push((TIMEOUT_PROPERTY.into(), timeout.as_millis().to_string()));
        let exchange = self.exchange(topic, Bytes::from(payload), properties, reply_rx);
        let reply = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => return Err(MessagingError::Timeout),
            Ok(reply) => reply?,
        };
        let (id, headers, _) = metadata(reply.properties.as_ref());
        Ok(Message {
            id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            topic: topic.to_string(),
            payload: reply.payload.to_vec(),
            headers,
            attempt: 1,
        })
    }

    async fn subscribe(
        &self,
        topic: &str,
        consumer: &str,
    ) -> Result<Box<dyn Subscription>, MessagingError> {
        check_topic(topic)?;
        if !mqtt_safe(consumer) {
            return Err(MessagingError::InvalidInput(format!(
                "consumer {consumer:?} cannot name an MQTT shared subscription"
            )));
        }
        // Its own client id, so its session is its own, named after the
        // trigger: a reconnect, or a restart with a stable `client_id`,
        // finds this trigger's session, whatever the other triggers.
        let client_id = self.trigger_client_id(consumer, topic);
        let filters = vec![
            Filter::new(shared_filter(&self.app, consumer, topic), QoS::AtLeastOnce),
            // Its failed messages come back on a subtree of its own, so no
            // other trigger on their topics receives them twice.
            Filter::new(
                shared_retry_filter(&self.app, consumer, topic),
                QoS::AtLeastOnce,
            ),
            // Requests at QoS 0: the broker neither stores them nor waits
            // for acks, so they never queue behind stored messages.
            Filter::new(
                shared_request_filter(&self.app, consumer, topic),
                QoS::AtMostOnce,
            ),
        ];
        let paths: Vec<String> = filters.iter().map(|f| f.path.clone()).collect();
        let role = Role::Trigger {
            session_expiry_secs: self.session_expiry_secs,
            orphans: orphan_topic(&self.app, consumer, topic),
        };
        let (deliveries, inbox) = mpsc::unbounded_channel();
        let link = Link::connect(
            mqtt_options(&self.target, &client_id, self.timeout, role),
            filters,
            Inbox::Deliveries(deliveries),
            self.timeout,
        )
        .await?;
        // The wills of the trigger's clients that go away, each to one
        // host, through a client of its own (see `takeover`).
        let (notices, watched) = mpsc::unbounded_channel();
        let watcher = Link::connect(
            mqtt_options(
                &self.target,
                &format!("{client_id}-w"),
                self.timeout,
                Role::Watcher,
            ),
            vec![Filter::new(
                shared_orphan_filter(&self.app, consumer, topic),
                QoS::AtLeastOnce,
            )],
            Inbox::Deliveries(notices),
            self.timeout,
        )
        .await?;
        let spec = TriggerSpec {
            target: self.target.clone(),
            app: self.app.clone(),
            consumer: consumer.to_string(),
            topic: topic.to_string(),
            client_id,
            filters: paths,
            timeout: self.timeout,
            session_expiry_secs: self.session_expiry_secs,
        };
        let mut subscription = MqttSubscription::new(Arc::new(spec), link, inbox, true);
        subscription.watcher = Some(Watcher {
            _link: watcher,
            inbox: watched,
        });
        Ok(Box::new(subscription))
    }
}

#[cfg(test)]
#[path = "mqtt_tests.rs"]
mod tests;
