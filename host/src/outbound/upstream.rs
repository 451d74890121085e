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
//! after the request has left the guest's hands.

use std::collections::BTreeMap;

use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::connect::Target;
use crate::secret::SecretResolver;

/// How guests name an upstream: `<name>.upstream` as the request's host.
pub const UPSTREAM_SUFFIX: &str = ".upstream";

/// `[upstreams.<name>]` in the host config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL: `https://host[:port][/base/path]`.
    pub url: String,
    /// Headers added to every request; values may hold `${env:…}` /
    /// `${file:…}` references.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A resolved upstream, ready to rewrite requests.
pub struct Upstream {
    target: Target,
    authority: HeaderValue,
    scheme: http::uri::Scheme,
    base_path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values are credentials: only their names are printed.
        f.debug_struct("Upstream")
            .field("target", &self.target)
            .field("base_path", &self.base_path)
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
        Ok(Upstream {
            target,
            authority: HeaderValue::try_from(authority.as_str())
                .map_err(|_| "`url` has an invalid host".to_owned())?,
            scheme: uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTPS),
            base_path: uri.path().trim_end_matches('/').to_owned(),
            headers,
        })
    }

    /// Rewrites a guest request addressed to this upstream and says where
    /// to send it.
    pub fn apply<B>(&self, request: &mut http::Request<B>) -> Result<Target, String> {
        let guest_path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        if !guest_path.starts_with('/') {
            return Err("the request path must start with `/`".into());
        }
        if !self.base_path.is_empty() && leaves_base(&guest_path) {
            return Err(format!(
                "the request path may not leave the upstream's base path {:?}: `.` and `..` segments are refused",
                self.base_path
            ));
        }
        let uri = http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.to_str().unwrap_or_default())
            .path_and_query(format!("{}{guest_path}", self.base_path))
            .build()
            .map_err(|e| format!("cannot build upstream URI: {e}"))?;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(http::header::HOST, self.authority.clone());
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        Ok(self.target.clone())
    }
}

/// Whether `path` (with its query) has a `.` or `..` segment, spelled
/// plainly or percent-encoded: a server resolving it could serve something
/// outside the base path the operator granted.
fn leaves_base(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
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
mod tests {
    use super::*;

    fn upstream(url: &str, headers: &[(&str, &str)]) -> Result<Upstream, String> {
        let config = UpstreamConfig {
            url: url.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let resolver = SecretResolver::new(None).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(Upstream::resolve(&config, &resolver))
    }

    #[test]
    fn rewrites_path_host_and_credentials() {
        let up = upstream(
            "https://api.example.com:8443/v2/",
            &[("Authorization", "Bearer t0ken")],
        )
        .unwrap();
        let mut req = http::Request::builder()
            .uri("http://payments.upstream/charges?id=1")
            .header("authorization", "guest forged")
            .header("host", "payments.upstream")
            .body(())
            .unwrap();
        let target = up.apply(&mut req).unwrap();
        assert_eq!(req.uri(), "https://api.example.com:8443/v2/charges?id=1");
        assert_eq!(req.headers()["host"], "api.example.com:8443");
        assert_eq!(req.headers().get_all("authorization").iter().count(), 1);
        assert_eq!(req.headers()["authorization"], "Bearer t0ken");
        assert!((target.tls, target.port) == (true, 8443));
        assert!(!format!("{up:?}").contains("t0ken"));
    }

    #[test]
    fn paths_stay_under_the_base_and_in_origin_form() {
        let up = upstream("https://api.example.com/v2", &[("x-key", "k")]).unwrap();
        let apply = |path: &str| {
            let mut req = http::Request::builder()
                .uri(format!("http://payments.upstream{path}"))
                .body(())
                .unwrap();
            up.apply(&mut req).map(|_| req.uri().to_string())
        };
        assert_eq!(
            apply("/charges/a.b?x=..").unwrap(),
            "https://api.example.com/v2/charges/a.b?x=.."
        );
        for bad in ["/../admin", "/a/./b", "/%2e%2E/admin", "/a/%2e", "/.."] {
            assert!(apply(bad).is_err(), "{bad}");
        }
        // A path that is not in origin form never reaches the wire.
        let mut req = http::Request::builder().uri("*").body(()).unwrap();
        assert!(up.apply(&mut req).is_err());
        // Without a base path, dot segments are the server's business.
        let root = upstream("https://api.example.com", &[]).unwrap();
        let mut req = http::Request::builder()
            .uri("http://payments.upstream/a/../b")
            .body(())
            .unwrap();
        assert!(root.apply(&mut req).is_ok());
    }

    #[test]
    fn names_and_bad_urls() {
        assert_eq!(upstream_name("Payments.upstream."), Some("payments".into()));
        assert_eq!(upstream_name("a.b.upstream"), None);
        assert_eq!(upstream_name("upstream"), None);
        assert_eq!(upstream_name("example.com"), None);
        for bad in ["ftp://x", "https://u:p@h", "not a url", "https://h/?q=1"] {
            assert!(upstream(bad, &[]).is_err(), "{bad}");
        }
        assert!(upstream("https://h", &[("bad header", "v")]).is_err());
        assert!(upstream("https://h", &[("x-key", "${env:BERTH_NOT_SET_ANYWHERE}")]).is_err());
    }
}
