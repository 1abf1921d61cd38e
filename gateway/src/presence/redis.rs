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

mod conn;
mod lua;

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, atomic::Ordering},
    time::Duration,
};

use async_trait::async_trait;
use fred::prelude::{
    Client, ClientLike, Error as RedisError, EventInterface, FromValue, KeysInterface, LuaInterface, Options,
    SortedSetsInterface,
};
use gateway_protocol::{Channel, Principal, PrincipalKind};
use tokio::sync::{RwLock, broadcast::error::RecvError};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use conn::{COMMAND_TIMEOUT, CONNECT_TIMEOUT, command_options, eval, open_client};
use conn::{Link, redacted};
use lua::{Lua, SCRIPTS};

use super::{Admission, ChannelStats, ConnRef, Expired, NodeReport, Presence, PresenceError};
use crate::{bus::ComponentHealth, config::Config};

/// Entries one script call refreshes at most (keeps each script short).
const REFRESH_BATCH: usize = 500;
/// Channels reaped per script call.
const REAP_CHANNELS: usize = 64;
/// Expired entries removed per channel per script call.
const REAP_ENTRIES: usize = 256;
/// Reap calls per `maintain`: bounds a tick's work; the rest waits for the next tick.
const REAP_ROUNDS: usize = 32;

/// This node's own leases, rewritten by `maintain`.
#[derive(Default)]
struct Local {
    /// Conns key → members (`node/conn`) this node holds there.
    conns: HashMap<String, HashSet<String>>,
    /// Channel → member → principal field (`kind/id`).
    channels: HashMap<Channel, HashMap<String, String>>,
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
    /// SHA-1 of each of [`SCRIPTS`], as the server computed it when they were loaded.
    shas: [String; SCRIPTS.len()],
    /// This node's leases.
    local: Mutex<Local>,
    /// Held shared by writes, exclusively by the refresh, so a refresh never re-adds an
    /// entry that a concurrent `leave`/`release` just removed.
    gate: RwLock<()>,
    /// Reachability.
    link: Link,
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
        let mut shas: [String; SCRIPTS.len()] = Default::default();
        for (sha, body) in shas.iter_mut().zip(SCRIPTS) {
            *sha = client.script_load(body).await.map_err(unavailable)?;
        }
        let link = Link::new(redacted(url));
        link.observe(client.state());
        Ok(RedisPresence {
            client,
            opts: command_options(),
            prefix: prefix.to_owned(),
            lease_ms,
            shas,
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
                // The event streams close when the client quits: nothing left to watch.
                let closed = tokio::select! {
                    _ = cancel.cancelled() => true,
                    r = errors.recv() => matches!(r, Err(RecvError::Closed)),
                    r = reconnects.recv() => matches!(r, Err(RecvError::Closed)),
                    _ = tick.tick() => false,
                };
                if closed {
                    break;
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
    async fn run<R: FromValue>(&self, s: Lua, keys: Vec<String>, args: Vec<String>) -> Result<R, PresenceError> {
        let (body, sha) = (SCRIPTS[s as usize], &self.shas[s as usize]);
        let res = eval(&self.client, &self.opts, body, Some(sha), keys, args).await;
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
        self.run(Lua::Live, vec![z], vec![]).await
    }

    /// Rewrites this node's leases (re-adding what Redis lost).
    async fn refresh(&self) -> Result<(), PresenceError> {
        let _exclusive = self.gate.write().await;
        let (conns, channels) = {
            let l = self.local();
            (l.conns.clone(), l.channels.clone())
        };
        let conns = conns.into_iter().map(|(key, members)| {
            let n = members.len();
            (vec![key], std::iter::once(n.to_string()).chain(members).collect(), n)
        });
        self.run_batched(Lua::RefreshConns, vec![], conns).await?;
        let channels = channels.into_iter().map(|(ch, members)| {
            let (n, mut args) = (members.len(), vec![ch.as_str().to_owned()]);
            args.push(n.to_string());
            args.extend(members.into_iter().flat_map(|(m, p)| [m, p]));
            (self.channel_keys(ch.as_str()).to_vec(), args, n)
        });
        let restored = self.run_batched(Lua::RefreshPresence, vec![self.index_key()], channels).await?;
        if restored > 0 {
            tracing::info!(restored, "re-established presence entries missing from redis");
        }
        Ok(())
    }

    /// Runs a refresh script over `groups` (keys, args, entries) in calls of about
    /// [`REFRESH_BATCH`] entries, each call's keys starting with `head`; sums the results.
    async fn run_batched(
        &self,
        s: Lua,
        head: Vec<String>,
        groups: impl Iterator<Item = (Vec<String>, Vec<String>, usize)>,
    ) -> Result<i64, PresenceError> {
        let start = || (head.clone(), vec![self.lease_ms.to_string()], 0);
        let (mut total, mut batch) = (0, start());
        for (keys, args, n) in groups {
            batch.0.extend(keys);
            batch.1.extend(args);
            batch.2 += n;
            if batch.2 >= REFRESH_BATCH {
                let (keys, args, _) = std::mem::replace(&mut batch, start());
                total += self.run::<i64>(s, keys, args).await?;
            }
        }
        if batch.0.len() > head.len() {
            total += self.run::<i64>(s, batch.0, batch.1).await?;
        }
        Ok(total)
    }

    /// Removes expired entries of any node; each resulting leave is returned by exactly one
    /// caller cluster-wide. Work per call is bounded; a failure keeps what was reaped.
    async fn reap(&self) -> Vec<Expired> {
        let mut out = Vec::new();
        for _ in 0..REAP_ROUNDS {
            let due: Vec<String> =
                match self.run(Lua::Due, vec![self.index_key()], vec![REAP_CHANNELS.to_string()]).await {
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
            let gone: Vec<String> = match self.run(Lua::Reap, keys, args).await {
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
        let admitted: i64 = self.run(Lua::Admit, vec![key.clone()], args).await?;
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
        let first: i64 = self.run(Lua::Join, vec![z, counts, self.index_key()], args).await?;
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
        let last: i64 = self.run(Lua::Leave, vec![z, counts, self.index_key()], args).await?;
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
        self.run::<i64>(Lua::Beat, vec![node_key, self.key(&["nodes"])], args).await?;
        self.refresh().await?;
        Ok(self.reap().await)
    }

    async fn nodes(&self) -> Result<Vec<NodeReport>, PresenceError> {
        let mut ids: Vec<String> = self.run(Lua::Live, vec![self.key(&["nodes"])], vec![]).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        ids.sort();
        let keys = ids.iter().map(|id| self.key(&["node", id])).collect();
        let fields: Vec<String> = self.run(Lua::NodeFields, keys, vec![]).await?;
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
