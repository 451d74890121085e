//! Kafka adapter (`rskafka`, pure Rust; tested against the `tansu` broker).
//!
//! - A topic `t` of app `<app>` is the Kafka topic `berth.<app>.t`, created
//!   on first use with one partition. Publishing waits for the broker's
//!   produce response; the id travels as the record key and the header
//!   `berth-id`, the attempt of a republished message as `berth-attempt`.
//! - Each message trigger consumes from its committed offset. rskafka has
//!   no consumer groups, so Berth keeps the offsets itself, as records of
//!   the app's topic `berth.<app>.__offsets` (key `<consumer>/<topic>`,
//!   value the next offset to consume). The committed offset only moves
//!   past a message once it and every earlier one were settled, so a host
//!   that dies leaves its unsettled messages to be delivered again. A
//!   trigger that never committed starts at the earliest retained record.
//! - Redelivery after a failure: once the backoff has passed, a copy with
//!   the attempt incremented is produced to the same topic, addressed to
//!   the failed trigger (`berth-for`, its offset key) so that the topic's
//!   other triggers skip it, then the original counts as settled.
//! - Request/reply: a request goes to `berth.<app>.__req.<t>` (read by the
//!   app's triggers from the newest record on, never committed) with the
//!   headers `berth-reply-to` and `berth-correlation`; replies come back on
//!   `berth.<app>.__reply`. A request to a topic no trigger ever subscribed
//!   to (its request topic does not exist) is `no-responder`, unless a
//!   pattern trigger of this host matches it (see below).
//! - A trigger may subscribe to a pattern of topics (see [`pattern`]).
//!   Kafka has no wildcard subscriptions, so Berth lists the cluster's
//!   topics and reads every `berth.<app>.<t>` whose `t` the pattern matches
//!   as a trigger of `t` would (its own offset, key `<consumer>/<t>`), and
//!   every matching request topic; each message names its own topic `t`.
//!   The list is read again every `DISCOVER_EVERY` (2 s), so a message
//!   to a brand-new topic reaches a pattern trigger within that delay, and
//!   nothing is lost: a topic found later is read from its committed
//!   offset, else from its earliest record. A request to a topic only a
//!   pattern trigger matches creates the request topic and waits that long
//!   too (a request topic that appeared after the trigger started is read
//!   from its start); a request timeout shorter than the delay makes such
//!   a first request time out. The readers of a message topic that is
//!   deleted stop at the next listing.
//! - A committed offset the log no longer has (retention deleted it, or the
//!   topic was recreated) is logged as an error and the trigger goes on
//!   from the earliest retained record.
//! - Each long-polling reader has its own connection, so publishing to a
//!   topic is never queued behind a fetch of it.
//!
//! Limits compared with NATS and RabbitMQ, both from the missing consumer
//! groups: a trigger's messages are not shared between host processes
//! (every host consuming one app's Kafka topics would handle every
//! message), so an app on Kafka runs in one host process at a time; and
//! schedule ticks are not deduplicated by id. Topics are created with one
//! partition (a topic created beforehand with more is read from partition
//! 0 only); records from transactional producers, and lz4 or zstd batches,
//! are not supported. `berth.<app>.__offsets` should be created with
//! `cleanup.policy=compact` on a real cluster (rskafka cannot ask for it);
//! Berth rewrites every trigger's offset hourly, so a quiet trigger's
//! commit outlives a delete-retention of more than an hour.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rskafka::BackoffConfig;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::{Record, RecordAndOffset};
use tokio::sync::{mpsc, oneshot};

use super::{
    Acker, Delivery, Message, MessagingBackend, MessagingError, NoAck, Subscription, pattern,
};

mod consume;
mod discover;
mod shared;

use consume::*;

/// Header carrying the Berth id.
const ID_HEADER: &str = "berth-id";
/// Header carrying the attempt of a republished message.
const ATTEMPT_HEADER: &str = "berth-attempt";
/// Header of a failed message's copy naming the one trigger it is for
/// (its offset key): the other triggers reading the topic skip it, having
/// had the original.
const FOR_HEADER: &str = "berth-for";
/// Header of a request naming the topic its reply goes to.
const REPLY_TO_HEADER: &str = "berth-reply-to";
/// Header matching a reply with its request.
const CORRELATION_HEADER: &str = "berth-correlation";
/// Bytes fetched at most per request.
const FETCH_BYTES: i32 = 4 << 20;
/// How long a fetch waits on the broker for new records.
const FETCH_WAIT_MS: i32 = 500;
/// The same, as a duration.
const FETCH_WAIT: Duration = Duration::from_millis(FETCH_WAIT_MS as u64);
/// How often an unchanged offset is written again, so retention never
/// deletes a quiet trigger's last commit.
const RECOMMIT_EVERY: Duration = Duration::from_secs(3600);
/// How often a trigger commits its offset while it moves.
const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// Deliveries buffered per trigger ahead of its handler.
const BUFFERED: usize = 64;
/// How often a pattern trigger lists the cluster's topics for new ones it
/// matches: the longest a message to a brand-new topic, or a request to a
/// request topic that did not exist before, waits to reach it.
const DISCOVER_EVERY: Duration = Duration::from_secs(2);

/// Settings of an app's Kafka broker.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The app, naming its topics.
    pub app: String,
    /// Timeout of each broker operation.
    pub timeout: Duration,
    /// Replicas of the topics Berth creates.
    pub replication_factor: i16,
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
    /// Reads this host's replies until the broker is dropped.
    _replies: AbortOnDrop,
}

struct Shared {
    client: Client,
    app: String,
    timeout: Duration,
    replication_factor: i16,
    reply_topic: String,
    /// Topics known to exist.
    created: tokio::sync::Mutex<HashSet<String>>,
    /// Producing clients, by topic.
    partitions: Mutex<HashMap<String, Arc<PartitionClient>>>,
    /// Requests waiting for their reply, by correlation id.
    waiting: Mutex<HashMap<String, oneshot::Sender<Message>>>,
    /// The triggers' committed offsets, read once.
    committed: tokio::sync::Mutex<Option<HashMap<String, i64>>>,
    /// The patterns of this broker's pattern subscriptions, each while its
    /// subscription lives (see [`Shared::pattern_answers`]).
    patterns: Mutex<Vec<(String, Weak<()>)>>,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn unavailable(e: impl std::fmt::Display) -> MessagingError {
    super::unreachable("kafka", e)
}

impl KafkaBroker {
    /// Connects, and creates this host's reply topic.
    pub async fn connect(s: &KafkaSettings) -> Result<KafkaBroker, MessagingError> {
        let backoff = BackoffConfig {
            deadline: Some(s.timeout),
            ..Default::default()
        };
        let client = tokio::time::timeout(
            s.timeout,
            ClientBuilder::new(s.brokers.clone())
                .client_id(format!("berth-{}", s.app))
                .backoff_config(backoff)
                .build(),
        )
        .await
        .map_err(|_| unavailable("connect timed out"))?
        .map_err(unavailable)?;
        let shared = Arc::new(Shared {
            client,
            app: s.app.clone(),
            timeout: s.timeout,
            replication_factor: s.replication_factor,
            reply_topic: format!("berth.{}.__reply", s.app),
            created: Default::default(),
            partitions: Mutex::default(),
            waiting: Mutex::default(),
            committed: Default::default(),
            patterns: Mutex::default(),
        });
        let replies = shared.reader(&shared.reply_topic).await?;
        let start = shared.call(replies.get_offset(OffsetAt::Latest)).await?;
        let reader = shared.clone();
        let task = tokio::spawn(async move {
            reader
                .read_from(replies, start, |shared, record| {
                    shared.reply_arrived(record);
                    true
                })
                .await;
        });
        Ok(KafkaBroker {
            shared,
            _replies: AbortOnDrop(task),
        })
    }
}

/// Builds a record of `payload` under `id`, with Berth's headers.
fn record(id: &str, payload: Vec<u8>, headers: &[(String, String)], attempt: u32) -> Record {
    let mut map: std::collections::BTreeMap<String, Vec<u8>> = headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    map.insert(ID_HEADER.into(), id.as_bytes().to_vec());
    if attempt > 1 {
        map.insert(ATTEMPT_HEADER.into(), attempt.to_string().into_bytes());
    }
    Record {
        key: Some(id.as_bytes().to_vec()),
        value: Some(payload),
        headers: map,
        timestamp: chrono::Utc::now(),
    }
}

/// A publisher's headers without Berth's own names, which are the host's
/// to set: a guest's would redirect a reply or hide its message from
/// other triggers.
fn without_reserved(mut headers: Vec<(String, String)>) -> Vec<(String, String)> {
    let reserved = [
        ID_HEADER,
        ATTEMPT_HEADER,
        REPLY_TO_HEADER,
        CORRELATION_HEADER,
        FOR_HEADER,
    ];
    headers.retain(|(k, _)| !reserved.contains(&k.as_str()));
    headers
}

/// Berth's own headers, and the message's (sorted).
fn split_headers(record: &Record) -> (HashMap<&'static str, String>, Vec<(String, String)>) {
    let mut meta = HashMap::new();
    let mut headers = Vec::new();
    for (k, v) in &record.headers {
        let v = String::from_utf8_lossy(v).into_owned();
        match k.as_str() {
            ID_HEADER => drop(meta.insert(ID_HEADER, v)),
            ATTEMPT_HEADER => drop(meta.insert(ATTEMPT_HEADER, v)),
            REPLY_TO_HEADER => drop(meta.insert(REPLY_TO_HEADER, v)),
            CORRELATION_HEADER => drop(meta.insert(CORRELATION_HEADER, v)),
            FOR_HEADER => drop(meta.insert(FOR_HEADER, v)),
            _ => headers.push((k.clone(), v)),
        }
    }
    headers.sort();
    (meta, headers)
}

/// The one trigger (offset key) a record is for, if it is a failed
/// message's copy.
fn addressee(record: &Record) -> Option<String> {
    record
        .headers
        .get(FOR_HEADER)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The key under which trigger `consumer` on `trigger` (a topic or a
/// pattern) commits its offset in `topic`: `<consumer>/<topic>` for a
/// topic's trigger, `<consumer>/<pattern>/<topic>` for a pattern's, so two
/// triggers of one component reading the same topic keep apart.
fn offset_key(consumer: &str, trigger: &str, topic: &str) -> String {
    if trigger == topic {
        format!("{consumer}/{topic}")
    } else {
        format!("{consumer}/{trigger}/{topic}")
    }
}

/// A message from a record of `topic` at `offset`.
fn message_of(topic: &str, record: Record, offset: i64) -> Message {
    let (meta, headers) = split_headers(&record);
    let attempt = meta
        .get(ATTEMPT_HEADER)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let id = meta.get(ID_HEADER).cloned().unwrap_or_else(|| {
        // A record from another producer: its offset identifies it.
        format!("kafka-{offset}")
    });
    Message {
        id,
        topic: topic.to_string(),
        payload: record.value.unwrap_or_default(),
        headers,
        attempt,
    }
}

#[async_trait]
impl MessagingBackend for KafkaBroker {
    async fn publish_with_id(
        &self,
        topic: &str,
        id: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<(), MessagingError> {
        let name = self.shared.kafka_topic(topic);
        let headers = without_reserved(headers);
        self.shared
            .produce(&name, record(id, payload, &headers, 1))
            .await?;
        Ok(())
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
        // Request topics are never deleted: once seen, always there.
        if !self.shared.created.lock().await.contains(&name) {
            let listed = self.shared.topic_names().await?;
            if listed.contains(&name) {
                self.shared.created.lock().await.insert(name.clone());
            } else if self.shared.pattern_answers(topic) {
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
        self.shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(correlation.clone(), tx);
        // Forgotten however this call ends, cancellation included.
        let _waiting = Forget(&self.shared, &correlation);
        headers.push((REPLY_TO_HEADER.into(), self.shared.reply_topic.clone()));
        headers.push((CORRELATION_HEADER.into(), correlation.clone()));
        let id = uuid::Uuid::new_v4().to_string();
        let sent = self
            .shared
            .produce(&name, record(&id, payload, &headers, 1))
            .await;
        match sent {
            Err(e) => Err(e),
            Ok(_) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(mut reply)) => {
                    reply.topic = topic.to_string();
                    Ok(reply)
                }
                Ok(Err(_)) => Err(MessagingError::Other("the reply was lost".into())),
                Err(_) => Err(MessagingError::Timeout),
            },
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
        let shared = &self.shared;
        let (feeds, mut subscription) = KafkaSubscription::open();
        subscription._tasks = start_messages(shared, topic, topic, consumer, &feeds).await?;
        subscription
            ._tasks
            .push(start_requests(shared, topic, OffsetAt::Latest, &feeds).await?);
        Ok(Box::new(subscription))
    }
}

/// Removes a request's reply waiter when dropped.
struct Forget<'a>(&'a Shared, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.1);
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

    #[test]
    fn records_carry_the_id_attempt_and_headers() {
        let headers = vec![("a".to_string(), "1".to_string())];
        let mut r = record("id-1", b"x".to_vec(), &headers, 3);
        r.headers.insert(FOR_HEADER.into(), b"c/t".to_vec());
        assert_eq!(addressee(&r).as_deref(), Some("c/t"));
        let m = message_of("t", r, 7);
        assert_eq!((m.id.as_str(), m.attempt, m.headers), ("id-1", 3, headers));
        assert_eq!(offset_key("c", "t", "t"), "c/t");
        assert_eq!(offset_key("c", "t.*", "t.a"), "c/t.*/t.a");
        let mut foreign = record("id-2", vec![], &[], 1);
        foreign.headers.clear();
        assert_eq!(message_of("t", foreign, 9).id, "kafka-9");
    }

    #[test]
    fn the_low_water_mark_waits_for_the_oldest_unsettled_offset() {
        let p = Progress {
            unsettled: Mutex::new(BTreeSet::from([3, 4, 5])),
            read_up_to: AtomicI64::new(6),
        };
        p.settle(4);
        assert_eq!(p.low_water(), 3);
        p.settle(3);
        assert_eq!(p.low_water(), 5);
        p.settle(5);
        assert_eq!(p.low_water(), 6);
    }
}
