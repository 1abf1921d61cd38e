//! The SDK's configuration and its builder: where to connect, how to authenticate, and
//! the reconnect, queue, pacing and timeout policies. Defaults follow seed 000 and the
//! TypeScript client: backoff 1 s → 30 s with full jitter, no retry limit, a 1000-message
//! drop-oldest queue, pacing under the server's 10/s, 100/min.

use std::{sync::Arc, time::Duration};

use gateway_protocol::Encoding;

use crate::{
    backoff::{BackoffConfig, Jitter},
    credentials::{Credentials, TokenSource},
    error::GatewayError,
    gateway::Gateway,
    pacer::RateLimit,
    queue::OverflowPolicy,
};

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The URL is not `ws://` or `wss://`.
    #[error("url must start with ws:// or wss://, got {0:?}")]
    Url(String),
    /// No token, API key or token callback was given.
    #[error("credentials are required: token, api_key or token_source")]
    NoCredentials,
    /// The flat shape carries no ids, acks or positions; the SDK speaks canonical frames.
    #[error("the SDK speaks JSON or MessagePack, not the flat shape")]
    Flat,
    /// A bound is zero where it must not be.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

/// Everything the connection task needs.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `ws(s)://host:port/ws`, query allowed (e.g. `?subscribe=`).
    pub url: String,
    /// How to authenticate every connection.
    pub credentials: Credentials,
    /// JSON (default) or MessagePack; the canonical frames either way.
    pub encoding: Encoding,
    /// Extra handshake headers (e.g. `Origin`).
    pub headers: Vec<(String, String)>,
    /// Reconnect pacing, retry limit and reset.
    pub backoff: BackoffConfig,
    /// Reconnect at all; off makes the first lost connection final.
    pub reconnect: bool,
    /// Bound of the offline queue; `None` turns it off (calls fail with `NotConnected`).
    pub queue_capacity: Option<usize>,
    /// What a full offline queue does.
    pub overflow: OverflowPolicy,
    /// Pacing of queued frames under the server's limits; `None` turns it off.
    pub rate_limit: Option<RateLimit>,
    /// Default bound of `request` (queue wait included).
    pub request_timeout: Duration,
    /// How long a written `send`/`publish` waits for its `ack`.
    pub ack_timeout: Duration,
    /// Bound of one connection attempt: TCP, handshake and the `connected` frame.
    pub connect_timeout: Duration,
    /// Refresh a JWT this long before its `exp` (or half-way when that is sooner).
    pub refresh_before: Duration,
    /// Ping a quiet connection after this long (`None`: the server's `heartbeatMs`).
    pub heartbeat_interval: Option<Duration>,
    /// A ping unanswered this long counts the connection dead and reconnects.
    pub heartbeat_timeout: Duration,
    /// Events buffered per stream before a slow reader starts missing them.
    pub event_buffer: usize,
}

impl GatewayConfig {
    /// Defaults for `url` and `credentials`.
    pub fn new(url: impl Into<String>, credentials: Credentials) -> Self {
        GatewayConfig {
            url: url.into(),
            credentials,
            encoding: Encoding::Json,
            headers: Vec::new(),
            backoff: BackoffConfig::default(),
            reconnect: true,
            queue_capacity: Some(1000),
            overflow: OverflowPolicy::DropOldest,
            rate_limit: Some(RateLimit::default()),
            request_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            refresh_before: Duration::from_secs(60),
            heartbeat_interval: None,
            heartbeat_timeout: Duration::from_secs(10),
            event_buffer: 1024,
        }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("ws://") || self.url.starts_with("wss://")) {
            return Err(ConfigError::Url(self.url.clone()));
        }
        if self.encoding == Encoding::Flat {
            return Err(ConfigError::Flat);
        }
        if self.queue_capacity == Some(0) {
            return Err(ConfigError::Zero("queue capacity"));
        }
        if self.event_buffer == 0 {
            return Err(ConfigError::Zero("event buffer"));
        }
        Ok(())
    }
}

/// Builds a [`Gateway`]: `Gateway::builder(url).api_key(k).connect().await`.
#[derive(Debug)]
pub struct GatewayBuilder {
    /// The URL, until credentials complete the configuration.
    url: String,
    /// The credentials, once given.
    credentials: Option<Credentials>,
    /// Everything else (credentials inside are a placeholder until `build`).
    config: GatewayConfig,
}

impl GatewayBuilder {
    /// Starts from the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        GatewayBuilder {
            config: GatewayConfig::new(url.clone(), Credentials::Token(String::new())),
            url,
            credentials: None,
        }
    }

    /// A fixed JWT (or key), sent as `Authorization: Bearer`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::Token(token.into()));
        self
    }

    /// An agent API key, sent as `X-API-Key`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::ApiKey(key.into()));
        self
    }

    /// An async callback asked for a fresh token before every connect and refresh.
    pub fn token_source(mut self, source: impl TokenSource + 'static) -> Self {
        self.credentials = Some(Credentials::Callback(Arc::new(source)));
        self
    }

    /// JSON (default) or MessagePack.
    pub fn encoding(mut self, e: gateway_protocol::Encoding) -> Self {
        self.config.encoding = e;
        self
    }

    /// Adds a handshake header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.headers.push((name.into(), value.into()));
        self
    }

    /// The first and the largest backoff cap (default 1 s and 30 s).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.config.backoff.base = base;
        self.config.backoff.max = max;
        self
    }

    /// Gives up after `n` failed attempts in a row.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.config.backoff.max_retries = Some(n);
        self
    }

    /// Uptime after which the attempt count resets (default 5 s).
    pub fn stable_after(mut self, d: Duration) -> Self {
        self.config.backoff.stable_after = d;
        self
    }

    /// The jitter source (tests pin it).
    pub fn jitter(mut self, j: impl Jitter + 'static) -> Self {
        self.config.backoff.jitter = Arc::new(j);
        self
    }

    /// Never reconnect.
    pub fn no_reconnect(mut self) -> Self {
        self.config.reconnect = false;
        self
    }

    /// The offline queue's bound and policy (default 1000, drop-oldest).
    pub fn offline_queue(mut self, capacity: usize, policy: OverflowPolicy) -> Self {
        self.config.queue_capacity = Some(capacity);
        self.config.overflow = policy;
        self
    }

    /// No offline queue: calls while disconnected fail with `NotConnected`.
    pub fn no_offline_queue(mut self) -> Self {
        self.config.queue_capacity = None;
        self
    }

    /// The pacing budget, or `None` for no pacing.
    pub fn rate_limit(mut self, limit: Option<RateLimit>) -> Self {
        self.config.rate_limit = limit;
        self
    }

    /// Default `request` timeout (default 10 s).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.config.request_timeout = d;
        self
    }

    /// `ack` timeout of `send`/`publish` (default 10 s).
    pub fn ack_timeout(mut self, d: Duration) -> Self {
        self.config.ack_timeout = d;
        self
    }

    /// Bound of one connection attempt (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.config.connect_timeout = d;
        self
    }

    /// Refresh this long before a JWT's `exp` (default 60 s).
    pub fn refresh_before(mut self, d: Duration) -> Self {
        self.config.refresh_before = d;
        self
    }

    /// Client-side liveness: ping after `interval` of quiet, give up `timeout` later.
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.config.heartbeat_interval = Some(interval);
        self.config.heartbeat_timeout = timeout;
        self
    }

    /// Events buffered per stream (default 1024).
    pub fn event_buffer(mut self, n: usize) -> Self {
        self.config.event_buffer = n;
        self
    }

    /// The checked configuration.
    pub fn build(self) -> Result<GatewayConfig, ConfigError> {
        let credentials = self.credentials.ok_or(ConfigError::NoCredentials)?;
        let config = GatewayConfig { url: self.url, credentials, ..self.config };
        config.validate()?;
        Ok(config)
    }

    /// Starts the connection task and returns at once; see [`Gateway::start`].
    pub fn start(self) -> Result<Gateway, ConfigError> {
        Ok(Gateway::start(self.build()?))
    }

    /// Starts and waits until connected, or until the gateway stopped for good.
    pub async fn connect(self) -> Result<Gateway, GatewayError> {
        let gw = self.start()?;
        gw.connected().await?;
        Ok(gw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(GatewayBuilder::new("ws://h/ws").build().err(), Some(ConfigError::NoCredentials));
        assert!(matches!(GatewayBuilder::new("http://h").token("t").build(), Err(ConfigError::Url(_))));
        let flat = GatewayBuilder::new("ws://h/ws").api_key("k").encoding(Encoding::Flat).build();
        assert_eq!(flat.err(), Some(ConfigError::Flat));
        let zero = GatewayBuilder::new("ws://h/ws").api_key("k").offline_queue(0, OverflowPolicy::Error).build();
        assert_eq!(zero.err(), Some(ConfigError::Zero("queue capacity")));
        let ok = GatewayBuilder::new("wss://h/ws").api_key("k").max_retries(3).build().expect("valid");
        assert_eq!(ok.backoff.max_retries, Some(3));
        assert!(matches!(ok.credentials, Credentials::ApiKey(_)));
    }
}
