//! Outbound HTTP: what a component may reach through
//! `wasi:http/outgoing-handler`, and how the host gets it there.
//!
//! A request is sent only when it targets
//! - a destination on the component's allow-list ([`rules`]), and then only
//!   to resolved addresses that are publicly routable or that the operator
//!   allowed ([`address`]); or
//! - a named upstream the component was granted ([`upstream`]), to which
//!   the host adds the operator's credentials.
//!
//! Everything else is refused with `HTTP-request-denied` or
//! `destination-IP-prohibited` before any byte is sent. Connect,
//! first-byte and between-bytes timeouts and a response size cap apply to
//! every request ([`connect`]); redirects are handed to the guest, never
//! followed.

pub mod address;
mod base_path;
pub mod connect;
mod open;
pub mod rules;
pub mod upstream;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Egress;
use serde::Deserialize;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

pub use address::AddressPolicy;
pub use connect::{NetworkSettings, Target};
pub use rules::AllowRule;
pub use upstream::{Upstream, UpstreamConfig};

/// `[outbound]` in the host config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// DNS + connect + TLS handshake; default 10 000.
    pub connect_timeout_ms: Option<u64>,
    /// Until the response head; default 30 000.
    pub first_byte_timeout_ms: Option<u64>,
    /// Between response body frames; default 30 000.
    pub between_bytes_timeout_ms: Option<u64>,
    /// Largest response body a guest receives; default 16 MiB.
    pub max_response_bytes: Option<u64>,
    /// Special-use address ranges (loopback, private, link-local…) guests
    /// may still connect to, e.g. `["10.20.0.0/16"]`. Default: none.
    #[serde(default)]
    pub allow_private: Vec<String>,
    /// The apps `allow_private` applies to. Without it, every app on
    /// `berth up` and `berth run`, and none on `berth serve`, whose tenants
    /// write their own allow-lists: there the operator names the apps that
    /// may reach its private network.
    pub allow_private_apps: Option<Vec<String>>,
}

impl OutboundConfig {
    /// The settings app `app` gets: [`Self::settings`], with the
    /// `allow_private` exceptions only if they apply to it (see
    /// [`Self::allow_private_apps`]; `tenants` on `berth serve`).
    pub fn settings_for(&self, app: &str, tenants: bool) -> Result<NetworkSettings, String> {
        let mut settings = self.settings()?;
        let applies = match &self.allow_private_apps {
            Some(apps) => apps.iter().any(|a| a == app),
            None => !tenants,
        };
        if !applies {
            settings.addresses = AddressPolicy::new(&[])?;
        }
        Ok(settings)
    }

    /// The settings, or what is wrong with them (naming the key).
    pub fn settings(&self) -> Result<NetworkSettings, String> {
        let d = NetworkSettings::default();
        // A 0 would time every request out at once.
        let ms = |key: &str, v: Option<u64>, default: Duration| match v {
            Some(0) => Err(format!(
                "`outbound.{key}` is 0; it must be at least 1 (leave it out for the default)"
            )),
            v => Ok(v.map_or(default, Duration::from_millis)),
        };
        Ok(NetworkSettings {
            connect_timeout: ms(
                "connect_timeout_ms",
                self.connect_timeout_ms,
                d.connect_timeout,
            )?,
            first_byte_timeout: ms(
                "first_byte_timeout_ms",
                self.first_byte_timeout_ms,
                d.first_byte_timeout,
            )?,
            between_bytes_timeout: ms(
                "between_bytes_timeout_ms",
                self.between_bytes_timeout_ms,
                d.between_bytes_timeout,
            )?,
            max_response_bytes: self.max_response_bytes.unwrap_or(d.max_response_bytes),
            addresses: AddressPolicy::new(&self.allow_private)
                .map_err(|m| format!("`outbound.allow_private`: {m}"))?,
        })
    }
}

/// Everything one component may reach, built once at load.
#[derive(Debug, Clone, Default)]
pub struct OutboundGrants {
    /// Allow-listed destinations.
    pub allow: Vec<AllowRule>,
    /// Granted named upstreams, by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// The host's timeouts, caps and address exceptions.
    pub network: Arc<NetworkSettings>,
    /// The app and component these grants belong to, for audit events.
    pub owner: (String, String),
    /// The component's counters, for egress requests (none in unit tests).
    pub counters: Option<Arc<crate::metrics::ComponentCounters>>,
    /// The app's turns at name lookups.
    pub lookups: connect::AppLookups,
}

impl OutboundGrants {
    /// Whether the allow-list admits the request URI.
    pub fn allows(&self, uri: &http::Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("https");
        let Some(host) = uri.host() else { return false };
        let port = uri.port_u16().unwrap_or(default_port(scheme));
        self.allow.iter().any(|r| r.allows(scheme, host, port))
    }

    /// Decides where `request` goes, rewriting it for an upstream.
    fn route(&self, request: &mut http::Request<WasiBody>) -> Result<Target, HttpError> {
        let uri = request.uri().clone();
        if !plain_authority(&uri) {
            // Each refusal is an audit event (written at a bounded rate per
            // app); the detail is the debug log's.
            tracing::debug!(
                app = %self.owner.0, component = %self.owner.1,
                "outbound HTTP request refused: user info or an invalid port in its URI"
            );
            return Err(HttpError::HttpRequestUriInvalid);
        }
        let host = uri.host().unwrap_or_default();
        if let Some(name) = upstream::upstream_name(host) {
            let Some(up) = self.upstreams.get(&name) else {
                // The guest's name, bounded: it may be as long as a host.
                let name = crate::audit::bounded(&name);
                tracing::debug!(app = %self.owner.0, component = %self.owner.1, upstream = %name, "outbound request to an upstream not granted");
                return Err(HttpError::HttpRequestDenied);
            };
            return up.apply(request).map_err(|refusal| {
                tracing::debug!(app = %self.owner.0, component = %self.owner.1, upstream = %name, why = refusal.describe(), "outbound request to an upstream refused");
                refusal.error()
            });
        }
        if !self.allows(&uri) {
            // Host and port only, bounded: the path and query are the
            // guest's, as long as it likes, and may carry anything.
            let (host, port) = (crate::audit::bounded(host), uri.port_u16());
            tracing::debug!(app = %self.owner.0, component = %self.owner.1, %host, ?port, "outbound HTTP request denied by allow-list");
            return Err(HttpError::HttpRequestDenied);
        }
        let scheme = uri.scheme_str().unwrap_or("https");
        Ok(Target {
            tls: scheme.eq_ignore_ascii_case("https"),
            // Without a trailing dot, as the allow-list read it: the same
            // name resolves the same way, whichever spelling the guest used
            // (a resolver may know `localhost` and not `localhost.`).
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim_end_matches('.')
                .to_owned(),
            port: uri.port_u16().unwrap_or(default_port(scheme)),
            check_addresses: true,
            locations: None,
            lookups: Some(self.lookups.clone()),
        })
    }
}

/// Whether `uri`'s authority is a host with at most a valid port. User
/// info would reach the `Host` header unchecked (the check and the
/// connection use the host alone), and a port that does not parse would be
/// read as the scheme's default while `Host` still names it. The port is
/// digits without a leading zero or sign: `+443` and `0443` parse as 443
/// but reach the `Host` header as written, for a proxy in front of the
/// allowed host to route or cache by.
fn plain_authority(uri: &http::Uri) -> bool {
    let Some(authority) = uri.authority() else {
        return true;
    };
    match authority.as_str().strip_prefix(authority.host()) {
        Some("") => true,
        Some(port) => port.strip_prefix(':').is_some_and(|p| {
            p.bytes().all(|b| b.is_ascii_digit()) && !p.starts_with('0') && p.parse::<u16>().is_ok()
        }),
        None => false,
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme.eq_ignore_ascii_case("http") {
        80
    } else {
        443
    }
}

/// The `wasi:http` hooks of one instance: routes and sends its requests,
/// at most `max_requests` of them.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    grants: Arc<OutboundGrants>,
    sent: u32,
    max_requests: u32,
    /// Its responses still open (the guest holds the response or its
    /// body, not read to its end).
    open: open::OpenResponses,
}

impl OutboundPolicy {
    /// A policy for one invocation of a component with `grants`.
    pub fn new(grants: Arc<OutboundGrants>, max_requests: u32) -> Self {
        Self {
            grants,
            sent: 0,
            max_requests,
            open: Default::default(),
        }
    }

    /// Its requests still on their way and its responses still open.
    pub fn open_responses(&self) -> usize {
        self.open.count()
    }

    /// Starts a new invocation of the same instance: its request count
    /// starts again from zero.
    pub fn renew(&mut self) {
        self.sent = 0;
    }
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = Result<connect::Sent, HttpError>> + Send> {
        _ = fut;
        let grants = self.grants.clone();
        let open = self.open.clone();
        // Counted from now, not from its response's head: a guest that
        // sends requests and returns without waiting for them must not
        // have its warm instance reused (and its count renewed) while
        // they still connect or wait. Dropped with the request's future,
        // once its response (counted by its body) or its failure is in.
        let in_flight = self.open.open();
        self.sent = self.sent.saturating_add(1);
        let over_limit = self.sent > self.max_requests;
        let max = self.max_requests;
        Box::new(async move {
            let _in_flight = in_flight;
            let started = std::time::Instant::now();
            let (app, component) = &grants.owner;
            let uri = request.uri();
            // Host and port only: the authority may carry user info.
            let authority = match (uri.host(), uri.port_u16()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_owned(),
                _ => String::new(),
            };
            let count = |outcome| {
                if let Some(c) = &grants.counters {
                    c.egress(&authority, outcome, started);
                }
            };
            if over_limit {
                tracing::debug!(
                    app = %app, component = %component, limit = max,
                    "outbound request limit of the invocation reached"
                );
                match &grants.counters {
                    Some(c) => c.limit("outbound_requests"),
                    None => {
                        crate::audit::refused(app, component, "limit.outbound_requests", &authority)
                    }
                }
                count(Egress::Refused);
                return Err(HttpError::InternalError(Some(format!(
                    "outbound request limit reached: an invocation may send {max} requests"
                ))));
            }
            let sent = match grants.route(&mut request) {
                Ok(target) => {
                    connect::send(request, target, grants.network.clone(), options, &open).await
                }
                Err(e) => Err(e),
            };
            let refused = match &sent {
                Err(HttpError::HttpRequestDenied) => Some("http.denied"),
                // User info or a bad port in the URI, or a request target
                // not in origin form: attempts to steer the request.
                Err(HttpError::HttpRequestUriInvalid) => Some("http.uri-invalid"),
                Err(HttpError::DestinationIpProhibited) => Some("http.address-prohibited"),
                _ => None,
            };
            if let Some(what) = refused {
                crate::audit::refused(app, component, what, &authority);
            }
            count(match (&sent, refused) {
                (_, Some(_)) => Egress::Refused,
                (Ok(_), None) => Egress::Sent,
                (Err(_), None) => Egress::Failed,
            });
            sent
        })
    }
}

#[cfg(test)]
mod tests {
    use super::plain_authority;

    #[test]
    fn private_ranges_apply_to_the_apps_named_or_on_serve_to_none() {
        let ip: std::net::IpAddr = "10.20.0.7".parse().unwrap();
        let reaches = |config: &super::OutboundConfig, app: &str, tenants: bool| {
            let settings = config.settings_for(app, tenants).unwrap();
            settings.addresses.check(ip).is_ok()
        };
        let mut config = super::OutboundConfig {
            allow_private: vec!["10.20.0.0/16".into()],
            ..Default::default()
        };
        assert!(reaches(&config, "shop", false), "berth up: every app");
        assert!(!reaches(&config, "shop", true), "berth serve: no tenant");
        config.allow_private_apps = Some(vec!["shop".into()]);
        assert!(reaches(&config, "shop", true));
        assert!(!reaches(&config, "blog", true));
        assert!(!reaches(&config, "blog", false));
    }

    #[test]
    fn user_info_and_bad_ports_make_no_plain_authority() {
        let plain = |uri: &str| plain_authority(&uri.parse().unwrap());
        for good in [
            "https://api.example.com/x",
            "https://api.example.com:8443/x",
            "http://[::1]/x",
            "http://[::1]:8080/x",
            "/relative",
        ] {
            assert!(plain(good), "{good}");
        }
        for bad in [
            "https://other.tenant@api.example.com/x",
            "https://u:p@api.example.com:443/x",
            "https://api.example.com:99999/x",
            "https://api.example.com:abc/x",
            "https://api.example.com:/x",
            "https://api.example.com:+443/x",
            "https://api.example.com:0443/x",
            "http://api.example.com:00080/x",
            "http://api.example.com:0/x",
        ] {
            // Refused by the URI parser or by the check, never let through.
            let parsed = bad.parse::<http::Uri>();
            assert!(!parsed.is_ok_and(|uri| plain_authority(&uri)), "{bad}");
        }
    }
}
