//! The HTTP trigger: serves an app's routes, each request in a fresh
//! instance of the route's `wasi:http/incoming-handler` component, plus the
//! signed blob URLs of the embedded blob store.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::InvocationError;
use crate::app::App;
use crate::idle_body::{IdleTimeoutBody, REQUEST_BODY_IDLE_TIMEOUT};
use crate::limits::LimitExceeded;
use crate::metrics::{Outcome, Trigger};
use crate::ports::blob::url::URL_PREFIX;
use crate::ports::logging::output::GuestOutput;
use crate::state::InstanceState;

pub use super::connections::{HEADER_READ_TIMEOUT, serve};

/// How long in-flight requests may finish after shutdown begins, unless
/// the host config's `[serve] shutdown_grace_ms` says otherwise.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Chunk size when streaming a blob to an HTTP client.
const BLOB_CHUNK: usize = 256 * 1024;

struct Route {
    path: String,
    wildcard: bool,
    component: String,
    /// The component's environment, resolved once when the routes are built.
    env: Arc<crate::app::ComponentEnv>,
    pre: ProxyPre<InstanceState>,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        if !self.wildcard {
            return path == self.path;
        }
        let base = self.path.trim_end_matches('/');
        path == base
            || base.is_empty()
            || path.strip_prefix(base).is_some_and(|r| r.starts_with('/'))
    }
}

/// Something that answers HTTP requests: one app ([`HttpHandler`]) or many
/// (`crate::tenants::Tenants`).
pub trait HttpService: Send + Sync + 'static {
    /// Handles one request; errors become responses.
    fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<HyperOutgoingBody>> + Send;
}

impl HttpService for HttpHandler {
    async fn call(self: Arc<Self>, req: Request<Incoming>) -> Response<HyperOutgoingBody> {
        match self.handle(req).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// An app's routes, ready to serve.
pub struct HttpHandler {
    app: Arc<App>,
    routes: Vec<Route>,
    /// Downloads through the app's signed blob URLs under way, all its
    /// versions together: each holds a reader (a file descriptor or a
    /// connection) outside any instance.
    blob_downloads: Arc<tokio::sync::Semaphore>,
}

/// Most downloads through one app's signed blob URLs at once; one more is
/// answered 503, so slow clients cannot take the host's descriptors.
pub const MAX_BLOB_DOWNLOADS: usize = 64;

impl HttpHandler {
    /// The app it serves.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Prepares the routes of `app`.
    pub fn new(app: Arc<App>) -> anyhow::Result<HttpHandler> {
        let mut routes = Vec::new();
        for t in &app.manifest.http_triggers {
            let component = app.component(&t.component)?;
            let pre = ProxyPre::new(component.pre.clone())
                .map_err(anyhow::Error::from)
                .with_context(|| format!("component `{}` cannot serve HTTP", t.component))?;
            let (path, wildcard) = match t.route.strip_suffix("/...") {
                Some(base) => (base.to_string(), true),
                None => (t.route.clone(), false),
            };
            routes.push(Route {
                path,
                wildcard,
                component: t.component.clone(),
                env: component.env.clone(),
                pre,
            });
        }
        // Most specific first: exact routes, then longer prefixes.
        routes.sort_by_key(|r| (r.wildcard, std::cmp::Reverse(r.path.len())));
        Ok(HttpHandler {
            blob_downloads: app.allowance.blob_downloads.clone(),
            app,
            routes,
        })
    }

    /// Handles one request; never fails (errors become responses).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<HyperOutgoingBody>, Infallible> {
        let path = req.uri().path().to_string();
        if let Some(rest) = path.strip_prefix(URL_PREFIX) {
            let query = req.uri().query().unwrap_or("").to_string();
            return Ok(self.serve_blob(rest, &query).await);
        }
        let Some(route) = self.routes.iter().find(|r| r.matches(&path)) else {
            return Ok(not_found());
        };
        Ok(self.invoke(route, req).await)
    }

    async fn invoke(&self, route: &Route, req: Request<Incoming>) -> Response<HyperOutgoingBody> {
        let env = &route.env;
        // A limit reached: counted (which writes an audit event, at a
        // bounded rate: any client can cause this), logged at debug and
        // answered with a 503 naming it.
        let refused = |limit: LimitExceeded, key: &'static str| {
            tracing::debug!(app = %self.app.manifest.name, component = %route.component, "{limit}");
            env.counters.limit(key);
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &limit.to_string(),
                Some(key),
            )
        };
        // At capacity, answer at once rather than queue: the client (or its
        // balancer) can retry elsewhere.
        let Ok(permit) = env.slots.clone().try_acquire_owned() else {
            return refused(
                LimitExceeded::Concurrency(env.limits.concurrency),
                "concurrency",
            );
        };
        // The app's share of the host's slots, whatever its components'
        // own limits: no tenant takes every slot of the host.
        let Some(app_permit) = self.app.allowance.try_instance_permit(env.weight) else {
            return refused(
                LimitExceeded::AppInstances(self.app.allowance.instance_limit),
                "app_instances",
            );
        };
        let Some(slot) = (self.app.allowance).try_host_slot(self.app.engine(), env.weight) else {
            return refused(LimitExceeded::Instances, "instances");
        };
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(GuestOutput::new(env.output.clone(), "stdout"))
            .stderr(GuestOutput::new(env.output.clone(), "stderr"));
        let engine = self.app.engine();
        let mut store =
            crate::app::new_store(engine.engine(), engine.cpu_turns(), env.clone(), wasi, slot);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let prepared = (|| -> wasmtime::Result<_> {
            let req = store
                .data_mut()
                .http()
                .new_incoming_request(Scheme::Http, bounded_body(req))?;
            let out = store.data_mut().http().new_response_outparam(sender)?;
            Ok((req, out))
        })();
        let (req, out) = match prepared {
            Ok(p) => p,
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("malformed request: {e}"),
                    None,
                );
            }
        };
        let pre = route.pre.clone();
        let limit = env.limits.timeout;
        let handles = env.limits.handles;
        let counters = env.counters.clone();
        let task = tokio::spawn(async move {
            let _permit = permit;
            let _app_permit = app_permit;
            let call = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            };
            let result = match tokio::time::timeout(limit + Duration::from_secs(1), call).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(InvocationError::from_error(&e, handles)),
                Err(_) => Err(InvocationError::Limit(LimitExceeded::Timeout(limit))),
            };
            let outcome = match &result {
                Ok(()) => Outcome::Ok,
                Err(e) => Outcome::Error(e),
            };
            counters.invocation(Trigger::Http, outcome);
            crate::fairness::retire(store);
            result
        });
        // A client that goes away before the response head (hyper drops
        // this future with its connection) takes its invocation with it:
        // left running, it would hold its instance slot until its time
        // limit. Once the head is sent, the task streams the body on.
        let abandoned = AbortOnDrop(Some(task.abort_handle()));
        let head = receiver.await;
        abandoned.disarm();
        match head {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the component failed the request: {code:?}"),
                None,
            ),
            Err(_) => {
                let failure = match task.await {
                    Ok(Ok(())) => InvocationError::Trap(
                        "the component returned without setting a response".into(),
                    ),
                    Ok(Err(e)) => e,
                    Err(e) => InvocationError::Trap(format!("invocation task failed: {e}")),
                };
                // Any client can cause a failure: at a bounded rate per app.
                if crate::audit::app_warning_due(&self.app.manifest.name) {
                    tracing::warn!(app = %self.app.manifest.name, component = %route.component, error = %failure, "HTTP invocation failed");
                }
                // A limit is the client's to know (the request may be
                // retried, or made smaller); a trap's text is the host
                // log's: wasm backtraces name the guest's functions, and a
                // host error's chain can name a backend or a path.
                match failure.limit_name() {
                    Some(limit) => error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &failure.to_string(),
                        Some(limit),
                    ),
                    None => error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the component failed; the host log has the details",
                        None,
                    ),
                }
            }
        }
    }

    async fn serve_blob(&self, rest: &str, query: &str) -> Response<HyperOutgoingBody> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(u64::MAX);
        let verified = self.app.backends.url_signer.verify(rest, query, now);
        let Some((app, container, key)) = verified.filter(|(a, _, _)| *a == self.app.manifest.name)
        else {
            return error_response(
                StatusCode::FORBIDDEN,
                "invalid or expired URL signature",
                None,
            );
        };
        let Some(backend) = self.app.backends.blob.get(&container).cloned() else {
            return error_response(StatusCode::NOT_FOUND, "no such object", None);
        };
        let Ok(download) = self.blob_downloads.clone().try_acquire_owned() else {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "this app's blob URLs serve at most {MAX_BLOB_DOWNLOADS} downloads at once; try again"
                ),
                None,
            );
        };
        // The length is the reader's own: a `stat` beside it could see
        // another version, if the object was replaced in between.
        let reader = match backend.read(&key).await {
            Ok(reader) => reader,
            Err(crate::ports::blob::BlobError::NotFound) => {
                return error_response(StatusCode::NOT_FOUND, "no such object", None);
            }
            Err(e) => {
                tracing::warn!(%app, %container, error = %e, "a blob URL's object cannot be read");
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the blob store cannot be read now; try again",
                    None,
                );
            }
        };
        let size = reader.size();
        // Neither the key nor the signature is logged: the URL is a
        // credential until it expires.
        tracing::debug!(%app, %container, "serving blob URL");
        let stream = download_stream(reader, download);
        // The host's origin serves every tenant's objects: a browser must
        // never run one as a page there (a tenant's HTML reading another
        // app's cookies), so it is a download, not to be sniffed, and
        // sandboxed if shown at all. `<img>` and the like still load it.
        let mut response = Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/octet-stream")
            .header("content-disposition", "attachment")
            .header("x-content-type-options", "nosniff")
            .header("content-security-policy", "sandbox");
        if let Some(size) = size {
            response = response.header("content-length", size);
        }
        response
            .body(StreamBody::new(stream).boxed_unsync())
            .unwrap_or_else(|_| {
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot build response",
                    None,
                )
            })
    }
}

/// How long a signed URL's client may leave a chunk untaken (its
/// connection's flow control closed, say) before the download is ended:
/// otherwise it would hold one of the app's [`MAX_BLOB_DOWNLOADS`] places
/// for ever.
const DOWNLOAD_STALL: Duration = Duration::from_secs(60);

/// The body of a signed URL's download: chunks of `reader`, read by a task
/// of their own one ahead of the client. The download's place (`download`)
/// is held until the last chunk is taken, the client goes away, or it
/// leaves a chunk untaken for [`DOWNLOAD_STALL`].
fn download_stream(
    mut reader: Box<dyn crate::ports::blob::BlobReader>,
    download: tokio::sync::OwnedSemaphorePermit,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, wasmtime_wasi_http::Error>> + Send + 'static {
    let (chunks, mut taken) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let _download = download;
        loop {
            let chunk = match reader.read(BLOB_CHUNK).await {
                Ok(chunk) if chunk.is_empty() => return,
                Ok(chunk) => Ok(Frame::data(Bytes::from(chunk))),
                Err(e) => Err(wasmtime_wasi_http::Error::InternalError(Some(
                    e.to_string(),
                ))),
            };
            let last = chunk.is_err();
            if chunks.send_timeout(chunk, DOWNLOAD_STALL).await.is_err() || last {
                // Cut short (stalled, or the client went away): the body
                // ends before its length, which the client sees as an
                // error, never as the whole object.
                return;
            }
        }
    });
    futures::stream::poll_fn(move |cx| taken.poll_recv(cx))
}

/// Aborts a task when dropped, unless disarmed first.
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl AbortOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// The 404 of a path no route (or no app) matches.
pub fn not_found() -> Response<HyperOutgoingBody> {
    json_response(
        StatusCode::NOT_FOUND,
        serde_json::json!({"error": "no route matches this path"}),
    )
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<HyperOutgoingBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A JSON error body naming the failure and, if one was hit, the limit.
fn error_response(
    status: StatusCode,
    error: &str,
    limit: Option<&str>,
) -> Response<HyperOutgoingBody> {
    let mut body = serde_json::json!({ "error": error });
    if let Some(limit) = limit {
        body["limit"] = serde_json::Value::from(limit);
    }
    json_response(status, body)
}

/// `req` with its body bounded by [`REQUEST_BODY_IDLE_TIMEOUT`] between
/// the client's bytes.
fn bounded_body(req: Request<Incoming>) -> Request<IdleTimeoutBody<Incoming>> {
    req.map(|body| IdleTimeoutBody::new(body, REQUEST_BODY_IDLE_TIMEOUT))
}
