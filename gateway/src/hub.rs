//! The node-local registry: which connections are here and which channels each has
//! joined, and the fan-out of one event to every local subscriber.
//!
//! Fan-out encodes an event at most once per encoding in use and shares those bytes with
//! every subscriber (cloning a message bumps a reference count). Pushing never blocks: a
//! full outbound queue closes that one connection as a slow consumer.
//!
//! The hub is also the source of truth for bus interest: a bus holds a NATS subscription
//! for a channel exactly while [`Hub::has_subscribers`] says so.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use axum::extract::ws::{Message, Utf8Bytes};
use gateway_protocol::{Channel, Encoding, EventFrame, Principal, PrincipalKind, ServerFrame, now_ms};

use crate::{
    conn::handle::{Close, ConnHandle, ConnId},
    telemetry,
};

/// Channel-table shards; spreads lock contention between unrelated channels.
const SHARDS: usize = 64;

type Subscribers = HashMap<ConnId, Arc<ConnHandle>>;

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
        if subs.insert(conn.id, conn.clone()).is_none() {
            metrics::gauge!(telemetry::SUBSCRIPTIONS).increment(1.0);
        }
        if first {
            metrics::gauge!(telemetry::CHANNELS).increment(1.0);
        }
        first
    }

    /// Removes `conn` from `ch`. Returns true when the channel has no local subscriber left.
    pub fn unsubscribe(&self, ch: &Channel, id: ConnId) -> bool {
        let mut shard = write(self.shard(ch));
        let Some(subs) = shard.get_mut(ch) else {
            return false;
        };
        if subs.remove(&id).is_some() {
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
    pub fn deliver(&self, ev: &EventFrame) -> usize {
        let shard = read(self.shard(&ev.channel));
        let Some(subs) = shard.get(&ev.channel) else {
            metrics::counter!(telemetry::DROPS, "reason" => "no_subscribers").increment(1);
            return 0;
        };
        let now = now_ms();
        if ev.ts > 0 && now >= ev.ts {
            metrics::histogram!(telemetry::DELIVERY_LATENCY).record((now - ev.ts) as f64 / 1000.0);
        }
        let frame = ServerFrame::Event(ev.clone());
        let mut encoded: [Option<Message>; 3] = [None, None, None];
        let mut delivered = 0;
        for conn in subs.values() {
            let msg = encoded[conn.encoding.index()].get_or_insert_with(|| to_message(conn.encoding, &frame));
            if conn.push(msg.clone()) {
                delivered += 1;
            }
        }
        metrics::counter!(telemetry::DELIVERIES).increment(delivered as u64);
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
            s.subscriptions += shard.values().map(HashMap::len).sum::<usize>();
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
mod tests {
    use super::*;
    use gateway_protocol::PrincipalKind;

    fn conn(id: ConnId, enc: Encoding, frames: usize) -> (Arc<ConnHandle>, crate::conn::handle::Outbox) {
        let p = Principal { kind: PrincipalKind::User, id: format!("u{id}") };
        ConnHandle::new(id, format!("c{id}").into(), p, enc, frames, 1 << 20)
    }

    fn event(ch: &Channel) -> EventFrame {
        EventFrame { channel: ch.clone(), event: "e".into(), data: serde_json::json!({"x":1}), id: "m".into(), ts: 0 }
    }

    #[tokio::test]
    async fn fanout_shares_bytes_per_encoding() {
        let hub = Hub::default();
        let ch = Channel::parse("session:s").unwrap();
        let (a, mut ao) = conn(1, Encoding::Json, 8);
        let (b, mut bo) = conn(2, Encoding::Json, 8);
        let (c, mut co) = conn(3, Encoding::MsgPack, 8);
        assert!(hub.subscribe(&ch, &a));
        assert!(!hub.subscribe(&ch, &b));
        hub.subscribe(&ch, &c);
        assert_eq!(hub.deliver(&event(&ch)), 3);
        let (Some(Message::Text(x)), Some(Message::Text(y))) = (ao.rx.recv().await, bo.rx.recv().await) else {
            panic!("text expected")
        };
        // Same allocation: one encode, shared.
        assert_eq!(x.as_str().as_ptr(), y.as_str().as_ptr());
        assert!(matches!(co.rx.recv().await, Some(Message::Binary(_))));
        assert!(!hub.unsubscribe(&ch, 1));
        assert!(!hub.unsubscribe(&ch, 2));
        assert!(hub.unsubscribe(&ch, 3));
        assert!(!hub.has_subscribers(&ch));
        assert_eq!(hub.stats().subscriptions, 0);
    }

    #[tokio::test]
    async fn overflow_closes_only_the_slow_one() {
        let hub = Hub::default();
        let ch = Channel::parse("session:s").unwrap();
        let (slow, _so) = conn(1, Encoding::Json, 2);
        let (fast, mut fo) = conn(2, Encoding::Json, 100);
        hub.subscribe(&ch, &slow);
        hub.subscribe(&ch, &fast);
        for _ in 0..5 {
            hub.deliver(&event(&ch));
        }
        assert_eq!(slow.close_requested().map(|c| c.code), Some(gateway_protocol::CloseCode::SlowConsumer));
        assert!(fast.close_requested().is_none());
        for _ in 0..5 {
            assert!(fo.rx.recv().await.is_some());
        }
    }

    #[test]
    fn disconnect_by_principal() {
        let hub = Hub::default();
        let (a, _ao) = conn(1, Encoding::Json, 8);
        hub.register(a.clone());
        assert_eq!(hub.stats().connected_users, 1);
        assert_eq!(
            hub.disconnect(PrincipalKind::User, "u1", Close::bare(gateway_protocol::CloseCode::Disconnected)),
            1
        );
        assert!(a.close_requested().is_some());
        hub.unregister(1);
        assert_eq!(hub.stats(), HubStats::default());
    }
}
