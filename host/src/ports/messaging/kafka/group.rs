//! A trigger's consumer group: its reader, which turns records into
//! deliveries; what it has taken and not settled per partition (the
//! committed offset only moves past settled records); the `berth-once` ids
//! it has seen; and how each delivery is settled.

use std::time::Instant;

use krafka::consumer::{
    AutoOffsetReset, Consumer, ConsumerRebalanceListener, PartitionAssignmentStrategy,
    TopicPartition,
};

use super::*;

/// How long one poll waits for records.
pub(super) const POLL_WAIT: Duration = Duration::from_millis(500);
/// How long the broker holds a fetch that finds no record. Some brokers
/// (tansu) answer only then even when records arrive meanwhile, so it
/// bounds the latency of a message on them.
pub(super) const FETCH_WAIT: Duration = Duration::from_millis(100);
/// Pause after a failed broker call before trying again.
pub(super) const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How often a trigger commits the offsets that moved.
const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// Deliveries a trigger holds unsettled before its message partitions are
/// paused (resumed at half): a backlog stays on the broker, not in memory,
/// and a rebalance hands at most this many to another host again.
const MAX_IN_FLIGHT: usize = 64;
/// How long a rebalance waits for the deliveries of the partitions it
/// takes away to be settled, before giving them to their next owner.
const HANDOVER_GRACE: Duration = Duration::from_secs(10);
/// Requests waiting for a handler per trigger; more are dropped (their
/// requesters time out).
const REQUESTS_WAITING: usize = 64;

/// Hands over the partitions a rebalance takes away: the deliveries taken
/// from them are let finish (for up to [`HANDOVER_GRACE`]) and committed
/// first, so that the next owner does not deliver them again.
struct Revocations {
    progress: Weak<Progress>,
    /// Set once the consumer is built.
    consumer: Arc<std::sync::OnceLock<Weak<Consumer>>>,
    timeout: Duration,
}

impl ConsumerRebalanceListener for Revocations {
    async fn on_partitions_assigned(&self, _partitions: &[TopicPartition]) {}

    async fn on_partitions_revoked(&self, partitions: &[TopicPartition]) {
        let Some(progress) = self.progress.upgrade() else {
            return;
        };
        let deadline = Instant::now() + HANDOVER_GRACE;
        while progress.in_flight_of(partitions) > 0
            && Instant::now() < deadline
            && !progress.stopping.load(std::sync::atomic::Ordering::SeqCst)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let commits = progress.commits_of(partitions);
        let consumer = self.consumer.get().and_then(Weak::upgrade);
        if let (Some(consumer), false) = (consumer, commits.is_empty()) {
            let committing = consumer.commit_offsets(commits.iter().map(|(tp, c)| (tp, c)));
            match tokio::time::timeout(self.timeout, committing).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot commit the partitions handed over")
                }
                Err(_) => tracing::debug!("committing the partitions handed over timed out"),
            }
        }
        progress.revoke(partitions);
    }

    async fn on_partitions_lost(&self, partitions: &[TopicPartition]) {
        // Another host may own them already: nothing is committed.
        if let Some(progress) = self.progress.upgrade() {
            progress.revoke(partitions);
        }
    }
}

/// A trigger's deliveries, read by its group's reader.
pub(super) struct GroupSubscription {
    messages: mpsc::UnboundedReceiver<Delivery>,
    /// Requests, taken first: they are not held back by a backlog.
    requests: mpsc::Receiver<Delivery>,
    pub(super) consumer: Arc<Consumer>,
    /// Its ackers' retries stop once the subscription is gone.
    pub(super) alive: Arc<()>,
    /// Dropped with the subscription: the reader commits and leaves the
    /// group.
    _stop: oneshot::Sender<()>,
    /// Tasks that live as long as the subscription (a pattern's discovery).
    pub(super) tasks: Vec<AbortOnDrop>,
}

impl GroupSubscription {
    /// Joins `trigger`'s group and starts its reader, which reads nothing
    /// until [`follow`](Self::follow) names the topics.
    pub(super) async fn start(
        shared: &Arc<Shared>,
        trigger: TriggerId,
    ) -> Result<GroupSubscription, MessagingError> {
        let progress = Arc::new(Progress::default());
        let built = Arc::new(std::sync::OnceLock::new());
        let consumer = shared
            .own_connection()
            .await?
            .consumer(trigger.group.as_str())
            // A trigger's first run reads what was published before it.
            .auto_offset_reset(AutoOffsetReset::Earliest)
            .fetch_max_wait(FETCH_WAIT)
            .enable_auto_commit(false)
            .session_timeout(shared.session_timeout)
            .heartbeat_interval((shared.session_timeout / 3).min(Duration::from_secs(3)))
            // Kafka's default, eager assignment: every rebalance revokes
            // all partitions before dealing them again. (Cooperative
            // rebalancing leaves partitions unassigned on the tansu broker
            // CI runs.)
            .partition_assignment_strategy(PartitionAssignmentStrategy::Range)
            .rebalance_listener(Revocations {
                progress: Arc::downgrade(&progress),
                consumer: built.clone(),
                timeout: shared.timeout,
            })
            .build();
        let consumer = Arc::new(shared.call(consumer).await?);
        let _ = built.set(Arc::downgrade(&consumer));
        let (messages_tx, messages) = mpsc::unbounded_channel();
        let (requests_tx, requests) = mpsc::channel(REQUESTS_WAITING);
        let (stop_tx, stop) = oneshot::channel();
        let alive = Arc::new(());
        let reader = Reader {
            shared: shared.clone(),
            trigger: Arc::new(trigger),
            consumer: consumer.clone(),
            progress,
            messages: messages_tx,
            requests: requests_tx,
            alive: Arc::downgrade(&alive),
            paused: false,
        };
        shared.add_reader(tokio::spawn(reader.run(stop)));
        Ok(GroupSubscription {
            messages,
            requests,
            consumer,
            alive,
            _stop: stop_tx,
            tasks: Vec::new(),
        })
    }

    /// Reads Kafka topics `names` (replacing those read so far).
    pub(super) async fn follow(&self, names: Vec<String>) -> Result<(), MessagingError> {
        follow(&self.consumer, names).await
    }
}

/// The next records of `consumer`, waiting [`POLL_WAIT`] at most. A poll
/// that comes back empty at once (every partition paused, or a broker that
/// does not hold fetches) is followed by a pause: the loop must not keep a
/// worker thread busy, since the tasks it woke (a handler holding a
/// transaction, say) wait on that thread.
pub(super) async fn poll_patiently(consumer: &Consumer) -> krafka::Result<Vec<ConsumerRecord>> {
    let started = Instant::now();
    let records = consumer.poll(POLL_WAIT).await?;
    if records.is_empty() && started.elapsed() < FETCH_WAIT / 2 {
        tokio::time::sleep(FETCH_WAIT).await;
    }
    Ok(records)
}

/// Subscribes `consumer` to Kafka topics `names`, replacing its
/// subscription.
pub(super) async fn follow(consumer: &Consumer, names: Vec<String>) -> Result<(), MessagingError> {
    consumer.subscribe(names).await.map_err(unavailable)
}

#[async_trait]
impl Subscription for GroupSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        tokio::select! {
            biased;
            Some(request) = self.requests.recv() => Some(request),
            delivery = self.messages.recv() => delivery,
        }
    }
}

/// Polls a trigger's group and hands its records out, until the
/// subscription is dropped.
struct Reader {
    shared: Arc<Shared>,
    trigger: Arc<TriggerId>,
    consumer: Arc<Consumer>,
    progress: Arc<Progress>,
    messages: mpsc::UnboundedSender<Delivery>,
    requests: mpsc::Sender<Delivery>,
    alive: Weak<()>,
    /// Whether the message partitions are paused (see [`MAX_IN_FLIGHT`]).
    paused: bool,
}

impl Reader {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut last_commit = Instant::now();
        loop {
            let polled = tokio::select! {
                biased;
                _ = &mut stop => break,
                polled = self.poll() => polled,
            };
            match polled {
                Ok(records) => {
                    for record in records {
                        self.take(record).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(group = %self.trigger.group, error = %e, "cannot read from kafka; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
            self.hold_back().await;
            if last_commit.elapsed() >= COMMIT_EVERY {
                self.commit().await;
                last_commit = Instant::now();
            }
        }
        // Stopping: what was settled is committed, and leaving the group
        // hands the partitions to the other hosts at once.
        self.progress
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.commit().await;
        if let Err(e) = self.consumer.close().await {
            tracing::debug!(group = %self.trigger.group, error = %e, "leaving the kafka group failed");
        }
    }

    /// The next records, once the trigger follows some topics.
    async fn poll(&self) -> krafka::Result<Vec<ConsumerRecord>> {
        if self.consumer.subscription().await.is_empty() {
            // A pattern that matches no topic yet.
            tokio::time::sleep(POLL_WAIT).await;
            return Ok(Vec::new());
        }
        poll_patiently(&self.consumer).await
    }

    /// Hands one record out, or passes over it.
    async fn take(&mut self, record: ConsumerRecord) {
        let tp: Tp = (record.topic.clone(), record.partition);
        let offset = record.offset;
        let Some((kind, topic)) = topic_of(&self.shared.app, &record.topic) else {
            self.progress.pass(&tp, offset);
            return;
        };
        let (message, meta) = message_of(&topic, &record);
        if kind == Kind::Requests {
            // Requests are not stored: taken once, answered or not.
            self.progress.pass(&tp, offset);
            match time_left(&meta, record.timestamp) {
                Duration::ZERO => {
                    tracing::debug!(topic, "a kafka request past its deadline; dropped")
                }
                left => self.request(message, meta, left),
            }
            return;
        }
        if let Some(to) = meta.get(FOR_HEADER)
            && !self.trigger.is_for(to, &topic)
        {
            // Another trigger's retried copy.
            self.progress.pass(&tp, offset);
            return;
        }
        if meta.contains_key(ONCE_HEADER)
            && message.attempt == 1
            && self.seen(&tp, offset, &message.id).await
        {
            tracing::debug!(topic, id = %message.id, "a copy of a message already delivered; skipped");
            self.progress.pass(&tp, offset);
            return;
        }
        self.progress.take(&tp, offset);
        let acker = KafkaAcker {
            shared: self.shared.clone(),
            trigger: self.trigger.clone(),
            progress: self.progress.clone(),
            tp,
            offset,
            alive: self.alive.clone(),
            message: message.clone(),
        };
        let _ = self.messages.send(Delivery {
            message,
            reply: None,
            acker: Box::new(acker),
        });
    }

    /// Whether `berth-once` id `id`, at `offset`, came before in its
    /// partition; remembers it if not. The first time a partition is given
    /// to this host, the records before `offset` (all settled, by
    /// whichever host) are read back for their ids.
    async fn seen(&self, tp: &Tp, offset: i64, id: &str) -> bool {
        let seeded = self.progress.with(tp, |p| p.once.seeded);
        if !seeded {
            let before = match once_ids_before(&self.shared, tp, offset).await {
                Ok(before) => before,
                Err(e) => {
                    tracing::warn!(group = %self.trigger.group, error = %e, "cannot read back the ids before a partition's first record; a copy may run twice");
                    Vec::new()
                }
            };
            self.progress.with(tp, |p| {
                if !p.once.seeded {
                    p.once.seed(before);
                }
            });
        }
        self.progress.with(tp, |p| {
            let seen = p.once.seen(id);
            if !seen {
                p.once.remember(id);
            }
            seen
        })
    }

    /// Hands a request to the handler; its reply goes back to the
    /// requester.
    /// Queues a request for a handler; its answer is sent if it comes
    /// within `left` (see [`answer_within`]).
    fn request(&self, message: Message, meta: HashMap<&'static str, String>, left: Duration) {
        let (reply_tx, reply_rx) = oneshot::channel::<Vec<u8>>();
        let delivery = Delivery {
            message,
            reply: Some(reply_tx),
            acker: Box::new(NoAck::default()),
        };
        match self.requests.try_send(delivery) {
            Ok(()) => {
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    if let Some(payload) = answer_within(reply_rx, Some(left)).await {
                        shared.reply(&meta, payload).await;
                    }
                });
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(group = %self.trigger.group, "too many requests waiting; one was dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Pauses the trigger's message partitions while it holds
    /// [`MAX_IN_FLIGHT`] deliveries, resuming them at half (requests are
    /// never held back). Paused again after each poll, since a rebalance
    /// may have brought new partitions.
    async fn hold_back(&mut self) {
        let in_flight = self.progress.in_flight();
        let hold = if self.paused {
            in_flight > MAX_IN_FLIGHT / 2
        } else {
            in_flight >= MAX_IN_FLIGHT
        };
        if hold {
            for (name, partitions) in self.consumer.assignment().await {
                if matches!(topic_of(&self.shared.app, &name), Some((Kind::Messages, _))) {
                    self.consumer.pause(&name, &partitions).await;
                }
            }
        } else if self.paused {
            // Whatever is paused, including partitions a rebalance took
            // away and gave back meanwhile.
            for (name, partition) in self.consumer.paused_partitions().await {
                self.consumer.resume(&name, &[partition]).await;
            }
        }
        self.paused = hold;
    }

    /// Commits the offsets that moved. A failure (a rebalance under way) is
    /// only logged: the next commit carries them.
    async fn commit(&self) {
        let commits = self.progress.commits();
        if commits.is_empty() {
            return;
        }
        let committing = self
            .consumer
            .commit_offsets(commits.iter().map(|(tp, commit)| (tp, commit)));
        match self.shared.call(committing).await {
            Ok(()) => self.progress.committed(&commits),
            Err(e) => {
                tracing::debug!(group = %self.trigger.group, error = %e, "cannot commit kafka offsets yet");
            }
        }
    }
}

/// The `berth-once` ids of the (at most [`ONCE_WINDOW`]) first deliveries
/// before `offset` in partition `tp`, oldest first.
async fn once_ids_before(
    shared: &Shared,
    tp: &Tp,
    offset: i64,
) -> Result<Vec<String>, MessagingError> {
    let from = offset.saturating_sub(ONCE_WINDOW as i64).max(0);
    let mut ids = Vec::new();
    if from >= offset {
        return Ok(ids);
    }
    let consumer = shared
        .own_connection()
        .await?
        .consumer_without_group()
        .fetch_max_wait(FETCH_WAIT)
        // Retention may have deleted the oldest: read from the first kept.
        .auto_offset_reset(AutoOffsetReset::Earliest)
        .build();
    let consumer = shared.call(consumer).await?;
    shared.call(consumer.assign(&tp.0, vec![tp.1])).await?;
    shared.call(consumer.seek(&tp.0, tp.1, from)).await?;
    let deadline = Instant::now() + shared.timeout;
    'read: while Instant::now() < deadline {
        let records = shared.call(consumer.poll(FETCH_WAIT)).await?;
        for r in records {
            if r.offset >= offset {
                break 'read;
            }
            let (message, meta) = message_of("", &r);
            if meta.contains_key(ONCE_HEADER) && message.attempt == 1 {
                ids.push(message.id);
            }
            if r.offset.saturating_add(1) >= offset {
                break 'read;
            }
        }
    }
    let _ = consumer.close().await;
    Ok(ids)
}

/// What is left until the deadline of a request whose headers were
/// `meta`, produced at `produced` (Unix ms): zero once past it.
fn time_left(meta: &HashMap<&'static str, String>, produced: i64) -> Duration {
    let deadline = meta
        .get(DEADLINE_HEADER)
        .and_then(|d| d.parse::<i64>().ok())
        .unwrap_or_else(|| produced.saturating_add(LEGACY_REQUEST_TTL.as_millis() as i64));
    Duration::from_millis(deadline.saturating_sub(now_ms()).max(0) as u64)
}

/// Settles one delivery of a trigger.
struct KafkaAcker {
    shared: Arc<Shared>,
    trigger: Arc<TriggerId>,
    progress: Arc<Progress>,
    tp: Tp,
    offset: i64,
    alive: Weak<()>,
    message: Message,
}

#[async_trait]
impl Acker for KafkaAcker {
    async fn ack(self: Box<Self>) {
        self.progress.settle(&self.tp, self.offset);
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
                let copy = record(
                    &self.tp.0,
                    &m.id,
                    m.payload.clone(),
                    &m.headers,
                    m.attempt.saturating_add(1),
                )
                .header(
                    FOR_HEADER,
                    Bytes::from(self.trigger.group.clone().into_bytes()),
                );
                match self.shared.produce(copy).await {
                    Ok(()) => {
                        self.progress.settle(&self.tp, self.offset);
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
    fn requests_expire_at_their_deadline() {
        let now = now_ms();
        let mut meta = HashMap::new();
        meta.insert(DEADLINE_HEADER, (now + 5_000).to_string());
        let left = time_left(&meta, 0);
        assert!(left > Duration::from_millis(4_000) && left <= Duration::from_secs(5));
        meta.insert(DEADLINE_HEADER, (now - 1).to_string());
        assert_eq!(time_left(&meta, now), Duration::ZERO);
        // The release before sent no deadline: the record's age decides.
        assert!(time_left(&HashMap::new(), now - 1_000) > Duration::ZERO);
        assert_eq!(time_left(&HashMap::new(), now - 60_000), Duration::ZERO);
    }
}
