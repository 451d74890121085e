//! Kafka adapter (`krafka`, pure Rust, with consumer groups; tested against
//! the `tansu` broker).
//!
//! - A topic `t` of app `<app>` is the Kafka topic `berth.<app>.t`, created
//!   on first use with `partitions` partitions (default
//!   [`DEFAULT_PARTITIONS`]). Publishing waits for the broker's
//!   acknowledgement (idempotent producer, all in-sync replicas). The id is
//!   the record key, so a message and its retried copies share a partition,
//!   and travels as the header `berth-id`; the attempt of a republished
//!   message as `berth-attempt`.
//! - Each message trigger is a **consumer group**,
//!   `berth.<app>/<component>/<trigger topic or pattern>`, that every host
//!   serving the app joins: Kafka deals the partitions of the trigger's
//!   topics out among the hosts, and gives a host's partitions to the others
//!   when it leaves or stops heartbeating (`session_timeout_ms`). The group's
//!   committed offset of a partition only moves past a record once it and
//!   every earlier one were settled, so the partitions of a host that died
//!   are read again from the first unsettled record: at least once.
//! - Redelivery after a failure: once the backoff has passed, a copy with
//!   the attempt incremented is produced to the same topic, addressed to the
//!   failed trigger's group (`berth-for`) so that the topic's other triggers
//!   skip it, then the original counts as settled.
//! - Ids published with [`MessagingBackend::publish_with_id`] (schedule
//!   ticks, which every host publishes) carry `berth-once`: a trigger skips
//!   such a record when its id came among the last [`ONCE_WINDOW`] of them
//!   in the partition (copies of one id share a partition through the key).
//!   A host given a partition first reads back the [`ONCE_WINDOW`] records
//!   before its first one (settled by whichever host had it), so it knows
//!   those ids too. Each tick thus runs once, however many hosts publish
//!   it, as long as its copies come within that many records of each
//!   other.
//! - Request/reply: a request goes to `berth.<app>.__req.<t>` with the
//!   headers `berth-reply-to`, `berth-correlation` and `berth-deadline`;
//!   the trigger's group reads those topics too, settles each request as it
//!   takes it (requests are never redelivered) and drops the expired ones.
//!   Replies come back on `berth.<app>.__reply`, which every host reads from
//!   its newest record on. A request to a topic no trigger ever subscribed
//!   to (its request topic does not exist) is `no-responder`, unless a
//!   pattern trigger of this host matches it (see below).
//! - A pattern trigger (see [`pattern`]) lists the cluster's topics every
//!   [`DISCOVER_EVERY`] (2 s) and subscribes its group to every
//!   `berth.<app>.<t>` (and request topic) whose `t` the pattern matches; a
//!   topic found later is read from its start, so nothing published to it
//!   is lost. A request to a topic only a pattern trigger matches creates
//!   the request topic and waits for that listing too.
//! - An app has at most `max_topics` Kafka topics (default
//!   [`DEFAULT_MAX_TOPICS`]); creating one more is refused. So is a topic
//!   whose name differs from an existing one's only in `.` against `_`,
//!   which Kafka takes for the same character (see
//!   [`names::folds_alike`]); real Kafka refuses to create it too.
//! - Upgrading from the release before (which kept each trigger's offset
//!   itself, in `berth.<app>.__offsets`): a group that has committed nothing
//!   for partition 0 of a topic starts where the old offset says (see
//!   [`legacy`]), so nothing is replayed or skipped.
//!
//! Limits: order holds within a partition only; a committed offset the log
//! no longer has (retention deleted it) moves to the earliest record;
//! records from transactional producers that aborted are read (the consumer
//! reads uncommitted); no TLS or SASL yet. Producing one record per batch
//! works around the tansu broker (see [`shared`]).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use krafka::Record;
use krafka::consumer::ConsumerRecord;
use tokio::sync::{mpsc, oneshot};

use super::{
    AbortOnDrop, Acker, Delivery, Message, MessagingBackend, MessagingError, NoAck, Subscription,
    answer_within, pattern,
};

mod discover;
mod group;
mod legacy;
mod names;
mod progress;
mod shared;

use group::*;
use names::*;
use progress::*;
use shared::*;

/// Header carrying the Berth id.
const ID_HEADER: &str = "berth-id";
/// Header carrying the attempt of a republished message.
const ATTEMPT_HEADER: &str = "berth-attempt";
/// Header of a failed message's copy naming the one trigger (its group) it
/// is for: the other triggers reading the topic skip it, having had the
/// original.
const FOR_HEADER: &str = "berth-for";
/// Header marking a record whose id every host may publish (a schedule
/// tick): a trigger delivers the first record of an id, not its copies.
const ONCE_HEADER: &str = "berth-once";
/// Header of a request naming the topic its reply goes to.
const REPLY_TO_HEADER: &str = "berth-reply-to";
/// Header matching a reply with its request.
const CORRELATION_HEADER: &str = "berth-correlation";
/// Header of a request: when its requester stops waiting (Unix ms).
const DEADLINE_HEADER: &str = "berth-deadline";
/// Berth's own headers: a publisher's are dropped, a handler never sees
/// them.
const RESERVED: [&str; 7] = [
    ID_HEADER,
    ATTEMPT_HEADER,
    FOR_HEADER,
    ONCE_HEADER,
    REPLY_TO_HEADER,
    CORRELATION_HEADER,
    DEADLINE_HEADER,
];
/// How long a request without a deadline (from the release before) is
/// answered after it was produced.
const LEGACY_REQUEST_TTL: Duration = Duration::from_secs(30);
/// Partitions of the topics Berth creates, unless the host config says
/// otherwise: at most this many hosts share a topic's messages.
pub const DEFAULT_PARTITIONS: i32 = 6;
/// How long a host may go silent before its partitions go to the others,
/// unless the host config says otherwise.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// The most Kafka topics an app has before Berth refuses to create
/// another, unless `messaging.max_topics` says otherwise: a publish grant
/// that is a pattern would otherwise let a guest create topics (each with
/// `partitions` partitions, on a cluster other apps share) without end.
pub const DEFAULT_MAX_TOPICS: usize = 1000;
/// How many `berth-once` ids a trigger remembers per partition.
const ONCE_WINDOW: usize = 64;
/// How long closing waits for the triggers to leave their groups and for
/// the producer to flush.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How often a pattern trigger lists the cluster's topics for new ones it
/// matches: the longest a message to a brand-new topic, or a request to a
/// request topic that did not exist before, waits to reach it.
const DISCOVER_EVERY: Duration = Duration::from_secs(2);

/// Settings of an app's Kafka broker.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The app, naming its topics and groups.
    pub app: String,
    /// Timeout of each broker operation.
    pub timeout: Duration,
    /// Replicas of the topics Berth creates.
    pub replication_factor: i16,
    /// Partitions of the topics Berth creates.
    pub partitions: i32,
    /// How long a host may go without a heartbeat before its partitions go
    /// to the other hosts.
    pub session_timeout: Duration,
    /// The most topics the app may have (its messages', requests' and
    /// replies' together) before Berth refuses to create another.
    pub max_topics: usize,
    /// A dry run (`berth check`): the cluster is connected to and a
    /// producer started, but the app's reply topic is neither made nor
    /// read, so a check leaves no topic behind.
    pub dry_run: bool,
}

/// Parses `kafka://host:port[,host:port...]` into bootstrap brokers.
pub fn parse_url(url: &str) -> Result<Vec<String>, String> {
    let rest = url
        .strip_prefix("kafka://")
        .ok_or("the Kafka URL must start with kafka://")?;
    let brokers: Vec<String> = rest
        .trim_end_matches('/')
        .split(',')
        .map(|b| b.trim().to_string())
        .collect();
    if brokers.iter().any(|b| {
        b.is_empty()
            || b.contains('@')
            || b.rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    }) {
        return Err("the Kafka URL must be kafka://host:port[,host:port…] (no credentials)".into());
    }
    Ok(brokers)
}

/// An app's broker on Kafka.
pub struct KafkaBroker {
    shared: Arc<Shared>,
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        // A broker dropped without `close` (an app reloaded) still lets go
        // of its connections in order, in the background.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            runtime.spawn(async move { shared.release().await });
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> MessagingError {
    super::unreachable("kafka", e)
}

impl KafkaBroker {
    /// Connects, and starts reading this host's replies.
    pub async fn connect(s: &KafkaSettings) -> Result<KafkaBroker, MessagingError> {
        if s.app.contains('_') {
            // See `names::folds_alike`: `berth.a_b.c` is Kafka's
            // `berth.a.b.c`, so app `a`'s topic `b.c` would block topic `c`.
            tracing::warn!(app = %s.app, "the app's name holds '_', which Kafka takes for '.': another app's topics may block some of its topics; on a shared cluster give apps names without '_'");
        }
        let shared = Shared::new(s).await?;
        if !s.dry_run {
            shared.read_replies().await?;
        }
        Ok(KafkaBroker { shared })
    }

    /// Publishes `payload` under `id`, marked `once` if every host may
    /// publish that id.
    async fn send(
        &self,
        topic: &str,
        id: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        once: bool,
    ) -> Result<(), MessagingError> {
        let mut record = record(
            &self.shared.kafka_topic(topic),
            id,
            payload,
            &without_reserved(headers),
            1,
        );
        if once {
            record = record.header(ONCE_HEADER, Bytes::new());
        }
        self.shared.produce(record).await
    }
}

/// A record of `payload` under `id` for Kafka topic `name`, with Berth's
/// headers.
fn record(
    name: &str,
    id: &str,
    payload: Vec<u8>,
    headers: &[(String, String)],
    attempt: u32,
) -> Record {
    let mut record = Record::new(name, payload).key(id.as_bytes().to_vec());
    for (k, v) in headers {
        record = record.header(k.as_str(), Bytes::from(v.clone().into_bytes()));
    }
    record = record.header(ID_HEADER, Bytes::from(id.as_bytes().to_vec()));
    if attempt > 1 {
        record = record.header(
            ATTEMPT_HEADER,
            Bytes::from(attempt.to_string().into_bytes()),
        );
    }
    record
}

/// A publisher's headers without Berth's own names, which are the host's
/// to set: a guest's would redirect a reply or hide its message from
/// other triggers.
fn without_reserved(mut headers: Vec<(String, String)>) -> Vec<(String, String)> {
    headers.retain(|(k, _)| !RESERVED.contains(&k.as_str()));
    headers
}

/// Berth's own headers of a record, and the message's (sorted).
fn split_headers(
    headers: &krafka::Headers,
) -> (HashMap<&'static str, String>, Vec<(String, String)>) {
    let mut meta = HashMap::new();
    let mut theirs = Vec::new();
    for (k, v) in headers {
        let v = v
            .as_ref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        match RESERVED.iter().find(|r| **r == k.as_str()) {
            Some(reserved) => drop(meta.insert(*reserved, v)),
            None => theirs.push((k.clone(), v)),
        }
    }
    theirs.sort();
    (meta, theirs)
}

/// A message of Berth topic `topic` from `record`, and Berth's headers.
fn message_of(topic: &str, record: &ConsumerRecord) -> (Message, HashMap<&'static str, String>) {
    let (meta, headers) = split_headers(&record.headers);
    let attempt = meta
        .get(ATTEMPT_HEADER)
        .and_then(|a| a.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    // A record from another producer: its topic and position identify it.
    // (Releases before named it by position alone, which repeated across
    // the topics of a pattern trigger.)
    let id = meta
        .get(ID_HEADER)
        .cloned()
        .unwrap_or_else(|| format!("kafka-{topic}-{}-{}", record.partition, record.offset));
    let message = Message {
        id,
        topic: topic.to_string(),
        payload: record
            .value
            .as_ref()
            .map(|v| v.to_vec())
            .unwrap_or_default(),
        headers,
        attempt,
    };
    (message, meta)
}

/// The current time in Unix milliseconds.
fn now_ms() -> i64 {
    super::super::unix_millis() as i64
}

#[async_trait]
impl MessagingBackend for KafkaBroker {
    async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<String, MessagingError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.send(topic, &id, payload, headers, false).await?;
        Ok(id)
    }

    async fn publish_with_id(
        &self,
        topic: &str,
        id: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<(), MessagingError> {
        self.send(topic, id, payload, headers, true).await
    }

    async fn request(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Message, MessagingError> {
        let mut headers = without_reserved(headers);
        let name = self.shared.request_topic(topic);
        if !self.shared.exists(&name).await? {
            if self.shared.pattern_answers(topic) {
                // Only a pattern trigger answers, and it reads request
                // topics that exist: create this one; its discovery reads
                // it from the start within DISCOVER_EVERY.
                self.shared.ensure(&name).await?;
            } else {
                return Err(MessagingError::NoResponder);
            }
        }
        let correlation = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.shared.await_reply(&correlation, tx);
        // Forgotten however this call ends, cancellation included.
        let _waiting = Forget(&self.shared, &correlation);
        let deadline = now_ms().saturating_add(timeout.as_millis().min(i64::MAX as u128) as i64);
        headers.push((REPLY_TO_HEADER.into(), self.shared.reply_topic.clone()));
        headers.push((CORRELATION_HEADER.into(), correlation.clone()));
        headers.push((DEADLINE_HEADER.into(), deadline.to_string()));
        let id = uuid::Uuid::new_v4().to_string();
        self.shared
            .produce(record(&name, &id, payload, &headers, 1))
            .await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(mut reply)) => {
                reply.topic = topic.to_string();
                Ok(reply)
            }
            Ok(Err(_)) => Err(MessagingError::Other("the reply was lost".into())),
            Err(_) => Err(MessagingError::Timeout),
        }
    }

    async fn subscribe(
        &self,
        topic: &str,
        consumer: &str,
    ) -> Result<Box<dyn Subscription>, MessagingError> {
        if pattern::is_pattern(topic) {
            return discover::subscribe_pattern(&self.shared, topic, consumer).await;
        }
        let trigger = TriggerId::new(&self.shared.app, consumer, topic);
        let names = vec![
            self.shared.kafka_topic(topic),
            self.shared.request_topic(topic),
        ];
        for name in &names {
            self.shared.ensure(name).await?;
        }
        legacy::adopt(&self.shared, &trigger, &[topic.to_string()]).await;
        let subscription = GroupSubscription::start(&self.shared, trigger).await?;
        subscription.follow(names).await?;
        Ok(Box::new(subscription))
    }

    async fn close(&self) {
        self.shared.close().await;
    }
}

/// Removes a request's reply waiter when dropped.
struct Forget<'a>(&'a Shared, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget_reply(self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("kafka://127.0.0.1:9092").unwrap(),
            ["127.0.0.1:9092"]
        );
        assert_eq!(parse_url("kafka://a:1,b:2/").unwrap(), ["a:1", "b:2"]);
        for bad in [
            "127.0.0.1:9092",
            "kafka://",
            "kafka://a",
            "kafka://u:p@a:1",
            "kafka://a:x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    /// A consumed record as the broker would return `r`.
    fn consumed(r: Record, partition: i32, offset: i64) -> ConsumerRecord {
        let mut c = ConsumerRecord::new(r.topic.as_str(), partition, offset, r.key, r.value);
        c.headers = r.headers;
        c
    }

    #[test]
    fn records_carry_the_id_attempt_and_headers_and_hide_berths() {
        let headers = without_reserved(vec![
            ("a".to_string(), "1".to_string()),
            (FOR_HEADER.to_string(), "someone".to_string()),
            (REPLY_TO_HEADER.to_string(), "elsewhere".to_string()),
        ]);
        assert_eq!(headers, [("a".to_string(), "1".to_string())]);
        let r = record("berth.shop.t", "id-1", b"x".to_vec(), &headers, 3);
        assert_eq!(r.key.as_deref(), Some(&b"id-1"[..]));
        let (m, meta) = message_of("t", &consumed(r, 2, 7));
        assert_eq!(
            (m.id.as_str(), m.attempt, m.headers, m.payload),
            ("id-1", 3, headers, b"x".to_vec())
        );
        assert_eq!(meta.get(ID_HEADER).map(String::as_str), Some("id-1"));
    }

    #[test]
    fn foreign_records_are_named_by_their_position() {
        let foreign = |p, o| consumed(Record::new("berth.shop.t", b"v".to_vec()), p, o);
        assert_eq!(message_of("t", &foreign(0, 9)).0.id, "kafka-t-0-9");
        assert_eq!(message_of("t", &foreign(3, 9)).0.id, "kafka-t-3-9");
        assert_eq!(message_of("u", &foreign(3, 9)).0.id, "kafka-u-3-9");
        assert_eq!(message_of("t", &foreign(0, 9)).0.attempt, 1);
    }
}
