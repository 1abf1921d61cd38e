//! Configuration: built-in defaults → `--config gateway.toml` → `GATEWAY_*` environment,
//! validated into typed errors that name the offending key.
//!
//! Top-level keys map to the contract's fixed names (`GATEWAY_LISTEN`, `GATEWAY_NATS_URL`,
//! …); nested keys use a double underscore (`GATEWAY_LIMITS__PER_AGENT=3`).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use gateway_protocol::{Encoding, Namespace, channel::valid_id};
use serde::{Deserialize, Serialize};

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a value has the wrong type; figment names the key.
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value has the right type but is not acceptable.
    #[error("configuration key `{key}`: {reason}")]
    Invalid {
        /// The dotted key, e.g. `limits.per_agent`.
        key: &'static str,
        /// Why it was refused.
        reason: String,
    },
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Who may subscribe to `session:` channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SessionPolicy {
    /// A channel JWT (claim `channel`) signed with the gateway key must accompany the subscribe.
    #[default]
    Token,
    /// Backends decide over NATS (`gw.auth.subscribe`), cached briefly.
    Proxy,
    /// Any authenticated principal (explicit opt-in).
    Authenticated,
}

/// The whole node configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the HTTP + WebSocket listener.
    pub listen: SocketAddr,
    /// This node's name in `/health`, headers and Redis; defaults to the host name.
    #[serde(deserialize_with = "lossy_string")]
    pub node_id: String,
    /// NATS server URL; with `redis_url` unset too, the node runs on in-process twins.
    #[serde(deserialize_with = "lossy_string")]
    pub nats_url: String,
    /// Redis URL for presence, connection counts and API keys.
    #[serde(deserialize_with = "lossy_string")]
    pub redis_url: String,
    /// First token of every NATS subject (`gw.ev.…`).
    #[serde(deserialize_with = "lossy_string")]
    pub subject_prefix: String,
    /// Prefix of every Redis key.
    #[serde(deserialize_with = "lossy_string")]
    pub redis_prefix: String,
    /// HS256 secret for user and channel JWTs.
    #[serde(deserialize_with = "lossy_string")]
    pub jwt_secret: String,
    /// PEM public key (RS256/ES256) for user JWTs; overrides `jwt_secret` for them.
    pub jwt_public_key: Option<PathBuf>,
    /// Bearer key for `POST /api/publish` and `/api/disconnect`; unset disables them.
    #[serde(deserialize_with = "lossy_string")]
    pub admin_key: String,
    /// Static agent keys, `agentId:key,agentId:key`.
    #[serde(deserialize_with = "string_or_list")]
    pub api_keys: Vec<String>,
    /// Shared by every node of a cluster: keys the signature on the gateway's own events
    /// (presence) so a backend on NATS cannot publish them. Unset: derived from
    /// `jwt_secret` and `admin_key`, which clustered nodes share anyway.
    #[serde(deserialize_with = "lossy_string")]
    pub cluster_secret: String,
    /// Origins allowed to open WebSockets; empty allows any (agents send none).
    #[serde(deserialize_with = "string_or_list")]
    pub allowed_origins: Vec<String>,
    /// Log line format.
    pub log_format: LogFormat,
    /// Credential checks.
    pub auth: AuthConfig,
    /// Size and count limits.
    pub limits: Limits,
    /// Timeouts of HTTP connections before they upgrade.
    pub http: HttpConfig,
    /// Liveness of idle connections.
    pub heartbeat: Heartbeat,
    /// Per-connection frame rate limit.
    pub rate: RateConfig,
    /// Channel policies.
    pub channels: ChannelsConfig,
    /// Graceful drain timings.
    pub drain: DrainConfig,
    /// Presence leases.
    pub presence: PresenceConfig,
    /// Backend request/reply and fault policy.
    pub fabric: FabricConfig,
    /// History kept per namespace, for recovery after a reconnect and `history.get`.
    pub history: HistoryConfig,
    /// Paths that accept the WebSocket upgrade (`/ws`; add `/` for clients that connect
    /// to the bare host).
    #[serde(deserialize_with = "string_or_list")]
    pub ws_paths: Vec<String>,
    /// The encoding per `ws_paths` entry when a client names none (subprotocol and
    /// `?format=` still win), e.g. `{ "/" = "flat" }`; unlisted paths default to JSON.
    #[serde(deserialize_with = "compat::path_map")]
    pub ws_default_format: BTreeMap<String, String>,
    /// Agent status and backend hooks.
    pub lifecycle: LifecycleConfig,
    /// Socket.IO clients on `/socket.io/` (contract §11).
    pub socketio: SocketIoConfig,
    /// A backend reached over HTTP for requests and upstream sends (no NATS needed).
    pub backend_http: BackendHttpConfig,
}

/// Credential checks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Required `aud` of user JWTs; empty skips the check.
    #[serde(deserialize_with = "lossy_string")]
    pub jwt_audience: String,
    /// Required `iss` of user JWTs; empty skips the check.
    #[serde(deserialize_with = "lossy_string")]
    pub jwt_issuer: String,
    /// How long an unauthenticated socket may wait before `authenticate`.
    pub auth_timeout_ms: u64,
    /// Clock skew tolerated on `exp`/`nbf`.
    pub leeway_secs: u64,
    /// How long a Redis API-key lookup is cached.
    pub key_cache_ms: u64,
    /// Refuse a handshake without credentials (401) instead of waiting for an in-band
    /// `authenticate`.
    pub require_credentials: bool,
}

/// Size and count limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections this node accepts before answering 503.
    pub max_connections: usize,
    /// Connections per agent across the cluster.
    pub per_agent: u32,
    /// Connections per user across the cluster.
    pub per_user: u32,
    /// Concurrent connections per client IP on this node.
    pub per_ip: u32,
    /// Channels one connection may hold.
    pub max_channels: usize,
    /// Largest inbound WebSocket message; bigger closes with 1009.
    pub max_frame_bytes: usize,
    /// Largest event, measured in the largest encoding it could be delivered in: bigger
    /// is refused at its source (`too_large`, HTTP 413, NATS input dropped) so it can never
    /// fill subscribers' queues. At most `outbound_queue_bytes`.
    pub max_event_bytes: usize,
    /// Bytes queued for one slow client before it is closed with 4009.
    pub outbound_queue_bytes: usize,
    /// Frames queued for one slow client before it is closed with 4009.
    pub outbound_queue_frames: usize,
    /// Malformed frames tolerated before closing with 4000.
    pub max_protocol_errors: u32,
    /// Initial WebSocket read buffer per connection (grows for larger frames); small
    /// keeps idle connections cheap.
    pub read_buffer_bytes: usize,
    /// Backend requests one connection may have in flight.
    pub max_inflight_requests: usize,
    /// HTTP connections (accepted, not upgraded) this node holds before answering 503:
    /// idle or slow sockets must not use up the open-file limit that `/health`,
    /// `/api/publish` and new WebSockets need.
    pub max_pending: usize,
    /// HTTP connections (accepted, not upgraded) per client IP before answering 429,
    /// so one address cannot take all of `max_pending`. Behind a proxy every client
    /// shares the proxy's address: raise it there, as `per_ip`.
    pub pending_per_ip: u32,
}

/// Timeouts of HTTP connections before they upgrade (slowloris and idle sockets).
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
}

/// Liveness of idle connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Heartbeat {
    /// WebSocket ping (and flat `heartbeat`) interval.
    pub interval_ms: u64,
    /// Close when no pong arrives within this after a ping.
    pub timeout_ms: u64,
}

/// Per-connection token buckets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateConfig {
    /// Sustained frames per second.
    pub per_second: u32,
    /// Burst above `per_second`.
    pub burst: u32,
    /// Frames per minute.
    pub per_minute: u32,
    /// Rate-limited frames in a row before closing with 4008.
    pub strikes_to_close: u32,
}

/// Channel policies.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelsConfig {
    /// Who may subscribe to `session:` channels.
    pub session_policy: SessionPolicy,
    /// Namespaces whose subscribers may `publish`.
    pub publish: Vec<Namespace>,
    /// Namespaces that track presence and emit join/leave events.
    pub presence: Vec<Namespace>,
    /// How long a `proxy` policy answer is cached.
    pub proxy_cache_ms: u64,
    /// Channels each principal kind joins at connect (permissions apply).
    pub auto_join: AutoJoin,
}

/// Graceful drain timings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainConfig {
    /// After SIGTERM, time for the load balancer to see `/ready` = 503 before closing.
    pub delay_ms: u64,
    /// Closes are spread over this period so clients do not reconnect at once.
    pub period_ms: u64,
    /// Hard deadline from the signal to exit.
    pub deadline_ms: u64,
}

/// Presence leases.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// How long an entry outlives its node's last refresh.
    pub lease_ms: u64,
    /// How often a node refreshes its leases (and reaps expired ones).
    pub refresh_ms: u64,
}

/// Backend request/reply and fault policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FabricConfig {
    /// How long a `request` waits for a backend.
    pub request_timeout_ms: u64,
    /// Admit users when Redis is down (count unknown).
    pub fail_open_users: bool,
    /// Admit agents when Redis is down (count unknown).
    pub fail_open_agents: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            node_id: String::new(),
            nats_url: String::new(),
            redis_url: String::new(),
            subject_prefix: "gw".into(),
            redis_prefix: "gw:".into(),
            jwt_secret: String::new(),
            jwt_public_key: None,
            admin_key: String::new(),
            api_keys: Vec::new(),
            cluster_secret: String::new(),
            allowed_origins: Vec::new(),
            log_format: LogFormat::Text,
            auth: AuthConfig::default(),
            limits: Limits::default(),
            http: HttpConfig::default(),
            heartbeat: Heartbeat::default(),
            rate: RateConfig::default(),
            channels: ChannelsConfig::default(),
            drain: DrainConfig::default(),
            presence: PresenceConfig::default(),
            fabric: FabricConfig::default(),
            history: HistoryConfig::default(),
            ws_paths: ws_paths::default_ws_paths(),
            ws_default_format: BTreeMap::new(),
            lifecycle: LifecycleConfig::default(),
            socketio: SocketIoConfig::default(),
            backend_http: BackendHttpConfig::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_audience: String::new(),
            jwt_issuer: String::new(),
            auth_timeout_ms: 5_000,
            leeway_secs: 0,
            key_cache_ms: 5_000,
            require_credentials: false,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            per_agent: 5,
            per_user: 20,
            per_ip: 200,
            max_channels: 100,
            max_frame_bytes: 64 * 1024,
            max_event_bytes: 64 * 1024,
            outbound_queue_bytes: 1024 * 1024,
            outbound_queue_frames: 1024,
            max_protocol_errors: 10,
            read_buffer_bytes: 256,
            max_inflight_requests: 16,
            max_pending: 1024,
            pending_per_ip: 64,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { header_timeout_ms: 10_000, idle_timeout_ms: 75_000 }
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat { interval_ms: 30_000, timeout_ms: 10_000 }
    }
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig { per_second: 10, burst: 20, per_minute: 100, strikes_to_close: 20 }
    }
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        ChannelsConfig {
            session_policy: SessionPolicy::Token,
            publish: vec![Namespace::Session],
            presence: vec![Namespace::Session, Namespace::Project],
            proxy_cache_ms: 10_000,
            auto_join: AutoJoin::default(),
        }
    }
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig { delay_ms: 5_000, period_ms: 20_000, deadline_ms: 40_000 }
    }
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig { lease_ms: 30_000, refresh_ms: 10_000 }
    }
}

impl Default for FabricConfig {
    fn default() -> Self {
        FabricConfig { request_timeout_ms: 5_000, fail_open_users: true, fail_open_agents: false }
    }
}

impl Config {
    /// Loads defaults → optional TOML file → `GATEWAY_*` environment, then validates.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            fig = fig.merge(Toml::file_exact(path));
        }
        // Only keys the configuration knows: an orchestrator sets unrelated GATEWAY_*
        // variables (Kubernetes service links, GATEWAY_CONFIG for --config), which must
        // not stop the node. Typos inside a known section are still refused.
        let known = Self::top_level_keys();
        let env = Env::prefixed("GATEWAY_").split("__").filter(move |k| {
            let top = k.as_str().split('.').next().unwrap_or_default().to_ascii_lowercase();
            known.contains(&top)
        });
        Self::from_figment(fig.merge(env))
    }

    /// The names of the top-level keys.
    pub fn top_level_keys() -> Vec<String> {
        match serde_json::to_value(Config::default()) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Extracts and validates a configuration from any figment (tests build their own).
    pub fn from_figment(fig: Figment) -> Result<Self, ConfigError> {
        let mut cfg: Config = fig.extract().map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses `api_keys` (`agentId:key`) into key → agent id.
    pub fn static_api_keys(&self) -> Result<HashMap<String, String>, ConfigError> {
        let mut out = HashMap::new();
        for entry in &self.api_keys {
            let Some((agent, key)) = entry.split_once(':') else {
                return Err(ConfigError::Invalid { key: "api_keys", reason: "entries are agentId:key".into() });
            };
            if !valid_id(agent) || key.len() < 8 {
                return Err(ConfigError::Invalid {
                    key: "api_keys",
                    reason: format!("agent id {agent:?} must be a channel id and its key at least 8 characters"),
                });
            }
            out.insert(key.to_owned(), agent.to_owned());
        }
        Ok(out)
    }

    /// The encoding of a connection to `path` that names none (`ws_default_format`).
    pub fn default_encoding(&self, path: &str) -> Encoding {
        self.ws_default_format.get(path).and_then(|f| Encoding::from_format(f)).unwrap_or_default()
    }

    /// True when NATS and Redis are configured (a cluster node); false for the embedded twins.
    pub fn clustered(&self) -> bool {
        !self.nats_url.is_empty()
    }
}

/// Milliseconds as a `Duration`, for the `*_ms` keys.
pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn default_node_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    if valid_id(&host) {
        return host;
    }
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    format!("node-{}", &uuid[..8])
}

pub mod compat;
mod de;
mod history;
mod lifecycle;
mod socketio;
#[cfg(test)]
mod tests;
mod validate;
pub mod ws_paths;

pub use compat::{AutoJoin, BackendHttpConfig};
use de::{lossy_string, string_or_list};
pub use history::{HistoryConfig, NsHistory};
pub use lifecycle::LifecycleConfig;
pub use socketio::SocketIoConfig;
