//! The Redis connection shared by presence and the key store: a client that reconnects
//! forever (through Sentinel to whichever server is master, when configured), commands
//! bounded in time that fail at once while disconnected, and the reachability record
//! behind health and the fabric metrics.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use fred::prelude::{
    Builder, Client, ClientLike, ClientState, Error as RedisError, FromValue, Options, ReconnectPolicy, Value,
};
use fred::types::config::{Config as RedisConfig, ServerConfig, UnresponsiveConfig};
use fred::types::{ClusterHash, CustomCommand};

use crate::{config::Config, telemetry};

/// Longest wait for one Redis command; past it the operation fails as unavailable.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for the first connection at startup.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle-looking connection is asked for a `PING`.
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Per-command options every Redis call of the gateway uses: fail at once while
/// disconnected, give up after [`COMMAND_TIMEOUT`], never resend.
pub fn command_options() -> Options {
    Options { timeout: Some(COMMAND_TIMEOUT), fail_fast: true, max_attempts: Some(1), ..Default::default() }
}

/// The client configuration of a node: `redis_url`, or the sentinels of
/// `redis_sentinel` (with `redis_url`'s credentials and database when it is set).
fn client_config(cfg: &Config) -> Result<RedisConfig, String> {
    let mut config = if cfg.redis_url.is_empty() {
        RedisConfig::default()
    } else {
        RedisConfig::from_url(&cfg.redis_url).map_err(|e| format!("bad redis url: {e}"))?
    };
    if cfg.redis_sentinel.enabled() {
        config.server = ServerConfig::new_sentinel(cfg.redis_sentinel.hosts()?, cfg.redis_sentinel.master.clone());
    }
    Ok(config)
}

/// Where a node's Redis is, without credentials, for logs and `/health`.
pub fn describe(cfg: &Config) -> String {
    if cfg.redis_sentinel.enabled() {
        format!("sentinel:{}@{}", cfg.redis_sentinel.master, cfg.redis_sentinel.nodes.join(","))
    } else {
        redacted(&cfg.redis_url)
    }
}

/// Connects a client that reconnects forever with backoff, failing within
/// [`CONNECT_TIMEOUT`] when the server cannot be reached at startup. Through Sentinel,
/// every reconnect asks the sentinels for the current master, so a failover costs one
/// reconnect.
pub async fn open_client(cfg: &Config) -> Result<Client, String> {
    let where_ = describe(cfg);
    let client = Builder::from_config(client_config(cfg)?)
        .with_connection_config(|c| {
            c.connection_timeout = CONNECT_TIMEOUT;
            c.internal_command_timeout = CONNECT_TIMEOUT;
            c.unresponsive =
                UnresponsiveConfig { max_timeout: Some(COMMAND_TIMEOUT * 3), interval: COMMAND_TIMEOUT / 2 };
        })
        .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
        // Backoff capped at 2 s: a restarted or newly promoted server is found within
        // that, since a failover must not wait out a long backoff.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build()
        .map_err(|e| format!("redis client: {e}"))?;
    match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_millis(500), client.init()).await {
        Ok(Ok(_driver)) => Ok(client),
        Ok(Err(e)) => Err(format!("cannot connect to redis at {where_}: {e}")),
        Err(_) => {
            let _ = client.quit().await;
            Err(format!("cannot connect to redis at {where_}: timed out"))
        }
    }
}

/// Sends a `PING` (bounded by [`COMMAND_TIMEOUT`]); when a connection believed up does
/// not answer, it is marked down and replaced. fred's own unresponsiveness check measures
/// from the latest write, so a node that keeps writing (lease refreshes) would never trip
/// it on a connection that silently stopped answering (a partition, a frozen server):
/// every command would time out while `/ready` said all is well.
pub(super) async fn probe(client: &Client, opts: &Options, link: &Link) {
    if client.state() != ClientState::Connected {
        return;
    }
    let Err(e) = client.with_options(opts).ping::<Value>(None).await else { return };
    if client.state() != ClientState::Connected {
        return;
    }
    tracing::warn!(addr = %link.addr, error = %e, "redis does not answer; reconnecting");
    link.observe(ClientState::Disconnected);
    // Returns once the reconnection was attempted; bounded so the monitor keeps running.
    let _ = tokio::time::timeout(COMMAND_TIMEOUT, client.force_reconnection()).await;
}

/// Runs a Lua script: `EVALSHA` when `sha` is given, `EVAL` when it is not or the server
/// forgot the script (restart). Goes through `custom` because fred's `LuaInterface`
/// ignores per-command [`Options`] (no fail-fast there).
pub async fn eval<R: FromValue>(
    client: &Client,
    opts: &Options,
    body: &str,
    sha: Option<&str>,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<R, RedisError> {
    let c = client.with_options(opts);
    let mut argv: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
    argv.push(Value::from(sha.unwrap_or(body)));
    argv.push(Value::from(keys.len() as i64));
    argv.extend(keys.into_iter().chain(args).map(Value::from));
    if sha.is_some() {
        let cmd = CustomCommand::new_static("EVALSHA", ClusterHash::FirstKey, false);
        match c.custom(cmd, argv.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => argv[0] = Value::from(body),
            res => return res,
        }
    }
    c.custom(CustomCommand::new_static("EVAL", ClusterHash::FirstKey, false), argv).await
}

/// The URL without credentials.
pub(super) fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
        _ => url.to_owned(),
    }
}

/// Reachability as last observed, for health and the fabric metrics.
pub(super) struct Link {
    /// Whether the client was connected at the last observation.
    pub(super) up: AtomicBool,
    /// When the current outage began, to record the gap.
    down_since: Mutex<Option<Instant>>,
    /// Server address (no credentials), for operators.
    pub(super) addr: String,
}

impl Link {
    /// A link not yet observed up, for the server at `addr`.
    pub(super) fn new(addr: String) -> Self {
        Link { up: AtomicBool::new(false), down_since: Mutex::new(None), addr }
    }

    /// Records the client's state; counts outages and gaps on transitions.
    pub(super) fn observe(&self, state: ClientState) {
        let up = state == ClientState::Connected;
        if self.up.swap(up, Ordering::AcqRel) == up {
            return;
        }
        metrics::gauge!(telemetry::FABRIC_UP, "component" => "redis").set(if up { 1.0 } else { 0.0 });
        let mut since = self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        if up {
            if let Some(t) = since.take() {
                metrics::histogram!(telemetry::FABRIC_GAP_SECONDS, "component" => "redis")
                    .record(t.elapsed().as_secs_f64());
                tracing::info!(addr = %self.addr, gap_ms = t.elapsed().as_millis() as u64, "redis reconnected");
            }
        } else {
            *since = Some(Instant::now());
            metrics::counter!(telemetry::FABRIC_OUTAGES, "component" => "redis").increment(1);
            tracing::warn!(addr = %self.addr, "redis unreachable");
        }
    }
}
