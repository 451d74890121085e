//! Embedded in-process broker: delivers each published message to every
//! subscription of its topic or of a pattern matching it (one per message
//! trigger) through bounded
//! queues. Redelivery after `nack` is scheduled in-process. Messages
//! published while nobody subscribes are dropped, and queued messages are
//! lost when the host exits: durable delivery needs a real broker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::{Acker, Delivery, Message, MessagingBackend, MessagingError, NoAck, Subscription};

/// Deliveries queued per subscription before publishers wait.
const QUEUE_DEPTH: usize = 1024;

/// A broker living inside the host process.
#[derive(Default)]
pub struct InProcessBroker {
    topics: Mutex<HashMap<String, Vec<mpsc::Sender<Delivery>>>>,
}

impl InProcessBroker {
    /// An empty broker.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
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
}

#[async_trait]
impl Acker for QueueAcker {
    async fn ack(self: Box<Self>) {}

    async fn nack(self: Box<Self>, delay: Duration) {
        let QueueAcker { queue, mut message } = *self;
        message.attempt += 1;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let acker = Box::new(QueueAcker {
                queue: queue.clone(),
                message: message.clone(),
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

fn delivery(queue: &mpsc::Sender<Delivery>, message: Message) -> Delivery {
    let acker = Box::new(QueueAcker {
        queue: queue.clone(),
        message: message.clone(),
    });
    Delivery {
        message,
        reply: None,
        acker,
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
        }
        for queue in subscribers {
            let d = delivery(&queue, message.clone());
            queue
                .send(d)
                .await
                .map_err(|_| MessagingError::Unavailable("subscriber stopped".into()))?;
        }
        Ok(())
    }

    async fn request(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Message, MessagingError> {
        let queue = self
            .subscribers(topic)
            .into_iter()
            .next()
            .ok_or(MessagingError::NoResponder)?;
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
            acker: Box::new(NoAck),
        };
        queue
            .send(request)
            .await
            .map_err(|_| MessagingError::NoResponder)?;
        match tokio::time::timeout(timeout, rx).await {
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
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
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
}
