//! Redis implementation of presence, shared by every node of a cluster.
//!
//! Keys (all under the configured prefix, `gw:` by default):
//! - `conns:{kind}:{id}` ZSET, member `node/conn`, score = lease expiry (ms): connection
//!   counts for per-principal limits. The key itself expires one lease after its last write.
//! - `presence:{channel}` ZSET, member `node/conn/kind/id`, score = lease expiry.
//! - `presence-count:{channel}` HASH `kind/id` → entries of that principal in the ZSET, so
//!   `join`/`leave` answer "first"/"last" in O(1).
//! - `presence-index` ZSET channel → earliest expiry in that channel: reapers fetch only
//!   channels with something due.
//! - `node:{id}` HASH (the node report, expiring with its lease) and `nodes` ZSET id → expiry.
//!
//! Every lease is stamped with the Redis server's `TIME` inside Lua scripts, so node clock
//! skew cannot expire entries early or late. Every write is one atomic, idempotent script
//! (a retried script changes nothing twice), which is what makes admission limits exact and
//! expiry leaves reported exactly once cluster-wide.
//!
//! Each node remembers its own leases in memory; [`Presence::maintain`] rewrites them, so
//! after Redis loses its data (restart without persistence) the next tick restores them.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use fred::prelude::{
    Builder, Client, ClientLike, ClientState, Error as RedisError, EventInterface, FromValue, KeysInterface,
    LuaInterface, Options, ReconnectPolicy, SortedSetsInterface, Value,
};
use fred::types::config::{Config as RedisConfig, UnresponsiveConfig};
use fred::types::{ClusterHash, CustomCommand};
use gateway_protocol::{Channel, Principal, PrincipalKind};
use tokio::sync::RwLock;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{Admission, ChannelStats, ConnRef, Expired, NodeReport, Presence, PresenceError};
use crate::{bus::ComponentHealth, config::Config, telemetry};

/// Longest wait for one Redis command; past it the operation fails as unavailable.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for the first connection at startup.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Entries one script call refreshes at most (keeps each script short).
const REFRESH_BATCH: usize = 500;
/// Channels reaped per script call.
const REAP_CHANNELS: usize = 64;
/// Expired entries removed per channel per script call.
const REAP_ENTRIES: usize = 1_000;
/// Reap calls per `maintain`: bounds a tick's work; the rest waits for the next tick.
const REAP_ROUNDS: usize = 8;

/// Shared prelude: the server clock in ms, and the index upkeep after a channel changes.
macro_rules! lua {
    ($body:literal) => {
        concat!(
            "local t = redis.call('TIME')\n",
            "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n",
            "local function reindex(z, c, idx, ch)\n",
            "  local f = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')\n",
            "  if f[2] then redis.call('ZADD', idx, f[2], ch)\n",
            "  else redis.call('ZREM', idx, ch); redis.call('DEL', c) end\n",
            "end\n",
            $body
        )
    };
}

/// KEYS conns; ARGV member, limit, lease → 1 admitted, 0 full.
const ADMIT: &str = lua!(
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
  return 1
end
return 0"
);
/// KEYS zset, counts, index; ARGV member, principal, lease, channel → 1 when first.
const JOIN: &str = lua!(
    "local first = 0
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then first = 1 end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
reindex(KEYS[1], KEYS[2], KEYS[3], ARGV[4])
return first"
);
/// KEYS zset, counts, index; ARGV member, principal, channel → 1 when last.
const LEAVE: &str = lua!(
    "local last = 0
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then redis.call('HDEL', KEYS[2], ARGV[2]); last = 1 end
end
reindex(KEYS[1], KEYS[2], KEYS[3], ARGV[3])
return last"
);
/// KEYS zset → members whose lease has not expired.
const LIVE: &str = lua!("return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')");
/// KEYS conns...; ARGV lease, then per key: n, n members. Drops expired members too.
const REFRESH_CONNS: &str = lua!(
    "local lease = tonumber(ARGV[1])
local i = 2
for _, k in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  local n = tonumber(ARGV[i]); i = i + 1
  for j = 1, n do redis.call('ZADD', k, now + lease, ARGV[i]); i = i + 1 end
  if redis.call('PTTL', k) < lease then redis.call('PEXPIRE', k, lease) end
end
return 0"
);
/// KEYS index, (zset, counts)...; ARGV lease, then per channel: name, n, n × (member,
/// principal). Re-adds (and counts) entries Redis lost → number re-added.
const REFRESH_PRESENCE: &str = lua!(
    "local lease = tonumber(ARGV[1])
local i, added = 2, 0
for k = 2, #KEYS, 2 do
  local z, c = KEYS[k], KEYS[k + 1]
  local ch, n = ARGV[i], tonumber(ARGV[i + 1]); i = i + 2
  for j = 1, n do
    if not redis.call('ZSCORE', z, ARGV[i]) then redis.call('HINCRBY', c, ARGV[i + 1], 1); added = added + 1 end
    redis.call('ZADD', z, now + lease, ARGV[i]); i = i + 2
  end
  reindex(z, c, KEYS[1], ch)
end
return added"
);
/// KEYS index; ARGV limit → channels with an expired entry.
const DUE: &str = lua!("return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])");
/// KEYS index, (zset, counts)...; ARGV limit, channel names → flat (channel, principal)
/// pairs whose last entry expired. Atomic: one caller removes (and reports) each entry.
const REAP: &str = lua!(
    "local out = {}
for k = 2, #KEYS, 2 do
  local z, c, ch = KEYS[k], KEYS[k + 1], ARGV[k / 2 + 1]
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, ARGV[1])) do
    redis.call('ZREM', z, m)
    local p = string.match(m, '^[^/]*/[^/]*/(.*)$')
    if p and redis.call('HINCRBY', c, p, -1) <= 0 then
      redis.call('HDEL', c, p); table.insert(out, ch); table.insert(out, p)
    end
  end
  reindex(z, c, KEYS[1], ch)
end
return out"
);
/// KEYS node hash, nodes; ARGV node, lease, connections, users, agents, status.
const BEAT: &str = lua!(
    "redis.call('HSET', KEYS[1], 'connections', ARGV[3], 'connectedUsers', ARGV[4], 'connectedAgents', ARGV[5],
  'status', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return 0"
);
/// KEYS node hashes → 4 fields per node, flat.
const NODE_FIELDS: &str = lua!(
    "local out = {}
for _, k in ipairs(KEYS) do
  for _, v in ipairs(redis.call('HMGET', k, 'connections', 'connectedUsers', 'connectedAgents', 'status')) do
    table.insert(out, v or '')
  end
end
return out"
);

/// A script and its SHA-1 as the server computed it at load time.
struct Script {
    /// Sent with `EVAL` when the server forgot the script (restart).
    body: &'static str,
    /// Sent with `EVALSHA` normally.
    sha: String,
}

/// Every script, loaded once at connect.
struct Scripts {
    /// See [`ADMIT`].
    admit: Script,
    /// See [`JOIN`].
    join: Script,
    /// See [`LEAVE`].
    leave: Script,
    /// See [`LIVE`].
    live: Script,
    /// See [`REFRESH_CONNS`].
    refresh_conns: Script,
    /// See [`REFRESH_PRESENCE`].
    refresh_presence: Script,
    /// See [`DUE`].
    due: Script,
    /// See [`REAP`].
    reap: Script,
    /// See [`BEAT`].
    beat: Script,
    /// See [`NODE_FIELDS`].
    node_fields: Script,
}

/// This node's own leases, rewritten by `maintain`.
#[derive(Default)]
struct Local {
    /// Conns key → members (`node/conn`) this node holds there.
    conns: HashMap<String, HashSet<String>>,
    /// Channel → member → principal field (`kind/id`).
    channels: HashMap<Channel, HashMap<String, String>>,
}

/// Reachability as last observed, for health and the fabric metrics.
struct Link {
    /// Whether the client was connected at the last observation.
    up: AtomicBool,
    /// When the current outage began, to record the gap.
    down_since: Mutex<Option<Instant>>,
    /// Server address (no credentials), for operators.
    addr: String,
}

impl Link {
    /// Records the client's state; counts outages and gaps on transitions.
    fn observe(&self, state: ClientState) {
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

/// Presence in Redis: leases, limits and the node registry shared by the cluster.
pub struct RedisPresence {
    /// The connection (reconnects forever with backoff).
    client: Client,
    /// Per-command options: bounded timeout, fail fast while disconnected.
    opts: Options,
    /// Key prefix (`gw:`).
    prefix: String,
    /// Lease length in ms.
    lease_ms: u64,
    /// The scripts, loaded at connect.
    scripts: Scripts,
    /// This node's leases.
    local: Mutex<Local>,
    /// Held shared by writes, exclusively by the refresh, so a refresh never re-adds an
    /// entry that a concurrent `leave`/`release` just removed.
    gate: RwLock<()>,
    /// Reachability.
    link: Link,
}

/// Per-command options every Redis call of the gateway uses: fail at once while
/// disconnected, give up after [`COMMAND_TIMEOUT`], never resend.
pub fn command_options() -> Options {
    Options { timeout: Some(COMMAND_TIMEOUT), fail_fast: true, max_attempts: Some(1), ..Default::default() }
}

/// Connects a client that reconnects forever with backoff, failing within
/// [`CONNECT_TIMEOUT`] when the server cannot be reached at startup.
pub async fn open_client(url: &str) -> Result<Client, String> {
    let config = RedisConfig::from_url(url).map_err(|e| format!("bad redis url: {e}"))?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = CONNECT_TIMEOUT;
            c.internal_command_timeout = CONNECT_TIMEOUT;
            c.unresponsive =
                UnresponsiveConfig { max_timeout: Some(COMMAND_TIMEOUT * 3), interval: COMMAND_TIMEOUT / 2 };
        })
        .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build()
        .map_err(|e| format!("redis client: {e}"))?;
    match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_millis(500), client.init()).await {
        Ok(Ok(_driver)) => Ok(client),
        Ok(Err(e)) => Err(format!("cannot connect to redis at {}: {e}", redacted(url))),
        Err(_) => {
            let _ = client.quit().await;
            Err(format!("cannot connect to redis at {}: timed out", redacted(url)))
        }
    }
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
fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
        _ => url.to_owned(),
    }
}

/// `%` and `/` escaped so a member splits unambiguously on `/`.
fn esc(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

/// `kind/id`, the principal field of the count hash (the id may contain anything).
fn principal_field(p: &Principal) -> String {
    format!("{}/{}", p.kind.as_str(), p.id)
}

/// Parses `kind/id`.
fn parse_principal(field: &str) -> Option<Principal> {
    let (kind, id) = field.split_once('/')?;
    let kind = match kind {
        "user" => PrincipalKind::User,
        "agent" => PrincipalKind::Agent,
        _ => return None,
    };
    Some(Principal { kind, id: id.to_owned() })
}

/// The principal of a presence member `node/conn/kind/id`.
fn member_principal(member: &str) -> Option<Principal> {
    parse_principal(member.splitn(3, '/').nth(2)?)
}

impl RedisPresence {
    /// Connects to `cfg.redis_url` and loads the scripts; fails fast when unreachable.
    pub async fn connect(cfg: &Config) -> Result<RedisPresence, PresenceError> {
        let client = open_client(&cfg.redis_url).await.map_err(PresenceError::Unavailable)?;
        Self::with_client(client, &cfg.redis_prefix, cfg.presence.lease_ms, &cfg.redis_url).await
    }

    /// Builds on an already connected client (shared with the key store, say).
    pub async fn with_client(client: Client, prefix: &str, lease_ms: u64, url: &str) -> Result<Self, PresenceError> {
        let load = |body: &'static str| {
            let client = client.clone();
            async move {
                let sha: String =
                    client.with_options(&command_options()).script_load(body).await.map_err(unavailable)?;
                Ok::<_, PresenceError>(Script { body, sha })
            }
        };
        let scripts = Scripts {
            admit: load(ADMIT).await?,
            join: load(JOIN).await?,
            leave: load(LEAVE).await?,
            live: load(LIVE).await?,
            refresh_conns: load(REFRESH_CONNS).await?,
            refresh_presence: load(REFRESH_PRESENCE).await?,
            due: load(DUE).await?,
            reap: load(REAP).await?,
            beat: load(BEAT).await?,
            node_fields: load(NODE_FIELDS).await?,
        };
        let link = Link { up: AtomicBool::new(false), down_since: Mutex::new(None), addr: redacted(url) };
        link.observe(client.state());
        Ok(RedisPresence {
            client,
            opts: command_options(),
            prefix: prefix.to_owned(),
            lease_ms,
            scripts,
            local: Mutex::default(),
            gate: RwLock::new(()),
            link,
        })
    }

    /// The underlying client, to share the connection (e.g. with the key store).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Watches the connection so outages are counted as they happen rather than when
    /// next observed; stops when `cancel` fires.
    pub fn spawn_monitor(self: &std::sync::Arc<Self>, tasks: &TaskTracker, cancel: CancellationToken) {
        let me = std::sync::Arc::clone(self);
        tasks.spawn(async move {
            let mut errors = me.client.error_rx();
            let mut reconnects = me.client.reconnect_rx();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = errors.recv() => {}
                    _ = reconnects.recv() => {}
                    _ = tick.tick() => {}
                }
                me.link.observe(me.client.state());
            }
        });
    }

    /// Closes the connection (after shutdown).
    pub async fn close(&self) {
        let _ = self.client.quit().await;
    }

    /// Runs a script by hash, resending its body when the server forgot it.
    async fn run<R: FromValue>(&self, s: &Script, keys: Vec<String>, args: Vec<String>) -> Result<R, PresenceError> {
        let res = eval(&self.client, &self.opts, s.body, Some(&s.sha), keys, args).await;
        if res.is_err() {
            self.link.observe(self.client.state());
        }
        res.map_err(unavailable)
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        k.push_str(&parts.join(":"));
        k
    }

    fn conns_key(&self, p: &Principal) -> String {
        self.key(&["conns", p.kind.as_str(), &p.id])
    }

    /// The zset and count hash of a channel.
    fn channel_keys(&self, ch: &str) -> [String; 2] {
        [self.key(&["presence", ch]), self.key(&["presence-count", ch])]
    }

    fn index_key(&self) -> String {
        self.key(&["presence-index"])
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Non-expired members of a channel.
    async fn live(&self, ch: &Channel) -> Result<Vec<String>, PresenceError> {
        let [z, _] = self.channel_keys(ch.as_str());
        self.run(&self.scripts.live, vec![z], vec![]).await
    }

    /// Rewrites this node's leases (re-adding what Redis lost).
    async fn refresh(&self) -> Result<(), PresenceError> {
        let _exclusive = self.gate.write().await;
        let (conns, channels) = {
            let l = self.local();
            (l.conns.clone(), l.channels.clone())
        };
        let lease = self.lease_ms.to_string();
        // Connection leases, batched by member count.
        let mut batch: (Vec<String>, Vec<String>, usize) = (Vec::new(), vec![lease.clone()], 0);
        for (key, members) in conns {
            batch.0.push(key);
            batch.1.push(members.len().to_string());
            batch.2 += members.len();
            batch.1.extend(members);
            if batch.2 >= REFRESH_BATCH {
                let (k, a, _) = std::mem::replace(&mut batch, (Vec::new(), vec![lease.clone()], 0));
                self.run::<i64>(&self.scripts.refresh_conns, k, a).await?;
            }
        }
        if !batch.0.is_empty() {
            self.run::<i64>(&self.scripts.refresh_conns, batch.0, batch.1).await?;
        }
        // Channel entries.
        let fresh = || (vec![self.index_key()], vec![lease.clone()], 0);
        let mut batch: (Vec<String>, Vec<String>, usize) = fresh();
        let mut restored = 0;
        for (ch, members) in channels {
            batch.0.extend(self.channel_keys(ch.as_str()));
            batch.1.extend([ch.as_str().to_owned(), members.len().to_string()]);
            batch.2 += members.len();
            batch.1.extend(members.into_iter().flat_map(|(m, p)| [m, p]));
            if batch.2 >= REFRESH_BATCH {
                let (k, a, _) = std::mem::replace(&mut batch, fresh());
                restored += self.run::<i64>(&self.scripts.refresh_presence, k, a).await?;
            }
        }
        if batch.0.len() > 1 {
            restored += self.run::<i64>(&self.scripts.refresh_presence, batch.0, batch.1).await?;
        }
        if restored > 0 {
            tracing::info!(restored, "re-established presence entries missing from redis");
        }
        Ok(())
    }

    /// Removes expired entries of any node; each resulting leave is returned by exactly one
    /// caller cluster-wide. Work per call is bounded; a failure keeps what was reaped.
    async fn reap(&self) -> Vec<Expired> {
        let mut out = Vec::new();
        for _ in 0..REAP_ROUNDS {
            let due: Vec<String> =
                match self.run(&self.scripts.due, vec![self.index_key()], vec![REAP_CHANNELS.to_string()]).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, "presence reap skipped");
                        break;
                    }
                };
            if due.is_empty() {
                break;
            }
            let mut keys = vec![self.index_key()];
            keys.extend(due.iter().flat_map(|ch| self.channel_keys(ch)));
            let mut args = vec![REAP_ENTRIES.to_string()];
            args.extend(due.iter().cloned());
            let gone: Vec<String> = match self.run(&self.scripts.reap, keys, args).await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, "presence reap interrupted");
                    break;
                }
            };
            for pair in gone.chunks_exact(2) {
                match (Channel::parse(&pair[0]), parse_principal(&pair[1])) {
                    (Ok(channel), Some(member)) => out.push(Expired { channel, member }),
                    _ => tracing::warn!(channel = %pair[0], member = %pair[1], "unparsable expired presence entry"),
                }
            }
            if due.len() < REAP_CHANNELS {
                break;
            }
        }
        out
    }
}

fn unavailable(e: RedisError) -> PresenceError {
    PresenceError::Unavailable(e.to_string())
}

#[async_trait]
impl Presence for RedisPresence {
    async fn admit(&self, c: &ConnRef<'_>, limit: u32) -> Result<Admission, PresenceError> {
        let _shared = self.gate.read().await;
        let key = self.conns_key(c.principal);
        let member = format!("{}/{}", esc(c.node), esc(c.conn));
        let args = vec![member.clone(), limit.to_string(), self.lease_ms.to_string()];
        let admitted: i64 = self.run(&self.scripts.admit, vec![key.clone()], args).await?;
        if admitted == 0 {
            return Ok(Admission::Full { limit });
        }
        self.local().conns.entry(key).or_default().insert(member);
        Ok(Admission::Admitted)
    }

    async fn release(&self, c: &ConnRef<'_>) -> Result<(), PresenceError> {
        let _shared = self.gate.read().await;
        let key = self.conns_key(c.principal);
        let member = format!("{}/{}", esc(c.node), esc(c.conn));
        {
            let mut l = self.local();
            if let Some(set) = l.conns.get_mut(&key) {
                set.remove(&member);
                if set.is_empty() {
                    l.conns.remove(&key);
                }
            }
        }
        let res: Result<i64, _> = self.client.with_options(&self.opts).zrem(key, member).await;
        if res.is_err() {
            self.link.observe(self.client.state());
        }
        res.map(drop).map_err(unavailable)
    }

    async fn join(&self, ch: &Channel, c: &ConnRef<'_>) -> Result<bool, PresenceError> {
        let _shared = self.gate.read().await;
        let [z, counts] = self.channel_keys(ch.as_str());
        let member = format!("{}/{}/{}", esc(c.node), esc(c.conn), principal_field(c.principal));
        let field = principal_field(c.principal);
        let args = vec![member.clone(), field.clone(), self.lease_ms.to_string(), ch.as_str().to_owned()];
        let first: i64 = self.run(&self.scripts.join, vec![z, counts, self.index_key()], args).await?;
        self.local().channels.entry(ch.clone()).or_default().insert(member, field);
        Ok(first == 1)
    }

    async fn leave(&self, ch: &Channel, c: &ConnRef<'_>) -> Result<bool, PresenceError> {
        let _shared = self.gate.read().await;
        let [z, counts] = self.channel_keys(ch.as_str());
        let member = format!("{}/{}/{}", esc(c.node), esc(c.conn), principal_field(c.principal));
        {
            let mut l = self.local();
            if let Some(entries) = l.channels.get_mut(ch) {
                entries.remove(&member);
                if entries.is_empty() {
                    l.channels.remove(ch);
                }
            }
        }
        let args = vec![member, principal_field(c.principal), ch.as_str().to_owned()];
        let last: i64 = self.run(&self.scripts.leave, vec![z, counts, self.index_key()], args).await?;
        Ok(last == 1)
    }

    async fn members(&self, ch: &Channel) -> Result<Vec<Principal>, PresenceError> {
        let mut out: Vec<Principal> = self
            .live(ch)
            .await?
            .iter()
            .filter_map(|m| member_principal(m))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        out.sort();
        Ok(out)
    }

    async fn stats(&self, ch: &Channel) -> Result<ChannelStats, PresenceError> {
        let mut st = ChannelStats::default();
        let mut seen = HashSet::new();
        for p in self.live(ch).await?.iter().filter_map(|m| member_principal(m)) {
            st.connections += 1;
            if let Some(p) = seen.insert(p.clone()).then_some(p) {
                match p.kind {
                    PrincipalKind::User => st.users += 1,
                    PrincipalKind::Agent => st.agents += 1,
                }
            }
        }
        Ok(st)
    }

    async fn maintain(&self, me: &NodeReport) -> Result<Vec<Expired>, PresenceError> {
        let node_key = self.key(&["node", &me.node]);
        let args = vec![
            me.node.clone(),
            self.lease_ms.to_string(),
            me.connections.to_string(),
            me.connected_users.to_string(),
            me.connected_agents.to_string(),
            me.status.clone(),
        ];
        self.run::<i64>(&self.scripts.beat, vec![node_key, self.key(&["nodes"])], args).await?;
        self.refresh().await?;
        Ok(self.reap().await)
    }

    async fn nodes(&self) -> Result<Vec<NodeReport>, PresenceError> {
        let mut ids: Vec<String> = self.run(&self.scripts.live, vec![self.key(&["nodes"])], vec![]).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        ids.sort();
        let keys = ids.iter().map(|id| self.key(&["node", id])).collect();
        let fields: Vec<String> = self.run(&self.scripts.node_fields, keys, vec![]).await?;
        Ok(ids
            .into_iter()
            .zip(fields.chunks_exact(4))
            .filter(|(_, f)| !f[3].is_empty())
            .map(|(node, f)| NodeReport {
                node,
                connections: f[0].parse().unwrap_or(0),
                connected_users: f[1].parse().unwrap_or(0),
                connected_agents: f[2].parse().unwrap_or(0),
                status: f[3].clone(),
            })
            .collect())
    }

    async fn deregister(&self, node: &str) -> Result<(), PresenceError> {
        let c = self.client.with_options(&self.opts);
        let res = async {
            c.del::<i64, _>(self.key(&["node", node])).await?;
            c.zrem::<i64, _, _>(self.key(&["nodes"]), node).await
        }
        .await;
        res.map(drop).map_err(unavailable)
    }

    fn health(&self) -> ComponentHealth {
        self.link.observe(self.client.state());
        let up = self.link.up.load(Ordering::Acquire);
        ComponentHealth { status: if up { "connected" } else { "disconnected" }, detail: self.link.addr.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_back_to_principals() {
        let p = Principal { kind: PrincipalKind::User, id: "a/b%c".into() };
        let m = format!("{}/{}/{}", esc("n1"), esc("c/1"), principal_field(&p));
        assert_eq!(member_principal(&m), Some(p));
        assert_eq!(member_principal("n/c/robot/x"), None);
        assert_eq!(redacted("redis://u:pw@h:6379/0"), "redis://h:6379/0");
    }
}
