//! A NATS trigger's deliveries: stored messages from its durable consumer
//! (through the feeder's queue) and requests from its queue group, each
//! settled through JetStream, or handed back when dropped unsettled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::oneshot;

use super::feed::{self, AckWait, Held, Waiting};
use super::headers::{headers_from_nats, request_timeout};
use super::topic_of;
use crate::ports::messaging::{
    Acker, Delivery, Message, NoAck, RequestInbox, Subscription, answer_within, time_left,
};

/// A trigger's deliveries: stored messages from its durable pull consumer,
/// fetched by [`feed`] into a queue of the host's, and requests from its
/// queue group, polled directly by the trigger's consumer loop.
pub(super) struct NatsSubscription {
    pub(super) held: Arc<Held>,
    /// Stopped when the subscription is dropped.
    pub(super) feeder: tokio::task::JoinHandle<()>,
    /// Reads the consumer every 2 s ([`watch`]); stopped with the feeder.
    pub(super) watcher: tokio::task::JoinHandle<()>,
    /// `None` once the request subscription ended; stored messages go on.
    pub(super) requests: Option<RequestInbox<async_nats::Message>>,
    pub(super) client: async_nats::Client,
    /// The consumer's ack wait, for the deliveries' progress acks.
    pub(super) ack_wait: AckWait,
}

impl Drop for NatsSubscription {
    fn drop(&mut self) {
        self.feeder.abort();
        self.watcher.abort();
        // Messages fetched ahead and not yet handled go back at once.
        hand_back(self.held.take_all());
    }
}

#[async_trait]
impl Subscription for NatsSubscription {
    fn stop_fetching(&mut self) {
        // The watcher goes on: running handlers follow the consumer's ack
        // wait until the subscription is dropped.
        self.feeder.abort();
        hand_back(self.held.take_all());
        // Requests go to the queue group's other members (the app's next
        // version) at once.
        self.requests = None;
    }

    async fn next(&mut self) -> Option<Delivery> {
        loop {
            // `RequestInbox::next` and `Held::pop` are cancel-safe, so
            // losing the race drops nothing.
            let request = async {
                match self.requests.as_mut() {
                    Some(requests) => requests.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                waiting = self.held.pop() => {
                    return Some(stored_delivery(waiting, self.ack_wait.clone()));
                }
                req = request => match req {
                    Some((received, req, held)) => {
                        if let Some(delivery) = request_delivery(req, received, held, &self.client) {
                            return Some(delivery);
                        }
                    }
                    None => self.requests = None,
                },
            }
        }
    }
}

/// A stored message, acknowledged through JetStream.
fn stored_delivery(
    Waiting {
        message: msg,
        since,
    }: Waiting,
    ack_wait: AckWait,
) -> Delivery {
    let info = msg.info().ok();
    let attempt = info.as_ref().map_or(1, |i| i.delivered.max(1) as u32);
    let (id, headers) = headers_from_nats(msg.headers.as_ref());
    let topic = topic_of(&msg.subject, ".msg.");
    // Another producer's message: an id from its content, as on the other
    // brokers (a stream sequence would repeat once the stream is recreated,
    // and a handler deduplicating by id would drop new messages).
    let id = id.unwrap_or_else(|| super::super::content_id("nats", &topic, &msg.payload, &headers));
    let message = Message {
        id,
        topic,
        payload: msg.payload.to_vec(),
        headers,
        attempt,
    };
    Delivery {
        message,
        reply: None,
        acker: Box::new(JsAcker {
            message: Some(msg),
            ack_wait,
            since,
        }),
    }
}

/// A request: the handler's answer is published to its reply subject.
fn request_delivery(
    req: async_nats::Message,
    received: Instant,
    held: Option<super::super::HeldBytes>,
    client: &async_nats::Client,
) -> Option<Delivery> {
    let reply_to = req.reply.clone()?;
    // What is left of its caller's timeout once it waited here.
    let left = time_left(request_timeout(req.headers.as_ref()), received);
    if left == Some(Duration::ZERO) {
        tracing::debug!(subject = %req.subject, "a request past its caller's timeout; dropped");
        return None;
    }
    let (id, headers) = headers_from_nats(req.headers.as_ref());
    let (reply_tx, reply_rx) = oneshot::channel::<Vec<u8>>();
    let message = Message {
        id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        topic: topic_of(&req.subject, ".req."),
        payload: req.payload.to_vec(),
        headers,
        attempt: 1,
    };
    let client = client.clone();
    tokio::spawn(async move {
        if let Some(payload) = answer_within(reply_rx, left).await {
            let _ = client.publish(reply_to, Bytes::from(payload)).await;
        }
    });
    Some(Delivery {
        message,
        reply: Some(reply_tx),
        acker: Box::new(NoAck::holding(held)),
    })
}

/// Settles a stored message. While its handler runs, it tells JetStream so
/// twice per ack wait, so a handler slower than the ack wait is not given
/// the message a second time while it is still at work on it.
struct JsAcker {
    /// `None` once settled (acked or nacked).
    message: Option<jetstream::Message>,
    /// The consumer's, as it is now.
    ack_wait: AckWait,
    /// When its ack wait last restarted (its delivery, or a progress ack
    /// while it was held): it runs while the message waits for a handler.
    since: Instant,
}

#[async_trait]
impl Acker for JsAcker {
    async fn ack(mut self: Box<Self>) {
        let Some(message) = self.message.take() else {
            return;
        };
        if let Err(e) = message.ack().await {
            tracing::warn!(error = %e, "cannot acknowledge a message; it will be redelivered");
        }
    }

    async fn nack(mut self: Box<Self>, delay: Duration) {
        let Some(message) = self.message.take() else {
            return;
        };
        if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!(error = %e, "cannot nak a message; it will be redelivered after ack_wait");
        }
    }

    fn progress_schedule(&self) -> Option<(std::time::Instant, Duration)> {
        let every = self.ack_wait.get() / 2;
        Some((self.since + every, every))
    }

    async fn in_progress(&self) {
        let Some(message) = &self.message else {
            return;
        };
        if let Err(e) = message.ack_with(AckKind::Progress).await {
            tracing::debug!(error = %e, "cannot extend a message's ack wait");
        }
    }
}

impl Drop for JsAcker {
    /// A delivery dropped unsettled (its trigger stopped, its handler
    /// cancelled with it) goes back at once rather than after the ack wait.
    fn drop(&mut self) {
        if let Some(message) = self.message.take() {
            hand_back(vec![message]);
        }
    }
}

/// Naks `messages` so JetStream delivers them again soon, to this app's
/// other hosts or its next start, rather than after the ack wait. Not at
/// once: the stopped feeder's last pull request stays open on the server
/// until it expires, and a message delivered to it would be lost to the ack
/// wait again. Best effort, from a task of its own (it runs from `Drop`): a
/// process exiting at once may not send them, and they come back after
/// the ack wait as before.
fn hand_back(messages: Vec<jetstream::Message>) {
    let Some(client) = messages.first().map(|m| m.context.client()) else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let delay = feed::PULL_EXPIRES + Duration::from_secs(1);
        for message in messages {
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        }
        // The connection writes what it buffered only while a client is
        // left: flushed before the last one may go.
        let _ = client.flush().await;
    });
}
