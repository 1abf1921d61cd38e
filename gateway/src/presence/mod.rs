//! Presence and connection counts: who is in a channel, how many connections each
//! principal holds across the cluster, and which nodes are alive.
//!
//! Every entry is a lease that its node refreshes in batches ([`Presence::maintain`]); a
//! node that dies stops refreshing and its entries expire. Whoever removes an expired
//! entry reports it exactly once, so the node can announce `presence.leave`, and, for a
//! connection's count, the connection as lost (and its agent offline when it was the
//! last). Admission and release say whether they were a principal's first and last
//! connection anywhere, decided inside the same atomic step as the count.
//! [`memory::MemoryPresence`] is the in-process twin; [`redis::RedisPresence`] is shared
//! by every node.

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use gateway_protocol::{Channel, Principal};
use serde::{Deserialize, Serialize};

use crate::bus::ComponentHealth;

/// Why a presence operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// The store is unreachable or answered with an error.
    #[error("presence store unavailable: {0}")]
    Unavailable(String),
}

/// One connection, as presence knows it.
#[derive(Debug, Clone, Copy)]
pub struct ConnRef<'a> {
    /// The node holding it.
    pub node: &'a str,
    /// Its public id.
    pub conn: &'a str,
    /// Who it is.
    pub principal: &'a Principal,
}

/// The answer to an admission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Counted; release it when the connection ends.
    Admitted {
        /// The principal held no other connection anywhere (none live, none awaiting
        /// the reaper): it just came online.
        first: bool,
    },
    /// The principal already holds `limit` connections.
    Full {
        /// The limit that applied.
        limit: u32,
    },
}

/// Connection counts in one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStats {
    /// Connections present.
    pub connections: u64,
    /// Distinct users.
    pub users: u64,
    /// Distinct agents.
    pub agents: u64,
}

/// A node's entry in the registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// Node id.
    pub node: String,
    /// Open connections.
    pub connections: u64,
    /// Distinct users.
    pub connected_users: u64,
    /// Distinct agents.
    pub connected_agents: u64,
    /// `running` or `draining`.
    pub status: String,
}

/// A principal that left a channel because its lease expired (its node died).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    /// The channel.
    pub channel: Channel,
    /// Who left.
    pub member: Principal,
}

/// A connection's count entry that changed without its node saying so: reaped by
/// [`Presence::maintain`] after its node stopped refreshing it (lost), or put back by its
/// own node's refresh after another node had reaped it (restored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLease {
    /// The node holding the connection.
    pub node: String,
    /// The connection's public id.
    pub conn: String,
    /// Whose connection.
    pub principal: Principal,
    /// Lost: it was the principal's last connection anywhere. Restored: its first.
    pub edge: bool,
}

/// What one [`Presence::maintain`] pass removed; each item is reported by exactly one
/// node cluster-wide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Principals whose last entry in a channel expired: announce `presence.leave`.
    pub left: Vec<Expired>,
    /// Connections whose count entry expired (their node died): report each lost.
    pub lost: Vec<ConnLease>,
}

impl Reaped {
    /// Nothing was reaped.
    pub fn is_empty(&self) -> bool {
        self.left.is_empty() && self.lost.is_empty()
    }
}

/// The presence store.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Counts a new connection against its principal's cluster-wide `limit`, atomically,
    /// and says whether it is the principal's first (no other entry, live or expired).
    async fn admit(&self, c: &ConnRef<'_>, limit: u32) -> Result<Admission, PresenceError>;
    /// Uncounts a connection. True when it was its principal's last entry anywhere.
    async fn release(&self, c: &ConnRef<'_>) -> Result<bool, PresenceError>;
    /// Adds a connection to a channel. True when it is its principal's first there.
    async fn join(&self, ch: &Channel, c: &ConnRef<'_>) -> Result<bool, PresenceError>;
    /// Removes a connection from a channel. True when it was its principal's last there.
    async fn leave(&self, ch: &Channel, c: &ConnRef<'_>) -> Result<bool, PresenceError>;
    /// The distinct principals present in a channel (may be capped: Redis lists at most 1,000).
    async fn members(&self, ch: &Channel) -> Result<Vec<Principal>, PresenceError>;
    /// Counts in a channel.
    async fn stats(&self, ch: &Channel) -> Result<ChannelStats, PresenceError>;
    /// Refreshes this node's leases and registry entry, and removes expired entries of
    /// any node, returning the leaves and lost connections they cause (each reported by
    /// exactly one node).
    async fn maintain(&self, me: &NodeReport) -> Result<Reaped, PresenceError>;
    /// Principals that [`Presence::maintain`] put back into a channel after their lapsed
    /// entries were reaped elsewhere (their `presence.leave` announced): announce
    /// `presence.join` for each. Drains; call after every `maintain`, failed or not.
    fn take_rejoined(&self) -> Vec<Expired> {
        Vec::new()
    }
    /// Connections whose count entries [`Presence::maintain`] put back after another
    /// node had reaped them (and reported them lost): report each again, and its agent
    /// online when `edge`. Drains; call after every `maintain`, failed or not.
    fn take_restored(&self) -> Vec<ConnLease> {
        Vec::new()
    }
    /// Every live node's registry entry.
    async fn nodes(&self) -> Result<Vec<NodeReport>, PresenceError>;
    /// Removes this node's registry entry (on shutdown, after its connections left).
    async fn deregister(&self, node: &str) -> Result<(), PresenceError>;
    /// Reachability, for health and readiness.
    fn health(&self) -> ComponentHealth;
}
