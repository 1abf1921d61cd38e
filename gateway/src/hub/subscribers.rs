//! One channel's local subscribers: the dense list the fan-out walks, the index that
//! makes leaving O(1) on large channels, and the gates of subscribers whose history
//! replay is in progress (their live events wait at the gate so the replay can go
//! first, in order, with nothing twice).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::extract::ws::Message;
use gateway_protocol::CloseCode;

use crate::conn::handle::{Close, ConnHandle, ConnId};

/// Channels with more local subscribers than this keep an index for O(1) removal;
/// smaller ones are scanned.
const INDEX_ABOVE: usize = 16;

/// An event held for a gated subscriber: its offset (0 when it has none) and the
/// message in that subscriber's encoding.
pub(crate) type Held = (u64, Message, usize);

/// A subscriber whose replay is being fetched.
pub(super) struct Gate {
    /// The connection.
    pub(super) conn: Arc<ConnHandle>,
    /// Live events that arrived meanwhile, oldest first.
    pub(super) held: Vec<Held>,
    /// Their bytes, bounded like the connection's queue.
    pub(super) held_bytes: usize,
    /// Offsets it already received live before it was gated again: `(after, upto]`.
    pub(super) delivered: Option<(u64, u64)>,
}

/// What one live subscriber has received of a channel's offsets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Have {
    /// It has every event after this offset (0 with `pushed` 0: since it joined, before
    /// any event was seen here; see [`Subscribers::first`]).
    pub(super) from: u64,
    /// The highest offset already queued to it when it went live; a live event at or
    /// below it is skipped (a replay can run ahead of the live feed).
    pub(super) pushed: u64,
}

/// One channel's local subscribers.
#[derive(Default)]
pub(super) struct Subscribers {
    /// Live subscribers, in no particular order.
    pub(super) list: Vec<Arc<ConnHandle>>,
    /// Per entry of `list`: which offsets it has (for a second recovery on the same
    /// connection) and below which a live event is not for it (already replayed).
    have: Vec<Have>,
    /// ConnId → position in `list`; `None` while the list is small. Boxed so that the
    /// many one-subscriber channels (every user's own) carry 8 bytes, not a whole map.
    #[expect(clippy::box_collection, reason = "8 bytes for the common small channel instead of a map's 48")]
    index: Option<Box<HashMap<ConnId, usize>>>,
    /// Offset of the first event delivered here since the entry exists (0: none yet), for
    /// subscribers that joined before any: they received everything from it on.
    pub(super) first: AtomicU64,
    /// Offset of the last event delivered here (0: none carried one).
    pub(super) last: AtomicU64,
    /// Subscribers waiting for their replay; `None` (8 bytes) on almost every channel.
    gates: Option<Box<Mutex<Vec<Gate>>>>,
}

impl Subscribers {
    /// Live and gated subscribers.
    pub(super) fn len(&self) -> usize {
        self.list.len() + self.gates.as_ref().map_or(0, |g| lock(g).len())
    }

    /// No subscriber at all, live or gated.
    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` is a subscriber here, live or gated.
    pub(super) fn has(&self, id: ConnId) -> bool {
        self.position(id).is_some() || self.gates.as_ref().is_some_and(|g| lock(g).iter().any(|x| x.conn.id == id))
    }

    fn position(&self, id: ConnId) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&id).copied(),
            None => self.list.iter().position(|c| c.id == id),
        }
    }

    /// Adds `conn` as a live subscriber; false if it was one already.
    pub(super) fn insert(&mut self, conn: &Arc<ConnHandle>) -> bool {
        let last = self.last.load(Ordering::Acquire);
        self.insert_with(conn, Have { from: last, pushed: last })
    }

    /// Adds `conn` as a live subscriber that has `have`; false if it was one already.
    pub(super) fn insert_with(&mut self, conn: &Arc<ConnHandle>, have: Have) -> bool {
        if self.position(conn.id).is_some() {
            return false;
        }
        if self.list.capacity() == 0 {
            // Most channels (a user's own) have one subscriber.
            self.list.reserve_exact(1);
            self.have.reserve_exact(1);
        }
        self.list.push(conn.clone());
        self.have.push(have);
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

    /// The live subscribers with what each has.
    pub(super) fn live(&self) -> impl Iterator<Item = (&Arc<ConnHandle>, &Have)> {
        self.list.iter().zip(&self.have)
    }

    /// Removes a live subscriber; returns what it had, if it was there.
    fn remove_live(&mut self, id: ConnId) -> Option<Have> {
        let i = self.position(id)?;
        self.list.swap_remove(i);
        let have = self.have.swap_remove(i);
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
            self.have.shrink_to(self.list.len() * 2);
        }
        Some(have)
    }

    /// Removes `id`, live or gated; false if it was not there.
    pub(super) fn remove(&mut self, id: ConnId) -> bool {
        if self.remove_live(id).is_some() {
            return true;
        }
        self.take_gate(id).is_some()
    }

    /// Puts `conn` behind a gate: from now on its live events are held. If it was a
    /// live subscriber, the offsets it already received are remembered.
    pub(super) fn gate(&mut self, conn: &Arc<ConnHandle>) {
        let (first, last) = (self.first.load(Ordering::Acquire), self.last.load(Ordering::Acquire));
        let delivered = match self.remove_live(conn.id) {
            // Joined before this node saw any event here: it has all since the first.
            Some(Have { from: 0, pushed: 0 }) if first > 0 => Some((first - 1, last)),
            Some(Have { from, pushed }) if last.max(pushed) > from => Some((from, last.max(pushed))),
            _ => None,
        };
        let gates = self.gates.get_or_insert_with(Box::default);
        let mut g = lock(gates);
        g.retain(|x| x.conn.id != conn.id);
        g.push(Gate { conn: conn.clone(), held: Vec::new(), held_bytes: 0, delivered });
    }

    /// Takes `id`'s gate away (to open it, or because it left).
    pub(super) fn take_gate(&mut self, id: ConnId) -> Option<Gate> {
        let gates = self.gates.as_ref()?;
        let mut g = lock(gates);
        let i = g.iter().position(|x| x.conn.id == id)?;
        let gate = g.swap_remove(i);
        let now_empty = g.is_empty();
        drop(g);
        if now_empty {
            self.gates = None;
        }
        Some(gate)
    }

    /// Notes an event's offset as delivered here.
    pub(super) fn record(&self, offset: u64) {
        if offset > 0 {
            let _ = self.first.compare_exchange(0, offset, Ordering::AcqRel, Ordering::Acquire);
            self.last.fetch_max(offset, Ordering::AcqRel);
        }
    }

    /// Holds an event for every gated subscriber. `encode` gives the message for an
    /// encoding (shared with the live fan-out). A gate that outgrows the connection's
    /// queue bounds closes it as a slow consumer, as a full queue would.
    pub(super) fn hold(&self, offset: u64, mut encode: impl FnMut(&ConnHandle) -> Option<(Message, usize)>) {
        let Some(gates) = &self.gates else {
            return;
        };
        for gate in lock(gates).iter_mut() {
            if gate.conn.is_closing() {
                continue;
            }
            let Some((msg, len)) = encode(&gate.conn) else {
                continue;
            };
            if !gate.conn.fits(gate.held.len() + 1, gate.held_bytes + len) {
                gate.conn.close(Close::bare(CloseCode::SlowConsumer));
                gate.held = Vec::new();
                continue;
            }
            gate.held_bytes += len;
            gate.held.push((offset, msg, len));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Gate {
    /// Queues `replay` (history, oldest first) and then the held live events, skipping
    /// every offset the connection already received or that the replay covered.
    /// Returns how many were queued and the highest offset queued.
    pub(super) fn release(self, replay: Vec<Held>) -> (usize, u64) {
        let seen = |off: u64| self.delivered.is_some_and(|(after, upto)| off > after && off <= upto);
        let mut pushed_max = 0;
        let mut n = 0;
        for (off, msg, _) in replay {
            if seen(off) || (off != 0 && off <= pushed_max) {
                continue;
            }
            pushed_max = pushed_max.max(off);
            n += usize::from(self.conn.push(msg));
        }
        for (off, msg, _) in self.held {
            if off != 0 && (seen(off) || off <= pushed_max) {
                continue;
            }
            pushed_max = pushed_max.max(off);
            n += usize::from(self.conn.push(msg));
        }
        let upto = self.delivered.map_or(0, |(_, upto)| upto);
        (n, pushed_max.max(upto))
    }
}
