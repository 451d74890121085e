//! A trigger's deliveries from its queues, resubscribed after a lost
//! connection, and how each is settled.

use super::*;

/// A trigger's deliveries: its durable queue and its request queue, on a
/// channel reopened when the connection is lost.
pub(super) struct RabbitSubscription {
    pub(super) shared: Arc<Shared>,
    pub(super) queue: String,
    pub(super) consumer: String,
    /// The trigger's topic or pattern.
    pub(super) topic: String,
    /// `None` until (re)opened.
    pub(super) messages: Option<lapin::Consumer>,
    /// `None` once the request consumer ended; stored messages go on, and
    /// it is consumed again on the same channel (see [`RequestsRetry`]).
    pub(super) requests: Option<RequestInbox<Result<lapin::message::Delivery, lapin::Error>>>,
    /// The channel both consumers are on, once open.
    pub(super) channel: Option<Channel>,
    /// When the request consumer is consumed again, and the wait after.
    pub(super) requests_retry: Option<RequestsRetry>,
}

/// The next attempt at consuming a trigger's requests again, after its
/// consumer ended (its transient queue deleted by an operator or a policy,
/// or lost with its node) while its stored messages went on.
#[derive(Clone, Copy)]
pub(super) struct RequestsRetry {
    at: tokio::time::Instant,
    delay: Duration,
}

impl RequestsRetry {
    fn after(delay: Duration) -> Self {
        RequestsRetry {
            at: tokio::time::Instant::now() + delay,
            delay,
        }
    }
}

/// What the request side of a subscription came up with.
enum RequestEvent {
    Request(Box<super::super::InboxRequest<Result<lapin::message::Delivery, lapin::Error>>>),
    Ended,
    RetryDue,
}

/// The binding key of a trigger on `topic`: the topic itself, or a pattern
/// in AMQP's syntax (`>` as `*.#`, since `#` alone also matches no word).
pub(super) fn binding_key(topic: &str) -> String {
    pattern::translate(topic, ".", "*", "*.#")
}

/// Declares `queue`, binds it to `exchange` with `binding_key` and
/// consumes it.
pub(super) async fn consume_bound(
    channel: &Channel,
    queue: &str,
    options: QueueDeclareOptions,
    exchange: &str,
    binding_key: &str,
    no_ack: bool,
) -> Result<lapin::Consumer, MessagingError> {
    channel
        .queue_declare(queue, options, FieldTable::default())
        .await
        .map_err(unavailable)?;
    channel
        .queue_bind(
            queue,
            exchange,
            binding_key,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(unavailable)?;
    channel
        .basic_consume(
            queue,
            "",
            BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(unavailable)
}

/// Longest wait between attempts to consume again after a lost connection.
pub(super) const MAX_RESUBSCRIBE_DELAY: Duration = Duration::from_secs(30);

impl RabbitSubscription {
    /// Declares and binds the trigger's queues and consumes them.
    pub(super) async fn open(&mut self) -> Result<(), MessagingError> {
        let channel = self.shared.channel().await?;
        channel
            .basic_qos(self.shared.settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let key = binding_key(&self.topic);
        let messages = consume_bound(
            &channel,
            &self.queue,
            durable_queue(),
            self.shared.exchange(),
            &key,
            false,
        )
        .await?;
        let requests = self.consume_requests(&channel).await?;
        self.messages = Some(messages);
        self.requests = Some(requests);
        self.channel = Some(channel);
        self.requests_retry = None;
        Ok(())
    }

    /// Declares, binds and consumes the trigger's request queue on
    /// `channel`: a transient queue shared by the trigger's hosts. Each
    /// request is acknowledged once taken (requests are never
    /// redelivered), but not before: RabbitMQ then sends the host at most
    /// `prefetch` of them ahead, where without acks it would send the whole
    /// queue into the host's memory.
    async fn consume_requests(
        &self,
        channel: &Channel,
    ) -> Result<RequestInbox<Result<lapin::message::Delivery, lapin::Error>>, MessagingError> {
        let request_queue = self.shared.request_queue(&self.consumer, &self.topic);
        let transient = QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        };
        let requests = consume_bound(
            channel,
            &request_queue,
            transient,
            &self.shared.request_exchange(),
            &binding_key(&self.topic),
            false,
        )
        .await?;
        Ok(RequestInbox::new(requests))
    }

    /// Consumes the trigger's requests again on its channel, or schedules
    /// the next try (the whole subscription is opened again once its
    /// stored messages' consumer ends too).
    async fn reopen_requests(&mut self) {
        let Some(retry) = self.requests_retry else {
            return;
        };
        let opened = match &self.channel {
            Some(channel) => self.consume_requests(channel).await,
            None => Err(MessagingError::Unavailable("no channel".into())),
        };
        match opened {
            Ok(requests) => {
                tracing::info!(queue = %self.queue, "rabbitmq request consumer resumed");
                self.requests = Some(requests);
                self.requests_retry = None;
            }
            Err(e) => {
                let delay = (retry.delay * 2).min(MAX_RESUBSCRIBE_DELAY);
                tracing::warn!(queue = %self.queue, error = %e, ?delay, "cannot consume a trigger's requests from rabbitmq yet; retrying");
                self.requests_retry = Some(RequestsRetry::after(delay));
            }
        }
    }

    /// Consumes again once the broker is back, waiting longer after each
    /// failed attempt.
    pub(super) async fn reopen(&mut self) {
        self.messages = None;
        self.requests = None;
        self.channel = None;
        let mut delay = Duration::from_millis(200);
        loop {
            match self.open().await {
                Ok(()) => {
                    tracing::info!(queue = %self.queue, "rabbitmq consumer resumed");
                    return;
                }
                Err(e) => {
                    tracing::warn!(queue = %self.queue, error = %e, ?delay, "cannot consume from rabbitmq yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RESUBSCRIBE_DELAY);
                }
            }
        }
    }
}

#[async_trait]
impl Subscription for RabbitSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                self.reopen().await;
                continue;
            };
            let (requests, retry) = (self.requests.as_mut(), self.requests_retry);
            let request = async {
                match (requests, retry) {
                    (Some(requests), _) => match requests.next().await {
                        Some(request) => RequestEvent::Request(Box::new(request)),
                        None => RequestEvent::Ended,
                    },
                    (None, Some(retry)) => {
                        tokio::time::sleep_until(retry.at).await;
                        RequestEvent::RetryDue
                    }
                    (None, None) => std::future::pending().await,
                }
            };
            tokio::select! {
                next = messages.next() => match next {
                    Some(Ok(delivery)) => return Some(self.stored(delivery)),
                    // The channel or connection is gone: unacknowledged
                    // deliveries go back to the queue; consume again.
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, queue = %self.queue, "rabbitmq consumer lost; resubscribing");
                        self.messages = None;
                    }
                    None => {
                        tracing::warn!(queue = %self.queue, "rabbitmq consumer ended; resubscribing");
                        self.messages = None;
                    }
                },
                req = request => match req {
                    RequestEvent::Request(request) if request.1.is_ok() => {
                        let (received, req, _) = *request;
                        if let Some(delivery) = req.ok().and_then(|req| self.request(req, received)) {
                            return Some(delivery);
                        }
                    }
                    RequestEvent::Request(_) | RequestEvent::Ended => {
                        // Its queue was deleted (by an operator or a
                        // policy) or lost with its node: this host would
                        // answer no request again while its stored
                        // messages went on.
                        tracing::warn!(queue = %self.queue, "rabbitmq request consumer ended; consuming again");
                        self.requests = None;
                        self.requests_retry = Some(RequestsRetry::after(Duration::from_millis(200)));
                    }
                    RequestEvent::RetryDue => self.reopen_requests().await,
                },
            }
        }
    }
}

impl RabbitSubscription {
    /// The topic a stored delivery was published to. A message published
    /// to the app's exchange has it as its routing key. A republished copy
    /// came through the default exchange, routed by the queue's name, and
    /// carries it in [`TOPIC_HEADER`]; that header is only believed there,
    /// and only for a topic this trigger takes, so a producer cannot
    /// relabel a message. The trigger's own topic is the last resort (a
    /// copy from before the header existed, on a trigger without pattern).
    pub(super) fn topic_of(&self, delivery: &lapin::message::Delivery) -> String {
        if delivery.exchange.as_str() == self.shared.exchange() {
            return delivery.routing_key.as_str().to_string();
        }
        topic_header(&delivery.properties)
            .filter(|topic| pattern::matches(&self.topic, topic))
            .unwrap_or_else(|| self.topic.clone())
    }

    pub(super) fn stored(&self, delivery: lapin::message::Delivery) -> Delivery {
        let (headers, attempt) = headers_of(&delivery.properties);
        // A redelivery by RabbitMQ (the host holding it died or closed its
        // channel) is at least one more attempt.
        let attempt = attempt.saturating_add(u32::from(delivery.redelivered));
        let topic = self.topic_of(&delivery);
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_string())
            .unwrap_or_else(|| content_id("amqp", &topic, &delivery.data, &headers));
        let message = Message {
            id,
            topic,
            payload: delivery.data.clone(),
            headers,
            attempt,
        };
        Delivery {
            message: message.clone(),
            reply: None,
            acker: Box::new(RabbitAcker {
                acker: delivery.acker,
                shared: self.shared.clone(),
                queue: self.queue.clone(),
                message,
            }),
        }
    }

    pub(super) fn request(
        &self,
        req: lapin::message::Delivery,
        received: Instant,
    ) -> Option<Delivery> {
        let acker = req.acker.clone();
        tokio::spawn(async move {
            if let Err(e) = acker.ack(BasicAckOptions::default()).await {
                tracing::debug!(error = %e, "cannot acknowledge a request; another host may take it too");
            }
        });
        // A redelivered request was never taken (a request is acknowledged
        // as it is taken, before it runs): a host that held it ahead went
        // away, or its version stopped. It runs here if time is left.
        let reply_to = req.properties.reply_to().as_ref()?.as_str().to_string();
        // Only to a direct reply-to channel, as hosts ask: a producer
        // naming any other queue (another app's trigger queue, through the
        // default exchange) would have this app's handler write into it.
        if !reply_to.starts_with(&format!("{}.", super::REPLY_TO)) {
            tracing::debug!(queue = %self.queue, "a request whose reply-to is not a direct reply-to; dropped");
            return None;
        }
        // What is left of its caller's timeout: its AMQP expiration (past
        // which RabbitMQ drops it from the queue, but not once sent to a
        // host), less the time it waited here for a handler.
        let expiration = req
            .properties
            .expiration()
            .as_ref()
            .and_then(|ms| ms.as_str().parse::<u64>().ok())
            .map(Duration::from_millis);
        let left = time_left(expiration, received);
        if left == Some(Duration::ZERO) {
            tracing::debug!(queue = %self.queue, "a request past its caller's timeout; dropped");
            return None;
        }
        let correlation: Option<ShortString> = req.properties.correlation_id().clone();
        let (headers, _) = headers_of(&req.properties);
        let (reply_tx, reply_rx) = oneshot::channel::<Vec<u8>>();
        let message = Message {
            id: req
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_string())
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            // Published to the request exchange under its topic.
            topic: req.routing_key.as_str().to_string(),
            payload: req.data,
            headers,
            attempt: 1,
        };
        let shared = self.shared.clone();
        tokio::spawn(async move {
            if let Some(payload) = answer_within(reply_rx, left).await {
                let mut props = BasicProperties::default();
                if let Some(c) = correlation {
                    props = props.with_correlation_id(c);
                }
                let sent = match shared.link().await {
                    Ok(link) => {
                        publish_confirmed(&link.publisher, "", &reply_to, false, &payload, props)
                            .await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = sent {
                    tracing::warn!(error = %e, "cannot send a reply");
                }
            }
        });
        Some(Delivery {
            message,
            reply: Some(reply_tx),
            acker: Box::new(NoAck::default()),
        })
    }
}

pub(super) struct RabbitAcker {
    pub(super) acker: lapin::acker::Acker,
    pub(super) shared: Arc<Shared>,
    pub(super) queue: String,
    pub(super) message: Message,
}

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(self: Box<Self>) {
        if let Err(e) = self.acker.ack(BasicAckOptions::default()).await {
            tracing::warn!(error = %e, "cannot acknowledge a message; it will be redelivered");
        }
    }

    async fn nack(self: Box<Self>, delay: Duration) {
        tokio::spawn(async move {
            // The copy waits out the backoff on the broker, so the
            // original's prefetch slot is freed at once.
            match super::retry::park(&self.shared, &self.queue, &self.message, delay).await {
                Ok(()) => {
                    if let Err(e) = self.acker.ack(BasicAckOptions::default()).await {
                        tracing::warn!(error = %e, "cannot acknowledge a failed message after parking its copy; both will be delivered");
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot park a failed message in a delay queue; holding it through the backoff");
                }
            }
            // Without a delay queue the original stays unacknowledged (so
            // safe) during the backoff.
            tokio::time::sleep(delay).await;
            let m = &self.message;
            let retry = match self.shared.link().await {
                Ok(link) => {
                    publish_confirmed(
                        &link.publisher,
                        "",
                        &self.queue,
                        false,
                        &m.payload,
                        retry_properties(m),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            let settled = match retry {
                Ok(_) => self.acker.ack(BasicAckOptions::default()).await,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot requeue a failed message; RabbitMQ redelivers it as is");
                    self.acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await
                }
            };
            if let Err(e) = settled {
                tracing::warn!(error = %e, "cannot settle a failed message; it will be redelivered");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_bind_in_amqp_syntax() {
        assert_eq!(binding_key("orders.eu"), "orders.eu");
        assert_eq!(binding_key("orders.*.late"), "orders.*.late");
        assert_eq!(binding_key("orders.>"), "orders.*.#");
    }
}
