//! RabbitMQ adapter (`lapin`, AMQP 0.9.1).
//!
//! - Each app gets a durable topic exchange `berth.<app>`; a topic is its
//!   routing key. Publishing waits for the broker's publisher confirm and
//!   sends persistent messages carrying the Berth id as `message-id`.
//! - Each message trigger is a durable queue `berth.<app>.<consumer>.<topic>`
//!   (`<topic>` may be a pattern: `*` and `>` are legal in queue names),
//!   consumed with manual acks by every host process (RabbitMQ spreads
//!   deliveries over them; `prefetch` bounds what each host holds
//!   unacknowledged). It is bound by its topic, or by its pattern in AMQP's
//!   syntax: `*` stays `*` and `>` becomes `*.#` (AMQP's `#` matches zero
//!   or more words, so `*.#` keeps "one or more"). A delivery names its own
//!   topic: the routing key it was published under.
//! - Redelivery after a failure: a copy with the `berth-attempt` header
//!   incremented and its topic in `berth-topic` is stored (confirmed) in a
//!   delay queue whose message TTL is the backoff and whose dead-letter
//!   target is the trigger's queue, then the original is acknowledged, so
//!   a failed message holds no `prefetch` slot while it waits (see
//!   [`retry`]). If no delay queue can be used, the original is held
//!   through the backoff and its copy published straight to the queue. A
//!   host that dies before acknowledging leaves the original to RabbitMQ's
//!   redelivery.
//! - A message whose topic no queue is bound to goes to the exchange's
//!   alternate exchange and waits in the durable queue
//!   `berth.<app>.unrouted` (at most [`UNROUTED_MAX`] messages, oldest
//!   dropped first) instead of vanishing: dead letters nobody consumes land
//!   there.
//! - A message published under a given id (schedule ticks) is published by
//!   the one host that claims the id first (see [`RabbitBroker::claim`]).
//! - Request/reply goes through the topic exchange `berth.<app>.requests`
//!   (not stored; each trigger's transient request queue bound like its
//!   queue) and RabbitMQ's direct reply-to; a request nobody consumes is
//!   returned by the broker (`mandatory`) and reported as `no-responder`.
//!   It replaced the direct exchange `berth.<app>.req`, which cannot match
//!   patterns: an exchange's kind cannot change, and redeclaring it as a
//!   topic exchange would fail on brokers that have the old one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::oneshot;

use super::{
    Acker, Delivery, Message, MessagingBackend, MessagingError, NoAck, RequestInbox, Subscription,
    answer_within, content_id, pattern, time_left,
};
use crate::secret::Secret;

mod properties;
mod retry;
mod subscription;

use properties::*;
use subscription::*;

/// Messages kept for topics nobody consumes.
pub const UNROUTED_MAX: i64 = 10_000;
/// RabbitMQ's pseudo-queue for direct reply-to.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// How long a host holds the claim on a message id it published.
pub const CLAIM_WINDOW: Duration = Duration::from_secs(120);

/// Settings of an app's RabbitMQ broker.
#[derive(Debug, Clone)]
pub struct RabbitSettings {
    /// `amqp://user:password@host:port/vhost` (the password a reference).
    pub url: Secret,
    /// The app, naming the exchanges and queues.
    pub app: String,
    /// Connect timeout.
    pub timeout: Duration,
    /// Deliveries each host holds unacknowledged per trigger.
    pub prefetch: u16,
    /// A dry run (`berth check`): the broker is connected to and a
    /// confirming channel opened, but no exchange or queue is declared, so
    /// a check leaves nothing behind. (Declaring is the only way AMQP has to
    /// try the user's `configure` permission, so that is left to a load.)
    pub dry_run: bool,
}

/// An app's broker on RabbitMQ. It reconnects on its own: publishing
/// after a lost connection opens a new one, and each trigger's
/// subscription consumes again once the broker is back.
pub struct RabbitBroker {
    shared: Arc<Shared>,
}

/// What the broker, its subscriptions and its ackers share.
struct Shared {
    settings: RabbitSettings,
    /// `berth.<app>`, named once: every publish and delivery compares or
    /// uses it.
    exchange: String,
    /// The live connection, replaced when it is lost.
    link: tokio::sync::Mutex<Option<Link>>,
}

/// A connection and its confirm-mode publishing channel.
#[derive(Clone)]
struct Link {
    connection: Arc<Connection>,
    publisher: Channel,
}

fn unavailable(e: impl std::fmt::Display) -> MessagingError {
    super::unreachable("rabbitmq", e)
}

/// A connection failure: the broker's refusal (wrong credentials, no access
/// to the vhost) is named, since it carries no secret; anything else is
/// `unavailable`.
fn refused_or_unavailable(e: lapin::Error) -> MessagingError {
    match &e {
        lapin::Error::ProtocolError(p) => {
            tracing::warn!(kind = %p.kind(), "rabbitmq refused the connection");
            MessagingError::Unavailable(format!("the broker refused the connection ({})", p.kind()))
        }
        _ => unavailable(e),
    }
}

/// The longest AMQP short string: header names and queue names.
const SHORT_STRING_MAX: usize = 255;

/// Component names whose trigger queues would take the names of the
/// app's other queues (see [`RabbitBroker::subscribe`]).
const RESERVED_COMPONENTS: [&str; 2] = ["req", "once"];

/// Refuses what an AMQP short string cannot carry (it would corrupt the
/// frame, not just fail).
fn check_short(what: &str, value: &str) -> Result<(), MessagingError> {
    if value.len() > SHORT_STRING_MAX {
        return Err(MessagingError::InvalidInput(format!(
            "{what} is {} bytes; RabbitMQ takes at most {SHORT_STRING_MAX}",
            value.len()
        )));
    }
    Ok(())
}

impl RabbitBroker {
    /// Connects and declares the app's exchanges.
    pub async fn connect(s: &RabbitSettings) -> Result<RabbitBroker, MessagingError> {
        let shared = Arc::new(Shared {
            settings: s.clone(),
            exchange: format!("berth.{}", s.app),
            link: tokio::sync::Mutex::new(None),
        });
        shared.link().await?;
        Ok(RabbitBroker { shared })
    }

    /// `berth.<app>`.
    pub fn exchange(&self) -> String {
        self.shared.exchange().to_string()
    }

    /// `berth.<app>.unrouted`.
    pub fn unrouted_queue(&self) -> String {
        self.shared.unrouted_queue()
    }

    /// The durable queue of trigger `consumer` on `topic` (a topic or a
    /// pattern).
    pub fn queue(&self, consumer: &str, topic: &str) -> String {
        self.shared.queue(consumer, topic)
    }
}

impl Shared {
    /// The live link, connecting (and declaring the topology) if there is
    /// none or it was lost.
    async fn link(&self) -> Result<Link, MessagingError> {
        let mut current = self.link.lock().await;
        if let Some(link) = current.as_ref()
            && link.connection.status().connected()
            && link.publisher.status().connected()
        {
            return Ok(link.clone());
        }
        let s = &self.settings;
        let properties = ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio)
            .with_connection_name(format!("berth {}", s.app).into());
        // Parsed here rather than by `connect`, whose parse errors quote
        // the URL, password included.
        let uri: lapin::uri::AMQPUri = s.url.expose().parse().map_err(|_| {
            MessagingError::InvalidInput(
                "the AMQP URL is invalid (expected amqp://user@host:port/vhost)".into(),
            )
        })?;
        let connection = tokio::time::timeout(s.timeout, Connection::connect_uri(uri, properties))
            .await
            .map_err(|_| unavailable("connect timed out"))?
            .map_err(refused_or_unavailable)?;
        let publisher = connection.create_channel().await.map_err(unavailable)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        if !s.dry_run {
            self.declare_topology(&publisher).await?;
        }
        let link = Link {
            connection: Arc::new(connection),
            publisher,
        };
        *current = Some(link.clone());
        Ok(link)
    }

    fn exchange(&self) -> &str {
        &self.exchange
    }

    /// `berth.<app>.requests`, a topic exchange (see the module docs for
    /// why not `berth.<app>.req`).
    fn request_exchange(&self) -> String {
        format!("berth.{}.requests", self.settings.app)
    }

    fn unrouted_queue(&self) -> String {
        format!("berth.{}.unrouted", self.settings.app)
    }

    fn queue(&self, consumer: &str, topic: &str) -> String {
        format!("berth.{}.{consumer}.{topic}", self.settings.app)
    }

    /// The transient queue of trigger `consumer`'s requests to `topic` (a
    /// topic or a pattern).
    fn request_queue(&self, consumer: &str, topic: &str) -> String {
        format!("berth.{}.req.{consumer}.{topic}", self.settings.app)
    }

    /// Claims message id `id` for this host for [`CLAIM_WINDOW`]: the
    /// first connection to declare the exclusive queue
    /// `berth.<app>.once.<id>` wins, the others are refused with
    /// RESOURCE_LOCKED. This is how every host publishing the same schedule
    /// tick still stores it once (RabbitMQ has no deduplication by id).
    async fn claim(&self, id: &str) -> Result<bool, MessagingError> {
        let channel = self.channel().await?;
        let queue = self.claim_queue(id);
        // The queue belongs to the connection, so the channel can go at
        // once; RabbitMQ deletes the queue when it expires.
        let mut args = FieldTable::default();
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(CLAIM_WINDOW.as_millis() as i64),
        );
        let declared = channel
            .queue_declare(
                &queue,
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                args,
            )
            .await;
        match declared {
            Ok(_) => {
                let _ = channel.close(200, "claimed").await;
                Ok(true)
            }
            Err(lapin::Error::ProtocolError(e))
                if *e.kind()
                    == lapin::protocol::AMQPErrorKind::Soft(
                        lapin::protocol::AMQPSoftError::RESOURCELOCKED,
                    ) =>
            {
                Ok(false)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    fn claim_queue(&self, id: &str) -> String {
        format!("berth.{}.once.{id}", self.settings.app)
    }

    /// A new channel on the live connection (reconnecting if need be), for
    /// work that must not share the publisher's channel: a failed
    /// declaration closes the channel it was made on.
    async fn channel(&self) -> Result<Channel, MessagingError> {
        self.link()
            .await?
            .connection
            .create_channel()
            .await
            .map_err(unavailable)
    }

    /// Gives up the claim on `id`, so another host's retry may publish it.
    async fn release_claim(&self, id: &str) {
        if let Ok(channel) = self.channel().await {
            let _ = channel
                .queue_delete(&self.claim_queue(id), QueueDeleteOptions::default())
                .await;
            let _ = channel.close(200, "claim released").await;
        }
    }

    async fn declare_topology(&self, ch: &Channel) -> Result<(), MessagingError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let unrouted = self.unrouted_queue();
        ch.exchange_declare(
            &unrouted,
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(unavailable)?;
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(UNROUTED_MAX));
        ch.queue_declare(&unrouted, durable_queue(), args)
            .await
            .map_err(unavailable)?;
        ch.queue_bind(
            &unrouted,
            &unrouted,
            "",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(unavailable)?;
        let mut args = FieldTable::default();
        args.insert(
            "alternate-exchange".into(),
            AMQPValue::LongString(unrouted.as_str().into()),
        );
        ch.exchange_declare(self.exchange(), ExchangeKind::Topic, durable, args)
            .await
            .map_err(unavailable)?;
        ch.exchange_declare(
            &self.request_exchange(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Longest a publish waits for the broker's confirm. Without a bound, a
/// broker blocking publishers (a memory or disk alarm) would hold the
/// host's own publishes (dead letters, retries, replies) for ever; a
/// guest's are bounded by its invocation's time limit too.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Publishes on a confirm-mode channel and waits for the broker's answer
/// (at most [`CONFIRM_TIMEOUT`]); `Ok(false)` when a `mandatory` message
/// was returned unrouted.
async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<bool, MessagingError> {
    let options = BasicPublishOptions {
        mandatory,
        ..Default::default()
    };
    let confirmed = async {
        channel
            .basic_publish(exchange, routing_key, options, payload, properties)
            .await?
            .await
    };
    let confirm = tokio::time::timeout(CONFIRM_TIMEOUT, confirmed)
        .await
        .map_err(|_| {
            MessagingError::Unavailable(format!(
                "the broker did not confirm the message within {} s (a broker under a memory or disk alarm stops reading from publishers)",
                CONFIRM_TIMEOUT.as_secs()
            ))
        })?
        .map_err(unavailable)?;
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(true),
        Confirmation::Ack(Some(_)) => Ok(false),
        Confirmation::Nack(_) => Err(MessagingError::Unavailable(
            "the broker refused the message".into(),
        )),
    }
}

impl RabbitBroker {
    /// Publishes a persistent message to the app's exchange and waits for
    /// the confirm.
    async fn send(
        &self,
        topic: &str,
        id: &str,
        payload: &[u8],
        headers: &[(String, String)],
    ) -> Result<(), MessagingError> {
        for (name, _) in headers {
            check_short("a header name", name)?;
        }
        let link = self.shared.link().await?;
        publish_confirmed(
            &link.publisher,
            self.shared.exchange(),
            topic,
            false,
            payload,
            properties(id, headers, 1),
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl MessagingBackend for RabbitBroker {
    async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<String, MessagingError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.send(topic, &id, &payload, &headers).await?;
        Ok(id)
    }

    async fn publish_with_id(
        &self,
        topic: &str,
        id: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<(), MessagingError> {
        if !self.shared.claim(id).await? {
            tracing::debug!(topic, id, "another host published this id");
            return Ok(());
        }
        let sent = self.send(topic, id, &payload, &headers).await;
        if sent.is_err() {
            self.shared.release_claim(id).await;
        }
        sent
    }

    async fn request(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Message, MessagingError> {
        for (name, _) in &headers {
            check_short("a header name", name)?;
        }
        // Direct reply-to: consume the pseudo-queue, then publish on the
        // same channel.
        let channel = self.shared.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        let mut replies = channel
            .basic_consume(
                REPLY_TO,
                "",
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        let id = uuid::Uuid::new_v4().to_string();
        let props = properties(&id, &headers, 1)
            .with_delivery_mode(1)
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id(id.as_str().into())
            // Dropped by RabbitMQ once its caller stopped waiting, so a
            // trigger that fell behind never runs it (nor holds it).
            .with_expiration(timeout.as_millis().to_string().into());
        let routed = publish_confirmed(
            &channel,
            &self.shared.request_exchange(),
            topic,
            true,
            &payload,
            props,
        )
        .await?;
        let result = if !routed {
            Err(MessagingError::NoResponder)
        } else {
            match tokio::time::timeout(timeout, replies.next()).await {
                Err(_) => Err(MessagingError::Timeout),
                Ok(None) | Ok(Some(Err(_))) => Err(MessagingError::Unavailable(
                    "the reply channel closed".into(),
                )),
                Ok(Some(Ok(reply))) => {
                    let (headers, _) = headers_of(&reply.properties);
                    Ok(Message {
                        id: uuid::Uuid::new_v4().to_string(),
                        topic: topic.to_string(),
                        payload: reply.data,
                        headers,
                        attempt: 1,
                    })
                }
            }
        };
        let _ = channel.close(200, "request done").await;
        result
    }

    async fn subscribe(
        &self,
        topic: &str,
        consumer: &str,
    ) -> Result<Box<dyn Subscription>, MessagingError> {
        // `berth.<app>.req.<c>.<t>` is component `c`'s request queue and
        // `berth.<app>.once.<id>` a tick's claim: a trigger queue of a
        // component so named would be another queue's name (declared
        // otherwise, so one of the two could never be declared).
        if RESERVED_COMPONENTS.contains(&consumer) {
            return Err(MessagingError::InvalidInput(format!(
                "component `{consumer}` cannot have message triggers on RabbitMQ: its queues would be named like the app's request queues or tick claims; rename the component"
            )));
        }
        let queue = self.shared.queue(consumer, topic);
        check_short("the trigger's queue name", &queue)?;
        check_short(
            "the trigger's request queue name",
            &self.shared.request_queue(consumer, topic),
        )?;
        let mut subscription = RabbitSubscription {
            shared: self.shared.clone(),
            queue,
            consumer: consumer.to_string(),
            topic: topic.to_string(),
            messages: None,
            requests: None,
            channel: None,
            requests_retry: None,
        };
        // Declared and consuming before the app runs, so an unreachable
        // broker fails the start.
        subscription.open().await?;
        Ok(Box::new(subscription))
    }
}
