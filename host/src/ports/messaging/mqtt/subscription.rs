//! A trigger's deliveries from its own client, and how each is settled.

use super::*;

/// One trigger as every host's client of it sees it: enough to read its
/// deliveries, and to finish the session of one of its clients that went
/// away (see [`super::takeover`]).
pub(super) struct TriggerSpec {
    pub(super) target: Target,
    pub(super) app: String,
    pub(super) consumer: String,
    /// The trigger's topic or pattern.
    pub(super) topic: String,
    /// This host's client of the trigger.
    pub(super) client_id: String,
    /// The shared subscriptions of the trigger's sessions.
    pub(super) filters: Vec<String>,
    pub(super) timeout: Duration,
    /// How long the broker keeps a session after its client disconnects.
    pub(super) session_expiry_secs: u32,
}

/// The client through which a trigger hears of its clients that went
/// away, and what it hears.
pub(super) struct Watcher {
    /// Kept for its connection.
    pub(super) _link: Link,
    pub(super) inbox: mpsc::UnboundedReceiver<Inbound>,
}

/// A trigger's deliveries: its stored messages and its requests, both from
/// its own client, and those of the sessions it finishes for hosts that
/// went away.
pub(super) struct MqttSubscription {
    pub(super) link: Link,
    pub(super) inbox: mpsc::UnboundedReceiver<Inbound>,
    pub(super) spec: Arc<TriggerSpec>,
    /// The trigger's topic or pattern.
    pub(super) topic: String,
    /// `berth/<app>/msg/`, under which stored messages come.
    pub(super) message_prefix: String,
    /// `berth/<app>/req/`, which tells requests apart.
    pub(super) request_prefix: String,
    /// `berth/<app>/retry/<consumer>/`, under which this trigger's failed
    /// messages are republished and come back.
    pub(super) retry_prefix: String,
    /// The app's reply topics. Replies go nowhere else, whatever a request
    /// names.
    pub(super) reply_prefix: String,
    /// Where the broker announces the trigger's clients that went away.
    pub(super) orphan_topic: String,
    /// The share filters it subscribed, to unsubscribe when its trigger
    /// stops.
    pub(super) filters: Vec<String>,
    pub(super) timeout: Duration,
    /// Lives as long as the subscription: its ackers' copies have a
    /// subscriber (this one) until it is dropped.
    pub(super) alive: Arc<()>,
    /// Deliveries from the sessions this host finishes for others.
    pub(super) orphans: mpsc::UnboundedReceiver<Delivery>,
    pub(super) orphans_tx: mpsc::UnboundedSender<Delivery>,
    /// A trigger's own subscription hears of its clients that went away;
    /// a taken-over session's does not.
    pub(super) watcher: Option<Watcher>,
    /// A request taken from the inbox whose ack is being sent: kept here,
    /// so that a `next` dropped meanwhile (its trigger stopping) does not
    /// lose it.
    pub(super) pending: Option<Delivery>,
}

impl MqttSubscription {
    /// Reads the deliveries `link` puts into `inbox` for the trigger of
    /// `spec`. A subscription that `owns_filters` unsubscribes them when
    /// its trigger stops (a taken-over session's unsubscribed them at once).
    pub(super) fn new(
        spec: Arc<TriggerSpec>,
        link: Link,
        inbox: mpsc::UnboundedReceiver<Inbound>,
        owns_filters: bool,
    ) -> MqttSubscription {
        let (app, consumer, topic) = (&spec.app, &spec.consumer, &spec.topic);
        let (orphans_tx, orphans) = mpsc::unbounded_channel();
        MqttSubscription {
            link,
            inbox,
            topic: topic.clone(),
            message_prefix: message_prefix(app),
            request_prefix: request_prefix(app),
            retry_prefix: retry_prefix(app, consumer, topic),
            reply_prefix: format!("berth/{app}/reply/"),
            orphan_topic: orphan_topic(app, consumer, topic),
            filters: if owns_filters {
                spec.filters.clone()
            } else {
                Vec::new()
            },
            timeout: spec.timeout,
            alive: Arc::new(()),
            orphans,
            orphans_tx,
            watcher: None,
            pending: None,
            spec,
        }
    }
}

/// The next announcement of a client that went away, if there is a
/// watcher; never otherwise.
async fn next_orphan(watcher: &mut Option<Watcher>) -> Option<Inbound> {
    match watcher {
        Some(watcher) => watcher.inbox.recv().await,
        None => std::future::pending().await,
    }
}

/// What an incoming publish is, told by the subtree its MQTT topic lies
/// in, with the Berth topic it was published to.
pub(super) enum Received {
    /// A stored message, or this trigger's republished copy of one.
    Stored(String),
    /// A request.
    Request(String),
    /// The will of one of the trigger's clients: it went away.
    Orphan,
}

#[async_trait]
impl Subscription for MqttSubscription {
    /// The app is stopping: the share filters are unsubscribed, so the
    /// broker deals the other members what would have come here; the
    /// client does not connect again once its connection ends (with a
    /// stable `client_id`, the app's next version takes its session from
    /// it, and would be taken it back); and the orphan watcher goes, so the
    /// wills of hosts that went away reach a host that still takes
    /// messages. What this client holds is settled by its handlers, or
    /// finished by another host after its will.
    fn stop_fetching(&mut self) {
        self.link.stop_fetching(&self.filters);
        self.watcher = None;
    }

    async fn next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(delivery) = self.pending.take() {
                return Some(delivery);
            }
            let inbound = tokio::select! {
                biased;
                Some(delivery) = self.orphans.recv() => return Some(delivery),
                Some(notice) = next_orphan(&mut self.watcher) => {
                    if matches!(self.received(&notice.publish.topic), Some(Received::Orphan)) {
                        self.orphaned(&notice.publish);
                    }
                    continue;
                }
                inbound = self.inbox.recv() => inbound,
            };
            let Inbound {
                publish,
                epoch,
                received,
                ..
            } = inbound?;
            match self.received(&publish.topic) {
                Some(Received::Stored(topic)) => return Some(self.stored(publish, epoch, topic)),
                Some(Received::Request(topic)) => {
                    // Requests are not stored, so there is nothing to hold
                    // back: acknowledged at once, the request kept meanwhile.
                    self.pending = self.request(publish.clone(), topic, received);
                    self.ack_now(&publish, epoch).await;
                }
                Some(Received::Orphan) | None => {
                    // Only another producer writes such topics: no handler
                    // could be told which topic it came on.
                    tracing::warn!(
                        topic = %String::from_utf8_lossy(&publish.topic),
                        "an mqtt message on no topic of this trigger; dropped"
                    );
                    self.ack_now(&publish, epoch).await;
                }
            }
        }
    }
}

impl Drop for MqttSubscription {
    fn drop(&mut self) {
        // The session outlives the connection: without this, the broker
        // would keep dealing it a share of the messages until another host
        // finishes it after the client's will (see `Driver::shutdown`),
        // handing out what it was dealt and did not settle.
        self.link.stop_fetching(&self.filters);
    }
}

impl MqttSubscription {
    /// What the publish on MQTT topic `mqtt_topic` is, and its Berth topic.
    /// `None` for a topic that maps to none this trigger takes, which only
    /// another producer writes: an empty level (which `+` matches), or a
    /// level holding `.`.
    pub(super) fn received(&self, mqtt_topic: &[u8]) -> Option<Received> {
        let mqtt_topic = std::str::from_utf8(mqtt_topic).ok()?;
        if mqtt_topic == self.orphan_topic {
            return Some(Received::Orphan);
        }
        let taken = |topic: &String| {
            !topic.split('.').any(str::is_empty) && pattern::matches(&self.topic, topic)
        };
        if let Some(topic) = topic_from(&self.request_prefix, mqtt_topic) {
            return taken(&topic).then_some(Received::Request(topic));
        }
        [&self.message_prefix, &self.retry_prefix]
            .into_iter()
            .find_map(|prefix| topic_from(prefix, mqtt_topic))
            .filter(taken)
            .map(Received::Stored)
    }

    /// Acknowledges `publish` at once, for what is not held until a
    /// handler succeeded. Only on the connection it came on (see
    /// [`MqttAcker::settle`]); at QoS 0 there is nothing to acknowledge.
    pub(super) async fn ack_now(&self, publish: &Publish, epoch: u64) {
        if publish.qos != QoS::AtMostOnce && self.link.epoch() == epoch {
            let _ = self.link.client.ack(publish).await;
        }
    }

    /// One of the trigger's clients went away: unless it is this host's
    /// own (back in time), this host finishes its session.
    fn orphaned(&self, publish: &Publish) {
        let dead = String::from_utf8_lossy(&publish.payload).into_owned();
        tracing::debug!(client = %dead, "an mqtt trigger client went away");
        if dead == self.spec.client_id || !takeover::is_client_of(&self.spec, &dead) {
            return;
        }
        let (spec, out) = (self.spec.clone(), self.orphans_tx.clone());
        tokio::spawn(takeover::finish(spec, dead, out));
    }

    /// A stored message of `topic`.
    pub(super) fn stored(&self, publish: Publish, epoch: u64, topic: String) -> Delivery {
        let (message, acker) = self.stored_parts(publish, epoch, topic);
        Delivery {
            message,
            reply: None,
            acker: Box::new(acker),
        }
    }

    /// A stored message of `topic`, and how to settle it.
    pub(super) fn stored_parts(
        &self,
        publish: Publish,
        epoch: u64,
        topic: String,
    ) -> (Message, MqttAcker) {
        let (id, headers, attempt) = metadata(publish.properties.as_ref());
        // A message sent again by the broker (after a reconnect) is at
        // least one more attempt.
        let attempt = attempt.saturating_add(u32::from(publish.dup));
        let message = Message {
            id: id.unwrap_or_else(|| {
                crate::ports::messaging::content_id("mqtt", &topic, &publish.payload, &headers)
            }),
            topic,
            payload: publish.payload.to_vec(),
            headers,
            attempt,
        };
        let acker = MqttAcker {
            link: self.link.clone(),
            token: token_of(&publish),
            epoch,
            retry_topic: topic_under(&self.retry_prefix, &message.topic),
            message: message.clone(),
            timeout: self.timeout,
            alive: Arc::downgrade(&self.alive),
        };
        (message, acker)
    }

    /// A request to `topic`. The handler's answer is published to the
    /// request's response topic with its correlation data.
    pub(super) fn request(
        &self,
        publish: Publish,
        topic: String,
        received: std::time::Instant,
    ) -> Option<Delivery> {
        let properties = publish.properties.unwrap_or_default();
        // What is left of its caller's timeout (in ms, or the expiry the
        // broker passed on), less the time it waited here for a handler.
        let timeout = properties
            .user_properties
            .iter()
            .find(|(name, _)| name == TIMEOUT_PROPERTY)
            .and_then(|(_, ms)| ms.parse().ok())
            .map(Duration::from_millis)
            .or_else(|| {
                properties
                    .message_expiry_interval
                    .map(|secs| Duration::from_secs(secs.into()))
            });
        let left = time_left(timeout, received);
        if left == Some(Duration::ZERO) {
            tracing::debug!(topic = %topic, "a request past its caller's timeout; dropped");
            return None;
        }
        let reply_to = properties
            .response_topic
            .clone()
            .filter(|t| t.starts_with(&self.reply_prefix));
        let Some(reply_to) = reply_to else {
            tracing::debug!(topic = %topic, "a request without a reply topic of this app; ignored");
            return None;
        };
        let correlation = properties.correlation_data.clone();
        let (id, headers, _) = metadata(Some(&properties));
        let message = Message {
            id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            topic,
            payload: publish.payload.to_vec(),
            headers,
            attempt: 1,
        };
        let (reply_tx, reply_rx) = oneshot::channel::<Vec<u8>>();
        let (link, timeout) = (self.link.clone(), self.timeout);
        tokio::spawn(async move {
            if let Some(payload) = answer_within(reply_rx, left).await {
                let properties = PublishProperties {
                    correlation_data: correlation,
                    ..Default::default()
                };
                if let Err(e) = link
                    .publish(reply_to, Bytes::from(payload), properties, timeout)
                    .await
                {
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

/// What acknowledging a delivery takes: its packet id and QoS.
pub(super) fn token_of(publish: &Publish) -> Publish {
    Publish {
        pkid: publish.pkid,
        qos: publish.qos,
        ..Default::default()
    }
}

/// Settles a stored message: a PUBACK once its handler succeeded.
pub(super) struct MqttAcker {
    pub(super) link: Link,
    /// The delivery's packet id and QoS.
    pub(super) token: Publish,
    /// The connection the delivery came on.
    pub(super) epoch: u64,
    pub(super) message: Message,
    /// Where `nack` publishes the copy: the trigger's own retry subtree,
    /// not the message's topic, which every trigger on it subscribes to.
    pub(super) retry_topic: String,
    pub(super) timeout: Duration,
    /// The subscription's liveness (see [`MqttSubscription::alive`]).
    pub(super) alive: std::sync::Weak<()>,
}

impl MqttAcker {
    /// Whether the delivery's connection is still the client's.
    pub(super) fn current(&self) -> bool {
        self.link.epoch() == self.epoch
    }

    /// Acknowledges the message; returns whether the broker was told.
    pub(super) async fn settle(&self) -> bool {
        if !self.current() {
            // The broker has sent the message again on the new connection,
            // where that copy is settled in its turn. This packet id may
            // now stand for another message.
            tracing::debug!(
                "the connection was renewed since this delivery; the broker redelivers it"
            );
            return false;
        }
        match self.link.client.ack(&self.token).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot acknowledge a message; it will be redelivered");
                false
            }
        }
    }
}

#[async_trait]
impl Acker for MqttAcker {
    async fn ack(self: Box<Self>) {
        self.settle().await;
    }

    async fn nack(self: Box<Self>, delay: Duration) {
        tokio::spawn(self.retry_after(delay));
    }
}

impl MqttAcker {
    /// After `delay`, republishes the failed message's copy to the
    /// trigger's retry subtree and acknowledges the original, which stays
    /// unacknowledged (and so safe) during the backoff. A copy surely not
    /// sent (the client's queue full, the broker's refusal) is published
    /// again, at doubling intervals up to [`COPY_RETRY_MOST`], while the
    /// connection and the subscription last. Returns whether the original was settled: otherwise it waits
    /// in the session, for the broker to deliver it again when the session
    /// reconnects.
    pub(super) async fn retry_after(self: Box<Self>, delay: Duration) -> bool {
        tokio::time::sleep(delay).await;
        let mut wait = COPY_RETRY_FIRST;
        loop {
            if !self.current() {
                tracing::debug!(
                    "the connection was renewed; the broker redelivers the failed message"
                );
                return false;
            }
            let m = &self.message;
            let copy = self
                .link
                .publish(
                    self.retry_topic.clone(),
                    Bytes::from(m.payload.clone()),
                    publish_properties(&m.id, &m.headers, m.attempt.saturating_add(1)),
                    self.timeout,
                )
                .await;
            match copy {
                // Nobody took the copy and this trigger's subscription is
                // gone: the original is its only copy left. (While the
                // subscription lives it subscribes to the copy itself, so
                // that answer would be wrong: some Mosquitto releases give
                // it for every MQTT 5 publish.)
                Ok(PubAckReason::NoMatchingSubscribers) if self.alive.strong_count() == 0 => {
                    tracing::debug!(
                        "nobody subscribes to the retry topic; the broker redelivers the failed message when the session reconnects"
                    );
                    return false;
                }
                Ok(_) => return self.settle().await,
                // Larger than the broker takes once the retry topic and
                // the attempt are added: no copy ever will be.
                Err(e @ MessagingError::TooLarge(_)) => {
                    tracing::warn!(
                        error = %e,
                        "a failed message's copy is larger than the broker takes; the broker redelivers the message when the session reconnects"
                    );
                    return false;
                }
                // Surely not sent (the client's queue full, the broker's
                // refusal): published again while the trigger lives.
                Err(MessagingError::Unavailable(m))
                    if (m == link::NOT_SENT || m == link::REFUSED)
                        && self.alive.strong_count() > 0 =>
                {
                    if wait == COPY_RETRY_FIRST {
                        tracing::warn!(error = %m, "cannot republish a failed message yet; trying again at doubling intervals");
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(COPY_RETRY_MOST);
                }
                // Perhaps sent (its PUBACK late: the client sends it again
                // on reconnecting), or the trigger stopped: a copy sent
                // again could be one too many.
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "cannot republish a failed message; the broker redelivers it when the session reconnects"
                    );
                    return false;
                }
            }
        }
    }
}

/// When a failed message's copy the broker did not take is first published
/// again (see [`MqttAcker::retry_after`]).
const COPY_RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two publishes of one copy.
const COPY_RETRY_MOST: Duration = Duration::from_secs(30);
