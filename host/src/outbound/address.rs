//! Which resolved addresses a guest's outbound request may connect to.
//!
//! Allow-lists name hosts, but a name can resolve anywhere: to loopback, to
//! the cloud metadata service at 169.254.169.254, to the operator's private
//! network. Every address a name resolves to is classified here, and the
//! connection is made only to an address that passed (see `connect.rs`), so
//! a DNS answer cannot change between the check and the connect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why an address is not publicly routable, or `None` when it is.
///
/// IPv6 forms that embed an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-translated `::ffff:0:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64
/// `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the IPv4 address they
/// carry; those that hide it (Teredo, local-use NAT64) are denied.
pub fn special_use(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "unspecified (0.0.0.0/8)",
        (127, _, _) => "loopback",
        (10, _, _) => "private (10.0.0.0/8)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 168, _) => "private (192.168.0.0/16)",
        (100, 64..=127, _) => "shared address space (100.64.0.0/10)",
        (169, 254, _) => "link-local (169.254.0.0/16, cloud metadata)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (192, 88, 99) => "6to4 relay anycast (192.88.99.0/24)",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = embedded_v4(ip) {
        return special_v4(v4);
    }
    let first = ip.segments()[0];
    Some(match () {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if first & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        _ if first & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        _ if first & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        _ if first & 0xff00 == 0xff00 => "multicast",
        _ if first == 0x2001 && ip.segments()[1] == 0x0db8 => "documentation (2001:db8::/32)",
        _ if first == 0x3fff && ip.segments()[1] & 0xf000 == 0 => "documentation (3fff::/20)",
        _ if first == 0x5f00 => "segment routing (5f00::/16)",
        // Teredo (2001::/32) and the other protocol assignments: Teredo
        // carries an IPv4 address, obfuscated.
        _ if first == 0x2001 && ip.segments()[1] < 0x0200 => {
            "IETF protocol assignments (2001::/23, Teredo included)"
        }
        // Local-use NAT64 (RFC 8215): translated to IPv4 by the site's own
        // gateway, to whatever IPv4 address it carries.
        _ if first == 0x0064 && ip.segments()[1..3] == [0xff9b, 1] => {
            "local-use NAT64 (64:ff9b:1::/48)"
        }
        _ if first == 0x0100 && ip.segments()[1..4] == [0, 0, 0] => "discard-only (100::/64)",
        _ => return None,
    })
}

/// The IPv4 address carried by an IPv4-mapped, IPv4-compatible, NAT64 or
/// 6to4 IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(low(hi, lo)),
        // IPv4-translated (SIIT, RFC 2765).
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => Some(low(hi, lo)),
        // IPv4-compatible (deprecated), but not :: and ::1 themselves:
        // `::2` carries 0.0.0.2.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => Some(low(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        _ => None,
    }
}

/// The operator's exceptions: special-use ranges guests may still reach
/// (`allow_private = ["10.1.0.0/16"]` in the host config's `[outbound]`).
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
}

impl AddressPolicy {
    /// Parses CIDR ranges (`10.0.0.0/8`, `::1/128`) or single addresses.
    pub fn new(allowed: &[String]) -> Result<AddressPolicy, String> {
        let allowed = allowed
            .iter()
            .map(|raw| {
                raw.parse::<IpNet>()
                    .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{raw:?} is not an address range like `10.0.0.0/8`"))
            })
            .collect::<Result<_, _>>()?;
        Ok(AddressPolicy { allowed })
    }

    /// `Err(reason)` when a guest may not connect to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        let Some(reason) = special_use(ip) else {
            return Ok(());
        };
        let canonical = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self
            .allowed
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
        {
            return Ok(());
        }
        Err(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(s: &str) -> bool {
        special_use(s.parse().unwrap()).is_some()
    }

    #[test]
    fn special_use_addresses_are_denied() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "::2",
            "::ffff",
            "::ffff:0:127.0.0.1",
            "::ffff:0:a9fe:a9fe",
            "64:ff9b:1::a9fe:a9fe",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:1ff::1",
            "192.88.99.1",
            "3fff::1",
            "3fff:fff::1",
            "5f00::1",
        ] {
            assert!(denied(ip), "{ip} should be denied");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
            "2002:0808:0808::1",
            "::ffff:0:1.1.1.1",
            "2001:200::1",
            "192.88.100.1",
            "3ffe:1::1",
            "4000::1",
        ] {
            assert!(!denied(ip), "{ip} should pass");
        }
    }

    #[test]
    fn operator_exceptions_cover_mapped_forms() {
        let policy = AddressPolicy::new(&["127.0.0.0/8".into(), "fd00::1".into()]).unwrap();
        assert!(policy.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(policy.check("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(policy.check("fd00::1".parse().unwrap()).is_ok());
        assert!(policy.check("fd00::2".parse().unwrap()).is_err());
        assert_eq!(
            policy.check("169.254.169.254".parse().unwrap()),
            Err("link-local (169.254.0.0/16, cloud metadata)")
        );
        assert!(AddressPolicy::new(&["10.0.0.0/33".into()]).is_err());
        assert!(AddressPolicy::new(&["intranet".into()]).is_err());
    }
}
