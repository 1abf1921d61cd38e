//! The embedded history twin: per channel, a bounded log of the last events in memory,
//! with offsets from one store-wide sequence (they grow along a channel and are never
//! reused, also after a channel's log expired and was dropped) and an epoch drawn at
//! start (a restarted node is a new store: clients that recover against it get
//! `recovered:false`). The same rules as the JetStream store.
//!
//! The in-process bus stamps and appends an event and delivers it under the same
//! per-channel lock, so local subscribers see offsets in order.

use std::{
    collections::VecDeque,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use dashmap::DashMap;
use gateway_protocol::{Channel, EventFrame};

use super::{History, HistoryError, Keeping, Page, ReadFrom};

/// One channel's log.
#[derive(Default)]
struct Log {
    /// Offset of the last appended event.
    last: u64,
    /// Kept events, oldest first, with when they were appended.
    events: VecDeque<(Instant, EventFrame)>,
    /// Whether an event was ever dropped from this log (window or TTL).
    dropped: bool,
}

impl Log {
    /// Drops events older than `ttl` and beyond `size`.
    fn trim(&mut self, size: usize, ttl: Duration, now: Instant) {
        while self.events.len() > size || self.events.front().is_some_and(|(at, _)| now.duration_since(*at) > ttl) {
            self.events.pop_front();
            self.dropped = true;
        }
    }

    /// Whether the event with `offset` is kept.
    fn holds(&self, offset: u64) -> bool {
        self.events.binary_search_by_key(&Some(offset), |(_, e)| e.offset).is_ok()
    }
}

/// The in-process store.
pub struct MemoryHistory {
    /// Which channels keep how much.
    keeping: Keeping,
    /// Names this store incarnation.
    epoch: String,
    /// Channel → its log; a channel whose events all expired is removed by [`MemoryHistory::sweep`].
    logs: DashMap<Channel, Log>,
    /// The last offset handed out, store-wide.
    seq: AtomicU64,
}

impl MemoryHistory {
    /// An empty store with a fresh epoch.
    pub fn new(keeping: Keeping) -> Self {
        let epoch = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        MemoryHistory { keeping, epoch, logs: DashMap::new(), seq: AtomicU64::new(0) }
    }

    /// The epoch of this store.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Stamps `ev` with the channel's next offset and this epoch, keeps it, and hands it
    /// to `deliver` while the channel is still locked (so deliveries follow offsets).
    /// Channels without history are delivered as they are.
    pub fn append_and(&self, mut ev: EventFrame, deliver: impl FnOnce(EventFrame)) {
        if !self.keeping.keeps(&ev.channel) {
            return deliver(ev);
        }
        // One more than the window, like the JetStream store: the position of the oldest
        // event a client may hold stays to prove nothing after it was dropped.
        let (size, ttl) = (self.keeping.size(&ev.channel) + 1, Duration::from_millis(self.keeping.ttl_ms(&ev.channel)));
        let mut log = self.logs.entry(ev.channel.clone()).or_default();
        // Under the channel's lock: offsets grow along the channel.
        log.last = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        ev.offset = Some(log.last);
        ev.epoch = Some(self.epoch.clone());
        let now = Instant::now();
        log.events.push_back((now, ev.clone()));
        log.trim(size, ttl, now);
        deliver(ev);
    }

    /// Drops expired events, and channels left with none. Bounded work per call is not
    /// needed: the log count is bounded by the channels that published within a TTL.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.logs.retain(|ch, log| {
            let ttl = Duration::from_millis(self.keeping.ttl_ms(ch));
            log.trim(self.keeping.size(ch) + 1, ttl, now);
            !log.events.is_empty()
        });
    }

    /// Channels with a log (for tests and leak checks).
    pub fn channels(&self) -> usize {
        self.logs.len()
    }
}

#[async_trait]
impl History for MemoryHistory {
    async fn read(&self, ch: &Channel, from: ReadFrom, limit: usize) -> Result<Page, HistoryError> {
        if !self.keeping.keeps(ch) {
            return Err(HistoryError::NotKept(ch.clone()));
        }
        let empty = || Page { events: Vec::new(), last: 0, epoch: self.epoch.clone(), reaches: true, complete: true };
        let Some(mut log) = self.logs.get_mut(ch) else {
            // Nothing was ever kept here (or it all expired): a position of this epoch
            // can only be recovered if it was never behind anything.
            return Ok(match from {
                ReadFrom::After(p) => Page { reaches: p.epoch == self.epoch && p.offset == 0, ..empty() },
                ReadFrom::Latest => empty(),
            });
        };
        log.trim(self.keeping.size(ch) + 1, Duration::from_millis(self.keeping.ttl_ms(ch)), Instant::now());
        let last = log.last;
        let (events, reaches, complete) = match from {
            ReadFrom::After(p) => {
                // Every event after `p` is here when `p` itself is (events leave oldest
                // first), when nothing came after it, or when `p` is 0 (joined before any
                // event) and nothing was ever dropped.
                let reaches = p.epoch == self.epoch
                    && p.offset <= last
                    && (p.offset == last || log.holds(p.offset) || (p.offset == 0 && !log.dropped));
                if !reaches {
                    (Vec::new(), false, false)
                } else {
                    let after: Vec<EventFrame> =
                        log.events.iter().map(|(_, e)| e).filter(|e| e.offset > Some(p.offset)).cloned().collect();
                    let complete = after.len() <= limit;
                    (after.into_iter().take(limit).collect(), true, complete)
                }
            }
            ReadFrom::Latest => {
                let skip = log.events.len().saturating_sub(limit);
                let events = log.events.iter().skip(skip).map(|(_, e)| e.clone()).collect();
                (events, true, skip == 0)
            }
        };
        Ok(Page { events, last, epoch: self.epoch.clone(), reaches, complete })
    }

    async fn maintain(&self) {
        self.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HistoryConfig;
    use gateway_protocol::StreamPosition;
    use serde_json::json;

    fn ev(ch: &Channel, n: u64) -> EventFrame {
        EventFrame {
            channel: ch.clone(),
            event: "e".into(),
            data: json!(n),
            id: format!("m{n}"),
            ts: n,
            from: None,
            offset: None,
            epoch: None,
        }
    }

    fn store(size: u64) -> MemoryHistory {
        let mut cfg = HistoryConfig::default();
        cfg.session.size = size;
        MemoryHistory::new(Keeping::new(&cfg))
    }

    async fn append(h: &MemoryHistory, ch: &Channel, n: u64) -> EventFrame {
        let mut out = None;
        h.append_and(ev(ch, n), |e| out = Some(e));
        out.unwrap()
    }

    #[tokio::test]
    async fn offsets_window_and_epoch() {
        let h = store(3);
        let ch = Channel::parse("session:s").unwrap();
        for n in 1..=5 {
            assert_eq!(append(&h, &ch, n).await.offset, Some(n));
        }
        let at = |offset| ReadFrom::After(StreamPosition { offset, epoch: h.epoch().to_owned() });
        // Kept: 2 (the window's extra one), 3, 4, 5. After 2 is complete; after 1 lost 2.
        let p = h.read(&ch, at(2), 10).await.unwrap();
        assert_eq!((p.reaches, p.events.iter().map(|e| e.offset.unwrap()).collect::<Vec<_>>()), (true, vec![3, 4, 5]));
        assert!(!h.read(&ch, at(1), 10).await.unwrap().reaches);
        let p = h.read(&ch, at(5), 10).await.unwrap();
        assert!(p.reaches && p.events.is_empty() && p.last == 5);
        assert!(!h.read(&ch, at(9), 10).await.unwrap().reaches, "an offset from the future is not ours");
        let other = ReadFrom::After(StreamPosition { offset: 4, epoch: "other".into() });
        assert!(!h.read(&ch, other, 10).await.unwrap().reaches);
        let p = h.read(&ch, at(2), 2).await.unwrap();
        assert_eq!((p.events.len(), p.complete), (2, false));
        let p = h.read(&ch, ReadFrom::Latest, 2).await.unwrap();
        assert_eq!(p.events.iter().map(|e| e.offset.unwrap()).collect::<Vec<_>>(), vec![4, 5]);
        let b = Channel::parse("broadcast:b").unwrap();
        assert_eq!(append(&h, &b, 1).await.offset, None, "broadcast keeps nothing");
        assert!(h.read(&b, ReadFrom::Latest, 1).await.is_err());
    }

    #[tokio::test]
    async fn expiry_and_sweep() {
        let cfg =
            HistoryConfig { session: crate::config::NsHistory { size: 10, ttl_ms: 1 }, ..HistoryConfig::default() };
        let h = MemoryHistory::new(Keeping::new(&cfg));
        let ch = Channel::parse("session:s").unwrap();
        append(&h, &ch, 1).await;
        std::thread::sleep(Duration::from_millis(5));
        let p = h.read(&ch, ReadFrom::Latest, 10).await.unwrap();
        assert!(p.events.is_empty() && p.last == 1);
        h.sweep();
        assert_eq!(h.channels(), 0);
    }
}
