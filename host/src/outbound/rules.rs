//! The per-component allow-list of outbound HTTP destinations.

/// One allow-list entry: `scheme://host[:port]`, where host may be `*.domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    scheme: String,
    host: HostPattern,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`: any subdomain, not the apex.
    Subdomains(String),
}

impl AllowRule {
    /// Parses `https://api.example.com`, `http://*.example.com:8080`, ….
    pub fn parse(rule: &str) -> Result<AllowRule, String> {
        let (scheme, rest) = rule
            .split_once("://")
            .ok_or_else(|| format!("{rule:?} must look like `https://host[:port]`"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(format!("{rule:?}: scheme must be http or https"));
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) || rest.is_empty() {
            return Err(format!(
                "{rule:?}: give only scheme, host and optional port"
            ));
        }
        // An IPv6 host is bracketed (`[::1]`, `[::1]:8080`), and its colons
        // are not the port's.
        let (host, port) = match rest.find(']') {
            Some(end) if rest.starts_with('[') => {
                (&rest[..=end], rest[end + 1..].strip_prefix(':'))
            }
            _ => match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            },
        };
        if host.len() + port.map_or(0, |p| p.len() + 1) != rest.len() {
            return Err(format!(
                "{rule:?}: give only scheme, host and optional port"
            ));
        }
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .map_err(|_| format!("{rule:?}: invalid port {p:?}"))
            })
            .transpose()?;
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if !valid_host(host.strip_prefix("*.").unwrap_or(&host)) {
            return Err(format!(
                "{rule:?}: the host must be a DNS name, an IPv4 address or a bracketed IPv6 address"
            ));
        }
        let host = match host.strip_prefix("*.") {
            Some(domain) if !domain.is_empty() && !domain.contains(['*', '[']) => {
                HostPattern::Subdomains(domain.to_string())
            }
            _ if host.contains('*') || host.is_empty() => {
                return Err(format!("{rule:?}: `*` is only allowed as `*.domain`"));
            }
            _ => HostPattern::Exact(host),
        };
        Ok(AllowRule { scheme, host, port })
    }

    /// Whether a request to `scheme://host:port` matches this rule.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        if !self.scheme.eq_ignore_ascii_case(scheme) {
            return false;
        }
        let default_port = if self.scheme == "https" { 443 } else { 80 };
        if self.port.unwrap_or(default_port) != port {
            return false;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match &self.host {
            HostPattern::Exact(h) => *h == host,
            HostPattern::Subdomains(d) => host
                .strip_suffix(d.as_str())
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        }
    }
}

/// A DNS name (letters, digits, `-`, `_`, dots), an IPv4 address, or an
/// IPv6 address in brackets: a rule with anything else could never match.
fn valid_host(host: &str) -> bool {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str]) -> super::super::OutboundGrants {
        super::super::OutboundGrants {
            allow: rules.iter().map(|r| AllowRule::parse(r).unwrap()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn exact_host_scheme_and_port() {
        let p = policy(&["https://api.example.com", "http://localhost:8080"]);
        assert!(p.allows(&"https://api.example.com/v1".parse().unwrap()));
        assert!(p.allows(&"https://API.example.com./v1".parse().unwrap()));
        assert!(!p.allows(&"http://api.example.com/v1".parse().unwrap()));
        assert!(!p.allows(&"https://api.example.com:8443/".parse().unwrap()));
        assert!(p.allows(&"http://localhost:8080/x".parse().unwrap()));
        assert!(!p.allows(&"http://localhost/x".parse().unwrap()));
        assert!(!p.allows(&"https://evil.com/?h=api.example.com".parse().unwrap()));
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let p = policy(&["https://*.example.com"]);
        assert!(p.allows(&"https://a.example.com/".parse().unwrap()));
        assert!(p.allows(&"https://a.b.example.com/".parse().unwrap()));
        assert!(!p.allows(&"https://example.com/".parse().unwrap()));
        assert!(!p.allows(&"https://badexample.com/".parse().unwrap()));
    }

    #[test]
    fn bracketed_ipv6_hosts_with_and_without_port() {
        let p = policy(&["http://[::1]", "https://[fd00::1]:8443"]);
        assert!(p.allows(&"http://[::1]/x".parse().unwrap()));
        assert!(!p.allows(&"http://[::1]:8080/x".parse().unwrap()));
        assert!(p.allows(&"https://[fd00::1]:8443/".parse().unwrap()));
        assert!(!p.allows(&"https://[fd00::1]/".parse().unwrap()));
        for bad in ["http://[::1]x", "http://[::1]:", "http://[::1]:99999"] {
            assert!(AllowRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_rules_are_refused() {
        for bad in [
            "api.example.com",
            "ftp://x",
            "https://",
            "https://a/b",
            "https://*",
            "https://a*b.com",
            "https://u@h",
            // An unbracketed IPv6 address, or a bracket left open.
            "https://2001:db8::1",
            "https://[::1",
            "https://[not-v6]",
            "https://*.[::1]",
            "https://a b.example",
        ] {
            assert!(AllowRule::parse(bad).is_err(), "{bad}");
        }
    }
}
