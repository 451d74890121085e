//! An instance's outbound responses whose connections are still open: a
//! warm instance holding one is not reused (see
//! `InstanceState::holds_port_resources`), so no socket outlives the
//! message that opened it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// Counts the open responses of one instance.
#[derive(Debug, Default, Clone)]
pub struct OpenResponses(Arc<AtomicUsize>);

impl OpenResponses {
    /// How many are open now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// `body`, counted as open until it ends, fails, or is dropped with
    /// the guest's response. Dropping is synchronous (the guest's `drop`
    /// of the response or its body); the task driving the connection is
    /// only aborted, later, so it is not what is counted.
    pub fn counted(&self, body: WasiBody) -> WasiBody {
        self.0.fetch_add(1, Ordering::SeqCst);
        CountedBody {
            inner: body,
            open: Some(Open(self.0.clone())),
        }
        .boxed_unsync()
    }
}

/// One count, given back when dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct CountedBody {
    inner: WasiBody,
    open: Option<Open>,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.open = None;
        }
        polled
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

    #[tokio::test]
    async fn a_response_counts_until_read_to_its_end_or_dropped() {
        let open = OpenResponses::default();
        let body = || {
            http_body_util::Full::new(Bytes::from_static(b"hello"))
                .map_err(|never| match never {})
                .boxed_unsync()
        };
        let read = open.counted(body());
        let dropped = open.counted(body());
        assert_eq!(open.count(), 2);
        assert_eq!(read.collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(open.count(), 1, "read to its end");
        drop(dropped);
        assert_eq!(open.count(), 0, "dropped unread");
    }
}
