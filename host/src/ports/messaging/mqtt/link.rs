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
    pub(super) ended: AtomicBool,
    pub(super) ended_notify: tokio::sync::Notify,
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
    pub(super) fn take(shared: &Arc<Shared>) -> Option<QueuedRequest> {
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
