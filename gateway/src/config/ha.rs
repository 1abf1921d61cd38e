//! High-availability fabric settings: several NATS servers in `nats_url` (a list, or
//! comma-separated), and Redis reached through Sentinel (`redis_sentinel`) so a failed
//! master is replaced without reconfiguring the nodes.

use serde::{Deserialize, Serialize};

use super::{Config, de::string_or_list};

/// Redis behind Sentinel: the nodes ask the sentinels which server is the master of
/// `master`, and ask again after a failover. Credentials and database number still come
/// from `redis_url` when it is set (its host is then ignored); the sentinels are sent the
/// same credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSentinelConfig {
    /// Sentinel addresses, `host:port` (`26379` when no port): any one that answers
    /// is enough, so list all of them to survive the loss of some.
    #[serde(deserialize_with = "string_or_list")]
    pub nodes: Vec<String>,
    /// The name the sentinels monitor the master under (`sentinel monitor <name> …`).
    #[serde(deserialize_with = "super::de::lossy_string")]
    pub master: String,
}

/// Default port of a sentinel.
const SENTINEL_PORT: u16 = 26379;

impl RedisSentinelConfig {
    /// Whether Redis is reached through Sentinel.
    pub fn enabled(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// The sentinels as (host, port); an address that does not parse is an error naming it.
    pub fn hosts(&self) -> Result<Vec<(String, u16)>, String> {
        self.nodes
            .iter()
            .map(|n| {
                let n = n.trim();
                let (host, port) = match n.rsplit_once(':') {
                    // `[::1]:26379`, `host:26379`; a bare IPv6 address has more colons.
                    Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                        (h.trim_matches(['[', ']']), p.parse::<u16>().map_err(|_| format!("bad port in {n:?}"))?)
                    }
                    _ => (n, SENTINEL_PORT),
                };
                if host.is_empty() {
                    return Err(format!("no host in {n:?}"));
                }
                Ok((host.to_owned(), port))
            })
            .collect()
    }

    /// Checks the section; the error names its key.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        if !self.enabled() {
            return Ok(());
        }
        self.hosts().map_err(|e| ("redis_sentinel.nodes", e))?;
        if self.master.is_empty() {
            return Err(("redis_sentinel.master", "name the monitored master when redis_sentinel.nodes is set".into()));
        }
        Ok(())
    }
}

impl Config {
    /// The NATS servers of `nats_url` (a list, or comma-separated): the client picks one
    /// and moves to another when it fails.
    pub fn nats_servers(&self) -> Vec<&str> {
        self.nats_url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
    }

    /// True when NATS and Redis are configured (a cluster node); false for the embedded twins.
    pub fn clustered(&self) -> bool {
        !self.nats_url.is_empty()
    }

    /// Whether Redis is configured (by URL or through Sentinel).
    pub fn redis_configured(&self) -> bool {
        !self.redis_url.is_empty() || self.redis_sentinel.enabled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_hosts_parse_with_and_without_ports() {
        let s = RedisSentinelConfig {
            nodes: vec!["a:1".into(), "b".into(), "[::1]:7".into(), " c:26380 ".into()],
            master: "m".into(),
        };
        let want = [("a", 1), ("b", SENTINEL_PORT), ("::1", 7), ("c", 26380)];
        let got = s.hosts().unwrap_or_default();
        assert_eq!(got, want.map(|(h, p)| (h.to_owned(), p)).to_vec());
        assert!(s.check().is_ok());
        let bad = RedisSentinelConfig { nodes: vec!["a:x".into()], master: "m".into() };
        assert_eq!(bad.check().map_err(|e| e.0), Err("redis_sentinel.nodes"));
        let nameless = RedisSentinelConfig { nodes: vec!["a".into()], master: String::new() };
        assert_eq!(nameless.check().map_err(|e| e.0), Err("redis_sentinel.master"));
    }

    #[test]
    fn nats_url_takes_a_list_or_a_comma_separated_string() {
        let from = |toml: &str| {
            Config::from_figment(
                figment::Figment::from(figment::providers::Serialized::defaults(Config::default()))
                    .merge(<figment::providers::Toml as figment::providers::Format>::string(toml)),
            )
        };
        let base = "redis_url = \"redis://r:6379\"\n";
        let list = from(&format!("{base}nats_url = [\"nats://a:4222\", \"nats://b:4222\"]")).map_err(|e| e.to_string());
        let one = from(&format!("{base}nats_url = \"nats://a:4222, nats://b:4222\"")).map_err(|e| e.to_string());
        for cfg in [list, one] {
            let cfg = cfg.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(cfg.nats_servers(), ["nats://a:4222", "nats://b:4222"]);
        }
        let sentinel =
            from("nats_url = \"nats://a:4222\"\n[redis_sentinel]\nnodes = \"s1:26379,s2\"\nmaster = \"gw\"\n")
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(sentinel.redis_configured() && sentinel.clustered());
        assert_eq!(sentinel.redis_sentinel.hosts().map(|h| h.len()), Ok(2));
    }
}
