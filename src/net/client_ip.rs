//! Who the client is: the socket peer, or what a trusted proxy says.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// `TRUSTED_PROXIES`: networks whose connections are proxies we run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{entry:?} is neither a CIDR network (like 10.0.0.0/8) nor an IP address")]
pub struct InvalidProxy {
    pub entry: String,
}

impl TrustedProxies {
    /// A comma-separated list of CIDRs; a bare address means just that
    /// address. Blank entries are ignored, so "" trusts no one.
    pub fn parse(list: &str) -> Result<Self, InvalidProxy> {
        let nets = list
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| InvalidProxy {
                        entry: entry.to_owned(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxies { nets })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.nets
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

impl FromStr for TrustedProxies {
    type Err = InvalidProxy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TrustedProxies::parse(s)
    }
}

/// The client's address. An untrusted peer is the client, whatever it
/// claims. A trusted peer (our proxy) is believed about the hop before it:
/// `X-Forwarded-For` is read from the right (the entry the nearest proxy
/// appended) across all its headers, trusted proxies are skipped, and the
/// first address that is not a trusted proxy is the client. Everything to
/// its left was written by the client itself and is ignored. A malformed
/// entry ends the walk before any untrusted address was found, and so
/// does the end of the list: then the peer is the answer.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.ip().to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(value) = value.to_str() else {
            return peer;
        };
        for entry in value.rsplit(',') {
            let Some(ip) = parse_entry(entry.trim()) else {
                return peer;
            };
            if !trusted.contains(ip) {
                return ip;
            }
        }
    }
    peer
}

/// An address as proxies write it: `1.2.3.4`, `2001:db8::1`, and with a
/// port `1.2.3.4:80` or `[2001:db8::1]:80`, or bracketed `[2001:db8::1]`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<IpAddr>()
                .ok()
        })?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn trusted(list: &str) -> TrustedProxies {
        TrustedProxies::parse(list).unwrap()
    }

    fn peer(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 40000)
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const NGINX: &str = "127.0.0.1";
    const PROXIES: &str = "127.0.0.1/32, 10.0.0.0/8";

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_its_headers_say() {
        let headers = xff(&["9.9.9.9"]);
        assert_eq!(
            client_ip(peer("5.6.7.8"), &headers, &trusted(PROXIES)),
            ip("5.6.7.8")
        );
        assert_eq!(
            client_ip(peer("5.6.7.8"), &headers, &TrustedProxies::default()),
            ip("5.6.7.8")
        );
    }

    #[test]
    fn behind_our_proxy_the_client_is_the_address_the_proxy_appended() {
        let headers = xff(&["5.6.7.8"]);
        assert_eq!(
            client_ip(peer(NGINX), &headers, &trusted(PROXIES)),
            ip("5.6.7.8")
        );
    }

    #[test]
    fn a_client_prepending_fake_addresses_cannot_pick_its_ip() {
        let t = trusted(PROXIES);
        // The client sent `X-Forwarded-For: 9.9.9.9`; nginx appended the real peer.
        let headers = xff(&["9.9.9.9, 5.6.7.8"]);
        assert_eq!(client_ip(peer(NGINX), &headers, &t), ip("5.6.7.8"));
        // Claiming to be one of our proxies does not help either.
        let headers = xff(&["10.1.2.3, 5.6.7.8"]);
        assert_eq!(client_ip(peer(NGINX), &headers, &t), ip("5.6.7.8"));
        // Nor does sending a header of its own ahead of nginx's.
        let headers = xff(&["9.9.9.9", "5.6.7.8"]);
        assert_eq!(client_ip(peer(NGINX), &headers, &t), ip("5.6.7.8"));
    }

    #[test]
    fn a_client_cannot_hide_behind_a_claimed_trusted_address_when_it_is_the_peer() {
        let headers = xff(&["10.1.2.3"]);
        assert_eq!(
            client_ip(peer("5.6.7.8"), &headers, &trusted(PROXIES)),
            ip("5.6.7.8")
        );
    }

    #[test]
    fn chains_of_trusted_proxies_are_walked_across_headers() {
        let t = trusted(PROXIES);
        let headers = xff(&["9.9.9.9, 5.6.7.8", "10.0.0.2, 10.0.0.3"]);
        assert_eq!(client_ip(peer(NGINX), &headers, &t), ip("5.6.7.8"));
    }

    #[test]
    fn a_malformed_entry_stops_the_walk_at_the_peer() {
        let t = trusted(PROXIES);
        for value in [
            "garbage",
            "5.6.7.8, unknown",
            "5.6.7.8, , 10.0.0.2",
            "5.6.7.8,",
        ] {
            let headers = xff(&[value]);
            assert_eq!(
                client_ip(peer(NGINX), &headers, &t),
                ip(NGINX),
                "X-Forwarded-For: {value}"
            );
        }
        // Left of the client's entry nothing is read, malformed or not.
        let headers = xff(&["garbage, 5.6.7.8"]);
        assert_eq!(client_ip(peer(NGINX), &headers, &t), ip("5.6.7.8"));
    }

    #[test]
    fn a_non_ascii_header_stops_the_walk() {
        let mut headers = xff(&["5.6.7.8"]);
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff1.2.3.4").unwrap(),
        );
        assert_eq!(
            client_ip(peer(NGINX), &headers, &trusted(PROXIES)),
            ip(NGINX)
        );
    }

    #[test]
    fn no_header_or_only_proxies_leaves_the_peer() {
        let t = trusted(PROXIES);
        assert_eq!(client_ip(peer(NGINX), &HeaderMap::new(), &t), ip(NGINX));
        let headers = xff(&["10.0.0.2, 10.0.0.3"]);
        assert_eq!(client_ip(peer(NGINX), &headers, &t), ip(NGINX));
    }

    #[test]
    fn entries_with_ports_brackets_and_ipv6_are_understood() {
        let t = trusted(PROXIES);
        for (value, want) in [
            ("5.6.7.8:4711", "5.6.7.8"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("::ffff:5.6.7.8", "5.6.7.8"),
        ] {
            let headers = xff(&[value]);
            assert_eq!(client_ip(peer(NGINX), &headers, &t), ip(want), "{value}");
        }
    }

    #[test]
    fn an_ipv4_mapped_peer_is_matched_against_ipv4_networks() {
        let headers = xff(&["5.6.7.8"]);
        assert_eq!(
            client_ip(peer("::ffff:127.0.0.1"), &headers, &trusted(PROXIES)),
            ip("5.6.7.8")
        );
        assert_eq!(
            client_ip(peer("::ffff:5.6.7.9"), &headers, &trusted(PROXIES)),
            ip("5.6.7.9")
        );
    }

    #[test]
    fn the_trusted_list_accepts_cidrs_and_bare_addresses_and_names_a_bad_entry() {
        let t = trusted(" 127.0.0.1 , 10.0.0.0/8,::1/128,");
        assert!(t.contains(ip("127.0.0.1")));
        assert!(!t.contains(ip("127.0.0.2")));
        assert!(t.contains(ip("10.200.0.1")));
        assert!(t.contains(ip("::1")));
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        assert_eq!(
            TrustedProxies::parse("10.0.0.0/8,10.0.0.0/33"),
            Err(InvalidProxy {
                entry: "10.0.0.0/33".into()
            })
        );
        assert!("nginx".parse::<TrustedProxies>().is_err());
    }
}
