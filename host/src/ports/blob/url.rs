//! Signed URLs for the embedded blob store, served by `berth up` under
//! `/_berth/blob/`. The signature (HMAC-SHA256 over app, container, key and
//! expiry) is the only credential: the URL works for anyone until it
//! expires and for nothing else.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Path prefix under which the HTTP trigger serves signed blob URLs.
pub const URL_PREFIX: &str = "/_berth/blob/";

/// Signs and verifies blob URLs with one key.
#[derive(Clone)]
pub struct UrlSigner {
    key: Vec<u8>,
    base_url: String,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlSigner")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl UrlSigner {
    /// A signer with `key`, producing URLs under `base_url`
    /// (`http://127.0.0.1:3000`).
    pub fn new(key: Vec<u8>, base_url: impl Into<String>) -> Self {
        Self {
            key,
            base_url: base_url.into().trim_end_matches('/').to_string(),
        }
    }

    fn signature(&self, app: &str, container: &str, key: &str, expires: u64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        for part in [app, container, key, &expires.to_string()] {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// The URL of `key`, valid until `expires` (Unix seconds).
    pub fn url(&self, app: &str, container: &str, key: &str, expires: u64) -> String {
        let sig = self.signature(app, container, key, expires);
        let path: Vec<String> = key.split('/').map(percent_encode).collect();
        format!(
            "{}{URL_PREFIX}{}/{}/{}?expires={expires}&sig={sig}",
            self.base_url,
            percent_encode(app),
            percent_encode(container),
            path.join("/")
        )
    }

    /// Verifies a request path (after [`URL_PREFIX`]) and query; returns
    /// `(app, container, key)` when the signature holds and has not expired.
    pub fn verify(&self, path: &str, query: &str, now: u64) -> Option<(String, String, String)> {
        let mut parts = path.splitn(3, '/');
        let app = crate::ports::percent_decode(parts.next()?)?;
        let container = crate::ports::percent_decode(parts.next()?)?;
        let key = parts
            .next()?
            .split('/')
            .map(crate::ports::percent_decode)
            .collect::<Option<Vec<_>>>()?
            .join("/");
        let mut expires = None;
        let mut sig = None;
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("expires", v)) => expires = v.parse::<u64>().ok(),
                Some(("sig", v)) => sig = Some(v.to_string()),
                _ => {}
            }
        }
        let (expires, sig) = (expires?, sig?);
        let expected = self.signature(&app, &container, &key, expires);
        let equal = expected.len() == sig.len()
            && expected
                .bytes()
                .zip(sig.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        (equal && now <= expires).then_some((app, container, key))
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let s = UrlSigner::new(b"k".to_vec(), "http://h:1/");
        let url = s.url("app", "pics", "users/1/a b.png", 100);
        let rest = url.strip_prefix("http://h:1/_berth/blob/").unwrap();
        let (path, query) = rest.split_once('?').unwrap();
        assert_eq!(
            s.verify(path, query, 50),
            Some(("app".into(), "pics".into(), "users/1/a b.png".into()))
        );
        assert_eq!(s.verify(path, query, 101), None, "expired");
        assert_eq!(s.verify(&path.replace("users", "userz"), query, 50), None);
        assert_eq!(
            s.verify(path, &query.replace("expires=100", "expires=999"), 50),
            None
        );
    }
}
