//! A node's shared state: configuration, the local hub, the fabric (bus + presence),
//! credential and permission checks, and the shutdown signals every loop watches.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use gateway_protocol::{Channel, CloseCode, DisconnectReason, EventFrame, EventName, PrincipalKind};
use tokio_util::task::TaskTracker;

use crate::{
    access::Access,
    auth::Authenticator,
    bus::{Bus, DisconnectCommand, Inbound},
    config::{Config, ms},
    conn::handle::Close,
    events::EventPolicy,
    history::{History, Keeping},
    hub::Hub,
    lifecycle::Lifecycle,
    membership::Membership,
    presence::{NodeReport, Presence, Reaped},
    shutdown::Shutdown,
    upstream::Upstream,
};

/// Everything a connection or handler needs, shared by reference count.
pub struct Node {
    /// Validated configuration.
    pub cfg: Arc<Config>,
    /// Local connections and channel subscribers.
    pub hub: Arc<Hub>,
    /// Events, upstream sends, requests and control between nodes and backends.
    pub bus: Arc<dyn Bus>,
    /// Where client requests and upstream sends go: the bus, or the HTTP backend.
    pub upstream: Arc<dyn Upstream>,
    /// Cluster-wide presence and connection counts.
    pub presence: Arc<dyn Presence>,
    /// Credential checks.
    pub auth: Arc<Authenticator>,
    /// Channel permissions.
    pub access: Access,
    /// What any source may publish (reserved names, depth, encoded size).
    pub events: EventPolicy,
    /// Channel history (recovery, `history.get`).
    pub history: Arc<dyn History>,
    /// Which channels keep history and how much.
    pub keeping: Keeping,
    /// Joining and leaving channels, on this node and across the cluster.
    pub membership: Arc<Membership>,
    /// Agent status and backend hooks as connections open and close.
    pub lifecycle: Lifecycle,
    /// Drain and stop signals.
    pub shutdown: Shutdown,
    /// Every task the node spawns, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Socket.IO's Engine.IO connections (found by session id, counted by transport).
    pub socketio: crate::sio::Engines,
    /// Source of node-local connection numbers.
    next_conn: AtomicU64,
    /// Open connections per client IP (the per-IP limit).
    per_ip: DashMap<IpAddr, u32>,
    /// Sockets accepted or being accepted (the node-wide limit).
    slots: AtomicUsize,
}

impl Node {
    /// Assembles a node from its parts.
    #[expect(clippy::too_many_arguments, reason = "the parts of a node, each once")]
    pub fn new(
        cfg: Arc<Config>,
        hub: Arc<Hub>,
        bus: Arc<dyn Bus>,
        upstream: Arc<dyn Upstream>,
        presence: Arc<dyn Presence>,
        history: Arc<dyn History>,
        auth: Arc<Authenticator>,
        shutdown: Shutdown,
        tasks: TaskTracker,
    ) -> Self {
        let access = Access::new(cfg.channels.clone());
        let events = EventPolicy::new(&cfg);
        let keeping = Keeping::new(&cfg.history);
        let membership = Arc::new(Membership::new(
            cfg.node_id.clone(),
            hub.clone(),
            bus.clone(),
            presence.clone(),
            cfg.channels.presence.clone(),
            history.clone(),
            keeping.clone(),
            tasks.clone(),
        ));
        let lifecycle = Lifecycle::new(bus.clone(), cfg.lifecycle.status_channel());
        Node {
            lifecycle,
            cfg,
            hub,
            bus,
            upstream,
            presence,
            auth,
            access,
            events,
            history,
            keeping,
            membership,
            shutdown,
            tasks,
            socketio: crate::sio::Engines::default(),
            next_conn: AtomicU64::new(1),
            per_ip: DashMap::new(),
            slots: AtomicUsize::new(0),
        }
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.cfg.node_id
    }

    /// A fresh node-local connection number.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes a node-wide connection slot; false when the node is full.
    pub fn claim_slot(&self) -> bool {
        if self.slots.fetch_add(1, Ordering::AcqRel) >= self.cfg.limits.max_connections {
            self.slots.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Gives a slot back.
    pub fn release_slot(&self) {
        self.slots.fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts a connection from `ip`; false when the IP is at its limit.
    pub fn claim_ip(&self, ip: IpAddr) -> bool {
        let mut n = self.per_ip.entry(ip).or_insert(0);
        if *n >= self.cfg.limits.per_ip {
            return false;
        }
        *n += 1;
        true
    }

    /// Uncounts a connection from `ip`.
    pub fn release_ip(&self, ip: IpAddr) {
        let now_zero = match self.per_ip.get_mut(&ip) {
            Some(mut n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        if now_zero {
            self.per_ip.remove_if(&ip, |_, n| *n == 0);
        }
    }

    /// Distinct client IPs with open connections (leak checks).
    pub fn tracked_ips(&self) -> usize {
        self.per_ip.len()
    }

    /// The cluster-wide connection limit for a principal kind.
    pub fn limit_for(&self, kind: PrincipalKind) -> u32 {
        match kind {
            PrincipalKind::User => self.cfg.limits.per_user,
            PrincipalKind::Agent => self.cfg.limits.per_agent,
        }
    }

    /// Whether admission proceeds when the presence store cannot count.
    pub fn fail_open(&self, kind: PrincipalKind) -> bool {
        match kind {
            PrincipalKind::User => self.cfg.fabric.fail_open_users,
            PrincipalKind::Agent => self.cfg.fabric.fail_open_agents,
        }
    }

    /// A new event with a fresh id and the current time.
    pub fn new_event(&self, channel: Channel, event: EventName, data: serde_json::Value) -> EventFrame {
        crate::events::fresh(channel, event, data)
    }

    /// This node's registry entry.
    pub fn report(&self) -> NodeReport {
        let s = self.hub.stats();
        NodeReport {
            node: self.id().to_owned(),
            connections: s.connections as u64,
            connected_users: s.connected_users as u64,
            connected_agents: s.connected_agents as u64,
            status: if self.shutdown.is_draining() { "draining" } else { "running" }.into(),
        }
    }

    /// Whether the fabric works (for `/ready`).
    pub fn fabric_up(&self) -> bool {
        self.bus.health().is_up() && self.presence.health().is_up()
    }

    /// Refreshes presence leases, announces leaves of expired members and lost
    /// connections (their agents offline), and re-syncs bus interest, until stopped.
    pub async fn maintain_presence(self: Arc<Self>) {
        let mut tick = tokio::time::interval(ms(self.cfg.presence.refresh_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.stopped() => return,
                _ = tick.tick() => {}
            }
            let reaped = match self.presence.maintain(&self.report()).await {
                Ok(reaped) => reaped,
                Err(e) => {
                    tracing::warn!(error = %e, "presence maintenance failed");
                    Reaped::default()
                }
            };
            self.membership.reconcile(reaped.left, self.presence.take_rejoined()).await;
            self.lifecycle.reconcile(reaped.lost, self.presence.take_restored()).await;
            // Repair bus interest that a failed sync or an ended subscription left
            // wrong; with nothing to change this is a lookup per channel.
            if self.bus.health().is_up() {
                for ch in self.hub.channels() {
                    if let Err(e) = self.bus.sync_interest(&ch).await {
                        tracing::debug!(error = %e, channel = %ch, "interest re-sync failed");
                    }
                }
            }
        }
    }
}

/// What the bus delivers into: the hub for events, connection closes for commands.
pub struct NodeInbound {
    /// Local subscribers.
    pub hub: Arc<Hub>,
    /// Key cache to forget on revocation.
    pub auth: Arc<Authenticator>,
}

impl Inbound for NodeInbound {
    fn event(&self, ev: EventFrame) {
        self.hub.deliver(ev);
    }

    fn control(&self, cmd: DisconnectCommand) {
        let reason = if cmd.reason == "revoked" {
            self.auth.forget_keys();
            DisconnectReason::Revoked
        } else {
            DisconnectReason::Kicked
        };
        let n = self.hub.disconnect(cmd.kind, &cmd.id, Close::with_notice(CloseCode::Disconnected, reason, false));
        tracing::info!(kind = cmd.kind.as_str(), id = %cmd.id, reason = %cmd.reason, closed = n, "disconnect command");
    }

    fn has_subscribers(&self, ch: &Channel) -> bool {
        self.hub.has_subscribers(ch)
    }
}

/// How long to wait for presence when answering health checks.
pub const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// Waits (bounded, on paused or real time) until `ch` has a local subscriber.
    pub async fn wait_subscribed(node: &Node, ch: &Channel) {
        for _ in 0..1000 {
            if node.hub.has_subscribers(ch) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{ch} never subscribed");
    }
}
