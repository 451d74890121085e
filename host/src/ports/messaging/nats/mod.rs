//! NATS JetStream adapter (`async-nats`): each app gets a stream
//! `BERTH_<app>` capturing `berth.<app>.msg.>`; a topic `t` is the subject
//! `berth.<app>.msg.t`, so the guest can never name a subject outside its
//! app (topics are validated: no wildcards, no `$JS`/`_INBOX`). A trigger's
//! pattern is a NATS filter as it is (Berth took NATS's wildcards).
//!
//! - `publish` waits for the stream's acknowledgement; the message id is
//!   sent as `Nats-Msg-Id`, so JetStream deduplicates a retried publish.
//! - Each message trigger is a durable pull consumer with explicit acks,
//!   shared by every host process of the app: that is the work
//!   distribution. `nack` asks for redelivery after the trigger's backoff.
//!   Its name is derived from the trigger without collisions (see
//!   [`durable_name`]); one made by an earlier Berth is kept.
//!   A handler still running tells JetStream so (`+WPI`) twice per ack
//!   wait, so a slow handler is not given its message again while it
//!   runs. Messages fetched ahead of the handlers (at most `prefetch`)
//!   wait in the host's own queue, and are told in progress there too: the
//!   host fetches more only as the queue empties (see [`feed`]), so no
//!   message waits where it cannot be seen.
//! - Request/reply uses core NATS on `berth.<app>.req.<topic>` (outside the
//!   stream, so requests are not stored) with a queue group per trigger.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode, consumer::pull, stream};
use async_trait::async_trait;
use bytes::Bytes;

mod app_stream;
mod feed;
mod headers;
mod subscription;

use feed::{AckWait, Held, Remake, Watched, feed, watch};
use headers::{headers_from_nats, headers_to_nats, wire_size};
use subscription::NatsSubscription;

use super::{
    Message, MessagingBackend, MessagingError, QUEUED_BYTES, QueuedBytes, RequestInbox,
    Subscription,
};
use crate::secret::Secret;

/// Settings of an app's NATS broker.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// `nats://host:port` (credentials, if any, as references).
    pub url: Secret,
    /// The app, naming the stream and subject space.
    pub app: String,
    /// Connect timeout, and that of each JetStream API call about the
    /// app's stream and consumers.
    pub timeout: Duration,
    /// How long a delivery may stay unacknowledged before JetStream
    /// redelivers it (covers a host that died mid-message).
    pub ack_wait: Duration,
    /// Messages a trigger holds fetched ahead of its handlers (default 200).
    /// They are told in progress while they wait, so this bounds memory
    /// and how much a host takes from others sharing the consumer. Fast
    /// handlers need a large one: with 32, B10's warm no-op case fell from
    /// 1.00x to 0.54x (async-nats' pull stream, before the host's queue).
    pub prefetch: u16,
    /// The most the app's stream keeps, in bytes (`None`: no cap), so a
    /// tenant cannot fill the server's disk for the others. A full stream
    /// drops its oldest messages, as Kafka's retention does: handled
    /// messages stay in the stream until they age out, so refusing new
    /// ones would stop the app once that much had been handled.
    pub max_bytes: Option<i64>,
    /// How long the app's stream keeps a message (zero: for ever).
    pub max_age: Duration,
    /// A dry run (`berth check`): the server is connected to and asked
    /// for JetStream, but the app's stream is only read, neither made nor
    /// given these limits (lower ones would drop messages a running host
    /// keeps).
    pub dry_run: bool,
}

/// An app's broker on NATS JetStream.
pub struct NatsBroker {
    client: async_nats::Client,
    js: jetstream::Context,
    app: String,
    ack_wait: Duration,
    prefetch: u16,
    /// The longest one call of the JetStream API may take.
    api_timeout: Duration,
    /// The app's stream as the host config wants it.
    stream: stream::Config,
    /// What requests waiting for this app's handlers may hold.
    queued: std::sync::Arc<QueuedBytes>,
}

/// Deliveries of a new trigger consumer that may await their ack at once,
/// all hosts together. A message refused with a backoff counts until it is
/// delivered again, so with the server's default (1,000) that many failing
/// messages stalled the trigger for their whole backoff, and a few hosts'
/// prefetch used it all up.
const MAX_ACK_PENDING: i64 = 20_000;

/// How long JetStream remembers a message id, so that a publish retried
/// within it is stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

fn unavailable(e: impl std::fmt::Display) -> MessagingError {
    super::unreachable("nats", e)
}

/// A publish the stream did not acknowledge. A store failure (the server's
/// disk or its JetStream limits full) is told apart in the host's log.
fn publish_failure(e: PublishError) -> MessagingError {
    let stream_error =
        std::error::Error::source(&e).and_then(|source| source.downcast_ref::<jetstream::Error>());
    match stream_error {
        Some(error) if error.error_code() == ErrorCode::STREAM_STORE_FAILED => {
            tracing::warn!(%error, "the app's nats stream refused a message");
            MessagingError::Unavailable("the broker cannot store the message now".into())
        }
        _ => unavailable(e),
    }
}

impl NatsBroker {
    /// Refuses a message the server would refuse by closing the whole
    /// connection (every trigger's pulls and acks with it): one over its
    /// `max_payload`, headers included.
    fn check_size(&self, payload: usize, headers: &HeaderMap) -> Result<(), MessagingError> {
        let max = self.client.server_info().max_payload;
        let size = wire_size(payload, headers);
        if max > 0 && size > max {
            return Err(MessagingError::TooLarge(format!(
                "the message is {size} bytes with its headers; the broker takes at most {max}"
            )));
        }
        Ok(())
    }

    /// Connects and makes sure the app's stream exists (unless a dry run).
    pub async fn connect(s: &NatsSettings) -> Result<NatsBroker, MessagingError> {
        // Credentials go through the options, not the URL, so the client
        // never holds (or logs) a URL with a password in it.
        let (url, credentials) = split_userinfo(s.url.expose())?;
        // Requests are bounded by the guest's own timeout (up to 60 s), not
        // by the client's default of 10 s.
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(s.timeout)
            .request_timeout(None);
        match credentials {
            Some(Credentials::Token(token)) => options = options.token(token),
            Some(Credentials::UserAndPassword(user, password)) => {
                options = options.user_and_password(user, password)
            }
            None => {}
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
            prefetch: s.prefetch,
            api_timeout: s.timeout,
            queued: QueuedBytes::new(&s.app, QUEUED_BYTES),
            stream: stream::Config {
                name: format!("BERTH_{}", s.app),
                subjects: vec![format!("berth.{}.msg.>", s.app)],
                // JetStream refuses a window longer than the messages last.
                duplicate_window: if s.max_age.is_zero() {
                    DUPLICATE_WINDOW
                } else {
                    DUPLICATE_WINDOW.min(s.max_age)
                },
                max_bytes: s.max_bytes.unwrap_or(-1),
                max_age: s.max_age,
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            },
        };
        if s.dry_run {
            broker.check_stream().await?;
        } else {
            broker.make_stream().await?;
        }
        Ok(broker)
    }

    /// Publishes a message and waits for the stream's acknowledgement.
    async fn store(
        &self,
        subject: &str,
        headers: &HeaderMap,
        payload: &Bytes,
    ) -> Result<(), PublishError> {
        let ack = self
            .js
            .publish_with_headers(subject.to_string(), headers.clone(), payload.clone())
            .await?;
        ack.await.map(drop)
    }

    /// `BERTH_<app>`.
    pub fn stream_name(&self) -> String {
        self.stream.name.clone()
    }

    fn msg_subject(&self, topic: &str) -> String {
        format!("berth.{}.msg.{topic}", self.app)
    }

    fn req_subject(&self, topic: &str) -> String {
        format!("berth.{}.req.{topic}", self.app)
    }
}

/// The credentials a NATS URL carries.
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    /// `nats://TOKEN@host`: NATS's token authentication.
    Token(String),
    /// `nats://user:password@host`.
    UserAndPassword(String, String),
}

/// Splits `nats://user:pass@host:port` (or `nats://token@host:port`) into
/// the URL without user info and the credentials, percent-decoded (a URL
/// writes `@`, `:`, `/` or `%` in them as `%40`, `%3A`, `%2F`, `%25`). A
/// malformed escape is `invalid-input`, which never repeats the URL: it may
/// hold a password.
fn split_userinfo(url: &str) -> Result<(String, Option<Credentials>), MessagingError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok((url.to_string(), None));
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return Ok((url.to_string(), None));
    };
    let decode = |part: &str| {
        crate::ports::percent_decode(part).ok_or_else(|| {
            MessagingError::InvalidInput(
                "the NATS URL's user or password has a malformed %-escape (write `%` as `%25`) or is not UTF-8 once decoded".into(),
            )
        })
    };
    let credentials = match userinfo.split_once(':') {
        Some((user, password)) => Credentials::UserAndPassword(decode(user)?, decode(password)?),
        None => Credentials::Token(decode(userinfo)?),
    };
    Ok((format!("{scheme}://{host}"), Some(credentials)))
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
        let headers = headers_to_nats(&headers, id);
        self.check_size(payload.len(), &headers)?;
        let subject = self.msg_subject(topic);
        let payload = Bytes::from(payload);
        match self.store(&subject, &headers, &payload).await {
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                // Deleted by an operator: made again (empty), and the
                // message stored there.
                tracing::warn!(stream = %self.stream.name, "the app's nats stream was gone; making it again");
                self.make_stream().await?;
                self.store(&subject, &headers, &payload).await
            }
            stored => stored,
        }
        .map_err(publish_failure)
    }

    async fn request(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Message, MessagingError> {
        let id = uuid::Uuid::new_v4().to_string();
        let mut headers = headers_to_nats(&headers, &id);
        headers.insert(
            headers::TIMEOUT_MS,
            timeout.as_millis().to_string().as_str(),
        );
        self.check_size(payload.len(), &headers)?;
        let request = self.client.request_with_headers(
            self.req_subject(topic),
            headers,
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
        let looked_up = self.api("look up", self.js.get_stream(self.stream_name()));
        let stream = looked_up.await?.map_err(unavailable)?;
        let filter_subject = self.msg_subject(topic);
        let legacy = legacy_consumer(&stream, consumer, topic, &filter_subject);
        let durable = match self.api("look up an earlier consumer on", legacy).await?? {
            Some(legacy) => legacy,
            None => durable_name(consumer, topic),
        };
        let config = pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_ack_pending: MAX_ACK_PENDING,
            ..Default::default()
        };
        let made = self.api(
            "make a consumer on",
            stream.get_or_create_consumer(&durable, config.clone()),
        );
        let mut pull_consumer: jetstream::consumer::Consumer<pull::Config> =
            made.await?.map_err(unavailable)?;
        // An existing consumer keeps the settings it was made with. The ack
        // wait is one JetStream lets change, so a changed `ack_wait_ms`
        // applies to it; if the server refuses, it keeps its own.
        if pull_consumer.cached_info().config.ack_wait != self.ack_wait {
            // Starting where the consumer does: one made again after a
            // deletion starts at a sequence, and JetStream refuses to
            // change where a consumer starts.
            let mut update = config.clone();
            update.deliver_policy = pull_consumer.cached_info().config.deliver_policy;
            match self
                .api("update a consumer on", stream.create_consumer(update))
                .await?
            {
                Ok(updated) => pull_consumer = updated,
                Err(e) => tracing::warn!(durable = %durable, error = %e,
                    "cannot change the durable consumer's ack wait to messaging.ack_wait_ms; it keeps its own"),
            }
        }
        // The deliveries' progress acks follow the consumer's real ack wait.
        let ack_wait = AckWait::new(match pull_consumer.cached_info().config.ack_wait {
            wait if wait.is_zero() => self.ack_wait,
            wait => wait,
        });
        let requests = self
            .client
            .queue_subscribe(self.req_subject(topic), durable.clone())
            .await
            .map_err(unavailable)?;
        let held = Arc::new(Held::default());
        let watched = Watched::new(pull_consumer.cached_info());
        let remake = Remake {
            js: self.js.clone(),
            stream: self.stream.clone(),
            consumer: config,
            watched: watched.clone(),
        };
        let watcher = tokio::spawn(watch(pull_consumer.clone(), watched, ack_wait.clone()));
        let feeder = tokio::spawn(feed(
            pull_consumer,
            remake,
            held.clone(),
            usize::from(self.prefetch).max(1),
            ack_wait.clone(),
        ));
        Ok(Box::new(NatsSubscription {
            held,
            feeder,
            watcher,
            requests: Some(RequestInbox::shedding(
                requests,
                |request| request.payload.len(),
                self.queued.clone(),
            )),
            client: self.client.clone(),
            ack_wait,
        }))
    }

    /// Sends what the client still buffers: the acks of the handlers that
    /// just finished, which a host exiting right after would otherwise
    /// lose (each message then being handled again after the ack wait).
    async fn close(&self) {
        match tokio::time::timeout(CLOSE_FLUSH, self.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot send the last acks to NATS; their messages will be delivered again")
            }
            Err(_) => tracing::warn!(
                "NATS did not take the last acks in time; their messages may be delivered again"
            ),
        }
    }
}

/// How long [`MessagingBackend::close`] waits for the client's buffer to
/// reach the server.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// Longest durable name spelled out; longer ones end in a hash instead
/// (JetStream keeps each consumer in a directory named after it).
const DURABLE_NAME_MAX: usize = 128;

/// The durable consumer of trigger `consumer` on `topic` (a topic or a
/// pattern): both escaped (`_` as `_u`, `.` as `_d`, `*` as `_s`, `>` as
/// `_r`, none of which JetStream allows in a name except `_`) and joined by
/// `__`, which no escaped text contains, so no two triggers share one.
fn durable_name(consumer: &str, topic: &str) -> String {
    fn escape(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            match c {
                '_' => out.push_str("_u"),
                '.' => out.push_str("_d"),
                '*' => out.push_str("_s"),
                '>' => out.push_str("_r"),
                c => out.push(c),
            }
        }
        out
    }
    let name = format!("{}__{}", escape(consumer), escape(topic));
    if name.len() <= DURABLE_NAME_MAX {
        return name;
    }
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(name.as_bytes());
    // Names are ASCII (topics and component names are checked so).
    let head = name.get(..DURABLE_NAME_MAX - 34).unwrap_or_default();
    format!("{head}_h{}", hex::encode(&hash[..16]))
}

/// The durable consumer an earlier Berth made for this trigger, named
/// `<consumer>__<topic with `.` as `_`>`: kept, so an upgrade neither
/// replays nor skips the trigger's messages. That name could be shared by
/// two triggers (`a.b` and `a_b`), so it is only taken when its filter is
/// this trigger's own subject. Only "not found" means there is none: any
/// other failure fails the subscription, since guessing wrong would create
/// a second consumer that replays the stream.
async fn legacy_consumer(
    stream: &jetstream::stream::Stream,
    consumer: &str,
    topic: &str,
    filter_subject: &str,
) -> Result<Option<String>, MessagingError> {
    use async_nats::jetstream::context::ConsumerInfoErrorKind;
    let legacy = format!("{consumer}__{}", topic.replace('.', "_"));
    if super::pattern::is_pattern(topic) || legacy == durable_name(consumer, topic) {
        return Ok(None);
    }
    let info = match stream.consumer_info(&legacy).await {
        Ok(info) => info,
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unavailable(e)),
    };
    Ok((info.config.filter_subject == filter_subject).then(|| {
        tracing::info!(durable = %legacy, "a trigger keeps the durable consumer an earlier berth named");
        legacy
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_are_percent_decoded() {
        let login = |user: &str, password: &str| {
            Some(Credentials::UserAndPassword(user.into(), password.into()))
        };
        let (url, credentials) = split_userinfo("nats://u%40x:p%3Aa%25ss@h:4222").unwrap();
        assert_eq!(url, "nats://h:4222");
        assert_eq!(credentials, login("u@x", "p:a%ss"));
        let (url, credentials) = split_userinfo("nats://user:plain@h:4222").unwrap();
        assert_eq!(url, "nats://h:4222");
        assert_eq!(credentials, login("user", "plain"));
        // Only the last `@` ends the user info.
        let (_, credentials) = split_userinfo("nats://u:p@ss@h:4222").unwrap();
        assert_eq!(credentials, login("u", "p@ss"));
        // User info without a `:` is a token, as NATS's own clients read it.
        let (url, credentials) = split_userinfo("nats://s3cr%40t@h").unwrap();
        assert_eq!(url, "nats://h");
        assert_eq!(credentials, Some(Credentials::Token("s3cr@t".into())));
        assert_eq!(
            split_userinfo("nats://h:4222").unwrap(),
            ("nats://h:4222".to_string(), None)
        );
    }

    #[test]
    fn malformed_url_credentials_are_refused_without_repeating_them() {
        for url in [
            "nats://u:s3cr%zzet@h:4222",
            "nats://u:s3cret%@h:4222",
            "nats://u%4:s3cret@h:4222",
            "nats://u:s3cr%FFet@h:4222",
        ] {
            match split_userinfo(url) {
                Err(MessagingError::InvalidInput(m)) => {
                    assert!(!m.contains("s3cr") && !m.contains("u%4"), "{url}: {m}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn durable_names_never_collide_and_stay_short() {
        let names = [
            durable_name("c", "a.b"),
            durable_name("c", "a_b"),
            durable_name("c", "a.*"),
            durable_name("c", "a.>"),
            durable_name("c__a", "b"),
            durable_name("c", "a__b"),
            durable_name("c_", "_a"),
        ];
        let distinct: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
        for name in &names {
            assert!(!name.contains(['.', '*', '>', ' ']), "{name}");
        }
        assert_eq!(
            durable_name("orders", "user.created"),
            "orders__user_dcreated"
        );
        let long_topic = vec!["x"; 120].join(".");
        let long = durable_name("c", &long_topic);
        assert!(long.len() <= DURABLE_NAME_MAX, "{}", long.len());
        assert_ne!(long, durable_name("c", &vec!["x"; 119].join(".")));
    }
}
