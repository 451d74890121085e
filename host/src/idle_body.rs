//! A body that gives up on a peer that stops sending it: a request's
//! (its client, see [`REQUEST_BODY_IDLE_TIMEOUT`]) and an outbound
//! response's (its server, `between_bytes_timeout_ms`).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// How long a request's body may wait for its client's next bytes. A
/// request takes its instance (and its places among the host's and its
/// app's) when its head arrives; a client sending the rest a byte a minute
/// would otherwise hold them for the guest's whole time limit, and a few
/// hundred such clients every instance of the host.
pub const REQUEST_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// `inner`, failing with `connection-read-timeout` once it waited
/// `idle` for its next frame. Only time spent waiting counts: while the
/// guest does not read, nothing waits.
pub struct IdleTimeoutBody<B> {
    inner: B,
    idle: Duration,
    /// Set while a read waits for the client.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> IdleTimeoutBody<B> {
    /// `inner`, bounded by `idle` between frames.
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            deadline: None,
        }
    }
}

impl<B> Body for IdleTimeoutBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.deadline = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.deadline = None;
                        Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    /// A body whose frames come from a channel, as a client sends them.
    struct Sent(tokio::sync::mpsc::Receiver<&'static str>);

    impl Body for Sent {
        type Data = Bytes;
        type Error = hyper::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|text| text.map(|t| Ok(Frame::data(Bytes::from_static(t.as_bytes())))))
        }
    }

    async fn next(body: &mut IdleTimeoutBody<Sent>) -> Result<Bytes, wasmtime_wasi_http::Error> {
        body.frame().await.unwrap().map(|f| f.into_data().unwrap())
    }

    #[tokio::test]
    async fn a_body_whose_client_stops_sending_times_out() {
        let idle = Duration::from_millis(300);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut body = IdleTimeoutBody::new(Sent(rx), idle);
        tx.send("a").await.unwrap();
        assert_eq!(next(&mut body).await.unwrap(), "a");
        // A client that sends within the bound keeps the body going.
        let sender = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(idle / 2).await;
            sender.send("b").await.unwrap();
        });
        assert_eq!(next(&mut body).await.unwrap(), "b");
        // Time not spent waiting (the guest busy elsewhere) does not count.
        tokio::time::sleep(idle * 2).await;
        tx.send("c").await.unwrap();
        assert_eq!(next(&mut body).await.unwrap(), "c");
        // Then nothing for the bound.
        let started = std::time::Instant::now();
        let err = next(&mut body).await.unwrap_err();
        assert!(
            matches!(err, wasmtime_wasi_http::Error::ConnectionReadTimeout),
            "{err:?}"
        );
        assert!(started.elapsed() >= idle, "{:?}", started.elapsed());
        drop(tx);
    }
}
