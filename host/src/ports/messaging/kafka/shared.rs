//! What publishing and every trigger of one app share: the client, its
//! producer and admin, topic names and creation, the replies this host
//! waits for, and the live pattern subscriptions.

use krafka::admin::{AdminClient, CreateTopicsOptions, ListTopicsOptions, NewTopic};
use krafka::consumer::AutoOffsetReset;
use krafka::error::ErrorCode;
use krafka::producer::Producer;
use krafka::{Kafka, KrafkaError};

use super::*;

/// How long a listing of the cluster's topics is used before it is asked
/// for again.
const LISTING_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// An app's connection to the cluster, shared by its broker and triggers.
pub(super) struct Shared {
    /// The bootstrap brokers, for the connections of each consumer.
    brokers: String,
    /// Publishing, the admin and the legacy reader share this connection.
    pub(super) kafka: Kafka,
    producer: Producer,
    pub(super) admin: AdminClient,
    pub(super) app: String,
    pub(super) timeout: Duration,
    replication_factor: i16,
    partitions: i32,
    max_topics: usize,
    pub(super) session_timeout: Duration,
    /// `berth.<app>.__reply`, which every host of the app reads.
    pub(super) reply_topic: String,
    /// Topics known to exist.
    created: tokio::sync::Mutex<HashSet<String>>,
    /// The cluster's topics as last listed, and when: a publish to a topic
    /// refused (past `max_topics`) or a request to a topic nobody answers
    /// asked the cluster for its whole listing every time.
    listing: Mutex<Option<(std::time::Instant, Arc<Vec<String>>)>>,
    /// Bumped when the listing is known stale (a topic was created): a
    /// listing asked for before is not kept.
    listing_generation: std::sync::atomic::AtomicU64,
    /// Requests waiting for their reply, by correlation id.
    waiting: Mutex<HashMap<String, oneshot::Sender<Message>>>,
    /// The patterns of this broker's pattern subscriptions, each while its
    /// subscription lives (see [`Shared::pattern_answers`]).
    patterns: Mutex<Vec<(String, Weak<()>)>>,
    /// The offsets the release before committed itself, read once (see
    /// [`super::legacy`]).
    pub(super) legacy: tokio::sync::OnceCell<HashMap<String, i64>>,
    /// The tasks that read for this broker: its replies' reader and each
    /// trigger's, which end (leaving their groups) once told to stop.
    readers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Tells the reply reader to stop.
    stop_replies: Mutex<Option<oneshot::Sender<()>>>,
}

/// The longest topic name Kafka creates (its `Topic.MAX_NAME_LENGTH`):
/// the app's prefix and `__req.` count, so a topic Berth itself takes
/// (255 bytes) can be too long here.
const MAX_TOPIC_NAME_BYTES: usize = 249;

impl Shared {
    pub(super) async fn new(s: &KafkaSettings) -> Result<Arc<Shared>, MessagingError> {
        let brokers = s.brokers.join(",");
        let kafka = connect(&brokers, &s.app, s.timeout).await?;
        let producer = kafka
            .producer()
            // Each publish waits for its acknowledgement: waiting for more
            // records would only delay it.
            .linger(Duration::ZERO)
            // One record per batch: a consumer resuming from an offset
            // inside a batch is then never a concern. (The tansu broker CI
            // runs skips the rest of a batch fetched from its middle.)
            .batch_size(1)
            .delivery_timeout(s.timeout)
            .build();
        let producer = tokio::time::timeout(s.timeout, producer)
            .await
            .map_err(|_| unavailable("starting the producer timed out"))?
            .map_err(unavailable)?;
        let admin = kafka.admin();
        Ok(Arc::new(Shared {
            brokers,
            kafka,
            producer,
            admin,
            app: s.app.clone(),
            timeout: s.timeout,
            replication_factor: s.replication_factor,
            partitions: s.partitions,
            max_topics: s.max_topics,
            session_timeout: s.session_timeout,
            reply_topic: format!("berth.{}.__reply", s.app),
            created: Default::default(),
            listing: Mutex::default(),
            listing_generation: Default::default(),
            waiting: Mutex::default(),
            patterns: Mutex::default(),
            legacy: Default::default(),
            readers: Mutex::default(),
            stop_replies: Mutex::default(),
        }))
    }

    /// A connection of its own, for a long-polling consumer: Kafka answers
    /// a connection's requests in order, so a fetch waiting for records
    /// would hold up every publish and every other consumer's fetch on a
    /// shared one.
    pub(super) async fn own_connection(&self) -> Result<Kafka, MessagingError> {
        connect(&self.brokers, &self.app, self.timeout).await
    }

    pub(super) fn kafka_topic(&self, topic: &str) -> String {
        format!("berth.{}.{topic}", self.app)
    }

    pub(super) fn request_topic(&self, topic: &str) -> String {
        format!("berth.{}.__req.{topic}", self.app)
    }

    /// Runs a broker call within the timeout.
    pub(super) async fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, KrafkaError>>,
    ) -> Result<T, MessagingError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| unavailable("timed out"))?
            .map_err(unavailable)
    }

    /// The names of the cluster's topics, as listed at most
    /// [`LISTING_TTL`] ago.
    pub(super) async fn topic_names(&self) -> Result<Arc<Vec<String>>, MessagingError> {
        let cached = self
            .listing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(at, _)| at.elapsed() < LISTING_TTL)
            .map(|(_, names)| names.clone());
        if let Some(names) = cached {
            return Ok(names);
        }
        use std::sync::atomic::Ordering::SeqCst;
        let (asked, generation) = (
            std::time::Instant::now(),
            self.listing_generation.load(SeqCst),
        );
        let options = ListTopicsOptions::default().timeout(self.timeout);
        let names = Arc::new(self.call(self.admin.list_topics(options)).await?);
        let mut listing = self.listing.lock().unwrap_or_else(|p| p.into_inner());
        if self.listing_generation.load(SeqCst) == generation {
            *listing = Some((asked, names.clone()));
        }
        Ok(names)
    }

    /// Whether topic `name` exists, asking the broker unless it is known
    /// (a topic not there is looked for again once the listing is
    /// [`LISTING_TTL`] old).
    pub(super) async fn exists(&self, name: &str) -> Result<bool, MessagingError> {
        if self.created.lock().await.contains(name) {
            return Ok(true);
        }
        let exists = self.topic_names().await?.iter().any(|t| t == name);
        if exists {
            self.created.lock().await.insert(name.to_string());
        }
        Ok(exists)
    }

    /// Creates `name` unless it exists: the app's reply topic with one
    /// partition (every host reads all of it), any other with the
    /// configured number. A topic past the app's `max_topics`, or one Kafka
    /// would take for an existing topic (see [`names::folds_alike`]), is
    /// refused.
    pub(super) async fn ensure(&self, name: &str) -> Result<(), MessagingError> {
        let mut created = self.created.lock().await;
        if created.contains(name) {
            return Ok(());
        }
        let existing = self.topic_names().await?;
        if !existing.iter().any(|t| t == name) {
            self.may_create(name, &existing)?;
            self.create(name).await?;
            // The listing lacks it: the next creation counts it.
            let mut listing = self.listing.lock().unwrap_or_else(|p| p.into_inner());
            self.listing_generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            *listing = None;
        }
        created.insert(name.to_string());
        Ok(())
    }

    /// Refuses to create `name` beside the cluster's `existing` topics
    /// when the app has `max_topics` already, or when Kafka would take it
    /// for one of them. Neither message names another topic: it may be
    /// another app's.
    fn may_create(&self, name: &str, existing: &[String]) -> Result<(), MessagingError> {
        let shown =
            names::topic_of(&self.app, name).map_or_else(|| name.to_string(), |(_, topic)| topic);
        if name.len() > MAX_TOPIC_NAME_BYTES {
            return Err(MessagingError::InvalidInput(format!(
                "topic {shown:?} cannot be created on Kafka: its Kafka name ({name}) is {} bytes, \
                 and Kafka takes at most {MAX_TOPIC_NAME_BYTES}",
                name.len()
            )));
        }
        if existing.iter().any(|t| names::folds_alike(t, name)) {
            return Err(MessagingError::InvalidInput(format!(
                "topic {shown:?} cannot be created on Kafka: an existing topic's name differs \
                 from its Kafka name ({name}) only in '.' against '_', which Kafka takes for \
                 the same character"
            )));
        }
        let own = existing
            .iter()
            .filter(|t| names::topic_of(&self.app, t).is_some())
            .count();
        if own >= self.max_topics {
            return Err(MessagingError::Other(format!(
                "topic {shown:?} cannot be created on Kafka: the app has {own} topics there, \
                 as many as messaging.max_topics ({}) allows",
                self.max_topics
            )));
        }
        Ok(())
    }

    async fn create(&self, name: &str) -> Result<(), MessagingError> {
        let partitions = if name == self.reply_topic {
            1
        } else {
            self.partitions
        };
        let topic = NewTopic::new(name, partitions, self.replication_factor)
            .map_err(|e| MessagingError::InvalidInput(e.to_string()))?;
        let options = CreateTopicsOptions::default().timeout(self.timeout);
        let results = self
            .call(self.admin.create_topics([topic], options))
            .await?;
        match results.get(name) {
            None | Some(Ok(())) => Ok(()),
            // Another host made it meanwhile.
            Some(Err(KrafkaError::Broker {
                code: ErrorCode::TopicAlreadyExists,
                ..
            })) => Ok(()),
            Some(Err(e)) => Err(unavailable(e)),
        }
    }

    /// Produces `record` (creating its topic if need be) and waits for the
    /// broker's acknowledgement.
    pub(super) async fn produce(&self, record: Record) -> Result<(), MessagingError> {
        self.ensure(&record.topic).await?;
        match tokio::time::timeout(self.timeout, self.producer.send(record)).await {
            Ok(Ok(_)) => Ok(()),
            // krafka refuses a record over its request limit before sending.
            Ok(Err(KrafkaError::Config { .. }))
            | Ok(Err(KrafkaError::Broker {
                code: ErrorCode::MessageTooLarge | ErrorCode::RecordListTooLarge,
                ..
            })) => Err(MessagingError::TooLarge(
                "the message is larger than the broker accepts".into(),
            )),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable("produce timed out")),
        }
    }

    /// Keeps a reading task, to wait for it on [`Shared::close`].
    pub(super) fn add_reader(&self, task: tokio::task::JoinHandle<()>) {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        readers.retain(|r| !r.is_finished());
        readers.push(task);
    }

    /// Stops reading replies, waits (at most [`CLOSE_GRACE`]) for every
    /// reader to end, each trigger's once its subscription was dropped, and
    /// flushes and closes the producer.
    pub(super) async fn close(&self) {
        let readers: Vec<_> =
            std::mem::take(&mut *self.readers.lock().unwrap_or_else(|p| p.into_inner()));
        let closing = async {
            self.stop_replies();
            for reader in readers {
                let _ = reader.await;
            }
            let _ = self.producer.close().await;
        };
        if tokio::time::timeout(CLOSE_GRACE, closing).await.is_err() {
            tracing::warn!(app = %self.app, "kafka did not close in time; the other hosts take over this host's partitions after the session timeout");
        }
    }

    /// Stops reading replies and closes the producer, without waiting for
    /// the triggers (for a broker dropped while they may still run).
    pub(super) async fn release(&self) {
        self.stop_replies();
        let _ = tokio::time::timeout(CLOSE_GRACE, self.producer.close()).await;
    }

    fn stop_replies(&self) {
        drop(
            self.stop_replies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }

    /// Starts reading this host's replies, from the reply topic's newest
    /// record on, until [`Shared::close`].
    pub(super) async fn read_replies(self: &Arc<Self>) -> Result<(), MessagingError> {
        self.ensure(&self.reply_topic).await?;
        let consumer = self
            .own_connection()
            .await?
            .consumer_without_group()
            .fetch_max_wait(FETCH_WAIT)
            .auto_offset_reset(AutoOffsetReset::Latest)
            .build();
        let consumer = self.call(consumer).await?;
        self.call(consumer.subscribe([self.reply_topic.as_str()]))
            .await?;
        // The first poll places the consumer at the end: a reply produced
        // after `connect` returns is read.
        self.call(consumer.poll(Duration::ZERO)).await?;
        let (stop_tx, mut stop) = oneshot::channel();
        *self.stop_replies.lock().unwrap_or_else(|p| p.into_inner()) = Some(stop_tx);
        // Only a weak reference: the broker's drop must not wait for it.
        let shared = Arc::downgrade(self);
        self.add_reader(tokio::spawn(async move {
            loop {
                let polled = tokio::select! {
                    biased;
                    _ = &mut stop => break,
                    polled = poll_patiently(&consumer) => polled,
                };
                let Some(shared) = shared.upgrade() else {
                    break;
                };
                match polled {
                    Ok(records) => records.iter().for_each(|r| shared.reply_arrived(r)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read kafka replies; retrying");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
            let _ = consumer.close().await;
        }));
        Ok(())
    }

    /// Registers the request waiting for the reply correlated by
    /// `correlation`.
    pub(super) fn await_reply(&self, correlation: &str, tx: oneshot::Sender<Message>) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(correlation.to_string(), tx);
    }

    /// Forgets the request correlated by `correlation`.
    pub(super) fn forget_reply(&self, correlation: &str) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(correlation);
    }

    fn reply_arrived(&self, record: &ConsumerRecord) {
        let (meta, headers) = split_headers(&record.headers);
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
                payload: record
                    .value
                    .as_ref()
                    .map(|v| v.to_vec())
                    .unwrap_or_default(),
                headers,
                attempt: 1,
            });
        }
    }

    /// Sends the reply to a request whose headers were `meta`, if it names
    /// this app's reply topic (replies go nowhere else, whatever a request
    /// names).
    pub(super) async fn reply(&self, meta: &HashMap<&'static str, String>, payload: Vec<u8>) {
        let (Some(reply_to), Some(correlation)) =
            (meta.get(REPLY_TO_HEADER), meta.get(CORRELATION_HEADER))
        else {
            return;
        };
        if *reply_to != self.reply_topic {
            return;
        }
        let headers = vec![(CORRELATION_HEADER.to_string(), correlation.clone())];
        let id = uuid::Uuid::new_v4().to_string();
        if let Err(e) = self
            .produce(record(reply_to, &id, payload, &headers, 1))
            .await
        {
            tracing::warn!(error = %e, "cannot send a reply");
        }
    }

    /// Remembers a pattern subscription of this broker for as long as
    /// `alive` lives, so requests to the topics it matches find it.
    pub(super) fn add_pattern(&self, pattern: &str, alive: Weak<()>) {
        let mut patterns = self.patterns.lock().unwrap_or_else(|p| p.into_inner());
        patterns.retain(|(_, alive)| alive.strong_count() > 0);
        patterns.push((pattern.to_string(), alive));
    }

    /// Whether a live pattern subscription of this broker matches `topic`
    /// (forgetting the dropped ones).
    pub(super) fn pattern_answers(&self, topic: &str) -> bool {
        let mut patterns = self.patterns.lock().unwrap_or_else(|p| p.into_inner());
        patterns.retain(|(_, alive)| alive.strong_count() > 0);
        patterns
            .iter()
            .any(|(pattern, _)| pattern::matches(pattern, topic))
    }
}

/// Connects to the cluster at `brokers` for `app`.
async fn connect(brokers: &str, app: &str, timeout: Duration) -> Result<Kafka, MessagingError> {
    let kafka = Kafka::builder(brokers)
        .client_id(format!("berth-{app}"))
        .connect_timeout(timeout)
        .request_timeout(timeout)
        .connect();
    tokio::time::timeout(timeout, kafka)
        .await
        .map_err(|_| unavailable("connect timed out"))?
        .map_err(unavailable)
}
