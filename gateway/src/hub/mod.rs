//! The node-local registry: which connections are here and which channels each has
//! joined, and the fan-out of one event to every local subscriber.
//!
//! Fan-out encodes an event at most once per encoding in use and shares those bytes with
//! every subscriber (cloning a message bumps a reference count). Pushing never blocks: a
//! full outbound queue closes that one connection as a slow consumer.
//!
//! The hub is also the source of truth for bus interest: a bus holds a NATS subscription
//! for a channel exactly while [`Hub::has_subscribers`] says so.

mod subscribers;

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

pub(crate) use subscribers::Held;
use subscribers::Subscribers;

use axum::extract::ws::{Message, Utf8Bytes};
use gateway_protocol::{Channel, Encoding, EventFrame, Principal, PrincipalKind, ServerFrame, now_ms};

use crate::{
    conn::handle::{Close, ConnHandle, ConnId, message_len},
    sio::wire::SioFrames,
    telemetry,
};

/// Channel-table shards; spreads lock contention between unrelated channels.
const SHARDS: usize = 64;

/// Counts for `/health` and the node registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HubStats {
    /// Open connections.
    pub connections: usize,
    /// Distinct users connected.
    pub connected_users: usize,
    /// Distinct agents connected.
    pub connected_agents: usize,
    /// Channels with a local subscriber.
    pub channels: usize,
    /// Connection × channel pairs.
    pub subscriptions: usize,
}

/// Connections on this node, by id and by principal.
#[derive(Default)]
struct Conns {
    by_id: HashMap<ConnId, Arc<ConnHandle>>,
    by_principal: HashMap<Principal, Vec<ConnId>>,
}

/// The node-local registry.
pub struct Hub {
    /// Channel → local subscribers, sharded by channel hash.
    shards: Box<[RwLock<HashMap<Channel, Subscribers>>]>,
    /// Hasher choosing a channel's shard.
    hasher: RandomState,
    /// Every connection on the node.
    conns: RwLock<Conns>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            conns: RwLock::default(),
        }
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    fn shard(&self, ch: &Channel) -> &RwLock<HashMap<Channel, Subscribers>> {
        &self.shards[self.hasher.hash_one(ch) as usize % SHARDS]
    }

    /// Adds a connection.
    pub fn register(&self, conn: Arc<ConnHandle>) {
        let mut c = write(&self.conns);
        c.by_principal.entry(conn.principal.clone()).or_default().push(conn.id);
        c.by_id.insert(conn.id, conn);
    }

    /// Removes a connection (its channels must have been left first).
    pub fn unregister(&self, id: ConnId) {
        let mut c = write(&self.conns);
        if let Some(conn) = c.by_id.remove(&id)
            && let Some(ids) = c.by_principal.get_mut(&conn.principal)
        {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                c.by_principal.remove(&conn.principal);
            }
        }
    }

    /// Adds `conn` to `ch`. Returns true when it is the channel's first local subscriber.
    pub fn subscribe(&self, ch: &Channel, conn: &Arc<ConnHandle>) -> bool {
        let mut shard = write(self.shard(ch));
        let subs = shard.entry(ch.clone()).or_default();
        let first = subs.is_empty();
        if subs.insert(conn) {
            metrics::gauge!(telemetry::SUBSCRIPTIONS).increment(1.0);
        }
        if first {
            metrics::gauge!(telemetry::CHANNELS).increment(1.0);
        }
        first
    }

    /// Adds `conn` to `ch` behind a gate: its live events are held until
    /// [`Hub::open_gate`] queues a replay before them. A connection that had joined
    /// already is gated again (what it received live is not replayed twice). Returns
    /// true when it is the channel's first local subscriber.
    pub fn subscribe_gated(&self, ch: &Channel, conn: &Arc<ConnHandle>) -> bool {
        let mut shard = write(self.shard(ch));
        let subs = shard.entry(ch.clone()).or_default();
        let first = subs.is_empty();
        // Through the index on large channels; a connection already here (live, or gated
        // by an earlier recovery) is not a new subscription.
        let known = subs.has(conn.id);
        subs.gate(conn);
        if !known {
            metrics::gauge!(telemetry::SUBSCRIPTIONS).increment(1.0);
        }
        if first {
            metrics::gauge!(telemetry::CHANNELS).increment(1.0);
        }
        first
    }

    /// Opens `conn`'s gate on `ch`: queues `replay` (oldest first), then the live events
    /// held meanwhile, each offset once, and makes it a live subscriber. All under the
    /// channel's lock, so no live event can slip in between. `from`: the connection now
    /// has every event after this offset (the recovered position), if it does. Returns
    /// how many frames were queued; 0 if it is not gated there (it left meanwhile).
    pub fn open_gate(&self, ch: &Channel, conn: ConnId, replay: Vec<Held>, from: Option<u64>) -> usize {
        let mut shard = write(self.shard(ch));
        let Some(subs) = shard.get_mut(ch) else {
            return 0;
        };
        let Some(gate) = subs.take_gate(conn) else {
            return 0;
        };
        let handle = gate.conn.clone();
        let earlier = gate.delivered.map(|(after, _)| after);
        let (n, pushed) = gate.release(replay);
        let pushed = pushed.max(subs.last.load(std::sync::atomic::Ordering::Acquire));
        let from = from.or(earlier).map_or(pushed, |f| f.min(pushed));
        subs.insert_with(&handle, subscribers::Have { from, pushed });
        n
    }

    /// Removes `conn` from `ch`. Returns true when the channel has no local subscriber left.
    pub fn unsubscribe(&self, ch: &Channel, id: ConnId) -> bool {
        let mut shard = write(self.shard(ch));
        let Some(subs) = shard.get_mut(ch) else {
            return false;
        };
        if subs.remove(id) {
            metrics::gauge!(telemetry::SUBSCRIPTIONS).decrement(1.0);
        }
        let empty = subs.is_empty();
        if empty {
            shard.remove(ch);
            metrics::gauge!(telemetry::CHANNELS).decrement(1.0);
        }
        empty
    }

    /// Whether any local connection has joined `ch`.
    pub fn has_subscribers(&self, ch: &Channel) -> bool {
        read(self.shard(ch)).contains_key(ch)
    }

    /// Every channel with a local subscriber (a bus re-subscribes these after a reconnect).
    pub fn channels(&self) -> Vec<Channel> {
        self.shards.iter().flat_map(|s| read(s).keys().cloned().collect::<Vec<_>>()).collect()
    }

    /// Fans an event out to the local subscribers of its channel. Returns how many got it.
    pub fn deliver(&self, ev: EventFrame) -> usize {
        let hot = telemetry::hot();
        let shard = read(self.shard(&ev.channel));
        let Some(subs) = shard.get(&ev.channel) else {
            hot.drops_no_subscribers.increment(1);
            return 0;
        };
        let now = now_ms();
        if ev.ts > 0 && now >= ev.ts {
            hot.delivery_latency.record((now - ev.ts) as f64 / 1000.0);
        }
        // Owned: the frame takes the event as is, no copy of its payload.
        let offset = ev.offset.unwrap_or(0);
        subs.record(offset);
        let frame = ServerFrame::Event(ev);
        // One encoding per kind (and per Socket.IO namespace), its bytes shared by every
        // subscriber of that kind; `None`: this subscriber does not get the event.
        let mut encoded: [Option<(Message, usize)>; 3] = [None, None, None];
        let mut sio = SioFrames::new(&frame);
        let mut encode = |conn: &ConnHandle| match &conn.sio {
            Some(target) => sio.for_conn(conn, target),
            None => Some(
                encoded[conn.encoding.index()]
                    .get_or_insert_with(|| {
                        let m = to_message(conn.encoding, &frame);
                        let len = message_len(&m);
                        (m, len)
                    })
                    .clone(),
            ),
        };
        let mut delivered = 0;
        let mut queued = 0;
        for (conn, have) in subs.live() {
            // Already queued to it by its replay (which can run ahead of the live feed).
            if offset != 0 && offset <= have.pushed {
                continue;
            }
            let Some((msg, len)) = encode(conn) else {
                continue;
            };
            if conn.enqueue(msg, len) {
                delivered += 1;
                queued += len;
            }
        }
        subs.hold(offset, encode);
        drop(shard);
        hot.queue_bytes.increment(queued as f64);
        hot.deliveries.increment(delivered as u64);
        delivered
    }

    /// Closes every local connection of a principal. Returns how many.
    pub fn disconnect(&self, kind: PrincipalKind, id: &str, close: Close) -> usize {
        let targets: Vec<Arc<ConnHandle>> = {
            let c = read(&self.conns);
            let p = Principal { kind, id: id.to_owned() };
            c.by_principal.get(&p).into_iter().flatten().filter_map(|i| c.by_id.get(i).cloned()).collect()
        };
        for t in &targets {
            t.close(close);
        }
        targets.len()
    }

    /// Every connection on the node (for the drain).
    pub fn connections(&self) -> Vec<Arc<ConnHandle>> {
        read(&self.conns).by_id.values().cloned().collect()
    }

    /// Counts for health and the node registry.
    pub fn stats(&self) -> HubStats {
        let c = read(&self.conns);
        let mut s = HubStats {
            connections: c.by_id.len(),
            connected_users: c.by_principal.keys().filter(|p| p.kind == PrincipalKind::User).count(),
            connected_agents: c.by_principal.keys().filter(|p| p.kind == PrincipalKind::Agent).count(),
            ..HubStats::default()
        };
        drop(c);
        for shard in self.shards.iter() {
            let shard = read(shard);
            s.channels += shard.len();
            s.subscriptions += shard.values().map(Subscribers::len).sum::<usize>();
        }
        s
    }
}

/// Encodes a frame into a WebSocket message of the connection's kind.
pub fn to_message(encoding: Encoding, frame: &ServerFrame) -> Message {
    let enc = encoding.encode(frame);
    if enc.binary {
        Message::Binary(enc.bytes)
    } else {
        // Text encodings produce UTF-8 JSON; the check runs once per event per encoding.
        Message::Text(Utf8Bytes::try_from(enc.bytes).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests;
