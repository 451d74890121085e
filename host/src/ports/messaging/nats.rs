//! NATS JetStream adapter (`async-nats`): each app gets a stream
//! `BERTH_<app>` capturing `berth.<app>.msg.>`; a topic `t` is the subject
//! `berth.<app>.msg.t`, so the guest can never name a subject outside its
//! app (topics are validated: no wildcards, no `$JS`/`_INBOX`).
//!
//! - `publish` waits for the stream's acknowledgement; the message id is
//!   sent as `Nats-Msg-Id`, so JetStream deduplicates a retried publish.
//! - Each message trigger is a durable pull consumer with explicit acks,
//!   shared by every host process of the app: that is the work
//!   distribution. `nack` asks for redelivery after the trigger's backoff.
//! - Request/reply uses core NATS on `berth.<app>.req.<topic>` (outside the
//!   stream, so requests are not stored) with a queue group per trigger.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::oneshot;

use super::{Acker, Delivery, Message, MessagingBackend, MessagingError, NoAck, Subscription};
use crate::secret::Secret;

/// Header carrying Berth's message id.
const MSG_ID: &str = "Nats-Msg-Id";

/// Settings of an app's NATS broker.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// `nats://host:port` (credentials, if any, as references).
    pub url: Secret,
    /// The app, naming the stream and subject space.
    pub app: String,
    /// Connect timeout.
    pub timeout: Duration,
    /// How long a delivery may stay unacknowledged before JetStream
    /// redelivers it (covers a host that died mid-message).
    pub ack_wait: Duration,
}

/// An app's broker on NATS JetStream.
pub struct NatsBroker {
    client: async_nats::Client,
    js: jetstream::Context,
    app: String,
    ack_wait: Duration,
}

fn unavailable(e: impl std::fmt::Display) -> MessagingError {
    super::unreachable("nats", e)
}

impl NatsBroker {
    /// Connects and makes sure the app's stream exists.
    pub async fn connect(s: &NatsSettings) -> Result<NatsBroker, MessagingError> {
        // Credentials go through the options, not the URL, so the client
        // never holds (or logs) a URL with a password in it.
        let (url, credentials) = split_userinfo(s.url.expose());
        let mut options = async_nats::ConnectOptions::new().connection_timeout(s.timeout);
        if let Some((user, password)) = credentials {
            options = options.user_and_password(user, password);
        }
        let client = tokio::time::timeout(s.timeout, options.connect(url))
            .await
            .map_err(|_| unavailable("connect timed out"))?
            .map_err(unavailable)?;
        let js = jetstream::new(client.clone());
        let broker = NatsBroker {
            client,
            js,
            app: s.app.clone(),
            ack_wait: s.ack_wait,
        };
        broker
            .js
            .get_or_create_stream(stream::Config {
                name: broker.stream_name(),
                subjects: vec![format!("berth.{}.msg.>", broker.app)],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        Ok(broker)
    }

    /// `BERTH_<app>`.
    pub fn stream_name(&self) -> String {
        format!("BERTH_{}", self.app)
    }

    fn msg_subject(&self, topic: &str) -> String {
        format!("berth.{}.msg.{topic}", self.app)
    }

    fn req_subject(&self, topic: &str) -> String {
        format!("berth.{}.req.{topic}", self.app)
    }
}

/// Splits `nats://user:pass@host:port` into the URL without user info and
/// the credentials.
fn split_userinfo(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            (
                format!("{scheme}://{host}"),
                Some((user.to_string(), password.to_string())),
            )
        }
        None => (url.to_string(), None),
    }
}

fn headers_to_nats(headers: &[(String, String)], id: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(k.as_str(), v.as_str());
    }
    map.insert(MSG_ID, id);
    map
}

fn headers_from_nats(map: Option<&HeaderMap>) -> (Option<String>, Vec<(String, String)>) {
    let mut id = None;
    let mut out = Vec::new();
    for (name, values) in map.into_iter().flat_map(|m| m.iter()) {
        for v in values {
            if AsRef::<str>::as_ref(name) == MSG_ID {
                id = Some(v.to_string());
            } else {
                out.push((name.to_string(), v.to_string()));
            }
        }
    }
    out.sort();
    (id, out)
}

fn topic_of(subject: &str, marker: &str) -> String {
    subject
        .split_once(marker)
        .map(|(_, t)| t.to_string())
        .unwrap_or_default()
}

#[async_trait]
impl MessagingBackend for NatsBroker {
    async fn publish_with_id(
        &self,
        topic: &str,
        id: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<(), MessagingError> {
        let ack = self
            .js
            .publish_with_headers(
                self.msg_subject(topic),
                headers_to_nats(&headers, id),
                Bytes::from(payload),
            )
            .await
            .map_err(unavailable)?;
        ack.await.map_err(unavailable)?;
        Ok(())
    }

    async fn request(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Message, MessagingError> {
        let id = uuid::Uuid::new_v4().to_string();
        let request = self.client.request_with_headers(
            self.req_subject(topic),
            headers_to_nats(&headers, &id),
            Bytes::from(payload),
        );
        let reply = match tokio::time::timeout(timeout, request).await {
            Err(_) => return Err(MessagingError::Timeout),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                return Err(MessagingError::NoResponder);
            }
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
                return Err(MessagingError::Timeout);
            }
            Ok(Err(e)) => return Err(unavailable(e)),
            Ok(Ok(reply)) => reply,
        };
        let (_, headers) = headers_from_nats(reply.headers.as_ref());
        Ok(Message {
            id: uuid::Uuid::new_v4().to_string(),
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
        let durable = format!("{consumer}__{}", topic.replace('.', "_"));
        let stream = self
            .js
            .get_stream(self.stream_name())
            .await
            .map_err(unavailable)?;
        let pull_consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(
                &durable,
                pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject: self.msg_subject(topic),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    ..Default::default()
                },
            )
            .await
            .map_err(unavailable)?;
        let messages = pull_consumer.messages().await.map_err(unavailable)?;
        let requests = self
            .client
            .queue_subscribe(self.req_subject(topic), durable.clone())
            .await
            .map_err(unavailable)?;
        Ok(Box::new(NatsSubscription {
            messages,
            requests: Some(requests),
            client: self.client.clone(),
        }))
    }
}

/// A trigger's deliveries: stored messages from its durable pull consumer
/// and requests from its queue group, polled directly by the trigger's
/// consumer loop (no forwarding task, so no extra thread hop per message).
struct NatsSubscription {
    messages: pull::Stream,
    /// `None` once the request subscription ended; stored messages go on.
    requests: Option<async_nats::Subscriber>,
    client: async_nats::Client,
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            // `StreamExt::next` is cancel-safe, so losing the race drops
            // nothing.
            let request = async {
                match self.requests.as_mut() {
                    Some(requests) => requests.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                next = self.messages.next() => match next {
                    Some(Ok(msg)) => return Some(stored_delivery(msg)),
                    Some(Err(e)) => tracing::debug!(error = %e, "nats pull consumer error"),
                    None => return None,
                },
                req = request => match req {
                    Some(req) => {
                        if let Some(delivery) = request_delivery(req, &self.client) {
                            return Some(delivery);
                        }
                    }
                    None => self.requests = None,
                },
            }
        }
    }
}

/// A stored message, acknowledged through JetStream.
fn stored_delivery(msg: jetstream::Message) -> Delivery {
    let info = msg.info().ok();
    let attempt = info.as_ref().map_or(1, |i| i.delivered.max(1) as u32);
    let sequence = info.as_ref().map_or(0, |i| i.stream_sequence);
    let (id, headers) = headers_from_nats(msg.headers.as_ref());
    let message = Message {
        id: id.unwrap_or_else(|| format!("seq-{sequence}")),
        topic: topic_of(&msg.subject, ".msg."),
        payload: msg.payload.to_vec(),
        headers,
        attempt,
    };
    Delivery {
        message,
        reply: None,
        acker: Box::new(JsAcker(msg)),
    }
}

/// A request: the handler's answer is published to its reply subject.
fn request_delivery(req: async_nats::Message, client: &async_nats::Client) -> Option<Delivery> {
    let reply_to = req.reply.clone()?;
    let (id, headers) = headers_from_nats(req.headers.as_ref());
    let (reply_tx, reply_rx) = oneshot::channel::<Vec<u8>>();
    let message = Message {
        id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        topic: topic_of(&req.subject, ".req."),
        payload: req.payload.to_vec(),
        headers,
        attempt: 1,
    };
    let client = client.clone();
    tokio::spawn(async move {
        if let Ok(payload) = reply_rx.await {
            let _ = client.publish(reply_to, Bytes::from(payload)).await;
        }
    });
    Some(Delivery {
        message,
        reply: Some(reply_tx),
        acker: Box::new(NoAck),
    })
}

struct JsAcker(jetstream::Message);

#[async_trait]
impl Acker for JsAcker {
    async fn ack(self: Box<Self>) {
        if let Err(e) = self.0.ack().await {
            tracing::warn!(error = %e, "cannot acknowledge a message; it will be redelivered");
        }
    }

    async fn nack(self: Box<Self>, delay: Duration) {
        if let Err(e) = self.0.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!(error = %e, "cannot nak a message; it will be redelivered after ack_wait");
        }
    }
}
