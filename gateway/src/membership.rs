//! Channel membership: the one owner of what joining and leaving a channel means, on
//! this node and across the cluster. A join is: the hub (local fan-out) → bus interest
//! (confirmed by the server, rolled back if it fails) → presence (and the `presence.join`
//! announcement when it is the principal's first connection there) → with `recover`,
//! the replay of the channel's history before its live events. A leave undoes it in
//! reverse. A connection's registration in the hub and its end (every channel left,
//! or, for a task that died, left on a tracked task) live here too. Native sessions,
//! Socket.IO sockets, their `Drop`s, the drain and the lease reaper all come here; no
//! other module speaks the protocol of a join.

use std::sync::Arc;

use gateway_protocol::{Channel, ErrorBody, ErrorCode, Namespace, Principal, ServerFrame, StreamPosition, SystemEvent};
use serde_json::json;
use tokio_util::task::TaskTracker;

use crate::{
    bus::Bus,
    conn::handle::ConnHandle,
    history::{History, Keeping, ReadFrom},
    hub::{Held, Hub, to_message},
    presence::{ConnRef, Expired, Presence},
    telemetry,
};

/// A replay may fill at most this share of a connection's queue; a larger one is
/// answered `recovered: false` (the client reloads its state) rather than closing the
/// connection as a slow consumer the moment it reconnects.
const REPLAY_QUEUE_SHARE: usize = 2;

/// The outcome of a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// With `recover`: whether every missed event was replayed.
    pub recovered: Option<bool>,
    /// On a channel with history: where it stood when the connection joined.
    pub position: Option<StreamPosition>,
}

/// The membership protocol of one node.
pub struct Membership {
    /// This node's id (presence entries, logs).
    node_id: String,
    /// Local subscribers.
    hub: Arc<Hub>,
    /// Bus interest and event publishing.
    bus: Arc<dyn Bus>,
    /// Cluster-wide presence.
    presence: Arc<dyn Presence>,
    /// Namespaces that track presence (`channels.presence`).
    presence_ns: Vec<Namespace>,
    /// Channel history, for recovery.
    history: Arc<dyn History>,
    /// Which channels keep history and how much.
    keeping: Keeping,
    /// Where detached cleanups run.
    tasks: TaskTracker,
}

impl Membership {
    /// The protocol over a node's parts.
    #[expect(clippy::too_many_arguments, reason = "the parts of a node it coordinates, each once")]
    pub fn new(
        node_id: String,
        hub: Arc<Hub>,
        bus: Arc<dyn Bus>,
        presence: Arc<dyn Presence>,
        presence_ns: Vec<Namespace>,
        history: Arc<dyn History>,
        keeping: Keeping,
        tasks: TaskTracker,
    ) -> Self {
        Membership { node_id, hub, bus, presence, presence_ns, history, keeping, tasks }
    }

    fn tracks_presence(&self, ch: &Channel) -> bool {
        self.presence_ns.contains(&ch.namespace())
    }

    fn conn_ref<'a>(&'a self, conn: &'a ConnHandle) -> ConnRef<'a> {
        ConnRef { node: &self.node_id, conn: &conn.connection_id, principal: &conn.principal }
    }

    /// Joins `conn` to `ch`. With `recover`, the events after that position are queued
    /// before any newer live event, each once; the answer says whether that was possible
    /// (`Some(false)`: nothing replayed, the client must reload). Without, `None`.
    /// A connection that already joined `ch` may recover it too (its auto-joined own
    /// channel): it then gets what it has not received yet.
    pub async fn join(
        &self,
        conn: &Arc<ConnHandle>,
        ch: &Channel,
        recover: Option<&StreamPosition>,
    ) -> Result<Joined, ErrorBody> {
        let gated = recover.is_some() && self.keeping.keeps(ch);
        // Read before the connection joins the hub: every event after this position
        // reaches the connection (live, or in its replay), so it is a safe place to
        // recover from even if no event arrives before the next reconnect.
        let position = self.position(ch).await;
        let first = if gated { self.hub.subscribe_gated(ch, conn) } else { self.hub.subscribe(ch, conn) };
        // Every joiner syncs, not only the first: a second joiner must not be told
        // "subscribed" while the first one's subscription is still on its way to the
        // server. With nothing to change the sync only waits for that in-flight one.
        if let Err(e) = self.bus.sync_interest(ch).await
            && first
        {
            if self.hub.unsubscribe(ch, conn.id) {
                let _ = self.bus.sync_interest(ch).await;
            }
            return Err((&e).into());
        }
        if self.tracks_presence(ch) {
            match self.presence.join(ch, &self.conn_ref(conn)).await {
                Ok(true) => self.announce(ch, SystemEvent::PresenceJoin, &conn.principal).await,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, channel = %ch, "presence join not recorded"),
            }
        }
        let recovered = match recover {
            None => None,
            Some(_) if !gated => Some(false),
            // Interest is confirmed: every event stored from now on arrives live (and
            // waits at the gate); everything before is in the store.
            Some(pos) => Some(self.replay_and_open(conn, ch, pos).await),
        };
        Ok(Joined { recovered, position })
    }

    /// Recovery on a channel `conn` has already joined (its own `user:`/`agent:`
    /// channel, joined at connect): it gets the events after `pos` it has not received
    /// live yet, each once.
    pub async fn recover(&self, conn: &Arc<ConnHandle>, ch: &Channel, pos: &StreamPosition) -> bool {
        if !self.keeping.keeps(ch) {
            return false;
        }
        self.hub.subscribe_gated(ch, conn);
        self.replay_and_open(conn, ch, pos).await
    }

    /// Reads the replay and opens `conn`'s gate on `ch` (always, also when the replay
    /// is lost: the held live events must flow).
    async fn replay_and_open(&self, conn: &ConnHandle, ch: &Channel, pos: &StreamPosition) -> bool {
        let (recovered, replay) = self.replay(conn, ch, pos).await;
        let queued = self.hub.open_gate(ch, conn.id, replay, recovered.then_some(pos.offset));
        metrics::counter!(telemetry::RECOVERIES, "outcome" => if recovered { "recovered" } else { "lost" })
            .increment(1);
        tracing::debug!(channel = %ch, conn = %conn.connection_id, recovered, queued, "recovery");
        recovered
    }

    /// The events after `pos` in `conn`'s encoding, if the store still has all of them
    /// and they fit the connection's queue.
    async fn replay(&self, conn: &ConnHandle, ch: &Channel, pos: &StreamPosition) -> (bool, Vec<Held>) {
        let page = match self.history.read(ch, ReadFrom::After(pos.clone()), self.keeping.size(ch)).await {
            Ok(page) if page.reaches => page,
            Ok(_) => return (false, Vec::new()),
            Err(e) => {
                tracing::warn!(error = %e, channel = %ch, "history unavailable for recovery");
                return (false, Vec::new());
            }
        };
        let mut bytes = 0;
        let mut held = Vec::with_capacity(page.events.len());
        for ev in page.events {
            let offset = ev.offset.unwrap_or(0);
            let msg = to_message(conn.encoding, &ServerFrame::Event(ev));
            let len = crate::conn::handle::message_len(&msg);
            bytes += len;
            held.push((offset, msg, len));
        }
        if !conn.fits(held.len() * REPLAY_QUEUE_SHARE, bytes * REPLAY_QUEUE_SHARE) {
            return (false, Vec::new());
        }
        (true, held)
    }

    /// Removes `conn` from `ch` everywhere.
    pub async fn leave(&self, conn: &ConnHandle, ch: &Channel) {
        if self.hub.unsubscribe(ch, conn.id)
            && let Err(e) = self.bus.sync_interest(ch).await
        {
            tracing::warn!(error = %e, channel = %ch, "bus interest not released");
        }
        self.leave_presence(ch, &conn.connection_id, &conn.principal).await;
    }

    async fn leave_presence(&self, ch: &Channel, conn: &str, principal: &Principal) {
        if !self.tracks_presence(ch) {
            return;
        }
        let r = ConnRef { node: &self.node_id, conn, principal };
        match self.presence.leave(ch, &r).await {
            Ok(true) => self.announce(ch, SystemEvent::PresenceLeave, principal).await,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, channel = %ch, "presence leave not recorded"),
        }
    }

    /// A connection opens: the hub knows it from now on (native and Socket.IO alike).
    pub fn register(&self, conn: &Arc<ConnHandle>) {
        self.hub.register(conn.clone());
        let kind = conn.principal.kind.as_str();
        metrics::gauge!(telemetry::CONNECTIONS, "kind" => kind).increment(1.0);
        metrics::counter!(telemetry::HANDSHAKES, "kind" => kind).increment(1);
    }

    /// A connection ends: it leaves every channel in `channels` and the hub forgets it.
    pub async fn close(&self, conn: &ConnHandle, channels: &[Channel]) {
        for ch in channels {
            self.leave(conn, ch).await;
        }
        self.hub.unregister(conn.id);
        metrics::gauge!(telemetry::CONNECTIONS, "kind" => conn.principal.kind.as_str()).decrement(1.0);
    }

    /// For a connection whose task ended without [`Membership::close`] (a panic, a
    /// dropped future): the hub forgets it now, the fabric on a tracked task.
    pub fn abandon(self: &Arc<Self>, conn: &ConnHandle, channels: Vec<Channel>) {
        metrics::gauge!(telemetry::CONNECTIONS, "kind" => conn.principal.kind.as_str()).decrement(1.0);
        let emptied: Vec<Channel> = channels.iter().filter(|ch| self.hub.unsubscribe(ch, conn.id)).cloned().collect();
        self.hub.unregister(conn.id);
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let (me, id, principal) = (self.clone(), conn.connection_id.clone(), conn.principal.clone());
        self.tasks.spawn(async move {
            for ch in &emptied {
                let _ = me.bus.sync_interest(ch).await;
            }
            for ch in &channels {
                me.leave_presence(ch, &id, &principal).await;
            }
        });
    }

    /// Announces the leaves of members whose leases expired (their node died), and the
    /// joins of members put back after their node returned.
    pub async fn reconcile(&self, expired: Vec<Expired>, rejoined: Vec<Expired>) {
        for e in expired {
            metrics::counter!(telemetry::PRESENCE_EXPIRED).increment(1);
            self.announce(&e.channel, SystemEvent::PresenceLeave, &e.member).await;
        }
        for e in rejoined {
            self.announce(&e.channel, SystemEvent::PresenceJoin, &e.member).await;
        }
    }

    /// Publishes a presence event for `member` on `ch`.
    pub async fn announce(&self, ch: &Channel, event: SystemEvent, member: &Principal) {
        let ev = crate::events::fresh(ch.clone(), event.into(), json!({ "kind": member.kind, "id": member.id }));
        metrics::counter!(telemetry::PUBLISHED, "source" => "presence").increment(1);
        if let Err(e) = self.bus.publish(&ev).await {
            tracing::warn!(error = %e, channel = %ch, "presence event not published");
        }
    }

    /// Where `ch`'s history stands now (its latest offset and epoch), for a client that
    /// joined it: recovering from there after a reconnect loses nothing, even when no
    /// event arrived in between. `None` for channels without history or when the store
    /// cannot answer.
    pub async fn position(&self, ch: &Channel) -> Option<StreamPosition> {
        if !self.keeping.keeps(ch) {
            return None;
        }
        let page = self.history.read(ch, ReadFrom::Latest, 0).await.ok()?;
        Some(StreamPosition { offset: page.last, epoch: page.epoch })
    }

    /// The error of a channel that keeps no history, for `history.get`.
    pub fn no_history(ch: &Channel) -> ErrorBody {
        ErrorBody::new(ErrorCode::NotFound, format!("{ch} keeps no history"))
    }
}
