//! The client's address behind proxies (`http.trusted_proxies`).
//!
//! Only a TCP peer inside a trusted network is believed about `X-Forwarded-For`. Its
//! hops are read from the right (the hop the nearest proxy appended) to the left,
//! skipping trusted addresses; the first untrusted one is the client. Anything further
//! left was written by the client itself and may be made up, so it is never used. When
//! every hop is trusted (an internal caller) the leftmost is the client; a hop that is
//! not an address stops the walk at the last trusted one seen. Without trusted
//! proxies, or from any other peer, the client is the TCP peer.
//!
//! The per-IP limits (`limits.per_ip`, `limits.handshakes_per_ip_per_sec`) and the
//! handshake logs use this address. `limits.pending_per_ip` is counted at accept, before
//! any header exists: a trusted proxy is exempt from it (the proxy holds its clients'
//! idle sockets itself; the node-wide `limits.max_pending` still applies).

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Most `X-Forwarded-For` hops read, from the right.
const MAX_HOPS: usize = 32;

/// The trusted proxy networks.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    /// `http.trusted_proxies`, parsed (validated at load).
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// From the validated configuration list.
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies { nets }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client address of a request from TCP peer `peer` (module docs).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        // Several header lines are one list, in order (RFC 9110 §5.3).
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev().take(MAX_HOPS) {
            let Some(ip) = parse_hop(hop) else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:5`,
/// `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>().or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip())).ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_trusted_peers_are_believed() {
        let t = proxies(&["10.0.0.0/8"]);
        let h = xff(&["203.0.113.7"]);
        assert_eq!(t.client_ip(ip("198.51.100.1"), &h), ip("198.51.100.1"));
        assert_eq!(t.client_ip(ip("10.1.2.3"), &h), ip("203.0.113.7"));
        assert_eq!(t.client_ip(ip("10.1.2.3"), &HeaderMap::new()), ip("10.1.2.3"));
        assert_eq!(TrustedProxies::default().client_ip(ip("10.1.2.3"), &h), ip("10.1.2.3"));
    }

    #[test]
    fn rightmost_untrusted_hop_wins_over_spoofed_ones() {
        let t = proxies(&["10.0.0.0/8", "192.168.0.0/16"]);
        // The client wrote "1.1.1.1, 2.2.2.2"; the edge proxy appended its real address.
        let h = xff(&["1.1.1.1, 2.2.2.2, 203.0.113.7, 192.168.1.1"]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.7"));
        // The same list split over header lines.
        let h = xff(&["1.1.1.1", "203.0.113.7,192.168.1.1"]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.7"));
        // Every hop trusted: the leftmost; garbage: the last trusted hop before it.
        assert_eq!(t.client_ip(ip("10.0.0.1"), &xff(&["192.168.5.5, 10.9.9.9"])), ip("192.168.5.5"));
        assert_eq!(t.client_ip(ip("10.0.0.1"), &xff(&["203.0.113.7, junk, 10.9.9.9"])), ip("10.9.9.9"));
        assert_eq!(t.client_ip(ip("10.0.0.1"), &xff(&["[2001:db8::1]:443"])), ip("2001:db8::1"));
        // An IPv4-mapped peer (dual-stack listener) is its IPv4 address.
        assert_eq!(t.client_ip(ip("::ffff:10.0.0.1"), &xff(&["203.0.113.7"])), ip("203.0.113.7"));
    }
}
