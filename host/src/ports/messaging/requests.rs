//! What the host holds of a broker's deliveries for an app's triggers:
//! requests read ahead into an inbox, each with when it came, and the
//! byte budget those and the in-process broker's deliveries share; and how
//! long a request's caller still waits.

use std::time::Duration;

use async_trait::async_trait;

use super::Acker;

/// Settles nothing: for requests, which brokers do not store. Holds the
/// request's bytes in its broker's [`HeldBytes`] budget, if it has one,
/// until the request is settled.
#[derive(Default)]
pub(crate) struct NoAck {
    /// Given back when the request is settled.
    _held: Option<HeldBytes>,
}

impl NoAck {
    /// Settles nothing, holding `held` until then.
    pub(crate) fn holding(held: Option<HeldBytes>) -> Self {
        NoAck { _held: held }
    }
}

#[async_trait]
impl Acker for NoAck {
    async fn ack(self: Box<Self>) {}
    async fn nack(self: Box<Self>, _delay: Duration) {}
}

/// What a broker's host-side queues may hold for one app version's
/// triggers together (payload bytes), past the first delivery: requests
/// waiting for a handler, and the in-process broker's deliveries. Their
/// counts alone are bounded (1,024 per trigger), which at a megabyte each
/// and 1,024 triggers let one tenant hold a terabyte of the host's memory.
pub const QUEUED_BYTES: usize = 64 << 20;

/// A byte budget shared by deliveries a broker holds in the host.
#[derive(Debug)]
pub(crate) struct QueuedBytes {
    used: std::sync::atomic::AtomicUsize,
    limit: usize,
    /// The app whose budget it is (for the host's log).
    app: String,
}

impl QueuedBytes {
    /// A budget of `limit` bytes for `app`, none used.
    pub(crate) fn new(app: &str, limit: usize) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            used: std::sync::atomic::AtomicUsize::new(0),
            limit,
            app: app.to_string(),
        })
    }

    /// Holds `bytes` until the returned guard is dropped, if they fit; a
    /// delivery larger than the whole budget fits only while nothing else
    /// is held, so any message a guest may send can pass.
    pub(crate) fn hold(self: &std::sync::Arc<Self>, bytes: usize) -> Option<HeldBytes> {
        use std::sync::atomic::Ordering::Relaxed;
        self.used
            .fetch_update(Relaxed, Relaxed, |used| {
                let total = used.checked_add(bytes)?;
                (used == 0 || total <= self.limit).then_some(total)
            })
            .ok()?;
        Some(HeldBytes {
            budget: self.clone(),
            bytes,
        })
    }

    /// Holds `bytes` whether or not they fit (see
    /// [`MessagingBackend::publish_unbounded`]).
    pub(crate) fn hold_anyway(self: &std::sync::Arc<Self>, bytes: usize) -> HeldBytes {
        self.used
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        HeldBytes {
            budget: self.clone(),
            bytes,
        }
    }

    /// What the budget allows, in MiB (for errors).
    pub(crate) fn limit_mib(&self) -> usize {
        self.limit >> 20
    }
}

/// Bytes held in a [`QueuedBytes`] budget, given back when dropped.
#[derive(Debug)]
pub(crate) struct HeldBytes {
    budget: std::sync::Arc<QueuedBytes>,
    bytes: usize,
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Aborts a task when dropped: a subscription's helper task ends with it.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Requests read from a broker client's stream as they come, each with
/// the moment it came (lapin and async-nats do not tell it), from which
/// what is left of its caller's timeout counts.
pub(crate) struct RequestInbox<T> {
    received: tokio::sync::mpsc::Receiver<InboxRequest<T>>,
    /// Reads the stream while the inbox has room; ends with the inbox.
    _reader: AbortOnDrop,
}

/// A request in a [`RequestInbox`]: when it came, the request, and its
/// bytes in the broker's budget (a shedding inbox's).
pub(crate) type InboxRequest<T> = (std::time::Instant, T, Option<HeldBytes>);

/// Requests a [`RequestInbox`] holds before its reader waits (and the
/// client's own buffer, bounded too, fills instead) or, shedding, drops.
const REQUEST_INBOX: usize = 1024;

impl<T: Send + 'static> RequestInbox<T> {
    /// An inbox whose reader waits while it is full: for a broker that
    /// sends the host no more than it may hold unacknowledged (RabbitMQ's
    /// prefetch).
    pub(crate) fn new(stream: impl futures::Stream<Item = T> + Send + 'static) -> Self {
        use futures::StreamExt as _;
        let (tx, received) = tokio::sync::mpsc::channel(REQUEST_INBOX);
        let reader = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(request) = stream.next().await {
                if tx
                    .send((std::time::Instant::now(), request, None))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        RequestInbox {
            received,
            _reader: AbortOnDrop(reader),
        }
    }

    /// An inbox that drops what comes while it is full or `budget` is
    /// (each request's `bytes`): for a broker that sends whatever its
    /// publishers send (NATS), where a reader that waited would leave the
    /// requests in the client's own, much larger buffer. A dropped request
    /// is never answered: its caller gets its timeout, as from a host
    /// that went away.
    pub(crate) fn shedding(
        stream: impl futures::Stream<Item = T> + Send + 'static,
        bytes: fn(&T) -> usize,
        budget: std::sync::Arc<QueuedBytes>,
    ) -> Self {
        use futures::StreamExt as _;
        use tokio::sync::mpsc::error::TrySendError;
        let (tx, received) = tokio::sync::mpsc::channel(REQUEST_INBOX);
        let reader = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(request) = stream.next().await {
                let Some(held) = budget.hold(bytes(&request)) else {
                    shed_request(&budget);
                    continue;
                };
                match tx.try_send((std::time::Instant::now(), request, Some(held))) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => shed_request(&budget),
                    Err(TrySendError::Closed(_)) => return,
                }
            }
        });
        RequestInbox {
            received,
            _reader: AbortOnDrop(reader),
        }
    }

    /// The next request, when it came and its bytes held; `None` once the
    /// stream ended. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Option<InboxRequest<T>> {
        self.received.recv().await
    }
}

/// Says (at a bounded rate per app) that a shedding inbox dropped a request.
fn shed_request(budget: &QueuedBytes) {
    if crate::audit::app_warning_due(&budget.app) {
        tracing::warn!(
            app = %budget.app,
            "requests come faster than an app's handlers take them: a trigger's 1,024 waiting requests or the app's {} MiB of them are held, and more are dropped",
            budget.limit_mib()
        );
    }
}

/// What is left of a request's `timeout` (as its broker passed it on) once
/// it waited in the host since `received`: `None` without a timeout.
pub(crate) fn time_left(
    timeout: Option<Duration>,
    received: std::time::Instant,
) -> Option<Duration> {
    timeout.map(|t| t.saturating_sub(received.elapsed()))
}

/// Waits for the handler's answer to a request a broker delivered, at
/// most `left`: what is left of its caller's timeout, where the broker
/// tells it. Past that the caller has its error already, so the answer is
/// not sent, and a request no handler has begun is skipped (the trigger
/// sees its [`Delivery::reply`] closed).
pub(crate) async fn answer_within(
    answer: tokio::sync::oneshot::Receiver<Vec<u8>>,
    left: Option<Duration>,
) -> Option<Vec<u8>> {
    match left {
        None => answer.await.ok(),
        Some(left) => tokio::time::timeout(left, answer).await.ok()?.ok(),
    }
}
