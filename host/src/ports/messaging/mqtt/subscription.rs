//! A trigger's deliveries from its own client, and how each is settled.

use super::*;

/// A trigger's deliveries: its stored messages and its requests, both from
/// its own client.
pub(super) struct MqttSubscription {
    pub(super) link: Link,
    pub(super) inbox: mpsc::UnboundedReceiver<Inbound>,
    pub(super) topic: String,
    /// `berth/<app>/msg/<topic>`, where failed messages are republished.
    pub(super) message_topic: String,
    /// `berth/<app>/req/<topic>`, which tells requests apart.
    pub(super) request_topic: String,
    /// The app's reply topics. Replies go nowhere else, whatever a request
    /// names.
    pub(super) reply_prefix: String,
    /// The subscribed filters, to unsubscribe when dropped.
    pub(super) filters: Vec<String>,
    pub(super) timeout: Duration,
}

#[async_trait]
impl Subscription for MqttSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let Inbound { publish, epoch } = self.inbox.recv().await?;
            if &publish.topic[..] == self.request_topic.as_bytes() {
                // Requests are not stored, so there is nothing to hold
                // back. They come at QoS 0, where this does nothing.
                if publish.qos != QoS::AtMostOnce {
                    let _ = self.link.client.ack(&publish).await;
                }
                if let Some(delivery) = self.request(publish) {
                    return Some(delivery);
                }
            } else {
                return Some(self.stored(publish, epoch));
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
    pub(super) fn stored(&self, publish: Publish, epoch: u64) -> Delivery {
        let (id, headers, attempt) = metadata(publish.properties.as_ref());
        // A message sent again by the broker (after a reconnect) is at
        // least one more attempt.
        let attempt = attempt.saturating_add(u32::from(publish.dup));
        let message = Message {
            id: id.unwrap_or_else(|| {
                crate::ports::messaging::content_id("mqtt", &self.topic, &publish.payload, &headers)
            }),
            topic: self.topic.clone(),
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
                message,
                topic: self.message_topic.clone(),
                timeout: self.timeout,
            }),
        }
    }

    /// A request. The handler's answer is published to the request's
    /// response topic with its correlation data.
    pub(super) fn request(&self, publish: Publish) -> Option<Delivery> {
        let properties = publish.properties.unwrap_or_default();
        let reply_to = properties
            .response_topic
            .clone()
            .filter(|t| t.starts_with(&self.reply_prefix));
        let Some(reply_to) = reply_to else {
            tracing::debug!(topic = %self.topic, "a request without a reply topic of this app; ignored");
            return None;
        };
        let correlation = properties.correlation_data.clone();
        let (id, headers, _) = metadata(Some(&properties));
        let message = Message {
            id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            topic: self.topic.clone(),
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
    /// The MQTT topic, for the copy `nack` publishes.
    pub(super) topic: String,
    pub(super) timeout: Duration,
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
                    self.topic.clone(),
                    Bytes::from(m.payload.clone()),
                    publish_properties(&m.id, &m.headers, m.attempt.saturating_add(1)),
                    self.timeout,
                )
                .await;
            match copy {
                Ok(_) => self.settle().await,
                Err(e) => tracing::warn!(
                    error = %e,
                    "cannot republish a failed message; the broker redelivers it when the session reconnects"
                ),
            }
        });
    }
}
