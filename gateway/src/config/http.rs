//! The `http` section: deadlines of HTTP connections before they upgrade, and which TCP
//! peers are proxies whose `X-Forwarded-For` names the client.

use serde::{Deserialize, Serialize};

use super::de::string_or_list;

/// Timeouts of HTTP connections before they upgrade (slowloris and idle sockets), and
/// the proxies in front of the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// A request head must be complete this long after the connection was accepted, or
    /// after its first byte on a keep-alive connection; else the connection is closed.
    pub header_timeout_ms: u64,
    /// A keep-alive connection with no request in progress is closed after this long.
    /// Longer than load balancers keep idle upstream connections (nginx and AWS ALB:
    /// 60 s), so the gateway is not the side that closes a connection the balancer is
    /// about to reuse.
    pub idle_timeout_ms: u64,
    /// CIDRs (or bare addresses) of the load balancers and proxies in front of the node.
    /// Only a TCP peer in one of them is believed about `X-Forwarded-For`: the client is
    /// then the rightmost address there that is not itself trusted, and the per-IP
    /// limits and logs use it. Empty (the default): the TCP peer is the client.
    #[serde(deserialize_with = "string_or_list")]
    pub trusted_proxies: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { header_timeout_ms: 10_000, idle_timeout_ms: 75_000, trusted_proxies: Vec::new() }
    }
}

impl HttpConfig {
    /// `trusted_proxies` parsed; a bare address is a single-address network.
    pub fn trusted_nets(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted_proxies
            .iter()
            .map(|s| {
                let s = s.trim();
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| format!("{s:?} is not a CIDR (10.0.0.0/8, fd00::/8) or an IP address"))
            })
            .collect()
    }
}
