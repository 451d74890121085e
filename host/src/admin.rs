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

/// Serves the admin endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, ready: Arc<AtomicBool>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
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
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(crate::triggers::http::HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
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
