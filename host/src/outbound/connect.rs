//! Sends one outbound request: resolve, check every address, connect to a
//! checked address, TLS, HTTP/1.1, with timeouts and a response size cap.
//!
//! Adapted from `wasmtime_wasi_http::default_send_request`, which connects
//! to whatever the name resolves to at connect time and has no size cap.
//! Redirects are never followed: hyper's connection-level client does not
//! follow them, and the guest sees the 3xx response as it is.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

use crate::idle_body::IdleTimeoutBody;

use super::address::AddressPolicy;

/// Timeouts and caps for outbound requests, from the host config.
#[derive(Debug, Clone)]
pub struct NetworkSettings {
    /// DNS resolution plus TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Until the response head arrives.
    pub first_byte_timeout: Duration,
    /// Between two frames of the response body.
    pub between_bytes_timeout: Duration,
    /// Largest response body a guest may receive.
    pub max_response_bytes: u64,
    /// Special-use ranges the operator lets guests reach.
    pub addresses: AddressPolicy,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(30),
            between_bytes_timeout: Duration::from_secs(30),
            max_response_bytes: 16 << 20,
            addresses: AddressPolicy::default(),
        }
    }
}

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// Use TLS.
    pub tls: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Check resolved addresses against the [`AddressPolicy`]; off only for
    /// named upstreams, whose address the operator chose.
    pub check_addresses: bool,
    /// For a named upstream: how its responses' locations are rewritten,
    /// so the guest never reads its address or base path.
    pub locations: Option<Arc<super::upstream::LocationRewrite>>,
    /// The requesting app's turns at name lookups, taken before the
    /// host's (none for upstreams, whose names the operator chose).
    pub lookups: Option<AppLookups>,
}

/// Name lookups one app may have running at once, all its components and
/// versions together: an app whose lookups hang holds at most these of the
/// host's [`MAX_LOOKUPS`].
pub const MAX_APP_LOOKUPS: usize = 16;

/// An app's turns at name lookups ([`MAX_APP_LOOKUPS`]), kept in its
/// [`crate::rate::AppAllowance`] so neither more components nor a reload
/// give it more.
#[derive(Debug, Clone)]
pub struct AppLookups(Arc<tokio::sync::Semaphore>);

impl Default for AppLookups {
    fn default() -> Self {
        AppLookups(Arc::new(tokio::sync::Semaphore::new(MAX_APP_LOOKUPS)))
    }
}

/// The response and the future driving its connection.
pub type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
);

/// The request target to put on the wire for `uri`: its path and query
/// (origin form), or `*` for `OPTIONS`.
///
/// A guest's path could otherwise be an absolute URI (`http://evil.example/`)
/// or an authority, which a server, or a proxy or gateway in front of it,
/// routes by in place of `Host` (RFC 9112, 3.2.2): the request, with an
/// upstream's credentials, would leave the address that was checked.
pub fn request_target(method: &http::Method, uri: &http::Uri) -> Result<http::Uri, HttpError> {
    let target = match uri.path_and_query().map(|p| p.as_str()) {
        None => "/".to_owned(),
        // A query without a path (`?x=1`) is a query on the root.
        Some(query) if query.starts_with('?') => format!("/{query}"),
        Some(target) => target.to_owned(),
    };
    let origin_form = target.starts_with('/');
    let asterisk_form = target == "*" && method == http::Method::OPTIONS;
    if !(origin_form || asterisk_form) {
        return Err(HttpError::HttpRequestUriInvalid);
    }
    http::Uri::try_from(target).map_err(|_| HttpError::HttpRequestUriInvalid)
}

/// Sends `request` (whose URI is already absolute) to `target`.
pub async fn send(
    mut request: http::Request<WasiBody>,
    target: Target,
    net: Arc<NetworkSettings>,
    guest: Option<wasmtime_wasi_http::RequestOptions>,
    open: &super::open::OpenResponses,
) -> Result<Sent, HttpError> {
    // On the wire the request line carries only path and query; checked
    // before anything is sent, even the TLS handshake.
    *request.uri_mut() = request_target(request.method(), request.uri())?;
    let head = request.method() == http::Method::HEAD;
    // A guest may shorten the host's timeouts, never lengthen them.
    let pick = |host: Duration, guest: Option<Duration>| guest.map_or(host, |g| g.min(host));
    let guest = guest.unwrap_or_default();
    let connect_timeout = pick(net.connect_timeout, guest.connect_timeout);
    let first_byte_timeout = pick(net.first_byte_timeout, guest.first_byte_timeout);
    let between_bytes =
        pick(net.between_bytes_timeout, guest.between_bytes_timeout).max(Duration::from_millis(1));

    // One deadline for DNS, connect and the TLS handshake together, as
    // `connect_timeout_ms` is documented.
    let io = tokio::time::timeout(connect_timeout, async {
        let stream = connect(&target, &net).await?;
        Ok::<Box<dyn Stream>, HttpError>(if target.tls {
            Box::new(tls(&target.host, stream).await?)
        } else {
            Box::new(stream)
        })
    })
    .await
    .map_err(|_| HttpError::ConnectionTimeout)??;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(HttpError::from)?;
    let driver = tokio::spawn(conn);

    let mut response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| HttpError::ConnectionReadTimeout)?
        .map_err(HttpError::from)?;
    if let Some(locations) = &target.locations {
        locations.apply(response.headers_mut());
    }
    // A HEAD, 1xx, 204 or 304 response has no body, whatever length it
    // declares (that of the resource).
    let status = response.status();
    let bodiless = head
        || status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED;
    let declared = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|_| !bodiless);
    if let Some(len) = declared.filter(|len| *len > net.max_response_bytes) {
        // A guest can cause this at will (its own server's answer), so the
        // line is written once a second at most, as the audit's are.
        if crate::audit::host_warning_due("outbound.response-too-large") {
            tracing::warn!(
                host = %target.host,
                content_length = len,
                limit = net.max_response_bytes,
                "outbound response larger than the host's cap"
            );
        }
        return Err(HttpError::HttpResponseBodySize(Some(len)));
    }
    let limit = net.max_response_bytes;
    let response = response.map(|incoming| {
        CappedBody {
            incoming: IdleTimeoutBody::new(incoming, between_bytes),
            remaining: limit,
            limit,
            open: Some(open.open()),
        }
        .boxed_unsync()
    });
    let io = async move {
        match driver.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(HttpError::from(e)),
            Err(_) => Err(HttpError::InternalError(Some(
                "connection task failed".into(),
            ))),
        }
    };
    Ok((response, Box::new(io)))
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Resolves the target, refuses it if any address is special-use, and
/// connects to the first checked address that accepts.
async fn connect(target: &Target, net: &NetworkSettings) -> Result<TcpStream, HttpError> {
    let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => lookup(&target.host, target.port, target.lookups.as_ref()).await?,
    };
    if addrs.is_empty() {
        return Err(HttpError::DestinationNotFound);
    }
    if target.check_addresses {
        for addr in &addrs {
            if let Err(reason) = net.addresses.check(addr.ip()) {
                if crate::audit::host_warning_due("outbound.address-not-public") {
                    tracing::warn!(
                        host = %target.host,
                        address = %addr.ip(),
                        reason,
                        "outbound request refused: destination address is not public"
                    );
                }
                return Err(HttpError::DestinationIpProhibited);
            }
        }
    }
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(match last.map(|e| e.kind()) {
        Some(std::io::ErrorKind::ConnectionRefused) => HttpError::ConnectionRefused,
        _ => HttpError::DestinationUnavailable,
    })
}

/// Name lookups that may run at once in the whole host.
const MAX_LOOKUPS: usize = 64;

/// The system resolver's lookups block a thread of tokio's blocking pool,
/// which SQLite, files and compiles use too, and cannot be cancelled: a
/// request's deadline stops waiting, but the thread stays until the
/// resolver gives up. A guest asking for names under a domain whose
/// servers never answer could otherwise tie up the whole pool.
static LOOKUPS: std::sync::LazyLock<Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(tokio::sync::Semaphore::new(MAX_LOOKUPS)));

/// The addresses `host` resolves to, through the system resolver, at most
/// [`MAX_LOOKUPS`] at once in the host and [`MAX_APP_LOOKUPS`] for the
/// requesting app (`app`): each lookup holds its turns until the resolver
/// returns, even after the request that wanted it gave up.
async fn lookup(
    host: &str,
    port: u16,
    app: Option<&AppLookups>,
) -> Result<Vec<SocketAddr>, HttpError> {
    use std::net::ToSocketAddrs as _;
    let closed = |_| HttpError::DestinationUnavailable;
    let own_turn = match app {
        Some(turns) => Some(turns.0.clone().acquire_owned().await.map_err(closed)?),
        None => None,
    };
    let turn = LOOKUPS.clone().acquire_owned().await.map_err(closed)?;
    let host = host.to_owned();
    let resolved = tokio::task::spawn_blocking(move || {
        let _turns = (own_turn, turn);
        (host.as_str(), port)
            .to_socket_addrs()
            .map(|addrs| addrs.collect::<Vec<_>>())
    })
    .await;
    match resolved {
        Ok(Ok(addrs)) => Ok(addrs),
        _ => Err(HttpError::DnsError {
            rcode: Some("name does not resolve".into()),
            info_code: None,
        }),
    }
}

async fn tls(
    host: &str,
    stream: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, HttpError> {
    use rustls::pki_types::ServerName;
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    });
    let name = match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::from(ip),
        Err(_) => ServerName::try_from(host.to_owned()).map_err(|_| HttpError::TlsProtocolError)?,
    };
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, stream)
        .await
        .map_err(|_| HttpError::TlsCertificateError)
}

/// A response body that fails once more than `limit` bytes arrive, or when
/// it waited `between_bytes` for a frame (see [`IdleTimeoutBody`]). It is
/// counted among its instance's open responses until it ends, fails or is
/// dropped with the guest's response.
struct CappedBody {
    incoming: IdleTimeoutBody<hyper::body::Incoming>,
    remaining: u64,
    limit: u64,
    open: Option<super::open::Open>,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        let polled = this.poll_capped(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.open = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl CappedBody {
    fn poll_capped(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = self;
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > this.remaining {
                    if crate::audit::host_warning_due("outbound.body-too-large") {
                        tracing::warn!(
                            limit = this.limit,
                            "outbound response body exceeded the host's cap"
                        );
                    }
                    return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(
                        this.limit - this.remaining + len,
                    )))));
                }
                this.remaining -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_origin_form_reaches_the_wire() {
        let target = |method: http::Method, uri: &str| {
            request_target(&method, &uri.parse().unwrap()).map(|t| t.to_string())
        };
        assert_eq!(
            target(http::Method::GET, "http://a.example/b?c=1").unwrap(),
            "/b?c=1"
        );
        assert_eq!(target(http::Method::GET, "http://a.example").unwrap(), "/");
        assert_eq!(target(http::Method::OPTIONS, "*").unwrap(), "*");
        assert!(target(http::Method::GET, "*").is_err());
        // A query without a path is a query on the root.
        assert_eq!(
            target(http::Method::GET, "http://a.example?x=1").unwrap(),
            "/?x=1"
        );
        // A path beginning with `//` is the allowed host's business (an
        // upstream refuses it, see `upstream`).
        assert_eq!(
            target(http::Method::GET, "http://a.example//b").unwrap(),
            "//b"
        );
    }
}
