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
    conn::handle::{Close, ConnHandle, ConnId, message_len},
    telemetry,
};

/// Channel-table shards; spreads lock contention between unrelated channels.
const SHARDS: usize = 64;

/// Channels with more local subscribers than this keep an index for O(1) removal;
/// smaller ones are scanned.
const INDEX_ABOVE: usize = 16;

/// One channel's local subscribers: a dense list the fan-out walks, and (for large
/// channels) where each connection sits in it, so leaving is a swap-remove.
#[derive(Default)]
struct Subscribers {
    list: Vec<Arc<ConnHandle>>,
    /// ConnId → position in `list`; `None` while the list is small. Boxed so that the
    /// many one-subscriber channels (every user's own) carry 8 bytes, not a whole map.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<ConnId, usize>>>,
}

impl Subscribers {
    fn len(&self) -> usize {
        self.list.len()
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn position(&self, id: ConnId) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&id).copied(),
            None => self.list.iter().position(|c| c.id == id),
        }
    }

    /// Adds `conn`; false if it was there already.
    fn insert(&mut self, conn: &Arc<ConnHandle>) -> bool {
        if self.position(conn.id).is_some() {
            return false;
        }
        if self.list.capacity() == 0 {
            // Most channels (a user's own) have one subscriber.
            self.list.reserve_exact(1);
        }
        self.list.push(conn.clone());
        match &mut self.index {
            Some(index) => {
                index.insert(conn.id, self.list.len() - 1);
            }
            None if self.list.len() > INDEX_ABOVE => {
                self.index = Some(Box::new(self.list.iter().enumerate().map(|(i, c)| (c.id, i)).collect()));
            }
            None => {}
        }
        true
    }

    /// Removes `id`; false if it was not there.
    fn remove(&mut self, id: ConnId) -> bool {
        let Some(i) = self.position(id) else {
            return false;
        };
        self.list.swap_remove(i);
        if let Some(index) = &mut self.index {
            index.remove(&id);
            if let Some(moved) = self.list.get(i) {
                index.insert(moved.id, i);
            }
            if self.list.len() <= INDEX_ABOVE / 2 {
                self.index = None;
            }
        }
        if self.list.capacity() > 8 && self.list.len() < self.list.capacity() / 4 {
            self.list.shrink_to(self.list.len() * 2);
        }
        true
    }
}

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
        let frame = ServerFrame::Event(ev);
        // One encoding per kind, its bytes shared by every subscriber of that kind.
        let mut encoded: [Option<(Message, usize)>; 3] = [None, None, None];
        let mut delivered = 0;
        let mut queued = 0;
        for conn in &subs.list {
            let (msg, len) = encoded[conn.encoding.index()].get_or_insert_with(|| {
                let m = to_message(conn.encoding, &frame);
                let len = message_len(&m);
                (m, len)
            });
            if conn.enqueue(msg.clone(), *len) {
                delivered += 1;
                queued += *len;
            }
        }
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
mod tests {
    use super::*;
    use gateway_protocol::PrincipalKind;

    fn conn(id: ConnId, enc: Encoding, frames: usize) -> (Arc<ConnHandle>, crate::conn::handle::Outbox) {
        let p = Principal { kind: PrincipalKind::User, id: format!("u{id}") };
        ConnHandle::new(id, format!("c{id}").into(), p, enc, frames, 1 << 20)
    }

    fn event(ch: &Channel) -> EventFrame {
        EventFrame {
            channel: ch.clone(),
            event: "e".into(),
            data: serde_json::json!({"x":1}),
            id: "m".into(),
            ts: 0,
            from: None,
            offset: None,
            epoch: None,
        }
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
        assert_eq!(hub.deliver(event(&ch)), 3);
        let (Some(Message::Text(x)), Some(Message::Text(y))) = (ao.recv().await, bo.recv().await) else {
            panic!("text expected")
        };
        // Same allocation: one encode, shared.
        assert_eq!(x.as_str().as_ptr(), y.as_str().as_ptr());
        assert!(matches!(co.recv().await, Some(Message::Binary(_))));
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
            hub.deliver(event(&ch));
        }
        assert_eq!(slow.close_requested().map(|c| c.code), Some(gateway_protocol::CloseCode::SlowConsumer));
        assert!(fast.close_requested().is_none());
        for _ in 0..5 {
            assert!(fo.recv().await.is_some());
        }
    }

    #[test]
    fn large_channels_swap_remove_through_the_index() {
        let hub = Hub::default();
        let ch = Channel::parse("session:big").unwrap();
        let conns: Vec<_> = (0..100).map(|i| conn(i, Encoding::Json, 8)).collect();
        for (c, _) in &conns {
            hub.subscribe(&ch, c);
        }
        assert!(!hub.subscribe(&ch, &conns[7].0), "a second subscribe is not a new subscriber");
        assert_eq!(hub.stats().subscriptions, 100);
        // Leave out of order: every survivor must still be found and delivered to.
        for id in (0..100).filter(|i| i % 3 == 0) {
            assert!(!hub.unsubscribe(&ch, id));
        }
        assert!(!hub.unsubscribe(&ch, 3), "already gone");
        assert_eq!(hub.stats().subscriptions, 66);
        assert_eq!(hub.deliver(event(&ch)), 66);
        for (c, _) in &conns {
            assert_eq!(c.queued_frames(), usize::from(c.id % 3 != 0));
        }
        for id in (0..100).filter(|i| i % 3 != 0) {
            hub.unsubscribe(&ch, id);
        }
        assert!(!hub.has_subscribers(&ch));
        assert_eq!(hub.stats(), HubStats::default());
    }

    #[test]
    fn queue_bounds_and_burst_memory() {
        let p = Principal { kind: PrincipalKind::User, id: "u".into() };
        // Byte bound: 3 × 4 bytes fit in 12, the fourth frame closes.
        let (h, mut o) = ConnHandle::new(1, "c".into(), p.clone(), Encoding::Json, 100, 12);
        for _ in 0..3 {
            assert!(h.push(Message::Text("abcd".into())));
        }
        assert!(!h.push(Message::Text("abcd".into())));
        assert_eq!(h.close_requested().map(|c| c.code), Some(gateway_protocol::CloseCode::SlowConsumer));
        assert!(!h.push(Message::Text("a".into())), "closing: refused");
        assert_eq!(h.queued_bytes(), 12);
        assert_eq!(o.discard(), 12);
        assert_eq!((h.queued_frames(), h.queued_bytes()), (0, 0));
        // A burst grows the queue; emptying it gives the storage back.
        let (h, mut o) = ConnHandle::new(2, "c".into(), p, Encoding::Json, 1000, 1 << 20);
        for _ in 0..500 {
            assert!(h.push(Message::Text("x".into())));
        }
        let mut n = 0;
        while o.pop().is_some() {
            n += 1;
        }
        assert_eq!((n, h.queued_frames(), h.queued_bytes(), h.queue_capacity()), (500, 0, 0, 0));
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
