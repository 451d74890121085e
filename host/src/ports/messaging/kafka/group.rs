//! A trigger's consumer group: its reader, which turns records into
//! deliveries; what it has taken and not settled per partition (the
//! committed offset only moves past settled records); the `berth-once` ids
//! it has seen; and how each delivery is settled.

use std::time::Instant;

use krafka::consumer::{
    AutoOffsetReset, Consumer, ConsumerRebalanceListener, OffsetAndMetadata,
    PartitionAssignmentStrategy, TopicPartition,
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

/// What one of the app's Kafka topics holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A topic's messages: `berth.<app>.<t>`.
    Messages,
    /// A topic's requests: `berth.<app>.__req.<t>`.
    Requests,
}

/// The Berth topic (host topics such as `_schedule.…` included) whose
/// messages or requests Kafka topic `name` of `app` holds.
pub(super) fn topic_of(app: &str, name: &str) -> Option<(Kind, String)> {
    // The dot after the app keeps `shop` from matching `berth.shopx.…`;
    // app names have no dots, so `berth.<app>.` is never another app's.
    let rest = name
        .strip_prefix("berth.")?
        .strip_prefix(app)?
        .strip_prefix('.')?;
    match rest.strip_prefix("__req.") {
        Some(topic) => Some((Kind::Requests, topic.to_string())),
        None => Some((Kind::Messages, rest.to_string())),
    }
}

/// A trigger as Kafka knows it.
pub(super) struct TriggerId {
    /// Its consumer group, `berth.<app>/<component>/<topic or pattern>`,
    /// which also addresses its retried copies.
    pub(super) group: String,
    pub(super) consumer: String,
    /// Its topic or pattern.
    pub(super) trigger: String,
}

impl TriggerId {
    pub(super) fn new(app: &str, consumer: &str, trigger: &str) -> TriggerId {
        TriggerId {
            group: format!("berth.{app}/{consumer}/{trigger}"),
            consumer: consumer.to_string(),
            trigger: trigger.to_string(),
        }
    }

    /// The key under which the release before kept this trigger's offset
    /// of Berth topic `topic`, and addressed its retried copies:
    /// `<consumer>/<topic>` for a topic's trigger,
    /// `<consumer>/<pattern>/<topic>` for a pattern's.
    pub(super) fn legacy_key(&self, topic: &str) -> String {
        if self.trigger == topic {
            format!("{}/{topic}", self.consumer)
        } else {
            format!("{}/{}/{topic}", self.consumer, self.trigger)
        }
    }

    /// Whether a retried copy of Berth topic `topic` addressed to `to` is
    /// this trigger's.
    fn is_for(&self, to: &str, topic: &str) -> bool {
        to == self.group || to == self.legacy_key(topic)
    }
}

/// A partition: its Kafka topic and number.
type Tp = (Arc<str>, i32);

/// What a trigger took from one partition and has not settled.
#[derive(Default)]
struct PartitionState {
    /// Offsets delivered and not yet settled.
    unsettled: BTreeSet<i64>,
    /// The offset after the last record taken: what to commit when nothing
    /// is unsettled.
    next: i64,
    /// The offset last committed by this host.
    committed: Option<i64>,
    once: OnceIds,
}

impl PartitionState {
    /// The offset to commit: every record before it is settled.
    fn low_water(&self) -> i64 {
        self.unsettled.first().copied().unwrap_or(self.next)
    }
}

/// The last [`ONCE_WINDOW`] `berth-once` ids of a partition, oldest first:
/// those this host delivered, after those it read back from before the
/// first record it was given (see [`Reader::seen`]).
#[derive(Default)]
pub(super) struct OnceIds {
    /// Whether the records before the first one given were read back.
    seeded: bool,
    ids: VecDeque<String>,
}

impl OnceIds {
    fn seen(&self, id: &str) -> bool {
        self.ids.iter().any(|seen| seen == id)
    }

    fn remember(&mut self, id: &str) {
        if self.ids.len() == ONCE_WINDOW {
            self.ids.pop_front();
        }
        self.ids.push_back(id.to_string());
    }

    /// Adds the ids of the records before the first one given (oldest
    /// first), before any delivered since.
    fn seed(&mut self, before: Vec<String>) {
        self.seeded = true;
        for id in before.into_iter().rev() {
            if self.ids.len() < ONCE_WINDOW && !self.seen(&id) {
                self.ids.push_front(id);
            }
        }
    }
}

/// Whether partition `key` is one of `tps`.
fn is_among(key: &Tp, tps: &[TopicPartition]) -> bool {
    tps.iter()
        .any(|tp| tp.partition == key.1 && tp.topic == *key.0)
}

/// What a trigger holds per assigned partition.
#[derive(Default)]
pub(super) struct Progress {
    partitions: Mutex<HashMap<Tp, PartitionState>>,
    /// Set once the subscription is gone: what it took and did not start
    /// handling never will be, so a handover does not wait for it.
    stopping: std::sync::atomic::AtomicBool,
}

impl Progress {
    fn with<T>(&self, tp: &Tp, f: impl FnOnce(&mut PartitionState) -> T) -> T {
        let mut partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        f(partitions.entry(tp.clone()).or_default())
    }

    /// A record at `offset` was handed to the handler.
    fn take(&self, tp: &Tp, offset: i64) {
        self.with(tp, |p| {
            p.unsettled.insert(offset);
            p.next = p.next.max(offset + 1);
        });
    }

    /// A record at `offset` needs nothing more (skipped, or a request).
    fn pass(&self, tp: &Tp, offset: i64) {
        self.with(tp, |p| p.next = p.next.max(offset + 1));
    }

    /// The delivery at `offset` was settled. Nothing to do if the partition
    /// went to another host meanwhile.
    fn settle(&self, tp: &Tp, offset: i64) {
        let mut partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = partitions.get_mut(tp) {
            p.unsettled.remove(&offset);
        }
    }

    /// Deliveries not yet settled.
    fn in_flight(&self) -> usize {
        let partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        partitions.values().map(|p| p.unsettled.len()).sum()
    }

    /// Deliveries of `tps` not yet settled.
    fn in_flight_of(&self, tps: &[TopicPartition]) -> usize {
        let partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        partitions
            .iter()
            .filter(|(key, _)| is_among(key, tps))
            .map(|(_, p)| p.unsettled.len())
            .sum()
    }

    /// The offsets that moved since their last commit.
    fn commits(&self) -> Vec<(TopicPartition, OffsetAndMetadata)> {
        self.commits_where(|_| true)
    }

    /// The offsets of `tps` that moved since their last commit.
    fn commits_of(&self, tps: &[TopicPartition]) -> Vec<(TopicPartition, OffsetAndMetadata)> {
        self.commits_where(|key| is_among(key, tps))
    }

    fn commits_where(
        &self,
        which: impl Fn(&Tp) -> bool,
    ) -> Vec<(TopicPartition, OffsetAndMetadata)> {
        let partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        partitions
            .iter()
            .filter(|(key, p)| which(key) && p.committed != Some(p.low_water()))
            .map(|((topic, partition), p)| {
                let commit = OffsetAndMetadata::new(p.low_water());
                (TopicPartition::new(topic.to_string(), *partition), commit)
            })
            .collect()
    }

    /// `commits` went through.
    fn committed(&self, commits: &[(TopicPartition, OffsetAndMetadata)]) {
        let mut partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        for (tp, commit) in commits {
            let key: Tp = (Arc::from(tp.topic.as_str()), tp.partition);
            if let Some(p) = partitions.get_mut(&key) {
                p.committed = Some(commit.offset);
            }
        }
    }

    /// The partitions went to another host: what is in flight there is
    /// theirs to deliver again from the committed offset.
    fn revoke(&self, tps: &[TopicPartition]) {
        let mut partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        for tp in tps {
            partitions.remove(&(Arc::from(tp.topic.as_str()), tp.partition));
        }
    }
}

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
            if expired(&meta, record.timestamp) {
                tracing::debug!(topic, "a kafka request past its deadline; dropped");
            } else {
                self.request(message, meta);
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
    fn request(&self, message: Message, meta: HashMap<&'static str, String>) {
        let (reply_tx, reply_rx) = oneshot::channel::<Vec<u8>>();
        let delivery = Delivery {
            message,
            reply: Some(reply_tx),
            acker: Box::new(NoAck),
        };
        match self.requests.try_send(delivery) {
            Ok(()) => {
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    if let Ok(payload) = reply_rx.await {
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
            if r.offset + 1 >= offset {
                break 'read;
            }
        }
    }
    let _ = consumer.close().await;
    Ok(ids)
}

/// Whether a request whose headers were `meta`, produced at `produced`
/// (Unix ms), is past its deadline.
fn expired(meta: &HashMap<&'static str, String>, produced: i64) -> bool {
    let deadline = meta
        .get(DEADLINE_HEADER)
        .and_then(|d| d.parse::<i64>().ok())
        .unwrap_or_else(|| produced.saturating_add(LEGACY_REQUEST_TTL.as_millis() as i64));
    deadline < now_ms()
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
                    m.attempt + 1,
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
    fn kafka_topics_map_back_to_berth_topics() {
        let cases = [
            ("berth.shop.orders", Some((Kind::Messages, "orders"))),
            (
                "berth.shop._schedule.nightly",
                Some((Kind::Messages, "_schedule.nightly")),
            ),
            (
                "berth.shop.__req.orders.eu",
                Some((Kind::Requests, "orders.eu")),
            ),
            ("berth.shopx.orders", None),
            ("berth.shop", None),
            ("shop.orders", None),
        ];
        for (name, expected) in cases {
            let expected = expected.map(|(kind, topic)| (kind, topic.to_string()));
            assert_eq!(topic_of("shop", name), expected, "{name}");
        }
    }

    #[test]
    fn triggers_are_named_apart_and_take_their_own_copies() {
        let t = TriggerId::new("shop", "handler", "orders");
        assert_eq!(t.group, "berth.shop/handler/orders");
        assert!(t.is_for("berth.shop/handler/orders", "orders"));
        // A copy the release before addressed by its offset key.
        assert!(t.is_for("handler/orders", "orders"));
        assert!(!t.is_for("berth.shop/other/orders", "orders"));
        let p = TriggerId::new("shop", "handler", "orders.*");
        assert_eq!(p.legacy_key("orders.eu"), "handler/orders.*/orders.eu");
        assert!(p.is_for("handler/orders.*/orders.eu", "orders.eu"));
    }

    #[test]
    fn the_committed_offset_waits_for_the_oldest_unsettled_record() {
        let progress = Progress::default();
        let tp: Tp = (Arc::from("berth.shop.t"), 0);
        for offset in 3..6 {
            progress.take(&tp, offset);
        }
        progress.pass(&tp, 6);
        assert_eq!(progress.in_flight(), 3);
        progress.settle(&tp, 4);
        assert_eq!(progress.commits()[0].1.offset, 3);
        progress.settle(&tp, 3);
        assert_eq!(progress.commits()[0].1.offset, 5);
        progress.settle(&tp, 5);
        let commits = progress.commits();
        assert_eq!(commits[0].1.offset, 7);
        progress.committed(&commits);
        assert!(progress.commits().is_empty(), "nothing moved since");
        progress.revoke(&[TopicPartition::new("berth.shop.t", 0)]);
        progress.settle(&tp, 9);
        assert_eq!(progress.in_flight(), 0);
    }

    #[test]
    fn once_ids_remember_a_window_after_what_was_read_back() {
        let mut once = OnceIds::default();
        once.remember("tick-a-3");
        once.seed(vec![
            "tick-a-1".into(),
            "tick-a-2".into(),
            "tick-a-3".into(),
        ]);
        assert!(once.seeded);
        assert_eq!(once.ids, ["tick-a-1", "tick-a-2", "tick-a-3"]);
        assert!(once.seen("tick-a-1") && !once.seen("tick-a-4"));
        for i in 0..ONCE_WINDOW {
            once.remember(&format!("tick-b-{i}"));
        }
        assert_eq!(once.ids.len(), ONCE_WINDOW);
        assert!(!once.seen("tick-a-3"), "the oldest leave the window");
        assert!(once.seen(&format!("tick-b-{}", ONCE_WINDOW - 1)));
    }

    #[test]
    fn requests_expire_at_their_deadline() {
        let now = now_ms();
        let mut meta = HashMap::new();
        meta.insert(DEADLINE_HEADER, (now + 5_000).to_string());
        assert!(!expired(&meta, 0));
        meta.insert(DEADLINE_HEADER, (now - 1).to_string());
        assert!(expired(&meta, now));
        // The release before sent no deadline: the record's age decides.
        assert!(!expired(&HashMap::new(), now - 1_000));
        assert!(expired(&HashMap::new(), now - 60_000));
    }
}
