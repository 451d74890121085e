//! Named upstreams: API endpoints the operator defines with their
//! credentials, which granted guests call by name.
//!
//! ```toml
//! [upstreams.payments]
//! url = "https://api.payments.example/v2"
//! headers = { Authorization = "Bearer ${env:PAYMENTS_TOKEN}" }
//! ```
//!
//! A guest granted `upstreams = ["payments"]` sends its request to
//! `http://payments.upstream/charges`; the host rewrites it to
//! `https://api.payments.example/v2/charges` and sets the configured
//! headers, replacing any the guest set under the same names. The guest
//! never holds the credential and cannot read it back: headers are added
//! after the request has left the guest's hands. Nor can it have a server
//! echo them: `TRACE`, `TRACK` and `CONNECT` are refused, headers through
//! which some servers take another path or method (`X-Original-URL`,
//! `X-HTTP-Method-Override`…) are dropped, and a response's `Location` and
//! `Content-Location` are written back to the guest's `<name>.upstream`
//! without the base path (which can hold a credential too). What the
//! upstream puts in its bodies is the upstream's own: a credential belongs
//! in `headers`, not in the base path.

use std::sync::Arc;

use std::collections::BTreeMap;

use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::base_path::{leaves_base, names_another_host};
use super::connect::Target;
use crate::secret::SecretResolver;

/// How guests name an upstream: `<name>.upstream` as the request's host.
pub const UPSTREAM_SUFFIX: &str = ".upstream";

/// `[upstreams.<name>]` in the host config. Its `Debug` shows the URL's
/// origin and the headers' names only: a base path or a header value may
/// be a literal credential.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL: `https://host[:port][/base/path]`.
    pub url: String,
    /// Headers added to every request; values may hold `${env:…}` /
    /// `${file:…}` references.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The apps that may be granted this upstream. Without it, any app
    /// this host loads on `berth up` or `berth run`, and none on
    /// `berth serve`, whose tenants write their own manifests: the operator
    /// names who may spend the credential.
    pub apps: Option<Vec<String>>,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Scheme, host and port only: a base path can hold a token
        // (`/bot<token>`), and user info a password, written as they are
        // in the host config (user info is refused at load, later).
        let origin = self.url.parse::<http::Uri>().ok().and_then(|uri| {
            let port = uri.port().map(|p| format!(":{p}")).unwrap_or_default();
            Some(format!("{}://{}{port}/…", uri.scheme_str()?, uri.host()?))
        });
        f.debug_struct("UpstreamConfig")
            .field("url", &origin.as_deref().unwrap_or("[not a URL]"))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("apps", &self.apps)
            .finish()
    }
}

impl UpstreamConfig {
    /// Whether app `app` may be granted this upstream (see
    /// [`UpstreamConfig::apps`]); `tenants` is set on `berth serve`.
    pub fn admits(&self, app: &str, tenants: bool) -> bool {
        match &self.apps {
            Some(apps) => apps.iter().any(|a| a == app),
            None => !tenants,
        }
    }
}

/// A resolved upstream, ready to rewrite requests.
pub struct Upstream {
    target: Target,
    authority: HeaderValue,
    scheme: http::uri::Scheme,
    base_path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// What a response's locations are checked against, built once.
    locations: Arc<UpstreamLocations>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values are credentials: only their names are printed.
        // Nor is the base path: it can hold a credential (`/bot<token>`).
        f.debug_struct("Upstream")
            .field("target", &self.target)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Upstream {
    /// Parses the URL and resolves header references.
    pub async fn resolve(
        config: &UpstreamConfig,
        secrets: &SecretResolver,
    ) -> Result<Upstream, String> {
        let uri: http::Uri = config
            .url
            .parse()
            .map_err(|_| "`url` is not a URL".to_owned())?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err("`url` must start with https:// or http://".to_owned());
            }
        };
        let authority = uri
            .authority()
            .filter(|a| !a.as_str().contains('@'))
            .ok_or_else(|| {
                "`url` needs a host and no user info (credentials go in `headers`)".to_owned()
            })?;
        if uri.query().is_some() {
            return Err("`url` must not carry a query (credentials go in `headers`)".to_owned());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let target = Target {
            tls,
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            check_addresses: false,
            locations: None,
            lookups: None,
        };
        let mut headers = Vec::new();
        for (name, raw) in &config.headers {
            let header = HeaderName::try_from(name.as_str())
                .map_err(|_| format!("headers: {name:?} is not a header name"))?;
            let value = secrets
                .resolve(raw)
                .await
                .map_err(|m| format!("headers.{name}: {m}"))?;
            let mut value = HeaderValue::try_from(value.expose())
                .map_err(|_| format!("headers.{name}: the value is not a valid header value"))?;
            value.set_sensitive(true);
            headers.push((header, value));
        }
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !tls && !headers.is_empty() && !loopback {
            tracing::warn!(
                host,
                "an upstream with `headers` is plain http:// to a host other than this machine: \
                 its credentials cross the network in clear text with every request; use https://"
            );
        }
        let scheme = uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTPS);
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let locations = Arc::new(UpstreamLocations::new(&target, &scheme, &base_path));
        Ok(Upstream {
            target,
            authority: HeaderValue::try_from(authority.as_str())
                .map_err(|_| "`url` has an invalid host".to_owned())?,
            scheme,
            base_path,
            headers,
            locations,
        })
    }

    /// Rewrites a guest request addressed to this upstream and says where
    /// to send it.
    pub fn apply<B>(&self, request: &mut http::Request<B>) -> Result<Target, Refusal> {
        let method = request.method().as_str();
        if ECHOING_METHODS
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method))
        {
            return Err(Refusal::Method);
        }
        // The guest's name for the upstream, to which locations are written
        // back (`payments.upstream`; a request in origin form has none).
        let guest_origin = request
            .uri()
            .authority()
            .map(|a| format!("http://{a}"))
            .unwrap_or_default();
        let guest_path = match request.uri().path_and_query().map(|p| p.as_str()) {
            None => "/".to_owned(),
            // A query without a path (`?x=1`) is a query on the root.
            Some(query) if query.starts_with('?') => format!("/{query}"),
            Some(path) => path.to_owned(),
        };
        // Origin form, and not `//host/…` or `/\host/…` in any spelling,
        // which URL parsers in gateways and frameworks (`new URL(path,
        // base)`) read as a reference to another host: the credential would
        // follow it.
        if !guest_path.starts_with('/') {
            return Err(Refusal::InvalidPath);
        }
        if !self.base_path.is_empty() && leaves_base(&guest_path) {
            return Err(Refusal::LeavesBasePath);
        }
        if names_another_host(&guest_path) {
            return Err(Refusal::InvalidPath);
        }
        let uri = http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.to_str().unwrap_or_default())
            .path_and_query(format!("{}{guest_path}", self.base_path))
            .build()
            .map_err(|_| Refusal::InvalidPath)?;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        for name in REROUTING_HEADERS {
            headers.remove(*name);
        }
        let rerouting_families: Vec<HeaderName> = headers
            .keys()
            .filter(|name| {
                REROUTING_PREFIXES
                    .iter()
                    .any(|prefix| name.as_str().starts_with(prefix))
            })
            .cloned()
            .collect();
        for name in rerouting_families {
            headers.remove(name);
        }
        headers.insert(http::header::HOST, self.authority.clone());
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        let mut target = self.target.clone();
        // Even without a base path: the upstream's own address (an internal
        // one, often) is the operator's, not the guest's.
        target.locations = Some(Arc::new(LocationRewrite {
            upstream: self.locations.clone(),
            guest_origin,
        }));
        Ok(target)
    }
}

/// Methods a server may answer by echoing the request, credential headers
/// included (`TRACE`, IIS's `TRACK`), or that open a tunnel (`CONNECT`).
const ECHOING_METHODS: &[&str] = &["TRACE", "TRACK", "CONNECT"];

/// Request headers through which some servers and frameworks take another
/// path, host or method than the request line's (IIS URL Rewrite, Symfony
/// and Rails with trusted proxies, method-override middleware): a guest's
/// would get around the base path. Dropped from requests to upstreams.
const REROUTING_HEADERS: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded-prefix",
    "x-forwarded-path",
    "x-forwarded-host",
    "x-forwarded-server",
    "x-host",
    "forwarded",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Families of request headers proxies set to say where a request came
/// from or was first addressed (`X-Forwarded-Uri`, `-Proto`, `-Port`,
/// `X-Original-Host`, `X-Envoy-Original-Path`…), from which frameworks build
/// paths and redirects: all dropped from requests to upstreams.
const REROUTING_PREFIXES: &[&str] = &["x-forwarded-", "x-original-", "x-envoy-original-"];

/// Writes an upstream's response locations back to the guest's name for
/// it, without the base path: `Location: https://api.example/bot<token>/x`
/// (a redirect adding a trailing slash, say) reaches the guest as
/// `http://bot.upstream/x`. A location naming the base path any other way,
/// or the upstream's host with another scheme or port or outside the base
/// path, is dropped.
pub struct LocationRewrite {
    /// The upstream's side, the same for every request.
    upstream: Arc<UpstreamLocations>,
    /// `http://<name>.upstream`, as the guest wrote it (empty for a request
    /// in origin form: locations become paths).
    guest_origin: String,
}

/// What a [`LocationRewrite`] looks for, built from the upstream's URL once.
pub struct UpstreamLocations {
    /// `https://api.example:8443` as requests go out; with the default
    /// port, also without it.
    upstream_origins: Vec<String>,
    /// `api.example`: a location on this host that is not rewritten (another
    /// scheme or port, a path outside the base) is dropped.
    upstream_host: String,
    /// The base path, without a trailing `/`; empty if the upstream has
    /// none.
    base_path: String,
    /// The base path and the base path percent-decoded (an operator may
    /// write `%3A` for `:`, which a server may echo decoded), lowercase:
    /// responses are searched for them in any case.
    base_needles: [String; 2],
}

impl UpstreamLocations {
    fn new(target: &Target, scheme: &http::uri::Scheme, base_path: &str) -> UpstreamLocations {
        let host = target.host.as_str();
        let host = match host.contains(':') {
            true => format!("[{host}]"),
            false => host.to_owned(),
        };
        let (scheme, port) = (scheme.as_str(), target.port);
        let mut upstream_origins = vec![format!("{scheme}://{host}:{port}")];
        // The default port may be left out (or spelled out) either way.
        if matches!((scheme, port), ("https", 443) | ("http", 80)) {
            upstream_origins.push(format!("{scheme}://{host}"));
        }
        let base_decoded =
            crate::ports::percent_decode(base_path).unwrap_or_else(|| base_path.to_owned());
        UpstreamLocations {
            upstream_origins,
            upstream_host: target.host.to_ascii_lowercase(),
            base_needles: [
                base_path.to_ascii_lowercase(),
                base_decoded.to_ascii_lowercase(),
            ],
            base_path: base_path.to_owned(),
        }
    }
}

impl std::fmt::Debug for LocationRewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The base path can hold a credential.
        f.debug_struct("LocationRewrite").finish_non_exhaustive()
    }
}

impl LocationRewrite {
    /// Rewrites `Location` and `Content-Location` in `headers`, and drops
    /// the other headers that name the base path (`Link`, `Refresh`, a
    /// cookie's `Path`, or any other an upstream echoes it in), or, for
    /// `Link`, `Refresh` and `Set-Cookie`, the upstream's host.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        let names: Vec<http::HeaderName> = headers.keys().cloned().collect();
        for name in names {
            if name == http::header::LOCATION || name == http::header::CONTENT_LOCATION {
                continue;
            }
            let locating = [
                http::header::LINK,
                http::header::REFRESH,
                http::header::SET_COOKIE,
            ]
            .contains(&name);
            let kept: Vec<HeaderValue> = headers
                .get_all(&name)
                .iter()
                .filter(|v| match v.to_str() {
                    // These point somewhere: one that cannot be read, or
                    // decoded, is dropped.
                    Ok(text) if locating => !self.names_base(text) && !self.names_host(text),
                    Err(_) if locating => false,
                    Ok(text) => !self.mentions_base(text),
                    Err(_) => !self.mentions_base(&String::from_utf8_lossy(v.as_bytes())),
                })
                .cloned()
                .collect();
            if kept.len() == headers.get_all(&name).iter().count() {
                continue;
            }
            headers.remove(&name);
            for value in kept {
                headers.append(name.clone(), value);
            }
        }
        for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
            let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
            if values.is_empty() {
                continue;
            }
            headers.remove(&name);
            for value in values {
                if let Some(rewritten) = self.rewrite(&value) {
                    headers.append(name.clone(), rewritten);
                }
            }
        }
    }

    /// One location, rewritten; `None` if it still names the base path.
    fn rewrite(&self, value: &HeaderValue) -> Option<HeaderValue> {
        let Ok(text) = value.to_str() else {
            // Not text: it cannot be checked for the base path.
            return None;
        };
        let under_base = |rest: &str| -> Option<String> {
            let rest = rest.strip_prefix(&self.upstream.base_path)?;
            match rest.chars().next() {
                None => Some("/".to_owned()),
                Some('/') => Some(rest.to_owned()),
                // A query on the base itself is one on the guest's root.
                Some('?' | '#') => Some(format!("/{rest}")),
                Some(_) => None,
            }
        };
        let on_origin = self.upstream.upstream_origins.iter().find_map(|origin| {
            let len = origin.len();
            let rest = text.get(len..)?;
            // The origin ends there (`:8080` is not `:80` followed by `80`).
            let ends = rest.is_empty() || rest.starts_with(['/', '?', '#']);
            (text[..len].eq_ignore_ascii_case(origin) && ends).then_some(rest)
        });
        let rewritten = if let Some(rest) = on_origin {
            under_base(rest).map(|rest| format!("{}{rest}", self.guest_origin))
        } else if text.starts_with('/') && !names_another_host(text) {
            under_base(text)
        } else {
            None
        };
        match rewritten {
            Some(location) if !self.names_base(&location) => HeaderValue::try_from(location).ok(),
            Some(_) => None,
            // On the upstream's host some other way: it would show the
            // guest where the upstream is.
            None if self.on_upstream_host(text) => None,
            // Elsewhere (another host, a path outside the base): kept as it
            // is, unless it names the base path.
            None if !self.names_base(text) => Some(value.clone()),
            None => None,
        }
    }

    /// Whether `text` is an absolute or network-path location (`//host/…`,
    /// `/\host/…`) on the upstream's host, whatever its scheme, port or
    /// user info; read by hand, so a location no URI parser takes (a space,
    /// non-ASCII text) is judged too.
    fn on_upstream_host(&self, text: &str) -> bool {
        let after_scheme = match text.find("://") {
            Some(i) => &text[i + 3..],
            None if names_another_host(text) => &text[2..],
            None => return false,
        };
        let authority = after_scheme
            .split(['/', '?', '#', '\\'])
            .next()
            .unwrap_or_default();
        let host_port = authority.rsplit('@').next().unwrap_or_default();
        let host = match host_port.strip_prefix('[') {
            Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
            None => host_port.split(':').next().unwrap_or_default(),
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        host.eq_ignore_ascii_case(&self.upstream.upstream_host)
    }

    /// Whether `text` (a `Link`, `Refresh` or `Set-Cookie` value) mentions
    /// the upstream's host anywhere.
    fn names_host(&self, text: &str) -> bool {
        text.to_ascii_lowercase()
            .contains(&self.upstream.upstream_host)
    }

    /// Whether `text` (a location) holds the base path, as it is or
    /// percent-decoded (a token's `:` comes back as `%3A`, an echo in a
    /// query as `%252F`), in any case; or cannot be decoded, and so
    /// cannot be told apart from one that does.
    fn names_base(&self, text: &str) -> bool {
        self.base_within(text).unwrap_or(true)
    }

    /// Whether `text` (any other header) holds the base path, as for
    /// [`Self::names_base`], but read leniently (a bad escape is kept as
    /// it is, so a guest cannot stop the decoding with one) and only as a
    /// whole path (`/v1` is not in `/v10`, nor `/api` in
    /// `application/api+json`), since such a header is kept otherwise.
    fn mentions_base(&self, text: &str) -> bool {
        if self.upstream.base_path.is_empty() {
            return false;
        }
        let needles = &self.upstream.base_needles;
        let mut stage = text.to_owned();
        for _ in 0..=super::base_path::DECODE_ROUNDS {
            let lower = stage.to_ascii_lowercase();
            if needles
                .iter()
                .any(|n| super::base_path::holds_path(&lower, n))
            {
                return true;
            }
            let next = String::from_utf8_lossy(&super::base_path::lenient_percent_decode(
                stage.as_bytes(),
            ))
            .into_owned();
            if next == stage {
                return false;
            }
            stage = next;
        }
        // Still decoding after as many rounds as any server would.
        true
    }

    /// Whether `text` holds the base path at some round of its decoding
    /// (up to as many as a path's, [`super::base_path::DECODE_ROUNDS`]);
    /// `None` if it stopped decoding (a bad escape) without it.
    fn base_within(&self, text: &str) -> Option<bool> {
        if self.upstream.base_path.is_empty() {
            return Some(false);
        }
        let needles = &self.upstream.base_needles;
        let mut stage = text.to_owned();
        for _ in 0..=super::base_path::DECODE_ROUNDS {
            let lower = stage.to_ascii_lowercase();
            if needles.iter().any(|n| lower.contains(n.as_str())) {
                return Some(true);
            }
            match crate::ports::percent_decode(&stage) {
                Some(next) if next == stage => return Some(false),
                Some(next) => stage = next,
                None => return None,
            }
        }
        // Still decoding after as many rounds as any server would.
        None
    }
}

/// Why an upstream refused a guest's request. The guest gets the `wasi:http`
/// error of [`Refusal::error`] and nothing of the upstream's configuration:
/// a base path can hold a credential (`/bot<token>`, a webhook's path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The path is not in origin form (`/…`), or does not make a URI with
    /// the upstream's base.
    InvalidPath,
    /// The path could resolve outside the upstream's base path.
    LeavesBasePath,
    /// A method a server may answer by echoing the request's headers, the
    /// credential among them (`TRACE`, `TRACK`), or `CONNECT`.
    Method,
}

impl Refusal {
    /// The error the guest receives.
    pub fn error(self) -> wasmtime_wasi_http::Error {
        match self {
            Refusal::InvalidPath => wasmtime_wasi_http::Error::HttpRequestUriInvalid,
            Refusal::LeavesBasePath | Refusal::Method => {
                wasmtime_wasi_http::Error::HttpRequestDenied
            }
        }
    }

    /// What happened, for the host's log (no configured value).
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::InvalidPath => "the request path is not a valid origin-form path",
            Refusal::LeavesBasePath => {
                "the request path could leave the upstream's base path (a dot segment in some spelling)"
            }
            Refusal::Method => {
                "TRACE, TRACK and CONNECT are not sent to upstreams (a server could echo the credential)"
            }
        }
    }
}

/// The upstream name a request's host addresses, if it ends in
/// [`UPSTREAM_SUFFIX`].
pub fn upstream_name(host: &str) -> Option<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host.strip_suffix(UPSTREAM_SUFFIX)
        .filter(|name| !name.is_empty() && !name.contains('.'))
        .map(str::to_owned)
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
mod tests;
