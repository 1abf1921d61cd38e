//! Redis implementation of presence, shared by every node of a cluster.
//!
//! Keys (all under the configured prefix, `gw:` by default):
//! - `conns:{kind}:{id}` ZSET, member `node/conn`, score = lease expiry (ms): connection
//!   counts for per-principal limits, and whether a connection is its principal's first or
//!   last anywhere (agent status). Expired members do not count against the limit; they
//!   stay until a reaper removes them and reports each connection lost exactly once.
//! - `conns-index` ZSET `kind/id` → earliest expiry in that principal's `conns` set:
//!   reapers fetch only principals with something due.
//! - `presence:{channel}` ZSET, member `node/conn/kind/id`, score = lease expiry.
//! - `presence-count:{channel}` HASH `kind/id` → entries of that principal in the ZSET, so
//!   `join`/`leave` answer "first"/"last" in O(1).
//! - `presence-users:{channel}` / `presence-agents:{channel}` ZSET `kind/id` → latest expiry
//!   of that principal's entries, so `stats` is three `ZCOUNT`s and `members` a bounded
//!   range. A principal is removed when its count drops to zero; until then its score may
//!   overstate its liveness by at most the lease of an entry that left.
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
//! When a node was cut off longer than its lease, another node reaped its entries and
//! announced their leaves; the refresh that puts them back reports the principals that
//! are present again through [`RedisPresence::take_rejoined`], so the node announces their
//! joins; likewise connection counts through [`RedisPresence::take_restored`] (reported
//! again, their agents online again). (After Redis lost its data no leave was announced,
//! so those joins, and those agents' `online`, repeat.)

mod conn;
mod lua;
mod upkeep;

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
use gateway_protocol::{Channel, Principal};
use tokio::sync::{RwLock, broadcast::error::RecvError};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use conn::Link;
pub use conn::{COMMAND_TIMEOUT, CONNECT_TIMEOUT, command_options, describe, eval, open_client};
use lua::{Lua, SCRIPTS, esc, parse_principal, principal_field};

use super::{Admission, ChannelStats, ConnLease, ConnRef, Expired, NodeReport, Presence, PresenceError, Reaped};
use crate::{bus::ComponentHealth, config::Config};

/// Distinct principals [`Presence::members`] returns at most.
pub const MEMBERS_CAP: usize = 1_000;
/// Channels reaped per script call.
const REAP_CHANNELS: usize = 64;
/// Expired entries removed per channel per script call.
const REAP_ENTRIES: usize = 256;
/// Reap calls per `maintain`: bounds a tick's work; the rest waits for the next tick.
const REAP_ROUNDS: usize = 32;

/// This node's own leases, rewritten by `maintain`.
#[derive(Default)]
struct Local {
    /// Principal → members (`node/conn`) this node holds in its `conns` set.
    conns: HashMap<Principal, HashSet<String>>,
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
    /// Held shared by writes, exclusively by each refresh batch (which re-reads its entries
    /// under it), so a refresh never re-adds an entry that a concurrent `leave`/`release`
    /// just removed, while handshakes still interleave with a long refresh.
    gate: RwLock<()>,
    /// Principals a refresh brought back into a channel, until [`Self::take_rejoined`].
    rejoined: Mutex<Vec<Expired>>,
    /// Connections a refresh put back into their count, until [`Self::take_restored`].
    restored: Mutex<Vec<ConnLease>>,
    /// Reachability.
    link: Link,
}

impl RedisPresence {
    /// Connects to Redis (`cfg.redis_url`, or through `cfg.redis_sentinel`) and loads the
    /// scripts; fails fast when unreachable.
    pub async fn connect(cfg: &Config) -> Result<RedisPresence, PresenceError> {
        let client = open_client(cfg).await.map_err(PresenceError::Unavailable)?;
        Self::with_client(client, &cfg.redis_prefix, cfg.presence.lease_ms, &describe(cfg)).await
    }

    /// Builds on an already connected client (shared with the key store, say); `addr`
    /// names the server for operators and must carry no credentials.
    pub async fn with_client(client: Client, prefix: &str, lease_ms: u64, addr: &str) -> Result<Self, PresenceError> {
        let mut shas: [String; SCRIPTS.len()] = Default::default();
        for (sha, body) in shas.iter_mut().zip(SCRIPTS) {
            *sha = client.script_load(body).await.map_err(unavailable)?;
        }
        let link = Link::new(addr.to_owned());
        link.observe(client.state());
        Ok(RedisPresence {
            client,
            opts: command_options(),
            prefix: prefix.to_owned(),
            lease_ms,
            shas,
            local: Mutex::default(),
            gate: RwLock::new(()),
            rejoined: Mutex::default(),
            restored: Mutex::default(),
            link,
        })
    }

    /// The underlying client, to share the connection (e.g. with the key store).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Watches the connection so outages are counted as they happen rather than when
    /// next observed, and probes it so a connection that stopped answering is replaced;
    /// stops when `cancel` fires.
    pub fn spawn_monitor(self: &std::sync::Arc<Self>, tasks: &TaskTracker, cancel: CancellationToken) {
        let me = std::sync::Arc::clone(self);
        tasks.spawn(async move {
            let mut errors = me.client.error_rx();
            let mut reconnects = me.client.reconnect_rx();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut probe = tokio::time::interval(conn::PROBE_EVERY);
            probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // The event streams close when the client quits: nothing left to watch.
                let closed = tokio::select! {
                    _ = cancel.cancelled() => true,
                    r = errors.recv() => matches!(r, Err(RecvError::Closed)),
                    r = reconnects.recv() => matches!(r, Err(RecvError::Closed)),
                    _ = tick.tick() => false,
                    _ = probe.tick() => {
                        cancel.run_until_cancelled(conn::probe(&me.client, &me.opts, &me.link)).await;
                        false
                    }
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

    /// The keys of a channel: entries zset, count hash, users zset, agents zset.
    fn channel_keys(&self, ch: &str) -> [String; 4] {
        ["presence", "presence-count", "presence-users", "presence-agents"].map(|k| self.key(&[k, ch]))
    }

    fn index_key(&self) -> String {
        self.key(&["presence-index"])
    }

    fn conns_index_key(&self) -> String {
        self.key(&["conns-index"])
    }

    /// `KEYS` of a one-channel script: the index, then the channel's keys.
    fn script_keys(&self, ch: &Channel) -> Vec<String> {
        std::iter::once(self.index_key()).chain(self.channel_keys(ch.as_str())).collect()
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Principals that this node's refresh put back into a channel after their lapsed
    /// entries had been reaped by another node (which announced `presence.leave` for them):
    /// announce `presence.join` for each. Drains the list; call after every
    /// [`Presence::maintain`], failed or not (a failed one may have refreshed some batches).
    /// A `leave` that is last for a principal still listed here cancels it instead of
    /// reporting the leave, so the pair is never announced out of order.
    pub fn take_rejoined(&self) -> Vec<Expired> {
        std::mem::take(&mut *self.rejoined())
    }

    fn rejoined(&self) -> std::sync::MutexGuard<'_, Vec<Expired>> {
        self.rejoined.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections this node's refresh put back into their principal's count after
    /// another node had reaped them (and reported them lost): report them again, and
    /// their agent online when `edge`. Drains the list; call after every
    /// [`Presence::maintain`]. A release that is last for a principal with a pending
    /// `edge` here cancels that edge instead of reporting the release as last.
    pub fn take_restored(&self) -> Vec<ConnLease> {
        std::mem::take(&mut *self.restored())
    }

    fn restored(&self) -> std::sync::MutexGuard<'_, Vec<ConnLease>> {
        self.restored.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn unavailable(e: RedisError) -> PresenceError {
    PresenceError::Unavailable(e.to_string())
}

#[async_trait]
impl Presence for RedisPresence {
    fn take_rejoined(&self) -> Vec<Expired> {
        RedisPresence::take_rejoined(self)
    }

    fn take_restored(&self) -> Vec<ConnLease> {
        RedisPresence::take_restored(self)
    }

    async fn admit(&self, c: &ConnRef<'_>, limit: u32) -> Result<Admission, PresenceError> {
        let _shared = self.gate.read().await;
        let keys = vec![self.conns_key(c.principal), self.conns_index_key()];
        let member = format!("{}/{}", esc(c.node), esc(c.conn));
        let args = vec![member.clone(), limit.to_string(), self.lease_ms.to_string(), principal_field(c.principal)];
        let admitted: i64 = self.run(Lua::Admit, keys, args).await?;
        if admitted == 0 {
            return Ok(Admission::Full { limit });
        }
        self.local().conns.entry(c.principal.clone()).or_default().insert(member);
        Ok(Admission::Admitted { first: admitted == 2 })
    }

    async fn release(&self, c: &ConnRef<'_>) -> Result<bool, PresenceError> {
        let _shared = self.gate.read().await;
        let member = format!("{}/{}", esc(c.node), esc(c.conn));
        {
            let mut l = self.local();
            if let Some(set) = l.conns.get_mut(c.principal) {
                set.remove(&member);
                if set.is_empty() {
                    l.conns.remove(c.principal);
                }
            }
        }
        let keys = vec![self.conns_key(c.principal), self.conns_index_key()];
        let last: i64 = self.run(Lua::Release, keys, vec![member, principal_field(c.principal)]).await?;
        if last == 1 {
            // Back online and gone again before the node announced it: announce neither.
            let mut pending = self.restored();
            if let Some(r) = pending.iter_mut().find(|r| r.edge && r.principal == *c.principal) {
                r.edge = false;
                return Ok(false);
            }
        }
        Ok(last == 1)
    }

    async fn join(&self, ch: &Channel, c: &ConnRef<'_>) -> Result<bool, PresenceError> {
        let _shared = self.gate.read().await;
        let member = format!("{}/{}/{}", esc(c.node), esc(c.conn), principal_field(c.principal));
        let field = principal_field(c.principal);
        let args = vec![member.clone(), field.clone(), self.lease_ms.to_string(), ch.as_str().to_owned()];
        let first = self.run::<i64>(Lua::Join, self.script_keys(ch), args).await;
        // Held even when Redis did not answer: the next refresh writes the entry and, when
        // it is the principal's first there, reports it rejoined, so its join is announced
        // late rather than never.
        self.local().channels.entry(ch.clone()).or_default().insert(member, field);
        Ok(first? == 1)
    }

    async fn leave(&self, ch: &Channel, c: &ConnRef<'_>) -> Result<bool, PresenceError> {
        let _shared = self.gate.read().await;
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
        let last: i64 = self.run(Lua::Leave, self.script_keys(ch), args).await?;
        if last == 1 {
            // Back and gone again before the node announced the rejoin: announce neither.
            let mut pending = self.rejoined();
            if let Some(i) = pending.iter().position(|e| e.channel == *ch && e.member == *c.principal) {
                pending.swap_remove(i);
                return Ok(false);
            }
        }
        Ok(last == 1)
    }

    /// The distinct principals present in a channel, sorted: at most [`MEMBERS_CAP`]
    /// (1,000) of them, users before agents; in a larger channel which ones is unspecified
    /// (`stats` has the exact counts). O(log n + cap) in Redis, whatever the channel's size.
    async fn members(&self, ch: &Channel) -> Result<Vec<Principal>, PresenceError> {
        let [_, _, users, agents] = self.channel_keys(ch.as_str());
        let fields: Vec<String> = self.run(Lua::Members, vec![users, agents], vec![MEMBERS_CAP.to_string()]).await?;
        let mut out: Vec<Principal> = fields.iter().filter_map(|f| parse_principal(f)).collect();
        out.sort();
        out.truncate(MEMBERS_CAP);
        Ok(out)
    }

    /// Live connections and distinct principals in a channel: three `ZCOUNT`s, O(log n).
    async fn stats(&self, ch: &Channel) -> Result<ChannelStats, PresenceError> {
        let [z, _, users, agents] = self.channel_keys(ch.as_str());
        let n: Vec<u64> = self.run(Lua::Stats, vec![z, users, agents], vec![]).await?;
        match n[..] {
            [connections, users, agents] => Ok(ChannelStats { connections, users, agents }),
            _ => Err(PresenceError::Unavailable(format!("unexpected stats reply {n:?}"))),
        }
    }

    async fn maintain(&self, me: &NodeReport) -> Result<Reaped, PresenceError> {
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
        Ok(Reaped { left: self.reap().await, lost: self.reap_conns().await })
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
    #[test]
    fn urls_are_redacted() {
        assert_eq!(super::conn::redacted("redis://u:pw@h:6379/0"), "redis://h:6379/0");
    }
}
