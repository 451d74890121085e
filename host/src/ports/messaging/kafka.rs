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
//!   the attempt incremented is produced to the same topic, then the
//!   original counts as settled.
//! - Request/reply: a request goes to `berth.<app>.__req.<t>` (read by the
//!   app's triggers from the newest record on, never committed) with the
//!   headers `berth-reply-to` and `berth-correlation`; replies come back on
//!   `berth.<app>.__reply`. A request to a topic no trigger ever subscribed
//!   to (its request topic does not exist) is `no-responder`.
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

use super::{Acker, Delivery, Message, MessagingBackend, MessagingError, NoAck, Subscription};

/// Header carrying the Berth id.
const ID_HEADER: &str = "berth-id";
/// Header carrying the attempt of a republished message.
const ATTEMPT_HEADER: &str = "berth-attempt";
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
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn unavailable(e: impl std::fmt::Display) -> MessagingError {
    tracing::debug!(error = %e, "kafka failure");
    MessagingError::Unavailable("the broker cannot be reached".into())
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

impl Shared {
    fn kafka_topic(&self, topic: &str) -> String {
        format!("berth.{}.{topic}", self.app)
    }

    fn request_topic(&self, topic: &str) -> String {
        format!("berth.{}.__req.{topic}", self.app)
    }

    fn offsets_topic(&self) -> String {
        format!("berth.{}.__offsets", self.app)
    }

    /// Runs a broker call within the timeout.
    async fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, KafkaError>>,
    ) -> Result<T, MessagingError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| unavailable("timed out"))?
            .map_err(unavailable)
    }

    /// Creates `name` with one partition unless it exists.
    async fn ensure(&self, name: &str) -> Result<(), MessagingError> {
        let mut created = self.created.lock().await;
        if created.contains(name) {
            return Ok(());
        }
        let controller = self.client.controller_client().map_err(unavailable)?;
        let timeout_ms = self.timeout.as_millis().min(i32::MAX as u128) as i32;
        match tokio::time::timeout(
            self.timeout,
            controller.create_topic(name, 1, self.replication_factor, timeout_ms),
        )
        .await
        {
            Err(_) => return Err(unavailable("create topic timed out")),
            Ok(Ok(())) => {}
            Ok(Err(KafkaError::ServerError {
                protocol_error: ProtocolError::TopicAlreadyExists,
                ..
            })) => {}
            Ok(Err(e)) => return Err(unavailable(e)),
        }
        created.insert(name.to_string());
        Ok(())
    }

    /// The client of `name`'s only partition, creating the topic if need be.
    async fn partition(&self, name: &str) -> Result<Arc<PartitionClient>, MessagingError> {
        if let Some(p) = self
            .partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(p.clone());
        }
        self.ensure(name).await?;
        let client = Arc::new(
            self.call(
                self.client
                    .partition_client(name, 0, UnknownTopicHandling::Retry),
            )
            .await?,
        );
        self.partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), client.clone());
        Ok(client)
    }

    /// A client of its own for a long-polling reader of `name`.
    async fn reader(&self, name: &str) -> Result<Arc<PartitionClient>, MessagingError> {
        self.ensure(name).await?;
        Ok(Arc::new(
            self.call(
                self.client
                    .partition_client(name, 0, UnknownTopicHandling::Retry),
            )
            .await?,
        ))
    }

    async fn produce(&self, name: &str, record: Record) -> Result<i64, MessagingError> {
        let partition = self.partition(name).await?;
        let produced = tokio::time::timeout(
            self.timeout,
            partition.produce(vec![record], Compression::NoCompression),
        )
        .await;
        let offsets = match produced {
            Ok(Ok(offsets)) => offsets,
            Ok(Err(KafkaError::ServerError {
                protocol_error: ProtocolError::MessageTooLarge | ProtocolError::RecordListTooLarge,
                ..
            })) => {
                return Err(MessagingError::TooLarge(
                    "the message is larger than the broker accepts".into(),
                ));
            }
            Ok(Err(e)) => return Err(unavailable(e)),
            Err(_) => {
                // The connection may be half-open: connect afresh next time.
                self.partitions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(name);
                return Err(unavailable("produce timed out"));
            }
        };
        offsets
            .first()
            .copied()
            .ok_or_else(|| unavailable("no offset in the produce response"))
    }

    /// One fetch from `offset`: the records and the offset to fetch next.
    /// An offset the log no longer has moves to `on_out_of_range`; a failed
    /// or timed-out fetch is retried after a pause.
    async fn fetch(
        &self,
        partition: &PartitionClient,
        offset: i64,
        on_out_of_range: OffsetAt,
    ) -> (Vec<RecordAndOffset>, i64) {
        let started = Instant::now();
        let fetched = tokio::time::timeout(
            FETCH_WAIT + self.timeout,
            partition.fetch_records(offset, 1..FETCH_BYTES, FETCH_WAIT_MS),
        )
        .await;
        match fetched {
            Ok(Ok((records, _high_watermark))) => {
                // A broker answering at once with nothing (only control
                // records, or one ignoring the wait) must not spin a core.
                if records.is_empty() && started.elapsed() < FETCH_WAIT / 2 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let next = records.last().map_or(offset, |r| r.offset + 1).max(offset);
                (records, next)
            }
            Ok(Err(KafkaError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            })) => match self.call(partition.get_offset(on_out_of_range)).await {
                Ok(to) => {
                    tracing::error!(topic = %partition.topic(), from = offset, to, "kafka offset no longer in the log (retention, or a recreated topic); going on from there");
                    (Vec::new(), to)
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    (Vec::new(), offset)
                }
            },
            Ok(Err(e)) => {
                tracing::warn!(topic = %partition.topic(), error = %e, "kafka fetch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                (Vec::new(), offset)
            }
            Err(_) => {
                tracing::warn!(topic = %partition.topic(), "kafka fetch timed out; retrying");
                (Vec::new(), offset)
            }
        }
    }

    /// Reads `partition` from `offset` on, handing each record to `each`
    /// until it returns `false` or the task is aborted; retries failed
    /// fetches.
    async fn read_from(
        self: &Arc<Self>,
        partition: Arc<PartitionClient>,
        mut offset: i64,
        mut each: impl FnMut(&Arc<Self>, RecordAndOffset) -> bool,
    ) {
        loop {
            let (records, next) = self.fetch(&partition, offset, OffsetAt::Latest).await;
            offset = next;
            for record in records {
                if !each(self, record) {
                    return;
                }
            }
        }
    }

    fn reply_arrived(&self, record: RecordAndOffset) {
        let (meta, headers) = split_headers(&record.record);
        let Some(correlation) = meta.get(CORRELATION_HEADER) else {
            return;
        };
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(correlation);
        if let Some(tx) = waiting {
            let _ = tx.send(Message {
                id: uuid::Uuid::new_v4().to_string(),
                topic: String::new(),
                payload: record.record.value.unwrap_or_default(),
                headers,
                attempt: 1,
            });
        }
    }

    /// The committed offset of trigger `key`, reading the offsets topic
    /// once per broker.
    async fn committed(&self, key: &str) -> Result<Option<i64>, MessagingError> {
        let mut cache = self.committed.lock().await;
        if cache.is_none() {
            *cache = Some(self.read_committed().await?);
        }
        Ok(cache.as_ref().and_then(|c| c.get(key).copied()))
    }

    /// Every trigger's last committed offset.
    async fn read_committed(&self) -> Result<HashMap<String, i64>, MessagingError> {
        let partition = self.reader(&self.offsets_topic()).await?;
        let end = self.call(partition.get_offset(OffsetAt::Latest)).await?;
        let mut offset = self.call(partition.get_offset(OffsetAt::Earliest)).await?;
        let mut committed = HashMap::new();
        while offset < end {
            let (records, _) = self
                .call(partition.fetch_records(offset, 1..FETCH_BYTES, FETCH_WAIT_MS))
                .await?;
            if records.is_empty() {
                break;
            }
            for r in records {
                offset = r.offset + 1;
                let key = r
                    .record
                    .key
                    .map(|k| String::from_utf8_lossy(&k).into_owned());
                let value = r
                    .record
                    .value
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|v| v.parse::<i64>().ok());
                if let (Some(key), Some(value)) = (key, value) {
                    committed.insert(key, value);
                }
            }
        }
        Ok(committed)
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
            _ => headers.push((k.clone(), v)),
        }
    }
    headers.sort();
    (meta, headers)
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
        self.shared
            .produce(&name, record(id, payload, &headers, 1))
            .await?;
        Ok(())
    }

    async fn request(
        &self,
        topic: &str,
        payload: Vec<u8>,
        mut headers: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Message, MessagingError> {
        let name = self.shared.request_topic(topic);
        // Request topics are never deleted: once seen, always there.
        if !self.shared.created.lock().await.contains(&name) {
            let topics = self.shared.call(self.shared.client.list_topics()).await?;
            if !topics.iter().any(|t| t.name == name) {
                return Err(MessagingError::NoResponder);
            }
            self.shared.created.lock().await.insert(name.clone());
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
        let shared = &self.shared;
        let name = shared.kafka_topic(topic);
        let key = format!("{consumer}/{topic}");
        let messages = shared.reader(&name).await?;
        let start = match shared.committed(&key).await? {
            Some(offset) => offset,
            None => shared.call(messages.get_offset(OffsetAt::Earliest)).await?,
        };
        let requests = shared.reader(&shared.request_topic(topic)).await?;
        let requests_start = shared.call(requests.get_offset(OffsetAt::Latest)).await?;

        let (tx, rx) = mpsc::channel(BUFFERED);
        let (requests_tx, requests_rx) = mpsc::channel(BUFFERED);
        let alive = Arc::new(());
        let progress = Arc::new(Progress {
            unsettled: Mutex::default(),
            read_up_to: AtomicI64::new(start),
        });
        let reader = {
            let (shared, progress, topic) = (shared.clone(), progress.clone(), topic.to_string());
            let alive = Arc::downgrade(&alive);
            tokio::spawn(async move {
                read_messages(shared, messages, start, topic, tx, progress, alive).await;
            })
        };
        let committer = {
            let (shared, progress) = (shared.clone(), progress.clone());
            tokio::spawn(async move { commit(shared, key, start, progress).await })
        };
        let request_reader = {
            let (shared, topic) = (shared.clone(), topic.to_string());
            tokio::spawn(async move {
                read_requests(shared, requests, requests_start, topic, requests_tx).await;
            })
        };
        Ok(Box::new(KafkaSubscription {
            rx,
            requests: requests_rx,
            _alive: alive,
            _tasks: vec![
                AbortOnDrop(reader),
                AbortOnDrop(committer),
                AbortOnDrop(request_reader),
            ],
        }))
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

/// What a trigger has read and not yet settled.
struct Progress {
    /// Offsets delivered and not yet settled.
    unsettled: Mutex<BTreeSet<i64>>,
    /// The next offset to read.
    read_up_to: AtomicI64,
}

impl Progress {
    /// The offset to commit: everything before it is settled.
    fn low_water(&self) -> i64 {
        let unsettled = self.unsettled.lock().unwrap_or_else(|p| p.into_inner());
        unsettled
            .first()
            .copied()
            .unwrap_or_else(|| self.read_up_to.load(Ordering::SeqCst))
    }

    fn settle(&self, offset: i64) {
        self.unsettled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&offset);
    }
}

async fn read_messages(
    shared: Arc<Shared>,
    partition: Arc<PartitionClient>,
    start: i64,
    topic: String,
    tx: mpsc::Sender<Delivery>,
    progress: Arc<Progress>,
    alive: Weak<()>,
) {
    let name = shared.kafka_topic(&topic);
    let mut offset = start;
    loop {
        let (records, next) = shared.fetch(&partition, offset, OffsetAt::Earliest).await;
        let mut pending = Vec::with_capacity(records.len());
        for r in records {
            progress
                .unsettled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(r.offset);
            let message = message_of(&topic, r.record, r.offset);
            pending.push(Delivery {
                message: message.clone(),
                reply: None,
                acker: Box::new(KafkaAcker {
                    shared: shared.clone(),
                    topic: name.clone(),
                    offset: r.offset,
                    progress: progress.clone(),
                    alive: alive.clone(),
                    message,
                }),
            });
        }
        offset = next;
        progress.read_up_to.store(offset, Ordering::SeqCst);
        for delivery in pending {
            if tx.send(delivery).await.is_err() {
                return;
            }
        }
    }
}

async fn read_requests(
    shared: Arc<Shared>,
    partition: Arc<PartitionClient>,
    start: i64,
    topic: String,
    tx: mpsc::Sender<Delivery>,
) {
    let (replies_tx, mut replies_rx) = mpsc::unbounded_channel::<(String, String, Vec<u8>)>();
    let replier = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some((reply_to, correlation, payload)) = replies_rx.recv().await {
                // Replies only go to the app's own reply topic.
                if reply_to != shared.reply_topic {
                    continue;
                }
                let headers = vec![(CORRELATION_HEADER.to_string(), correlation)];
                let id = uuid::Uuid::new_v4().to_string();
                if let Err(e) = shared
                    .produce(&reply_to, record(&id, payload, &headers, 1))
                    .await
                {
                    tracing::warn!(error = %e, "cannot send a reply");
                }
            }
        })
    };
    let _replier = AbortOnDrop(replier);
    shared
        .read_from(partition, start, |_, r| {
            let (meta, _) = split_headers(&r.record);
            let (Some(reply_to), Some(correlation)) = (
                meta.get(REPLY_TO_HEADER).cloned(),
                meta.get(CORRELATION_HEADER).cloned(),
            ) else {
                return true;
            };
            let mut message = message_of(&topic, r.record, r.offset);
            message
                .headers
                .retain(|(k, _)| k != REPLY_TO_HEADER && k != CORRELATION_HEADER);
            let (reply_tx, reply_rx) = oneshot::channel::<Vec<u8>>();
            let replies = replies_tx.clone();
            tokio::spawn(async move {
                if let Ok(payload) = reply_rx.await {
                    let _ = replies.send((reply_to, correlation, payload));
                }
            });
            match tx.try_send(Delivery {
                message,
                reply: Some(reply_tx),
                acker: Box::new(NoAck),
            }) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(topic = %topic, "too many requests waiting; one was dropped");
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        })
        .await;
}

/// Commits the trigger's offset whenever it moved.
async fn commit(shared: Arc<Shared>, key: String, start: i64, progress: Arc<Progress>) {
    let mut committed = start;
    let mut written = Instant::now();
    let name = shared.offsets_topic();
    loop {
        tokio::time::sleep(COMMIT_EVERY).await;
        let low = progress.low_water();
        if low == committed && written.elapsed() < RECOMMIT_EVERY {
            continue;
        }
        let record = Record {
            key: Some(key.clone().into_bytes()),
            value: Some(low.to_string().into_bytes()),
            headers: Default::default(),
            timestamp: chrono::Utc::now(),
        };
        match shared.produce(&name, record).await {
            Ok(_) => {
                committed = low;
                written = Instant::now();
            }
            Err(e) => tracing::warn!(error = %e, "cannot commit a kafka offset; retrying"),
        }
    }
}

/// A trigger's deliveries, read by its background tasks.
struct KafkaSubscription {
    rx: mpsc::Receiver<Delivery>,
    /// Requests, taken first: they are not held back by a backlog.
    requests: mpsc::Receiver<Delivery>,
    /// Its ackers' retries stop once the subscription is gone.
    _alive: Arc<()>,
    _tasks: Vec<AbortOnDrop>,
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        tokio::select! {
            biased;
            Some(request) = self.requests.recv() => Some(request),
            delivery = self.rx.recv() => delivery,
        }
    }
}

struct KafkaAcker {
    shared: Arc<Shared>,
    topic: String,
    offset: i64,
    progress: Arc<Progress>,
    alive: Weak<()>,
    message: Message,
}

#[async_trait]
impl Acker for KafkaAcker {
    async fn ack(self: Box<Self>) {
        self.progress.settle(self.offset);
    }

    async fn nack(self: Box<Self>, delay: Duration) {
        // The original stays unsettled (the committed offset holds) during
        // the backoff; it is settled once its copy is stored.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let m = &self.message;
            let mut retry = Duration::from_secs(1);
            // Until the copy is stored the original holds the committed
            // offset back; keep trying while the trigger runs (after it,
            // the original is delivered again from the commit).
            while self.alive.strong_count() > 0 {
                let copy = record(&m.id, m.payload.clone(), &m.headers, m.attempt + 1);
                match self.shared.produce(&self.topic, copy).await {
                    Ok(_) => {
                        self.progress.settle(self.offset);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, ?retry, "cannot requeue a failed kafka message yet; retrying");
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
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
        let r = record("id-1", b"x".to_vec(), &headers, 3);
        let m = message_of("t", r, 7);
        assert_eq!((m.id.as_str(), m.attempt, m.headers), ("id-1", 3, headers));
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
