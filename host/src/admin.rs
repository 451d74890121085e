//! The admin listener (`[admin] listen` in the host config), for operators
//! and orchestrators, apart from the apps' traffic:
//!
//! - `GET /healthz`: 200 while the process serves.
//! - `GET /readyz`: 200 once the apps are loaded, 503 before.
//! - `GET /metrics`: the counters of [`crate::metrics`] in the Prometheus
//!   text format.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::metrics::METRICS;

/// Connections the admin listener holds at once: probes and a scraper need
/// few, and it shares the process's file descriptors with the apps.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// The longest an admin connection stays open, its one request and answer
/// included.
const ADMIN_CONNECTION_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the admin endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, ready: Arc<AtomicBool>) {
    serve_within(
        listener,
        ready,
        MAX_ADMIN_CONNECTIONS,
        ADMIN_CONNECTION_TIME,
    )
    .await
}

/// [`serve`], holding at most `connections` connections at once, each for
/// at most `connection_time`.
async fn serve_within(
    listener: TcpListener,
    ready: Arc<AtomicBool>,
    connections: usize,
    connection_time: std::time::Duration,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(connections));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, mostly: back off rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let ready = ready.load(Ordering::Relaxed);
                async move { Ok::<_, Infallible>(answer(req.uri().path(), ready)) }
            });
            // One request per connection, and the connection bounded in
            // time: hyper's header timer starts at the first byte only, so
            // 64 connections sending nothing held every slot for good and
            // the probes failed.
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(false)
                .header_read_timeout(crate::triggers::http::HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(connection_time, connection).await;
        });
    }
}

fn answer(path: &str, ready: bool) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match path {
        "/healthz" => (StatusCode::OK, "ok\n".to_owned(), "text/plain"),
        "/readyz" if ready => (StatusCode::OK, "ready\n".to_owned(), "text/plain"),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "loading\n".to_owned(),
            "text/plain",
        ),
        "/metrics" => (
            StatusCode::OK,
            METRICS.render(),
            "text/plain; version=0.0.4",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found\n".to_owned(),
            "text/plain",
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections that send nothing hold their slots for a bounded time
    /// only: the probes are answered again once it is over.
    #[tokio::test]
    async fn silent_connections_do_not_hold_the_listener() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(true));
        let server = tokio::spawn(serve_within(
            listener,
            ready,
            2,
            std::time::Duration::from_millis(300),
        ));
        let silent = [
            tokio::net::TcpStream::connect(address).await.unwrap(),
            tokio::net::TcpStream::connect(address).await.unwrap(),
        ];
        let probe = async {
            let mut probe = tokio::net::TcpStream::connect(address).await.unwrap();
            probe
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut answer = String::new();
            probe.read_to_string(&mut answer).await.unwrap();
            answer
        };
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), probe)
            .await
            .expect("the probe is answered once the silent connections' time is over");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        drop(silent);
        server.abort();
    }

    #[test]
    fn endpoints() {
        assert_eq!(answer("/healthz", false).status(), StatusCode::OK);
        assert_eq!(
            answer("/readyz", false).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(answer("/readyz", true).status(), StatusCode::OK);
        assert_eq!(answer("/metrics", true).status(), StatusCode::OK);
        assert_eq!(answer("/other", true).status(), StatusCode::NOT_FOUND);
    }
}
