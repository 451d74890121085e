//! One MQTT client and its event loop: publishes confirmed by their
//! PUBACK, reconnects, resubscriptions and what comes in.

use super::*;

/// Told the broker's PUBACK reason for one publish, or why none came.
pub(super) type Waiter = oneshot::Sender<Result<PubAckReason, MessagingError>>;

/// Requests waiting for their reply, by correlation data.
pub(super) type Replies = Arc<Mutex<HashMap<Bytes, oneshot::Sender<Publish>>>>;

/// State a client's tasks share.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) acks: Mutex<Acks>,
    /// Counts CONNACKs. A delivery is acknowledged only on the connection
    /// it came on, because after a reconnect the broker sends it again
    /// under the same packet id, and that copy is acknowledged in its turn.
    pub(super) epoch: AtomicU64,
    /// The broker's maximum packet size (0: none announced).
    pub(super) max_packet: AtomicU32,
    /// The client's trigger stopped (see [`Link::stop_fetching`]): its
    /// filters are unsubscribed, and once its connection ends it does not
    /// connect again.
    pub(super) fetching_stopped: AtomicBool,
    /// The requests in a trigger client's inbox (see [`QueuedRequest`]).
    pub(super) queued_requests: AtomicUsize,
    /// The session a client with a will resumed is finished (see
    /// [`Link::finished`]): it may leave with DISCONNECT, which discards
    /// the will.
    pub(super) finished: AtomicBool,
    /// The client's event loop has ended (see [`Link::close`]).
    ended: AtomicBool,
    ended_notify: tokio::sync::Notify,
}

/// Marks its client's event loop ended when dropped, however it ends.
struct EndedOnDrop(Arc<Shared>);

impl Drop for EndedOnDrop {
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::SeqCst);
        self.0.ended_notify.notify_waiters();
    }
}

/// A publish for the sending task.
pub(super) struct Job {
    pub(super) topic: String,
    pub(super) payload: Bytes,
    pub(super) properties: PublishProperties,
    pub(super) done: Waiter,
}

/// Where a client's incoming publishes go.
pub(super) enum Inbox {
    /// A trigger's client: to its subscription.
    Deliveries(mpsc::UnboundedSender<Inbound>),
    /// The publishing client: to the request whose correlation data the
    /// reply carries.
    Replies(Replies),
}

/// An incoming publish and the connection it came on.
pub(super) struct Inbound {
    pub(super) publish: Publish,
    pub(super) epoch: u64,
    /// When it came, from which a request's expiry counts.
    pub(super) received: std::time::Instant,
    /// A request's place among [`MAX_QUEUED_REQUESTS`], given back when it
    /// is taken (dropped).
    pub(super) _queued: Option<QueuedRequest>,
}

/// A QoS 0 publish counted in [`Shared::queued_requests`] until dropped.
pub(super) struct QueuedRequest(Arc<Shared>);

impl QueuedRequest {
    /// Counts one more, unless [`MAX_QUEUED_REQUESTS`] are queued already.
    fn take(shared: &Arc<Shared>) -> Option<QueuedRequest> {
        let queued = &shared.queued_requests;
        let mut n = queued.load(Ordering::SeqCst);
        loop {
            if n >= MAX_QUEUED_REQUESTS {
                return None;
            }
            match queued.compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Some(QueuedRequest(shared.clone())),
                Err(now) => n = now,
            }
        }
    }
}

impl Drop for QueuedRequest {
    fn drop(&mut self) {
        self.0.queued_requests.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One MQTT client and its two tasks. One task drives the event loop and
/// one sends the publishes. Both stop (after a DISCONNECT) once the last
/// clone is dropped.
#[derive(Clone)]
pub(super) struct Link {
    pub(super) client: AsyncClient,
    pub(super) jobs: mpsc::Sender<Job>,
    pub(super) shared: Arc<Shared>,
    /// Dropped with the last clone, which tells the event loop to stop.
    pub(super) _stop: Arc<oneshot::Sender<()>>,
}

impl Link {
    /// Starts a client subscribed to `filters`, and waits (at most
    /// `timeout`) for its CONNACK and SUBACK. It reconnects (and
    /// subscribes again) whenever its connection drops.
    pub(super) async fn connect(
        options: MqttOptions,
        filters: Vec<Filter>,
        inbox: Inbox,
        timeout: Duration,
    ) -> Result<Link, MessagingError> {
        let (link, _) = Link::start(options, filters, inbox, timeout, true).await?;
        Ok(link)
    }

    /// Starts a client that resumes the session its client id names,
    /// subscribing to nothing, and waits (at most `timeout`) for its
    /// CONNACK. Returns whether the broker still had the session. It does
    /// not reconnect: once its connection drops, it stops.
    pub(super) async fn resume(
        options: MqttOptions,
        inbox: Inbox,
        timeout: Duration,
    ) -> Result<(Link, bool), MessagingError> {
        Link::start(options, Vec::new(), inbox, timeout, false).await
    }

    async fn start(
        options: MqttOptions,
        filters: Vec<Filter>,
        inbox: Inbox,
        timeout: Duration,
        reconnect: bool,
    ) -> Result<(Link, bool), MessagingError> {
        let name = options.client_id();
        // A client with a will (a trigger's own, or one finishing another
        // host's session) leaves without DISCONNECT, so that its will goes
        // out: a DISCONNECT discards it, and with it what the session
        // still holds (see `Driver::shutdown`).
        let leave_will = options.last_will().is_some();
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let shared = Arc::new(Shared::default());
        let (stop_tx, stop) = oneshot::channel();
        let (ready_tx, ready) = oneshot::channel();
        let (jobs, jobs_rx) = mpsc::channel(MAX_QUEUED_PUBLISHES);
        let driver = Driver {
            eventloop,
            client: client.clone(),
            shared: shared.clone(),
            filters,
            inbox,
            ready: Some(ready_tx),
            stop,
            name,
            first: true,
            up: false,
            reconnect,
            leave_will,
        };
        tokio::spawn(driver.run());
        tokio::spawn(send_publishes(client.clone(), shared.clone(), jobs_rx));
        let link = Link {
            client,
            jobs,
            shared,
            _stop: Arc::new(stop_tx),
        };
        // On failure `link` is dropped here, which stops the tasks.
        match tokio::time::timeout(timeout, ready).await {
            Ok(Ok(Ok(session_present))) => Ok((link, session_present)),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(unavailable("the mqtt event loop stopped")),
            Err(_) => Err(unavailable("no connack or suback before the timeout")),
        }
    }

    /// The session this client resumed is finished (all it held was
    /// settled, or the broker had none): it leaves with DISCONNECT, its
    /// will no longer needed.
    pub(super) fn finished(&self) {
        self.shared.finished.store(true, Ordering::SeqCst);
    }

    /// Drops this handle and, if it was the client's last, waits until
    /// its connection has ended as [`Driver::shutdown`] ends it (a little
    /// longer than that takes, at most): a clean connect under the same
    /// id made before that would take over a live connection, and with
    /// it publish the will [`Link::finished`] meant to discard.
    pub(super) async fn close(self) {
        let shared = self.shared.clone();
        drop(self);
        let ended = async {
            loop {
                let notified = shared.ended_notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if shared.ended.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), ended).await;
    }

    /// Publishes at QoS 1 and waits (at most `wait`) for the PUBACK. Returns
    /// its reason, which is success or "no matching subscribers".
    pub(super) async fn publish(
        &self,
        topic: String,
        payload: Bytes,
        properties: PublishProperties,
        wait: Duration,
    ) -> Result<PubAckReason, MessagingError> {
        let (done, acked) = oneshot::channel();
        // Bounded: while the broker is away, publishers are told so at once
        // rather than piling payloads up in memory.
        self.jobs
            .try_send(Job {
                topic,
                payload,
                properties,
                done,
            })
            .map_err(|e| {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => {
                        "too many publishes waiting for the broker"
                    }
                    mpsc::error::TrySendError::Closed(_) => "the mqtt client stopped",
                };
                tracing::debug!(why, "an mqtt publish was not queued");
                MessagingError::Unavailable(NOT_SENT.into())
            })?;
        // Giving up here leaves the waiter in place: the accounting stays
        // in step with the event loop, and the late PUBACK finds nobody.
        match tokio::time::timeout(wait, acked).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(unavailable("the mqtt client stopped")),
            Err(_) => Err(unavailable("no puback before the timeout")),
        }
    }

    /// The client's trigger takes no more deliveries: its `filters` are
    /// unsubscribed (once), so the broker deals the other members what
    /// would have come here while what it holds is settled, and once its
    /// connection ends the client does not connect again (see
    /// [`Driver::run`]). What it does not settle, another host hands out
    /// after its will.
    pub(super) fn stop_fetching(&self, filters: &[String]) {
        if self.shared.fetching_stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        for filter in filters {
            let _ = self.client.try_unsubscribe(filter.clone());
        }
    }

    /// The connection the client is on.
    pub(super) fn epoch(&self) -> u64 {
        self.shared.epoch.load(Ordering::SeqCst)
    }
}

/// The error of a publish that surely never reached the broker (its
/// queue was full, or the client stopped), told apart from one whose
/// PUBACK did not come in time, which may have been published.
pub(super) const NOT_SENT: &str = "the broker cannot take the message now";
/// The error of a publish the broker refused.
pub(super) const REFUSED: &str = "the broker refused the message";

/// Publishes queued per client before publishers get `unavailable`.
pub(super) const MAX_QUEUED_PUBLISHES: usize = 1024;

/// Sends a client's publishes one at a time, so the order of its waiters is
/// the order of its requests. This is a task rather than a lock held by
/// each publisher: a publisher whose future is dropped between queuing its
/// waiter and sending its request would leave a waiter with no publish,
/// and every later PUBACK would then settle the wrong waiter.
pub(super) async fn send_publishes(
    client: AsyncClient,
    shared: Arc<Shared>,
    mut jobs: mpsc::Receiver<Job>,
) {
    while let Some(job) = jobs.recv().await {
        // Its publisher gave up (and was told it failed): sending it now
        // would deliver a message reported as not sent.
        if job.done.is_closed() {
            continue;
        }
        // rumqttc drops a packet over the broker's maximum and then
        // reconnects, so a packet that is too large is refused here first.
        let max = shared.max_packet.load(Ordering::Relaxed) as usize;
        if max > 0 {
            let probe = Publish::new(
                job.topic.as_str(),
                QoS::AtLeastOnce,
                job.payload.clone(),
                Some(job.properties.clone()),
            );
            // + 2 for the packet id, which is assigned later.
            let size = probe.size() + 2;
            if size > max {
                let _ = job.done.send(Err(MessagingError::TooLarge(format!(
                    "the message is {size} bytes; the broker takes at most {max}"
                ))));
                continue;
            }
        }
        lock(&shared.acks).enqueue(job.done);
        let sent = client
            .publish_bytes_with_properties(
                job.topic,
                QoS::AtLeastOnce,
                false,
                job.payload,
                job.properties,
            )
            .await;
        if let Err(e) = sent {
            let waiter = lock(&shared.acks).withdraw_last();
            if let Some(waiter) = waiter {
                let _ = waiter.send(Err(unavailable(e)));
            }
        }
    }
}

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
                        let _ = ready.send(Err(unavailable(&e)));
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

/// Removes a request's reply waiter however the request ends.
pub(super) struct PendingReply<'a> {
    pub(super) replies: &'a Replies,
    pub(super) correlation: Bytes,
}

impl<'a> PendingReply<'a> {
    pub(super) fn register(
        replies: &'a Replies,
        correlation: Bytes,
        waiter: oneshot::Sender<Publish>,
    ) -> PendingReply<'a> {
        lock(replies).insert(correlation.clone(), waiter);
        PendingReply {
            replies,
            correlation,
        }
    }
}

impl Drop for PendingReply<'_> {
    fn drop(&mut self) {
        lock(self.replies).remove(&self.correlation);
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
