//! Lifecycle announcements (contract §10): an agent's status, cluster-wide and exactly
//! once per transition, and a hook to backends for every connection that opens or
//! closes.
//!
//! "First" and "last" come from the atomic cluster-wide connection count
//! ([`Presence::admit`](crate::presence::Presence::admit) and
//! [`release`](crate::presence::Presence::release)), never from this node's view, so
//! two nodes racing cannot both announce `online`; a dead node's connections come from
//! the lease reaper, which reports each exactly once, so its agents go `offline` with
//! `reason: "lost"` once. [`crate::conn::admission::Admission`] decides what one
//! connection's open and close announce; this module says it.

use std::sync::Arc;

use gateway_protocol::{Channel, PrincipalKind, SystemEvent, now_ms};
use serde::Serialize;
use serde_json::json;

use crate::{
    bus::{Bus, Origin},
    presence::{ConnLease, ConnRef},
    telemetry,
};

/// `reason` of a connection reported by the reaper (its node died) and of its agent's
/// `offline`.
pub const LOST: &str = "lost";
/// `reason` of a connection its node reported again after its lease had lapsed.
pub const RESTORED: &str = "restored";

/// A backend hook: which subject a connection event goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// `<prefix>.lc.connected`.
    Connected,
    /// `<prefix>.lc.disconnected`.
    Disconnected,
}

impl HookKind {
    /// The last subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Connected => "connected",
            HookKind::Disconnected => "disconnected",
        }
    }
}

/// The body of a hook: `{"kind","id","connection","node","ts","reason"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HookBody<'a> {
    /// `user` or `agent`.
    pub kind: PrincipalKind,
    /// The principal's id.
    pub id: &'a str,
    /// The connection's public id (as in `connected` and `Gw-Connection`).
    pub connection: &'a str,
    /// The node that held the connection.
    pub node: &'a str,
    /// When the gateway saw it, ms since the epoch.
    pub ts: u64,
    /// Why it closed (`normal`, `going_away`, `token_expired`, …, `lost`), or `restored`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

impl<'a> HookBody<'a> {
    /// The body for `origin`, now.
    pub fn new(origin: &Origin<'a>, reason: Option<&'a str>) -> Self {
        HookBody {
            kind: origin.principal.kind,
            id: &origin.principal.id,
            connection: origin.conn,
            node: origin.node,
            ts: now_ms(),
            reason,
        }
    }
}

/// What a connection's end changes in its agent's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    /// Nothing to announce.
    None,
    /// Announce `online` (a connection that never opened held the first place while
    /// another one opened).
    Online,
    /// Announce `offline`: it was the last.
    Offline,
}

/// The announcer of one node.
pub struct Lifecycle {
    /// Where hooks and status events go.
    bus: Arc<dyn Bus>,
    /// `lifecycle.agent_status_channel`; `None` turns status events off.
    status_channel: Option<Channel>,
}

impl Lifecycle {
    /// Announces over `bus`, agent status on `status_channel` (none: no status events).
    pub fn new(bus: Arc<dyn Bus>, status_channel: Option<Channel>) -> Self {
        Lifecycle { bus, status_channel }
    }

    /// A connection opened (its `connected` frame is queued): the hook, and `online`
    /// when it is its agent's first connection anywhere.
    pub async fn opened(&self, c: &ConnRef<'_>, first: bool) {
        self.hook(HookKind::Connected, c, None).await;
        if first {
            self.status(c, true, None).await;
        }
    }

    /// A connection's count was released: the hook when it had opened, and the status
    /// change it caused.
    pub async fn closed(&self, c: &ConnRef<'_>, opened: bool, change: StatusChange, reason: &str) {
        if opened {
            self.hook(HookKind::Disconnected, c, Some(reason)).await;
        }
        match change {
            StatusChange::None => {}
            StatusChange::Online => self.status(c, true, None).await,
            StatusChange::Offline => self.status(c, false, None).await,
        }
    }

    /// What the lease reaper found: connections of dead nodes (`lost`, their agents
    /// `offline` with `reason: "lost"` when last) and this node's connections put back
    /// after their lease had lapsed (`restored`, `online` again when first).
    pub async fn reconcile(&self, lost: Vec<ConnLease>, restored: Vec<ConnLease>) {
        for l in &lost {
            metrics::counter!(telemetry::CONNECTIONS_LOST).increment(1);
            let c = ConnRef { node: &l.node, conn: &l.conn, principal: &l.principal };
            self.hook(HookKind::Disconnected, &c, Some(LOST)).await;
            if l.edge {
                self.status(&c, false, Some(LOST)).await;
            }
        }
        for r in &restored {
            let c = ConnRef { node: &r.node, conn: &r.conn, principal: &r.principal };
            self.hook(HookKind::Connected, &c, Some(RESTORED)).await;
            if r.edge {
                self.status(&c, true, None).await;
            }
        }
    }

    async fn hook(&self, kind: HookKind, c: &ConnRef<'_>, reason: Option<&str>) {
        if let Err(e) = self.bus.hook(kind, c, reason).await {
            tracing::warn!(error = %e, hook = kind.as_str(), conn = c.conn, "lifecycle hook not published");
        }
    }

    /// Publishes `agent:status` for an agent (users have no status).
    async fn status(&self, c: &ConnRef<'_>, online: bool, reason: Option<&str>) {
        let Some(ch) = &self.status_channel else { return };
        if c.principal.kind != PrincipalKind::Agent {
            return;
        }
        let status = if online { "online" } else { "offline" };
        let mut data = json!({ "agentId": c.principal.id, "status": status, "timestamp": now_ms() });
        if let Some(r) = reason {
            data["reason"] = json!(r);
        }
        let ev = crate::events::fresh(ch.clone(), SystemEvent::AgentStatus.into(), data);
        metrics::counter!(telemetry::PUBLISHED, "source" => "lifecycle").increment(1);
        if let Err(e) = self.bus.publish(&ev).await {
            tracing::warn!(error = %e, agent = %c.principal.id, status, "agent status not published");
        }
    }
}
