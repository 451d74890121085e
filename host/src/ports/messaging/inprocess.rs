//! Embedded in-process broker: delivers each published message to every
//! subscription of its topic or of a pattern matching it (one per message
//! trigger) through bounded
//! queues. Redelivery after `nack` is scheduled in-process. Messages
//! published while nobody subscribes are dropped, and queued messages are
//! lost when the host exits: durable delivery needs a real broker.
//!
//! A queue drains only as its trigger's handlers finish, so a publisher
//! waits for room in a full one at most [`QUEUE_WAIT`], then gets a
//! retriable `unavailable`: a handler publishing to its own trigger's full
//! queue would otherwise wait for itself forever. A publish either reaches
//! every subscription or none (room is taken in all of them first), so
//! retrying a refused one delivers nothing twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::{
    Acker, Delivery, HeldBytes, Message, MessagingBackend, MessagingError, NoAck, QUEUED_BYTES,
    QueuedBytes, Subscription,
};

/// Deliveries queued per subscription before publishers wait.
const QUEUE_DEPTH: usize = 1024;
/// Longest a publish or a request waits for room in a full subscription
/// queue before it fails with `unavailable` (retriable). Long enough to
/// ride out a burst, short enough that a handler publishing to its own
/// full queue gives up well within its time limit.
pub const QUEUE_WAIT: Duration = Duration::from_secs(5);

/// A broker living inside the host process.
pub struct InProcessBroker {
    topics: Mutex<HashMap<String, Vec<mpsc::Sender<Delivery>>>>,
    /// Deliveries each subscription queues.
    depth: usize,
    /// How long a publisher waits for room in a full queue.
    wait: Duration,
    /// The payload bytes its queues hold together, and its deliveries
    /// until they are settled (a nacked one while it waits too).
    queued: Arc<QueuedBytes>,
}

impl Default for InProcessBroker {
    fn default() -> Self {
        Self {
            topics: Mutex::default(),
            depth: QUEUE_DEPTH,
            wait: QUEUE_WAIT,
            queued: QueuedBytes::new("", QUEUED_BYTES),
        }
    }
}

impl InProcessBroker {
    /// An empty broker.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// An empty broker whose subscriptions queue `depth` deliveries (at
    /// least 1), whose publishers wait at most `wait` for room in a full
    /// queue, and whose deliveries hold `bytes` of payload together.
    pub fn with_queues(depth: usize, wait: Duration, bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            depth: depth.max(1),
            wait,
            queued: QueuedBytes::new("", bytes),
            ..Self::default()
        })
    }

    /// What a publisher is told when a queue of `topic` stayed full.
    fn full(&self, topic: &str) -> MessagingError {
        // Publishers cause this at will: once a second at most.
        if crate::audit::host_warning_due("inprocess.queue-full") {
            tracing::warn!(topic, wait = ?self.wait, "an in-process subscription's queue stayed full; message refused");
        }
        MessagingError::Unavailable(format!(
            "the queue of a trigger on {topic:?} stayed full for {:?}",
            self.wait
        ))
    }

    /// Holds `bytes` for each of `count` deliveries, or says why not; past
    /// the budget too when not `bounded`.
    fn hold(
        &self,
        bytes: usize,
        count: usize,
        bounded: bool,
    ) -> Result<Vec<HeldBytes>, MessagingError> {
        if !bounded {
            return Ok((0..count).map(|_| self.queued.hold_anyway(bytes)).collect());
        }
        (0..count)
            .map(|_| self.queued.hold(bytes))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                MessagingError::Unavailable(format!(
                    "messages waiting for this app's handlers hold {} MiB of the host's memory already; retry later",
                    self.queued.limit_mib()
                ))
            })
    }

    /// The live subscriptions whose topic or pattern matches `topic`.
    fn subscribers(&self, topic: &str) -> Vec<mpsc::Sender<Delivery>> {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics.retain(|_, subs| {
            subs.retain(|s| !s.is_closed());
            !subs.is_empty()
        });
        topics
            .iter()
            .filter(|(pattern, _)| super::pattern::matches(pattern, topic))
            .flat_map(|(_, subs)| subs.iter().cloned())
            .collect()
    }
}

struct QueueAcker {
    queue: mpsc::Sender<Delivery>,
    message: Message,
    held: HeldBytes,
}

#[async_trait]
impl Acker for QueueAcker {
    async fn ack(self: Box<Self>) {}

    async fn nack(self: Box<Self>, delay: Duration) {
        let QueueAcker {
            queue,
            mut message,
            held,
        } = *self;
        message.attempt = message.attempt.saturating_add(1);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let acker = Box::new(QueueAcker {
                queue: queue.clone(),
                message: message.clone(),
                held,
            });
            let _ = queue
                .send(Delivery {
                    message,
                    reply: None,
                    acker,
                })
                .await;
        });
    }
}

fn delivery(queue: &mpsc::Sender<Delivery>, message: Message, held: HeldBytes) -> Delivery {
    let acker = Box::new(QueueAcker {
        queue: queue.clone(),
        message: message.clone(),
        held,
    });
    Delivery {
        message,
        reply: None,
        acker,
    }
}

impl InProcessBroker {
    /// Delivers to every subscription whose topic or pattern matches,
    /// within the byte budget if `bounded`.
    async fn deliver(
        &self,
        topic: &str,
        id: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        bounded: bool,
    ) -> Result<(), MessagingError> {
        let message = Message {
            id: id.to_string(),
            topic: topic.to_string(),
            payload,
            headers,
            attempt: 1,
        };
        let subscribers = self.subscribers(topic);
        if subscribers.is_empty() {
            tracing::debug!(topic, "no subscriber; message dropped");
            return Ok(());
        }
        // Room in every queue first, then the message into each: a publish
        // refused here reached no subscription.
        let reserve_all = async {
            let mut permits = Vec::with_capacity(subscribers.len());
            for queue in &subscribers {
                permits.push(queue.reserve().await?);
            }
            Ok::<_, mpsc::error::SendError<()>>(permits)
        };
        let permits = match tokio::time::timeout(self.wait, reserve_all).await {
            Ok(Ok(permits)) => permits,
            Ok(Err(_)) => return Err(MessagingError::Unavailable("subscriber stopped".into())),
            Err(_) => return Err(self.full(topic)),
        };
        let held = self.hold(message.payload.len(), subscribers.len(), bounded)?;
        for ((queue, permit), held) in subscribers.iter().zip(permits).zip(held) {
            permit.send(delivery(queue, message.clone(), held));
        }
        Ok(())
    }
}

#[async_trait]
impl MessagingBackend for InProcessBroker {
    async fn publish_with_id(
        &self,
        topic: &str,
        id: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<(), MessagingError> {
        self.deliver(topic, id, payload, headers, true).await
    }

    async fn publish_unbounded(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<String, MessagingError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.deliver(topic, &id, payload, headers, false).await?;
        Ok(id)
    }

    async fn request(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Message, MessagingError> {
        let started = tokio::time::Instant::now();
        let queue = self
            .subscribers(topic)
            .into_iter()
            .next()
            .ok_or(MessagingError::NoResponder)?;
        let held = self.hold(payload.len(), 1, true)?.pop();
        let id = uuid::Uuid::new_v4().to_string();
        let message = Message {
            id: id.clone(),
            topic: topic.to_string(),
            payload,
            headers,
            attempt: 1,
        };
        let (tx, rx) = oneshot::channel();
        // Requests are not stored: a failed one is not retried (its caller
        // has its answer, an error), as with every other broker.
        let request = Delivery {
            message,
            reply: Some(tx),
            acker: Box::new(NoAck::holding(held)),
        };
        // Waiting for room in the queue is part of the request's time.
        let permit = match tokio::time::timeout(self.wait.min(timeout), queue.reserve()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(MessagingError::NoResponder),
            Err(_) if timeout <= self.wait => return Err(MessagingError::Timeout),
            Err(_) => return Err(self.full(topic)),
        };
        permit.send(request);
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, rx).await {
            Ok(Ok(reply)) => Ok(Message {
                id: uuid::Uuid::new_v4().to_string(),
                topic: topic.to_string(),
                payload: reply,
                headers: Vec::new(),
                attempt: 1,
            }),
            Ok(Err(_)) => Err(MessagingError::Other(
                "the handler failed without replying".into(),
            )),
            Err(_) => Err(MessagingError::Timeout),
        }
    }

    async fn subscribe(
        &self,
        topic: &str,
        _consumer: &str,
    ) -> Result<Box<dyn Subscription>, MessagingError> {
        let (tx, rx) = mpsc::channel(self.depth);
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(topic.to_string())
            .or_default()
            .push(tx);
        Ok(Box::new(QueueSubscription { rx }))
    }
}

struct QueueSubscription {
    rx: mpsc::Receiver<Delivery>,
}

#[async_trait]
impl Subscription for QueueSubscription {
    /// Takes nothing more: publishers and requesters pass over this
    /// subscription from now on (a stopping app version's), to the next
    /// version's.
    fn stop_fetching(&mut self) {
        self.rx.close();
    }

    async fn next(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fan_out_nack_and_request() {
        let broker = InProcessBroker::new();
        let mut a = broker.subscribe("t", "c").await.unwrap();
        let mut b = broker.subscribe("t", "c").await.unwrap();
        broker.publish("t", b"x".to_vec(), vec![]).await.unwrap();
        let da = a.next().await.unwrap();
        assert_eq!(b.next().await.unwrap().message.payload, b"x");
        da.acker.nack(Duration::from_millis(1)).await;
        let again = a.next().await.unwrap();
        assert_eq!(again.message.attempt, 2);
        assert_eq!(again.message.id, da.message.id);

        let responder = tokio::spawn(async move {
            let d = b.next().await.unwrap();
            d.reply.unwrap().send(b"pong".to_vec()).unwrap();
        });
        drop(a);
        let reply = broker
            .request("t", b"ping".to_vec(), vec![], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(reply.payload, b"pong");
        responder.await.unwrap();
        let err = broker
            .request("none", vec![], vec![], Duration::from_millis(10))
            .await
            .unwrap_err();
        assert_eq!(err, MessagingError::NoResponder);
    }

    /// A full queue refuses a publish after the broker's wait with a typed,
    /// retriable error instead of blocking; what was accepted is kept, and
    /// a refused publish reached no subscription.
    #[tokio::test]
    async fn a_full_queue_refuses_publishes_after_a_bounded_wait() {
        let wait = Duration::from_millis(50);
        let broker = InProcessBroker::with_queues(1, wait, QUEUED_BYTES);
        let mut full = broker.subscribe("t", "c").await.unwrap();
        broker.publish("t", b"1".to_vec(), vec![]).await.unwrap();
        let mut empty = broker.subscribe("t", "d").await.unwrap();

        let started = std::time::Instant::now();
        let err = broker
            .publish("t", b"2".to_vec(), vec![])
            .await
            .unwrap_err();
        assert!(matches!(err, MessagingError::Unavailable(_)), "{err:?}");
        assert!(started.elapsed() >= wait, "{:?}", started.elapsed());
        assert!(
            tokio::time::timeout(Duration::from_millis(20), empty.next())
                .await
                .is_err(),
            "a refused publish reached no subscription"
        );
        // A request waits for room as long as the broker's wait at most
        // too, and its own timeout if that is shorter.
        let err = broker
            .request("t", vec![], vec![], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, MessagingError::Unavailable(_)), "{err:?}");
        let err = broker
            .request("t", vec![], vec![], Duration::from_millis(10))
            .await
            .unwrap_err();
        assert_eq!(err, MessagingError::Timeout);

        // The accepted message is still there; once it is taken, there is
        // room again, for every subscription.
        assert_eq!(full.next().await.unwrap().message.payload, b"1");
        broker.publish("t", b"3".to_vec(), vec![]).await.unwrap();
        assert_eq!(full.next().await.unwrap().message.payload, b"3");
        assert_eq!(empty.next().await.unwrap().message.payload, b"3");
    }

    /// What the queues hold is bounded in bytes too, for all of the app's
    /// triggers together: a delivery holds its payload until it is
    /// settled (a nacked one while it waits for its redelivery), and a
    /// publish or request past the budget is refused at once, reaching no
    /// subscription; one larger than the budget passes while nothing else
    /// is held.
    #[tokio::test]
    async fn queued_payloads_are_bounded_in_bytes() {
        let broker = InProcessBroker::with_queues(64, Duration::from_millis(50), 100);
        let mut a = broker.subscribe("t", "c").await.unwrap();
        let mut b = broker.subscribe("u", "c").await.unwrap();
        broker.publish("t", vec![1; 60], vec![]).await.unwrap();
        let err = broker.publish("u", vec![2; 60], vec![]).await.unwrap_err();
        assert!(matches!(err, MessagingError::Unavailable(_)), "{err:?}");
        // The host's dead letters pass (to no subscriber here).
        broker
            .publish_unbounded("u.dead-letter", vec![4; 60], vec![])
            .await
            .unwrap();
        let err = broker
            .request("u", vec![3; 60], vec![], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, MessagingError::Unavailable(_)), "{err:?}");
        // Taken, but not settled: still held, and through a nack too.
        let first = a.next().await.unwrap();
        assert!(broker.publish("u", vec![2; 60], vec![]).await.is_err());
        first.acker.nack(Duration::from_millis(20)).await;
        assert!(broker.publish("u", vec![2; 60], vec![]).await.is_err());
        let again = a.next().await.unwrap();
        assert_eq!(again.message.attempt, 2);
        again.acker.ack().await;
        // Settled: room again, even for one past the whole budget.
        broker.publish("u", vec![2; 160], vec![]).await.unwrap();
        assert_eq!(b.next().await.unwrap().message.payload.len(), 160);
    }
}
