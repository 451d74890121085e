//! A trigger's consumption: its readers, its committed offset (which only
//! moves past settled messages) and how each delivery is settled.

use super::*;

/// What a trigger has read and not yet settled.
pub(super) struct Progress {
    /// Offsets delivered and not yet settled.
    pub(super) unsettled: Mutex<BTreeSet<i64>>,
    /// The next offset to read.
    pub(super) read_up_to: AtomicI64,
}

impl Progress {
    /// The offset to commit: everything before it is settled.
    pub(super) fn low_water(&self) -> i64 {
        let unsettled = self.unsettled.lock().unwrap_or_else(|p| p.into_inner());
        unsettled
            .first()
            .copied()
            .unwrap_or_else(|| self.read_up_to.load(Ordering::SeqCst))
    }

    pub(super) fn settle(&self, offset: i64) {
        self.unsettled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&offset);
    }
}

/// Where a trigger's readers deliver: every topic of a pattern feeds the
/// same two channels.
pub(super) struct Feeds {
    /// Messages, behind their topic's committed offset.
    pub(super) messages: mpsc::Sender<Delivery>,
    /// Requests, never committed.
    pub(super) requests: mpsc::Sender<Delivery>,
    /// The subscription's liveness: its ackers stop retrying once it is
    /// gone.
    pub(super) alive: Weak<()>,
}

/// Starts consuming `topic`'s messages for trigger `consumer` on
/// `trigger` (the topic itself, or a pattern matching it) into `feeds`: a
/// reader from the committed offset (else the earliest retained record)
/// and the committer of that offset (see [`offset_key`]). The tasks stop
/// when the returned handles are dropped.
pub(super) async fn start_messages(
    shared: &Arc<Shared>,
    trigger: &str,
    topic: &str,
    consumer: &str,
    feeds: &Feeds,
) -> Result<Vec<AbortOnDrop>, MessagingError> {
    let key = offset_key(consumer, trigger, topic);
    let messages = shared.reader(&shared.kafka_topic(topic)).await?;
    let start = match shared.committed(&key).await? {
        Some(offset) => offset,
        None => shared.call(messages.get_offset(OffsetAt::Earliest)).await?,
    };
    let progress = Arc::new(Progress {
        unsettled: Mutex::default(),
        read_up_to: AtomicI64::new(start),
    });
    let reader = {
        let reader = MessageReader {
            shared: shared.clone(),
            topic: topic.to_string(),
            key: key.clone(),
            tx: feeds.messages.clone(),
            progress: progress.clone(),
            alive: feeds.alive.clone(),
        };
        tokio::spawn(reader.run(messages, start))
    };
    let committer = {
        let shared = shared.clone();
        tokio::spawn(async move { commit(shared, key, start, progress).await })
    };
    Ok(vec![AbortOnDrop(reader), AbortOnDrop(committer)])
}

/// Starts reading `topic`'s requests into `feeds` from `at` (`Latest` for
/// a request topic that predates the trigger: requests sent before it ran
/// were someone else's to answer). The task stops when the returned handle
/// is dropped.
pub(super) async fn start_requests(
    shared: &Arc<Shared>,
    topic: &str,
    at: OffsetAt,
    feeds: &Feeds,
) -> Result<AbortOnDrop, MessagingError> {
    let requests = shared.reader(&shared.request_topic(topic)).await?;
    let start = shared.call(requests.get_offset(at)).await?;
    let (shared, topic, tx) = (shared.clone(), topic.to_string(), feeds.requests.clone());
    Ok(AbortOnDrop(tokio::spawn(async move {
        read_requests(shared, requests, start, topic, tx).await;
    })))
}

/// Reads one topic's messages for one trigger.
pub(super) struct MessageReader {
    pub(super) shared: Arc<Shared>,
    pub(super) topic: String,
    /// The trigger's offset key, which also addresses its retried copies.
    pub(super) key: String,
    pub(super) tx: mpsc::Sender<Delivery>,
    pub(super) progress: Arc<Progress>,
    pub(super) alive: Weak<()>,
}

impl MessageReader {
    /// Delivers every record from `start` on, except the retried copies
    /// addressed to another trigger, until the subscription is gone.
    pub(super) async fn run(self, partition: Arc<PartitionClient>, start: i64) {
        let name = self.shared.kafka_topic(&self.topic);
        let mut offset = start;
        loop {
            let (records, next) = self
                .shared
                .fetch(&partition, offset, OffsetAt::Earliest)
                .await;
            let mut pending = Vec::with_capacity(records.len());
            for r in records {
                if addressee(&r.record).is_some_and(|key| key != self.key) {
                    continue;
                }
                self.progress
                    .unsettled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(r.offset);
                let message = message_of(&self.topic, r.record, r.offset);
                pending.push(Delivery {
                    message: message.clone(),
                    reply: None,
                    acker: Box::new(KafkaAcker {
                        shared: self.shared.clone(),
                        topic: name.clone(),
                        key: self.key.clone(),
                        offset: r.offset,
                        progress: self.progress.clone(),
                        alive: self.alive.clone(),
                        message,
                    }),
                });
            }
            offset = next;
            self.progress.read_up_to.store(offset, Ordering::SeqCst);
            for delivery in pending {
                if self.tx.send(delivery).await.is_err() {
                    return;
                }
            }
        }
    }
}

pub(super) async fn read_requests(
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
pub(super) async fn commit(shared: Arc<Shared>, key: String, start: i64, progress: Arc<Progress>) {
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
                shared.remember_commit(&key, low).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot commit a kafka offset; retrying"),
        }
    }
}

/// A trigger's deliveries, read by its background tasks.
pub(super) struct KafkaSubscription {
    pub(super) rx: mpsc::Receiver<Delivery>,
    /// Requests, taken first: they are not held back by a backlog.
    pub(super) requests: mpsc::Receiver<Delivery>,
    /// Its ackers' retries stop once the subscription is gone.
    pub(super) _alive: Arc<()>,
    pub(super) _tasks: Vec<AbortOnDrop>,
}

impl KafkaSubscription {
    /// A subscription with no tasks yet, and the feeds its readers deliver
    /// to.
    pub(super) fn open() -> (Feeds, KafkaSubscription) {
        let (messages, rx) = mpsc::channel(BUFFERED);
        let (requests, requests_rx) = mpsc::channel(BUFFERED);
        let alive = Arc::new(());
        let feeds = Feeds {
            messages,
            requests,
            alive: Arc::downgrade(&alive),
        };
        let subscription = KafkaSubscription {
            rx,
            requests: requests_rx,
            _alive: alive,
            _tasks: Vec::new(),
        };
        (feeds, subscription)
    }
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

pub(super) struct KafkaAcker {
    pub(super) shared: Arc<Shared>,
    pub(super) topic: String,
    /// The trigger's offset key: its copy is addressed to it alone.
    pub(super) key: String,
    pub(super) offset: i64,
    pub(super) progress: Arc<Progress>,
    pub(super) alive: Weak<()>,
    pub(super) message: Message,
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
                let mut copy = record(&m.id, m.payload.clone(), &m.headers, m.attempt + 1);
                copy.headers
                    .insert(FOR_HEADER.into(), self.key.clone().into_bytes());
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
