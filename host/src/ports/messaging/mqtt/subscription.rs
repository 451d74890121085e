//! A trigger's deliveries from its own client, and how each is settled.

use super::*;

/// A trigger's deliveries: its stored messages and its requests, both from
/// its own client.
pub(super) struct MqttSubscription {
    pub(super) link: Link,
    pub(super) inbox: mpsc::UnboundedReceiver<Inbound>,
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
    /// The subscribed filters, to unsubscribe when dropped.
    pub(super) filters: Vec<String>,
    pub(super) timeout: Duration,
    /// Lives as long as the subscription: its ackers' copies have a
    /// subscriber (this one) until it is dropped.
    pub(super) alive: Arc<()>,
}

/// What an incoming publish is, told by the subtree its MQTT topic lies
/// in, with the Berth topic it was published to.
pub(super) enum Received {
    /// A stored message, or this trigger's republished copy of one.
    Stored(String),
    /// A request.
    Request(String),
}

#[async_trait]
impl Subscription for MqttSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let Inbound { publish, epoch } = self.inbox.recv().await?;
            match self.received(&publish.topic) {
                Some(Received::Stored(topic)) => return Some(self.stored(publish, epoch, topic)),
                Some(Received::Request(topic)) => {
                    // Requests are not stored, so there is nothing to hold
                    // back.
                    self.ack_now(&publish, epoch).await;
                    if let Some(delivery) = self.request(publish, topic) {
                        return Some(delivery);
                    }
                }
                None => {
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
        // The session outlives the connection. Without this, the broker
        // would keep dealing this host a share of the messages until the
        // session expires, and they would be lost.
        for filter in &self.filters {
            let _ = self.link.client.try_unsubscribe(filter.clone());
        }
    }
}

impl MqttSubscription {
    /// What the publish on MQTT topic `mqtt_topic` is, and its Berth topic.
    /// `None` for a topic that maps to none this trigger takes, which only
    /// another producer writes: an empty level (which `+` matches), or a
    /// level holding `.`.
    pub(super) fn received(&self, mqtt_topic: &[u8]) -> Option<Received> {
        let mqtt_topic = std::str::from_utf8(mqtt_topic).ok()?;
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

    /// A stored message of `topic`.
    pub(super) fn stored(&self, publish: Publish, epoch: u64, topic: String) -> Delivery {
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
        // Acknowledging takes only the packet id and the QoS.
        let token = Publish {
            pkid: publish.pkid,
            qos: publish.qos,
            ..Default::default()
        };
        Delivery {
            message: message.clone(),
            reply: None,
            acker: Box::new(MqttAcker {
                link: self.link.clone(),
                token,
                epoch,
                retry_topic: topic_under(&self.retry_prefix, &message.topic),
                message,
                timeout: self.timeout,
                alive: Arc::downgrade(&self.alive),
            }),
        }
    }

    /// A request to `topic`. The handler's answer is published to the
    /// request's response topic with its correlation data.
    pub(super) fn request(&self, publish: Publish, topic: String) -> Option<Delivery> {
        let properties = publish.properties.unwrap_or_default();
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
            if let Ok(payload) = reply_rx.await {
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
            acker: Box::new(NoAck),
        })
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

    pub(super) async fn settle(&self) {
        if !self.current() {
            // The broker has sent the message again on the new connection,
            // where that copy is settled in its turn. This packet id may
            // now stand for another message.
            tracing::debug!(
                "the connection was renewed since this delivery; the broker redelivers it"
            );
            return;
        }
        if let Err(e) = self.link.client.ack(&self.token).await {
            tracing::warn!(error = %e, "cannot acknowledge a message; it will be redelivered");
        }
    }
}

#[async_trait]
impl Acker for MqttAcker {
    async fn ack(self: Box<Self>) {
        self.settle().await;
    }

    async fn nack(self: Box<Self>, delay: Duration) {
        // The original stays unacknowledged (and so safe) during the
        // backoff.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if !self.current() {
                tracing::debug!(
                    "the connection was renewed; the broker redelivers the failed message"
                );
                return;
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
                    )
                }
                Ok(_) => self.settle().await,
                Err(e) => tracing::warn!(
                    error = %e,
                    "cannot republish a failed message; the broker redelivers it when the session reconnects"
                ),
            }
        });
    }
}
