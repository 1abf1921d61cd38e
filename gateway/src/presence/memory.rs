//! The in-process presence twin: the same leases, limits and expiry rules as Redis, in
//! one node's memory.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use gateway_protocol::{Channel, Principal, PrincipalKind};

use super::{Admission, ChannelStats, ConnLease, ConnRef, Expired, NodeReport, Presence, PresenceError, Reaped};
use crate::bus::ComponentHealth;

/// Lease key of one connection: `node/conn`.
type Lease = String;

#[derive(Default)]
struct State {
    /// Principal → its connections' leases (for limits).
    conns: HashMap<Principal, HashMap<Lease, Instant>>,
    /// Channel → connection leases present there, with their principal.
    channels: HashMap<Channel, HashMap<Lease, (Principal, Instant)>>,
    /// Node registry.
    nodes: HashMap<String, (NodeReport, Instant)>,
}

/// The embedded presence store.
pub struct MemoryPresence {
    state: Mutex<State>,
    /// Lease length.
    lease: Duration,
}

impl MemoryPresence {
    /// A store whose entries live `lease` past their last refresh.
    pub fn new(lease: Duration) -> Self {
        MemoryPresence { state: Mutex::default(), lease }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, PresenceError> {
        self.state.lock().map_err(|_| PresenceError::Unavailable("poisoned".into()))
    }
}

fn lease_key(c: &ConnRef<'_>) -> Lease {
    format!("{}/{}", c.node, c.conn)
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn admit(&self, c: &ConnRef<'_>, limit: u32) -> Result<Admission, PresenceError> {
        let now = Instant::now();
        let mut s = self.lock()?;
        let leases = s.conns.entry(c.principal.clone()).or_default();
        // Expired entries do not count against the limit, but stay for the reaper to
        // report; while one is there the principal has not gone offline yet.
        let key = lease_key(c);
        let held = leases.contains_key(&key);
        if !held && leases.values().filter(|exp| **exp > now).count() >= limit as usize {
            return Ok(Admission::Full { limit });
        }
        let first = leases.is_empty();
        leases.insert(key, now + self.lease);
        Ok(Admission::Admitted { first })
    }

    async fn release(&self, c: &ConnRef<'_>) -> Result<bool, PresenceError> {
        let mut s = self.lock()?;
        let Some(leases) = s.conns.get_mut(c.principal) else {
            return Ok(false);
        };
        let removed = leases.remove(&lease_key(c)).is_some();
        let last = leases.is_empty();
        if last {
            s.conns.remove(c.principal);
        }
        Ok(removed && last)
    }

    async fn join(&self, ch: &Channel, c: &ConnRef<'_>) -> Result<bool, PresenceError> {
        let now = Instant::now();
        let mut s = self.lock()?;
        let entries = s.channels.entry(ch.clone()).or_default();
        let first = !entries.values().any(|(p, exp)| p == c.principal && *exp > now);
        entries.insert(lease_key(c), (c.principal.clone(), now + self.lease));
        Ok(first)
    }

    async fn leave(&self, ch: &Channel, c: &ConnRef<'_>) -> Result<bool, PresenceError> {
        let mut s = self.lock()?;
        let Some(entries) = s.channels.get_mut(ch) else {
            return Ok(false);
        };
        let removed = entries.remove(&lease_key(c)).is_some();
        let last = removed && !entries.values().any(|(p, _)| p == c.principal);
        if entries.is_empty() {
            s.channels.remove(ch);
        }
        Ok(last)
    }

    async fn members(&self, ch: &Channel) -> Result<Vec<Principal>, PresenceError> {
        let now = Instant::now();
        let s = self.lock()?;
        let mut out: Vec<Principal> = s
            .channels
            .get(ch)
            .into_iter()
            .flat_map(|e| e.values().filter(|(_, exp)| *exp > now).map(|(p, _)| p.clone()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        out.sort();
        Ok(out)
    }

    async fn stats(&self, ch: &Channel) -> Result<ChannelStats, PresenceError> {
        let now = Instant::now();
        let s = self.lock()?;
        let mut st = ChannelStats::default();
        let mut seen = HashSet::new();
        for (p, exp) in s.channels.get(ch).into_iter().flat_map(|e| e.values()) {
            if *exp <= now {
                continue;
            }
            st.connections += 1;
            if seen.insert(p) {
                match p.kind {
                    PrincipalKind::User => st.users += 1,
                    PrincipalKind::Agent => st.agents += 1,
                }
            }
        }
        Ok(st)
    }

    async fn maintain(&self, me: &NodeReport) -> Result<Reaped, PresenceError> {
        let now = Instant::now();
        let until = now + self.lease;
        let mine = format!("{}/", me.node);
        let mut s = self.lock()?;
        let s = &mut *s;
        s.nodes.insert(me.node.clone(), (me.clone(), until));
        s.nodes.retain(|_, (_, exp)| *exp > now);
        let mut lost = Vec::new();
        for (principal, leases) in s.conns.iter_mut() {
            let mut gone = Vec::new();
            leases.retain(|k, exp| {
                if k.starts_with(&mine) {
                    *exp = until;
                }
                let keep = *exp > now;
                if !keep {
                    gone.push(k.clone());
                }
                keep
            });
            let n = gone.len();
            for (i, k) in gone.into_iter().enumerate() {
                let (node, conn) = k.split_once('/').unwrap_or((&k, ""));
                let edge = i + 1 == n && leases.is_empty();
                lost.push(ConnLease { node: node.into(), conn: conn.into(), principal: principal.clone(), edge });
            }
        }
        s.conns.retain(|_, l| !l.is_empty());
        let mut expired = Vec::new();
        for (ch, entries) in s.channels.iter_mut() {
            let mut gone = Vec::new();
            entries.retain(|k, (p, exp)| {
                if k.starts_with(&mine) {
                    *exp = until;
                }
                let keep = *exp > now;
                if !keep {
                    gone.push(p.clone());
                }
                keep
            });
            gone.sort();
            gone.dedup();
            for p in gone {
                if !entries.values().any(|(q, _)| *q == p) {
                    expired.push(Expired { channel: ch.clone(), member: p });
                }
            }
        }
        s.channels.retain(|_, e| !e.is_empty());
        Ok(Reaped { left: expired, lost })
    }

    async fn nodes(&self) -> Result<Vec<NodeReport>, PresenceError> {
        let now = Instant::now();
        let s = self.lock()?;
        let mut out: Vec<NodeReport> = s.nodes.values().filter(|(_, exp)| *exp > now).map(|(r, _)| r.clone()).collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }

    async fn deregister(&self, node: &str) -> Result<(), PresenceError> {
        self.lock()?.nodes.remove(node);
        Ok(())
    }

    fn health(&self) -> ComponentHealth {
        ComponentHealth::embedded()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str) -> Principal {
        Principal { kind: PrincipalKind::Agent, id: id.into() }
    }

    #[tokio::test]
    async fn limits_and_release() {
        let m = MemoryPresence::new(Duration::from_secs(30));
        let a = p("a1");
        for i in 0..5 {
            let c = ConnRef { node: "n", conn: &format!("c{i}"), principal: &a };
            assert_eq!(m.admit(&c, 5).await.unwrap(), Admission::Admitted { first: i == 0 });
        }
        let c6 = ConnRef { node: "n", conn: "c6", principal: &a };
        assert_eq!(m.admit(&c6, 5).await.unwrap(), Admission::Full { limit: 5 });
        assert!(!m.release(&ConnRef { node: "n", conn: "c0", principal: &a }).await.unwrap());
        assert_eq!(m.admit(&c6, 5).await.unwrap(), Admission::Admitted { first: false });
        for c in ["c1", "c2", "c3", "c4"] {
            assert!(!m.release(&ConnRef { node: "n", conn: c, principal: &a }).await.unwrap());
        }
        assert!(m.release(&c6).await.unwrap(), "the last release is the last");
        assert!(!m.release(&c6).await.unwrap(), "a repeated release is not last again");
    }

    #[tokio::test]
    async fn expired_connections_are_reported_lost_once() {
        let m = MemoryPresence::new(Duration::from_millis(50));
        let (a, b) = (p("a1"), p("b1"));
        let dead1 = ConnRef { node: "dead", conn: "c1", principal: &a };
        let dead2 = ConnRef { node: "dead", conn: "c2", principal: &b };
        let live = ConnRef { node: "alive", conn: "c3", principal: &b };
        assert_eq!(m.admit(&dead1, 5).await.unwrap(), Admission::Admitted { first: true });
        assert_eq!(m.admit(&dead2, 5).await.unwrap(), Admission::Admitted { first: true });
        assert_eq!(m.admit(&live, 5).await.unwrap(), Admission::Admitted { first: false });
        tokio::time::sleep(Duration::from_millis(80)).await;
        // An expired entry no longer counts against the limit, nor makes a newcomer first.
        let again = ConnRef { node: "alive", conn: "c4", principal: &a };
        assert_eq!(m.admit(&again, 1).await.unwrap(), Admission::Admitted { first: false });
        assert!(!m.release(&again).await.unwrap(), "the dead entry is still there");
        let me = NodeReport { node: "alive".into(), ..Default::default() };
        let mut lost = m.maintain(&me).await.unwrap().lost;
        lost.sort_by(|x, y| x.conn.cmp(&y.conn));
        let lease = |conn: &str, principal: &Principal, edge| ConnLease {
            node: "dead".into(),
            conn: conn.into(),
            principal: principal.clone(),
            edge,
        };
        assert_eq!(lost, vec![lease("c1", &a, true), lease("c2", &b, false)]);
        assert!(m.maintain(&me).await.unwrap().is_empty());
        assert!(m.release(&live).await.unwrap());
    }

    #[tokio::test]
    async fn join_leave_first_last_and_expiry() {
        let m = MemoryPresence::new(Duration::from_millis(50));
        let ch = Channel::parse("session:s").unwrap();
        let a = p("a1");
        let c1 = ConnRef { node: "dead", conn: "c1", principal: &a };
        let c2 = ConnRef { node: "dead", conn: "c2", principal: &a };
        assert!(m.join(&ch, &c1).await.unwrap());
        assert!(!m.join(&ch, &c2).await.unwrap());
        assert_eq!(m.members(&ch).await.unwrap(), vec![a.clone()]);
        assert_eq!(m.stats(&ch).await.unwrap().connections, 2);
        assert!(!m.leave(&ch, &c1).await.unwrap());
        // Node "dead" stops refreshing: another node's maintenance reaps it once.
        tokio::time::sleep(Duration::from_millis(80)).await;
        let me = NodeReport { node: "alive".into(), ..Default::default() };
        let gone = m.maintain(&me).await.unwrap().left;
        assert_eq!(gone, vec![Expired { channel: ch.clone(), member: a }]);
        assert!(m.maintain(&me).await.unwrap().is_empty());
        assert!(m.members(&ch).await.unwrap().is_empty());
    }
}
