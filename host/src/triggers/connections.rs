//! Accepting and keeping the HTTP connections of `berth up` and `berth
//! serve`: how many at once, how long one may go without a request, and
//! the graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::TcpListener;

use super::http::HttpService;

/// How long a client may take to send a request's head (and an idle
/// keep-alive connection to start the next one) before the connection is
/// closed: a client trickling its headers must not hold a connection, and
/// a file descriptor, for ever. A connection that has sent no request this
/// long after it was accepted (nothing at all, or the start of an HTTP/2
/// preface) is closed too, and so is one without a request in flight for
/// this long (HTTP/2 answers pings, so nothing else would close it).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How often an HTTP/2 connection is pinged, and how long its answer may
/// take, before the connection is closed.
const H2_KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(10));

/// How often a connection's idleness is looked at.
const WATCH_EVERY: Duration = Duration::from_secs(5);

/// How long a response may wait for its client to take any of it (the
/// host has a part ready, the socket takes no byte and brings none)
/// before the connection is dropped: a client that never reads a large answer would otherwise
/// hold its connection, one of [`connection_cap`], for ever, since hyper
/// has no write timeout. A response waiting for its guest (or a blob
/// store) to produce more is not waiting for its client, and a client
/// reading slowly keeps its connection.
pub const STALLED_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// The fewest connections held at once, whatever the open-files limit.
const MIN_CONNECTIONS: u64 = 64;

/// Connections held at once: half the files the process may open, so that
/// a flood of connections leaves the other half to the apps' databases,
/// blobs and outbound connections. Past it, new connections wait in the
/// listen backlog.
pub fn connection_cap() -> usize {
    let soft = crate::cli::open_files::soft_limit().unwrap_or(1024);
    (soft / 2).clamp(MIN_CONNECTIONS, 1 << 20) as usize
}

/// Serves `handler` on `listener` until `shutdown` resolves. Then it stops
/// accepting (the listener is closed), lets requests in flight finish for
/// up to `grace` while idle keep-alive connections are closed, and cancels
/// the connections still open after that. Connections are HTTP/1.1 with
/// keep-alive or HTTP/2 (prior knowledge), whichever the client speaks, at
/// most [`connection_cap`] at once, each closed once it goes
/// [`HEADER_READ_TIMEOUT`] without a request.
pub async fn serve<H: HttpService>(
    handler: Arc<H>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> anyhow::Result<()> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper applies no header read timeout at all.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE.0)
        .keep_alive_timeout(H2_KEEP_ALIVE.1);
    let slots = Arc::new(tokio::sync::Semaphore::new(connection_cap()));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Reap finished connections so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, mostly: back off rather than
                // spin; connections in flight go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let service = {
            let (handler, activity) = (handler.clone(), activity.clone());
            hyper::service::service_fn(move |req| {
                let (handler, activity) = (handler.clone(), activity.clone());
                async move {
                    // In flight until its response body has been sent (or
                    // dropped), not only its head: a long download is no
                    // idle connection.
                    let busy = Activity::begin(&activity);
                    let response = handler.call(req).await;
                    Ok::<_, Infallible>(response.map(|body| Tracked::new(body, busy)))
                }
            })
        };
        // No upgrades: `wasi:http` has none, and a guest's 101 must not
        // turn the connection into a tunnel.
        let stream = Watched {
            inner: stream,
            activity: activity.clone(),
        };
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let stopping = stopping.clone();
        connections.spawn(async move {
            let _permit = permit;
            keep(conn, &activity, stopping, peer).await;
        });
    }
    drop(listener);
    tracing::info!(
        ?grace,
        "shutting down: no longer accepting; draining requests in flight"
    );
    let _ = stop.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            ?grace,
            open = connections.len(),
            "requests in flight did not finish within the grace period; cancelling them"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    Ok(())
}

/// Drives connection `conn` to its end: closed gracefully (requests in
/// flight finish) when the host stops or once it goes
/// [`HEADER_READ_TIMEOUT`] without a request in flight, dropped when no
/// request came at all within that time of its accept.
async fn keep<C>(
    conn: C,
    activity: &Activity,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    peer: std::net::SocketAddr,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let mut watch =
        tokio::time::interval_at(tokio::time::Instant::now() + WATCH_EVERY, WATCH_EVERY);
    let mut closing = false;
    // Once closing for its idleness, a connection still open past this is
    // dropped: its last answer stuck on a client that reads nothing. (A
    // host stopping bounds the rest with its grace.)
    let mut closed_by: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = stopping.changed(), if !closing => {
                // The sender only goes when the server stopped too.
                let _ = changed;
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = watch.tick() => {
                let state = activity.state(HEADER_READ_TIMEOUT, STALLED_RESPONSE_TIMEOUT);
                if state == State::Stalled {
                    tracing::debug!(%peer, "dropping a connection whose client takes none of its answer");
                    return;
                }
                if closing {
                    // Nothing in flight, yet still open well after it was
                    // closed: the end of its last answer waits for a
                    // client that reads nothing. (An answer in flight is
                    // judged by its progress, above.)
                    let past = closed_by.is_some_and(|deadline| tokio::time::Instant::now() >= deadline);
                    if past && activity.in_flight.load(Ordering::SeqCst) == 0 {
                        tracing::debug!(%peer, "dropping a closing connection whose client reads nothing");
                        return;
                    }
                    continue;
                }
                match state {
                    State::Busy => {}
                    State::Idle => {
                        tracing::debug!(%peer, "closing a connection without requests");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        closed_by = Some(tokio::time::Instant::now() + STALLED_RESPONSE_TIMEOUT);
                    }
                    State::Silent => {
                        tracing::debug!(%peer, "dropping a connection that sent no request in time");
                        return;
                    }
                    State::Stalled => return,
                }
            }
        }
    }
}

/// What a connection's requests are doing, for its watchdog.
struct Activity {
    accepted: Instant,
    /// Requests whose handler has not answered yet.
    in_flight: AtomicUsize,
    /// When the last request began or was answered, in ms after
    /// `accepted`; `u64::MAX` before the first.
    last_ms: AtomicU64,
    /// Response bodies not yet done.
    responding: AtomicUsize,
    /// Those of them waiting for their producer (the guest), not for the
    /// client: their last poll was pending.
    producing: AtomicUsize,
    /// When a response body last gave hyper a part to send (or was made),
    /// in ms after `accepted`.
    progress_ms: AtomicU64,
}

/// What a connection's watchdog makes of it.
#[derive(Debug, PartialEq, Eq)]
enum State {
    /// A request is in flight, or one was lately.
    Busy,
    /// No request for the whole timeout, after some: close it gracefully.
    Idle,
    /// No request at all within the timeout of its accept: drop it.
    Silent,
    /// Answers ready to go that the client has taken nothing of for the
    /// stall timeout: drop it.
    Stalled,
}

impl Activity {
    fn new() -> Self {
        Activity {
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(u64::MAX),
            responding: AtomicUsize::new(0),
            producing: AtomicUsize::new(0),
            progress_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.accepted.elapsed().as_millis() as u64
    }

    /// A request began; it is in flight until the guard drops.
    fn begin(this: &Arc<Activity>) -> Busy {
        this.in_flight.fetch_add(1, Ordering::SeqCst);
        this.last_ms.store(this.now_ms(), Ordering::SeqCst);
        Busy(this.clone())
    }

    fn state(&self, timeout: Duration, stall: Duration) -> State {
        let timeout = timeout.as_millis() as u64;
        let now = self.now_ms();
        match self.last_ms.load(Ordering::SeqCst) {
            u64::MAX if now >= timeout => State::Silent,
            u64::MAX => State::Busy,
            _ if self.in_flight.load(Ordering::SeqCst) > 0 => {
                let stalled = self.responding.load(Ordering::SeqCst) > 0
                    && self.producing.load(Ordering::SeqCst) == 0
                    && now.saturating_sub(self.progress_ms.load(Ordering::SeqCst))
                        >= stall.as_millis() as u64;
                if stalled { State::Stalled } else { State::Busy }
            }
            last if now.saturating_sub(last) >= timeout => State::Idle,
            _ => State::Busy,
        }
    }

    /// A response body gave hyper something (or was made), or the socket
    /// took bytes.
    fn progressed(&self) {
        self.progress_ms.store(self.now_ms(), Ordering::SeqCst);
    }
}

/// A request in flight on a connection.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.last_ms.store(self.0.now_ms(), Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection's socket, telling its [`Activity`] when it takes bytes.
struct Watched {
    inner: tokio::net::TcpStream,
    activity: Arc<Activity>,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        // A client still sending (a large upload it sends whole before it
        // reads the answer streaming back) is no stalled client.
        if buf.filled().len() > before {
            self.activity.progressed();
        }
        read
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.progressed();
        }
        written
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.progressed();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request in flight until it is done,
/// and tells its connection's watchdog whether it waits for its producer
/// or for the client.
struct Tracked<B> {
    body: B,
    busy: Busy,
    /// Its last poll was pending (counted in [`Activity::producing`]).
    producing: bool,
}

impl<B> Tracked<B> {
    fn new(body: B, busy: Busy) -> Self {
        // Progress first: a watchdog looking in between would otherwise
        // judge the new answer by an old time.
        busy.0.progressed();
        busy.0.responding.fetch_add(1, Ordering::SeqCst);
        Tracked {
            body,
            busy,
            producing: false,
        }
    }

    fn set_producing(&mut self, producing: bool) {
        if producing != self.producing {
            let count = &self.busy.0.producing;
            if producing {
                count.fetch_add(1, Ordering::SeqCst);
            } else {
                count.fetch_sub(1, Ordering::SeqCst);
            }
            self.producing = producing;
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.set_producing(false);
        self.busy.0.responding.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        this.set_producing(polled.is_pending());
        if polled.is_ready() {
            this.busy.0.progressed();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_silent_idle_or_busy() {
        let timeout = Duration::from_millis(40);
        let stall = Duration::from_secs(60);
        let activity = Activity::new();
        assert_eq!(activity.state(timeout, stall), State::Busy, "just accepted");
        std::thread::sleep(timeout);
        assert_eq!(
            activity.state(timeout, stall),
            State::Silent,
            "no request came"
        );

        let activity = Arc::new(Activity::new());
        let busy = Activity::begin(&activity);
        std::thread::sleep(timeout);
        assert_eq!(
            activity.state(timeout, stall),
            State::Busy,
            "a request in flight"
        );
        drop(busy);
        assert_eq!(
            activity.state(timeout, stall),
            State::Busy,
            "one just answered"
        );
        std::thread::sleep(timeout);
        assert_eq!(activity.state(timeout, stall), State::Idle, "none since");
    }

    /// A body not polled for the stall timeout after it gave a part is an
    /// answer its client takes nothing of; one waiting for its producer is
    /// not.
    #[test]
    fn an_answer_the_client_takes_nothing_of_is_stalled() {
        use hyper::body::Body as _;
        let (timeout, stall) = (Duration::from_secs(60), Duration::from_millis(40));
        let activity = Arc::new(Activity::new());
        // Pending once (its producer at work), then a part.
        let body = Script(vec![None, Some(bytes::Bytes::from_static(b"x"))].into());
        let mut tracked = Tracked::new(body, Activity::begin(&activity));
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        // Waiting for its producer: busy however long.
        assert!(
            std::pin::Pin::new(&mut tracked)
                .poll_frame(&mut cx)
                .is_pending()
        );
        std::thread::sleep(stall);
        assert_eq!(activity.state(timeout, stall), State::Busy, "producing");
        // A part given, then not polled again: the client reads nothing.
        assert!(
            std::pin::Pin::new(&mut tracked)
                .poll_frame(&mut cx)
                .is_ready()
        );
        assert_eq!(activity.state(timeout, stall), State::Busy, "just sent");
        std::thread::sleep(stall);
        assert_eq!(activity.state(timeout, stall), State::Stalled);
        drop(tracked);
        assert_eq!(activity.state(timeout, stall), State::Busy, "just answered");
    }

    /// A body whose polls answer as scripted: `None` pending, a part
    /// ready, then its end.
    struct Script(std::collections::VecDeque<Option<bytes::Bytes>>);

    impl hyper::body::Body for Script {
        type Data = bytes::Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
            match self.0.pop_front() {
                Some(None) => std::task::Poll::Pending,
                Some(Some(part)) => {
                    std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(part))))
                }
                None => std::task::Poll::Ready(None),
            }
        }
    }

    #[test]
    fn the_connection_cap_leaves_files_to_the_apps() {
        let cap = connection_cap() as u64;
        assert!(cap >= MIN_CONNECTIONS);
        if let Some(soft) = crate::cli::open_files::soft_limit() {
            assert!(cap <= soft.max(2 * MIN_CONNECTIONS) / 2, "{cap} of {soft}");
        }
    }
}
