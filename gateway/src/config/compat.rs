//! Settings that let clients written against other servers connect unchanged
//! (contract §12): the encoding per WebSocket path when a client names none
//! (`ws_default_format`), the channels each principal kind joins at connect
//! (`channels.auto_join`), and a backend reached over HTTP (`backend_http`).

use std::collections::BTreeMap;

use gateway_protocol::{Channel, Encoding, PrincipalKind};
use serde::{Deserialize, Deserializer, Serialize};

use super::de::string_or_list;

/// Channels a principal kind joins at connect, under the usual permissions, e.g.
/// `{ user = ["broadcast:agents"] }` so dashboards get `agent:status` unasked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoJoin {
    /// Joined by every user connection.
    #[serde(deserialize_with = "string_or_list")]
    pub user: Vec<String>,
    /// Joined by every agent connection.
    #[serde(deserialize_with = "string_or_list")]
    pub agent: Vec<String>,
}

impl AutoJoin {
    /// The channel names a principal kind joins.
    pub fn of(&self, kind: PrincipalKind) -> &[String] {
        match kind {
            PrincipalKind::User => &self.user,
            PrincipalKind::Agent => &self.agent,
        }
    }

    /// Why the lists cannot be used, if they cannot: a name that is not a channel, a
    /// duplicate, or more than `max_channels` with the connection's own channel.
    pub fn check(&self, max_channels: usize) -> Result<(), String> {
        for list in [&self.user, &self.agent] {
            for (i, name) in list.iter().enumerate() {
                Channel::parse(name).map_err(|e| format!("{name:?}: {e}"))?;
                if list[..i].contains(name) {
                    return Err(format!("{name:?} is listed twice"));
                }
            }
            if list.len() + 1 > max_channels {
                return Err(format!("with the own channel at most limits.max_channels ({max_channels}) channels"));
            }
        }
        Ok(())
    }
}

/// A backend reached over HTTP, for deployments without NATS: when `url` is set, client
/// `request`s go to `POST <url>/rpc` and upstream sends to `POST <url>/up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendHttpConfig {
    /// Base URL (`http://host:port[/prefix]`); empty: requests and sends use the bus.
    #[serde(deserialize_with = "super::de::lossy_string")]
    pub url: String,
    /// Sent as `Authorization: Bearer <token>` on every call; empty: no header.
    #[serde(deserialize_with = "super::de::lossy_string")]
    pub token: String,
    /// Calls in flight at once from this node; more wait (within the request timeout).
    pub max_concurrency: usize,
}

impl Default for BackendHttpConfig {
    fn default() -> Self {
        BackendHttpConfig { url: String::new(), token: String::new(), max_concurrency: 64 }
    }
}

impl BackendHttpConfig {
    /// Whether a backend URL is configured.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// Why the section cannot be used, if it cannot, with the key at fault.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !self.enabled() {
            return Ok(());
        }
        let url = reqwest::Url::parse(&self.url).map_err(|e| ("backend_http.url", format!("not a URL: {e}")))?;
        if url.scheme() != "http" || url.host_str().is_none() {
            return Err(("backend_http.url", "must be an http:// URL with a host".into()));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err((
                "backend_http.url",
                "must have no query, fragment or credentials (use backend_http.token)".into(),
            ));
        }
        if !self.token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(("backend_http.token", "must be printable ASCII without spaces".into()));
        }
        if !(1..=10_000).contains(&self.max_concurrency) {
            return Err(("backend_http.max_concurrency", "must be 1-10000".into()));
        }
        Ok(())
    }
}

/// Accepts a map `{ "/" = "flat" }` (TOML) as well as `"/=flat,/ws=json"` (environment).
pub(super) fn path_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrMap {
        Text(String),
        Map(BTreeMap<String, String>),
    }
    match TextOrMap::deserialize(d)? {
        TextOrMap::Map(m) => Ok(m),
        TextOrMap::Text(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').ok_or_else(|| serde::de::Error::custom("entries are path=format"))?;
                Ok((k.trim().to_owned(), v.trim().to_owned()))
            })
            .collect(),
    }
}

/// Why `ws_default_format` cannot be used, if it cannot: a path not in `ws_paths`, or a
/// format other than `json`, `msgpack`, `flat`.
pub fn check_default_formats(formats: &BTreeMap<String, String>, ws_paths: &[String]) -> Result<(), String> {
    for (path, format) in formats {
        if !ws_paths.contains(path) {
            return Err(format!("{path:?} is not one of ws_paths"));
        }
        if Encoding::from_format(format).is_none() {
            return Err(format!("{path:?}: format {format:?} must be json, msgpack or flat"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_join_lists() {
        let a = AutoJoin { user: vec!["broadcast:agents".into()], agent: vec![] };
        assert!(a.check(100).is_ok());
        assert_eq!(a.of(PrincipalKind::User), ["broadcast:agents".to_owned()]);
        assert!(a.of(PrincipalKind::Agent).is_empty());
        assert!(AutoJoin { user: vec!["agents".into()], agent: vec![] }.check(100).is_err());
        assert!(AutoJoin { user: vec!["broadcast:a".into(), "broadcast:a".into()], agent: vec![] }.check(100).is_err());
        assert!(a.check(1).is_err());
    }

    #[test]
    fn backend_urls() {
        let ok = |url: &str| BackendHttpConfig { url: url.into(), ..Default::default() }.check();
        assert!(ok("").is_ok());
        assert!(ok("http://127.0.0.1:4000").is_ok());
        assert!(ok("http://backend/api/gw/").is_ok());
        for bad in ["backend:4000", "https://b", "http://b?x=1", "http://u:p@b", "ftp://b"] {
            assert_eq!(ok(bad).map_err(|e| e.0), Err("backend_http.url"), "{bad}");
        }
        let c = BackendHttpConfig { url: "http://b".into(), token: "a b".into(), ..Default::default() };
        assert_eq!(c.check().map_err(|e| e.0), Err("backend_http.token"));
        let c = BackendHttpConfig { url: "http://b".into(), max_concurrency: 0, ..Default::default() };
        assert_eq!(c.check().map_err(|e| e.0), Err("backend_http.max_concurrency"));
    }

    #[test]
    fn default_formats() {
        let paths = vec!["/ws".to_owned(), "/".to_owned()];
        let m = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(check_default_formats(&m(&[("/", "flat"), ("/ws", "json")]), &paths).is_ok());
        assert!(check_default_formats(&m(&[("/other", "flat")]), &paths).is_err());
        assert!(check_default_formats(&m(&[("/", "xml")]), &paths).is_err());
    }
}
