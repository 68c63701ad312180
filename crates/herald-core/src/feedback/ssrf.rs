//! Where a customer webhook may point. A webhook URL is typed by a tenant and fetched by Herald
//! from inside the operator's network, so an address that is not on the public internet
//! (loopback, private, link-local: the cloud metadata service at 169.254.169.254, carrier NAT,
//! multicast, documentation ranges) is refused, at configuration and again at each delivery,
//! unless the operator lists its network (`HERALD_WEBHOOK_ALLOWED_NETWORKS`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Whether `ip` is a public internet address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let segments = v6.segments();
            let v4 = |high: u16, low: u16| {
                let ([a, b], [c, d]) = (high.to_be_bytes(), low.to_be_bytes());
                Ipv4Addr::new(a, b, c, d)
            };
            // NAT64 (64:ff9b::/96) and the deprecated IPv4-compatible form (::a.b.c.d) end with
            // an IPv4 address; 6to4 (2002::/16) carries one after its prefix.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || (segments[..6] == [0; 6] && segments[6] != 0) {
                return is_public_v4(v4(segments[6], segments[7]));
            }
            if segments[0] == 0x2002 {
                return is_public_v4(v4(segments[1], segments[2]));
            }
            // Teredo (2001::/32) tunnels to addresses that cannot be told from here.
            if segments[0] == 0x2001 && segments[1] == 0 {
                return false;
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00 // unique local
                || (segments[0] & 0xffc0) == 0xfe80 // link-local
                || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::from(1u128)) // ::1
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && (c == 0 || c == 2))
        || (a == 198 && (b == 18 || b == 19))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224)
}

/// Whether a webhook may be delivered to `ip`: a public address, or one in a network the
/// operator allowed.
pub fn allowed(ip: IpAddr, allowed_networks: &[IpNet]) -> bool {
    is_public(ip) || allowed_networks.iter().any(|network| network.contains(&ip))
}

/// Parses `HERALD_WEBHOOK_ALLOWED_NETWORKS` entries (`127.0.0.1/32`, `10.0.0.0/8`, `::1/128`, or
/// a bare address).
pub fn parse_networks(entries: &[String]) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .map(|entry| entry.trim())
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{entry}` is not a network (e.g. 10.0.0.0/8) or an address"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "172.32.0.1",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "100.128.0.1",
            "2002:808:808::",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_operator_may_allow_a_network() {
        let networks = parse_networks(&["127.0.0.1/32".into(), " ::1 ".into(), String::new()]).unwrap();
        assert!(allowed("127.0.0.1".parse().unwrap(), &networks));
        assert!(allowed("::1".parse().unwrap(), &networks));
        assert!(!allowed("127.0.0.2".parse().unwrap(), &networks));
        assert!(!allowed("10.0.0.1".parse().unwrap(), &networks));
        assert!(parse_networks(&["localhost".into()]).is_err());
    }
}
