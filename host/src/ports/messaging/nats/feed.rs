//! A NATS trigger's feeder: it fetches stored messages ahead of the
//! trigger's handlers into a queue of the host's, at most `prefetch` at a
//! time, and tells JetStream the waiting ones are in progress, so none is
//! redelivered while it waits for a handler (see [`feed`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use futures::StreamExt as _;

/// How long a pull request waits on the server for messages. Without
/// idle heartbeats (async-nats' batch would miss wake-ups after one), this
/// is also how soon, plus the client's 5 s margin, a pull lost with a
/// server restart is replaced.
pub(super) const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Longest pause between failed pull requests.
const PULL_RETRY_MAX: Duration = Duration::from_secs(2);

/// Stored messages fetched ahead of the trigger's handlers, oldest first.
/// Their ack wait runs from their delivery, so while they wait here the
/// feeder tells JetStream they are in progress.
#[derive(Default)]
pub(super) struct Held {
    queue: Mutex<VecDeque<Waiting>>,
    /// A message was added (the trigger's consumer loop waits on it).
    arrived: tokio::sync::Notify,
    /// A message was taken (the feeder waits on it for room).
    taken: tokio::sync::Notify,
}

/// A held message, and when JetStream's ack wait last restarted for it
/// (its delivery, or its last progress ack).
pub(super) struct Waiting {
    pub(super) message: jetstream::Message,
    pub(super) since: Instant,
}

impl Held {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Waiting>> {
        // A panic while holding the lock leaves a queue that is still valid.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn push(&self, message: jetstream::Message) {
        self.lock().push_back(Waiting {
            message,
            since: Instant::now(),
        });
        self.arrived.notify_one();
    }

    /// The oldest held message, once there is one. Cancel-safe: a message
    /// is taken only when the future completes.
    pub(super) async fn pop(&self) -> Waiting {
        loop {
            let next = self.lock().pop_front();
            if let Some(waiting) = next {
                self.taken.notify_one();
                return waiting;
            }
            self.arrived.notified().await;
        }
    }

    /// Takes every held message (as the trigger stops).
    pub(super) fn take_all(&self) -> Vec<jetstream::Message> {
        self.lock().drain(..).map(|w| w.message).collect()
    }

    /// Returns once at most `low` messages are held.
    async fn room(&self, low: usize) {
        while self.len() > low {
            self.taken.notified().await;
        }
    }

    /// The messages whose ack wait last restarted `every` or longer ago.
    fn due(&self, every: Duration) -> Vec<jetstream::Message> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|w| now.duration_since(w.since) >= every)
            .map(|w| w.message.clone())
            .collect()
    }

    /// Notes that `message`'s ack wait restarted at `at` (if it is still
    /// held; its reply subject names it).
    fn renewed(&self, message: &jetstream::Message, at: Instant) {
        if let Some(waiting) = self
            .lock()
            .iter_mut()
            .find(|w| w.message.reply == message.reply)
        {
            waiting.since = at;
        }
    }
}

/// Fetches a trigger's stored messages into `held`, at most `prefetch` at a
/// time: a pull request asks for what fills the queue once it is half
/// empty, and only one is out at a time. Every message waiting in the
/// queue is told in progress twice per ack wait, so it is not redelivered
/// (to this host or another) while it waits for a handler. Runs until the
/// subscription is dropped; a failed pull is retried with a growing pause.
pub(super) async fn feed(
    mut consumer: jetstream::consumer::Consumer<pull::Config>,
    mut remake: Remake,
    held: Arc<Held>,
    prefetch: usize,
    ack_wait: AckWait,
) {
    let mut progress = tokio::time::interval(PROGRESS_CHECK);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Twice per ack wait, as the server has it now (another host may
    // have changed it).
    let every = || ack_wait.get() / 2;
    // Progress acks go out from a task of their own: a slow send (during a
    // reconnect) must not hold up this loop, or a batch's client-side
    // deadline could pass with its messages unread, and they are lost.
    let mut telling = ProgressTask::default();
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = held.room(prefetch / 2) => {}
            _ = progress.tick() => {
                telling.start(&held, every());
                continue;
            }
        }
        let want = prefetch.saturating_sub(held.len()).max(1);
        let pulled = consumer
            .batch()
            .max_messages(want)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut failed = match pulled {
            Ok(mut batch) => loop {
                tokio::select! {
                    next = batch.next() => match next {
                        Some(Ok(message)) => held.push(message),
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "a nats pull request failed");
                            break true;
                        }
                        None => break false,
                    },
                    _ = progress.tick() => telling.start(&held, every()),
                }
            },
            Err(e) => {
                tracing::debug!(error = %e, "cannot send a nats pull request");
                true
            }
        };
        if !failed {
            failures = 0;
            // A pull from a consumer deleted with its stream can end as if
            // no message were waiting: the watcher, not a failure, tells.
            if remake.watched.gone.load(Ordering::Relaxed)
                && let Some(made) = remake.if_gone(&consumer).await
            {
                consumer = made;
            }
            continue;
        }
        failures = failures.saturating_add(1);
        if let Some(made) = remake.if_gone(&consumer).await {
            consumer = made;
            failures = 0;
            continue;
        }
        if failures % 100 == 10 {
            tracing::warn!("a message trigger's nats pull requests keep failing; retrying");
        }
        let pause = (Duration::from_millis(50) * 2u32.pow(failures.min(6))).min(PULL_RETRY_MAX);
        let resume = tokio::time::sleep(pause);
        tokio::pin!(resume);
        while failed {
            tokio::select! {
                _ = &mut resume => failed = false,
                _ = progress.tick() => telling.start(&held, every()),
            }
        }
    }
}

/// How often the held messages are checked for a progress ack due: a
/// quarter of the shortest ack wait the host config allows (1 s), so a
/// message is told at most 3/4 of any ack wait after its last restart,
/// whatever the wait is now.
const PROGRESS_CHECK: Duration = Duration::from_millis(250);

/// A trigger consumer's ack wait as the server has it, shared by its
/// feeder and its deliveries' progress acks. Hosts configured with
/// different `ack_wait_ms` each set theirs when they subscribe; every host
/// follows the one in force (read by its [`watch`]er), so none tells
/// progress too seldom and has its messages redelivered mid-handler.
#[derive(Clone)]
pub(super) struct AckWait(Arc<AtomicU64>);

impl AckWait {
    pub(super) fn new(wait: Duration) -> AckWait {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        AckWait(Arc::new(AtomicU64::new(ms)))
    }

    pub(super) fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, wait: Duration) {
        if !wait.is_zero() {
            let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            self.0.store(ms, Ordering::Relaxed);
        }
    }
}

/// How often a trigger's watcher reads its consumer from the server.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// What a trigger's watcher last read of its durable consumer.
#[derive(Clone)]
pub(super) struct Watched {
    /// The ack floor: every message up to this stream sequence was
    /// handled, so a consumer made again starts after it instead of
    /// replaying the stream (messages handled since the last read come
    /// again: at least once, as ever).
    floor: Arc<AtomicU64>,
    /// When the consumer the floor was read from was made (ns since the
    /// epoch, the server's clock): a floor is of the stream that consumer
    /// read, which was there by then; a stream made since (by any host) is
    /// read from its start.
    consumer_created: Arc<AtomicI64>,
    /// The server has no such consumer (or stream) now.
    gone: Arc<AtomicBool>,
}

impl Watched {
    /// What the consumer said as the trigger subscribed.
    pub(super) fn new(info: &jetstream::consumer::Info) -> Watched {
        let watched = Watched {
            floor: Arc::default(),
            consumer_created: Arc::default(),
            gone: Arc::default(),
        };
        watched.note(info);
        watched
    }

    fn note(&self, info: &jetstream::consumer::Info) {
        let created = i64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(i64::MAX);
        self.consumer_created.store(created, Ordering::Relaxed);
        self.floor.store(floor_of(info), Ordering::Relaxed);
        self.gone.store(false, Ordering::Relaxed);
    }
}

/// What a consumer has handled: its ack floor, or, for one made again at a
/// sequence (which JetStream gives an ack floor of 0 until its first ack),
/// everything before that sequence.
fn floor_of(info: &jetstream::consumer::Info) -> u64 {
    let started_after = match info.config.deliver_policy {
        jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence } => {
            start_sequence.saturating_sub(1)
        }
        _ => 0,
    };
    info.ack_floor.stream_sequence.max(started_after)
}

/// Reads the trigger's consumer every [`WATCH_EVERY`], on its own so that a
/// slow answer holds up neither the pulls nor the progress acks: notes its
/// ack floor, follows its ack wait (another host may have set it), and
/// says when it is gone. Runs until aborted with the subscription.
pub(super) async fn watch(
    consumer: jetstream::consumer::Consumer<pull::Config>,
    watched: Watched,
    ack_wait: AckWait,
) {
    let mut ticks = tokio::time::interval(WATCH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match tokio::time::timeout(WATCH_EVERY, consumer.get_info()).await {
            Ok(Ok(info)) => {
                watched.note(&info);
                ack_wait.set(info.config.ack_wait);
            }
            Ok(Err(e)) if gone(e.kind()) => watched.gone.store(true, Ordering::Relaxed),
            _ => {}
        }
    }
}

/// How a feeder makes its trigger's durable consumer again, should it be
/// gone (an operator deleted it, or its stream, which the app's next
/// publish makes again): without it, every pull fails and the trigger
/// would wait for ever.
pub(super) struct Remake {
    pub(super) js: jetstream::Context,
    /// The app's stream, as the broker makes it.
    pub(super) stream: stream::Config,
    /// The trigger's consumer, as `subscribe` makes it.
    pub(super) consumer: pull::Config,
    /// What the watcher last read of the consumer.
    pub(super) watched: Watched,
}

impl Remake {
    /// The consumer made again if the server has no such consumer; `None`
    /// if it is there, or cannot be told or made now (its stream gone too,
    /// say: the pulls go on being retried).
    async fn if_gone(
        &mut self,
        consumer: &jetstream::consumer::Consumer<pull::Config>,
    ) -> Option<jetstream::consumer::Consumer<pull::Config>> {
        // Bounded: the client waits for JetStream's answers without a
        // timeout of its own, and a lost one must not stop the feeder (its
        // pulls and its held messages' progress acks) for good.
        let looked = tokio::time::timeout(WATCH_EVERY, consumer.get_info()).await;
        match looked {
            Ok(Err(e)) if gone(e.kind()) => {
                let made = tokio::time::timeout(WATCH_EVERY * 2, self.make()).await;
                made.ok().flatten()
            }
            _ => None,
        }
    }

    /// Makes the consumer again: after the ack floor last seen, if the
    /// stream is the one it read; from the start of a stream made since.
    /// A stream that is gone is left to the app's next publish to make:
    /// made here, it could race the deletion still under way on the server
    /// (NATS 2.9 then kept a stream that stored messages but delivered
    /// none), and only a publish puts messages in it anyway.
    async fn make(&mut self) -> Option<jetstream::consumer::Consumer<pull::Config>> {
        let made = async {
            let stream = self.js.get_stream(&self.stream.name).await?;
            let stream_created = stream.cached_info().created.unix_timestamp_nanos();
            let mut config = self.consumer.clone();
            let floor = self.watched.floor.load(Ordering::Relaxed);
            let read_this_stream =
                i128::from(self.watched.consumer_created.load(Ordering::Relaxed)) >= stream_created;
            if read_this_stream && floor > 0 {
                config.deliver_policy = jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: floor + 1,
                };
            }
            let consumer = stream.create_consumer(config).await?;
            Ok::<_, async_nats::Error>(consumer)
        };
        match made.await {
            Ok(consumer) => {
                self.watched.note(consumer.cached_info());
                tracing::warn!(stream = %self.stream.name, durable = ?self.consumer.durable_name,
                    "a message trigger's durable consumer was gone; made it again");
                Some(consumer)
            }
            Err(error) => {
                tracing::debug!(%error, "cannot make a gone durable consumer again");
                None
            }
        }
    }
}

/// Whether a consumer info error says the consumer (or its stream) is gone.
fn gone(kind: ConsumerInfoErrorKind) -> bool {
    matches!(
        kind,
        ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
    )
}

/// The feeder's progress acks: at most one round at a time.
#[derive(Default)]
struct ProgressTask(Option<tokio::task::JoinHandle<()>>);

impl ProgressTask {
    /// Starts a round for the held messages due one, unless one still runs.
    fn start(&mut self, held: &Arc<Held>, every: Duration) {
        if self.0.as_ref().is_some_and(|round| !round.is_finished()) {
            return;
        }
        self.0 = Some(tokio::spawn(tell_progress(held.clone(), every)));
    }
}

impl Drop for ProgressTask {
    fn drop(&mut self) {
        if let Some(round) = &self.0 {
            round.abort();
        }
    }
}

/// Restarts the ack wait of the held messages due for it, within `every`;
/// a message counts as renewed only once its `+WPI` went out.
async fn tell_progress(held: Arc<Held>, every: Duration) {
    let due = held.due(every);
    if due.is_empty() {
        return;
    }
    let told = async {
        for message in due {
            let sent = Instant::now();
            match message.ack_with(AckKind::Progress).await {
                Ok(()) => held.renewed(&message, sent),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot extend a waiting message's ack wait")
                }
            }
        }
    };
    let _ = tokio::time::timeout(every, told).await;
}
