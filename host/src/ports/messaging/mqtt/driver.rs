//! The task driving one MQTT client's event loop: it reconnects (later
//! after another client took its session), resubscribes, settles
//! publishes, hands out what comes in, and ends the connection as its
//! role wants (with or without DISCONNECT).

use super::*;

/// Drives one client's event loop: it reconnects, resubscribes, settles
/// publishes and hands out what comes in. It never waits on the client's
/// request channel (it is that channel's only reader), so it uses
/// `try_*` calls or spawns.
pub(super) struct Driver {
    pub(super) eventloop: EventLoop,
    pub(super) client: AsyncClient,
    pub(super) shared: Arc<Shared>,
    pub(super) filters: Vec<Filter>,
    pub(super) inbox: Inbox,
    /// Told the outcome of the first connect and subscribe: whether the
    /// broker had kept the client's session.
    pub(super) ready: Option<oneshot::Sender<Result<bool, MessagingError>>>,
    pub(super) stop: oneshot::Receiver<()>,
    /// The client id, for logs.
    pub(super) name: String,
    pub(super) first: bool,
    /// Connected, as far as logs go: a lost connection is logged once.
    pub(super) up: bool,
    /// Whether a lost connection is made again, or ends the client.
    pub(super) reconnect: bool,
    /// Whether the client ends without DISCONNECT, so the broker sends its
    /// will (see [`Driver::shutdown`]).
    pub(super) leave_will: bool,
}

impl Driver {
    pub(super) async fn run(mut self) {
        let _ended = EndedOnDrop(self.shared.clone());
        loop {
            let polled = tokio::select! {
                biased;
                _ = &mut self.stop => None,
                event = self.eventloop.poll() => Some(event),
            };
            let Some(event) = polled else { break };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => self.connected(&ack),
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    // A refused filter arrives as an error, not as a SUBACK.
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Ok(true));
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let waiter = lock(&self.shared.acks).acked(ack.pkid);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(Ok(ack.reason));
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => self.received(publish),
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    lock(&self.shared.acks).sent(pkid);
                }
                Ok(_) => {}
                Err(e) => {
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Err(first_connection_failed(&e)));
                        return;
                    }
                    self.failed(&e);
                    // A trigger's client that stopped fetching does not
                    // come back: with a stable `client_id`, the app's next
                    // version took its session (and gets again what it did
                    // not settle), and coming back would take it from that
                    // one in turn; otherwise its will brings what it held
                    // to another host.
                    if !self.reconnect || self.shared.fetching_stopped.load(Ordering::SeqCst) {
                        break;
                    }
                    // The next poll reconnects; later when another
                    // client took the session under this id: during a
                    // reload under a stable `client_id` that is the app's
                    // next version, and coming back at once took it back,
                    // the two kicking each other off (and their deliveries
                    // in flight redelivered) until this one stopped.
                    let delay = if taken_over(&e) {
                        TAKEN_OVER_DELAY
                    } else {
                        RECONNECT_DELAY
                    };
                    let stopped = tokio::select! {
                        biased;
                        _ = &mut self.stop => true,
                        () = tokio::time::sleep(delay) => false,
                    };
                    // Its trigger may have stopped meanwhile: connecting
                    // again would take the session from the app's next
                    // version (a stable `client_id`).
                    if stopped || self.shared.fetching_stopped.load(Ordering::SeqCst) {
                        break;
                    }
                }
            }
        }
        self.shutdown().await;
    }

    pub(super) fn connected(&mut self, ack: &ConnAck) {
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        let max = ack
            .properties
            .as_ref()
            .and_then(|p| p.max_packet_size)
            .unwrap_or(0);
        self.shared.max_packet.store(max, Ordering::Relaxed);
        let refused = lock(&self.shared.acks).reconnected(resent(&self.eventloop.pending));
        for waiter in refused {
            let _ = waiter.send(Err(MessagingError::Unavailable(REFUSED.into())));
        }
        if !self.first && !self.up {
            tracing::info!(client = %self.name, "mqtt connection restored");
        }
        self.up = true;
        self.first = false;
        if self.filters.is_empty() {
            // A resumed session: connected is all it waited for.
            if let Some(ready) = self.ready.take() {
                let _ = ready.send(Ok(ack.session_present));
            }
            return;
        }
        // rumqttc does not subscribe again by itself. A new session has no
        // subscriptions, and one the broker kept may have lost them to a
        // takeover while this client was away: subscribing again is
        // harmless either way.
        let (client, filters) = (self.client.clone(), self.filters.clone());
        tokio::spawn(async move {
            if let Err(e) = client.subscribe_many(filters).await {
                tracing::debug!(error = %e, "cannot subscribe");
            }
        });
    }

    pub(super) fn failed(&mut self, e: &ConnectionError) {
        if let ConnectionError::MqttState(StateError::OutgoingPacketTooLarge { pkt_size, max }) = e
        {
            // rumqttc dropped the oldest request it had not yet sent. All
            // earlier ones were reported as sent.
            let waiter = lock(&self.shared.acks).unsent();
            if let Some(waiter) = waiter {
                let _ = waiter.send(Err(MessagingError::TooLarge(format!(
                    "the message is {pkt_size} bytes; the broker takes at most {max}"
                ))));
            }
        }
        if self.up {
            self.up = false;
            tracing::warn!(client = %self.name, error = %e, "mqtt connection lost; reconnecting");
        } else {
            tracing::debug!(client = %self.name, error = %e, "mqtt reconnect failed");
        }
    }

    pub(super) fn received(&self, publish: Publish) {
        match &self.inbox {
            Inbox::Deliveries(deliveries) => {
                let epoch = self.shared.epoch.load(Ordering::SeqCst);
                let queued = if publish.qos == QoS::AtMostOnce {
                    match QueuedRequest::take(&self.shared) {
                        Some(queued) => Some(queued),
                        None => {
                            tracing::debug!(client = %self.name, "a trigger's client holds as many requests as it may; one dropped");
                            return;
                        }
                    }
                } else {
                    None
                };
                // Nobody to take it once the subscription is gone. The
                // message stays unacknowledged in the session.
                let _ = deliveries.send(Inbound {
                    publish,
                    epoch,
                    received: std::time::Instant::now(),
                    _queued: queued,
                });
            }
            Inbox::Replies(replies) => {
                let correlation = publish
                    .properties
                    .as_ref()
                    .and_then(|p| p.correlation_data.clone());
                let waiter = correlation.and_then(|c| lock(replies).remove(&c));
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(publish);
                    }
                    None => tracing::debug!("an mqtt reply nobody waits for (late or unknown)"),
                }
            }
        }
    }

    /// Sends DISCONNECT, so the broker does not wait for the keep-alive;
    /// or, for a trigger's client, closes the connection without one,
    /// once what it queued (its last acks) was sent. A DISCONNECT
    /// discards the will, and with it the only way another host (or the
    /// app's next version) learns to finish the session: what the broker
    /// dealt this client and it did not settle (handlers cut off by the
    /// shutdown grace, messages it received after it stopped taking them)
    /// would wait there unseen until the session expired. Without it the
    /// will goes out after [`super::WILL_DELAY`], unless the client comes
    /// back first under the same id (a stable `client_id`).
    pub(super) async fn shutdown(mut self) {
        if self.leave_will && !self.shared.finished.load(Ordering::SeqCst) {
            if !self.up {
                // Polling would connect again, and take the session back.
                return;
            }
            // Requests go out in order: once an unsubscribe queued last is
            // answered, everything before it was sent. Its filter was
            // never subscribed, so the broker refuses it, which ends the
            // connection (rumqttc takes a refusal for an error).
            let flush = format!("berth-flush/{}", self.name);
            if self.client.try_unsubscribe(flush).is_ok() {
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
                    loop {
                        match self.eventloop.poll().await {
                            Ok(Event::Incoming(Packet::UnsubAck(_))) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
            }
            return;
        }
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// Marks its client's event loop ended when dropped, however it ends.
struct EndedOnDrop(Arc<Shared>);

impl Drop for EndedOnDrop {
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::SeqCst);
        self.0.ended_notify.notify_waiters();
    }
}

/// What the first connection's failure tells the load: the broker's
/// reason when it refused the client (an id it does not take, a login it
/// refuses: the operator's to fix, and it names no credential), or that
/// the broker cannot be reached.
fn first_connection_failed(e: &ConnectionError) -> MessagingError {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            MessagingError::Unavailable(format!("the MQTT broker refused the connection: {code:?}"))
        }
        e => unavailable(e),
    }
}

/// Whether the broker ended the connection because another client
/// connected under the same id.
fn taken_over(e: &ConnectionError) -> bool {
    matches!(
        e,
        ConnectionError::MqttState(StateError::ServerDisconnect {
            reason_code: rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver,
            ..
        })
    )
}
