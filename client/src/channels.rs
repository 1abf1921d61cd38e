//! The SDK's channel registry: which channels the application subscribed to (with an
//! optional channel token), and the last stream position seen on every channel
//! (contract §9). Positions drive both `recover` on re-subscribe and de-duplication:
//! within an epoch an offset at or below the last delivered one is never delivered again
//! (a replay overlapping live events, or a node that sent it twice).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gateway_protocol::{ClientFrame, ErrorBody, EventFrame, StreamPosition};
use serde::Deserialize;

/// Most channels one `subscribe` frame may name (the server's default
/// `limits.max_channels`; more is refused whole).
pub const MAX_CHANNELS_PER_FRAME: usize = 100;

/// Subscribe rejections a later reconnect may fix; on a re-subscribe the channel is kept
/// for the next connection. Any other rejection forgets the channel.
pub const TRANSIENT_CODES: [&str; 4] = ["unavailable", "timeout", "internal", "rate_limited"];

/// The `result` of a `subscribe` response.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct SubscribeResult {
    /// Channels refused, each with its reason.
    #[serde(default)]
    pub rejected: Vec<Rejection>,
    /// For each channel named in `recover`: whether the missed events are replayed.
    #[serde(default)]
    pub recovered: BTreeMap<String, bool>,
    /// Where each joined channel with history stood when this connection joined it.
    #[serde(default)]
    pub positions: BTreeMap<String, StreamPosition>,
}

/// One refused channel.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Rejection {
    /// The channel.
    pub channel: String,
    /// Why.
    #[serde(flatten)]
    pub error: ErrorBody,
}

/// One subscribe frame to write, without its id.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SubscribeBatch {
    /// The channels it names.
    pub channels: Vec<String>,
    /// The channel token it carries (one channel per tokened frame).
    pub token: Option<String>,
    /// The positions to recover from.
    pub recover: BTreeMap<String, StreamPosition>,
}

impl SubscribeBatch {
    /// The frame, with `id`.
    pub fn frame(&self, id: String) -> ClientFrame {
        ClientFrame::Subscribe {
            id: Some(id),
            channels: self.channels.clone(),
            token: self.token.clone(),
            recover: self.recover.clone(),
        }
    }
}

/// Subscribed channels and positions.
#[derive(Debug, Default)]
pub(crate) struct Channels {
    /// Channels the application subscribed to → their channel token.
    subscribed: BTreeMap<String, Option<String>>,
    /// The last position delivered per channel (also auto-joined ones).
    positions: HashMap<String, StreamPosition>,
}

impl Channels {
    /// Registers a channel (a newer token replaces the old); true when it is new.
    pub fn add(&mut self, channel: &str, token: Option<String>) -> bool {
        match self.subscribed.get_mut(channel) {
            Some(t) => {
                if token.is_some() {
                    *t = token;
                }
                false
            }
            None => {
                self.subscribed.insert(channel.to_owned(), token);
                true
            }
        }
    }

    /// Forgets a channel and its position; true when it was subscribed.
    pub fn forget(&mut self, channel: &str) -> bool {
        self.positions.remove(channel);
        self.subscribed.remove(channel).is_some()
    }

    /// The last position delivered on `channel`.
    #[cfg(test)]
    pub fn position(&self, channel: &str) -> Option<&StreamPosition> {
        self.positions.get(channel)
    }

    /// Forgets every position (the principal changed: they describe someone else's
    /// channels).
    pub fn clear_positions(&mut self) {
        self.positions.clear();
    }

    /// Starts tracking `channel` at the position the server reported for the join, when
    /// no event was seen on it yet: a reconnect then recovers from there, so an event
    /// published while the client was away is not lost even if none came before.
    pub fn start_at(&mut self, channel: &str, pos: &StreamPosition) {
        self.positions.entry(channel.to_owned()).or_insert_with(|| pos.clone());
    }

    /// Records the event's position; false when it must not be delivered (an offset at
    /// or below the last one delivered in the same epoch).
    pub fn accept(&mut self, ev: &EventFrame) -> bool {
        let Some(pos) = ev.position() else { return true };
        let channel = ev.channel.as_str();
        if let Some(last) = self.positions.get(channel)
            && last.epoch == pos.epoch
            && pos.offset <= last.offset
        {
            return false;
        }
        self.positions.insert(channel.to_owned(), pos);
        true
    }

    /// The frames for `channels` (new ones while connected).
    pub fn batches_for(&self, channels: &[String]) -> Vec<SubscribeBatch> {
        let mut tokened = Vec::new();
        let mut plain = Vec::new();
        for ch in channels {
            match self.subscribed.get(ch) {
                Some(Some(token)) => tokened.push(self.batch(vec![ch.clone()], Some(token.clone()))),
                _ => plain.push(ch.clone()),
            }
        }
        let mut out: Vec<SubscribeBatch> =
            plain.chunks(MAX_CHANNELS_PER_FRAME).map(|chunk| self.batch(chunk.to_vec(), None)).collect();
        out.extend(tokened);
        out
    }

    /// After a (re)connect: every subscribed channel plus every channel with a known
    /// position (e.g. the auto-joined `agent:<id>`, so its missed events come back), in
    /// as few frames as possible: one for all plain channels (per 100), one per channel
    /// with a channel token.
    pub fn resubscribe(&self) -> Vec<SubscribeBatch> {
        let all: BTreeSet<&String> = self.subscribed.keys().chain(self.positions.keys()).collect();
        let names: Vec<String> = all.into_iter().cloned().collect();
        self.batches_for(&names)
    }

    fn batch(&self, channels: Vec<String>, token: Option<String>) -> SubscribeBatch {
        let recover = channels.iter().filter_map(|c| Some((c.clone(), self.positions.get(c)?.clone()))).collect();
        SubscribeBatch { channels, token, recover }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(channel: &str, offset: Option<u64>, epoch: &str) -> EventFrame {
        serde_json::from_value(json!({
            "channel": channel, "event": "e", "data": null, "id": "x", "ts": 1,
            "offset": offset, "epoch": offset.map(|_| epoch),
        }))
        .expect("event")
    }

    #[test]
    fn duplicates_and_older_offsets_are_dropped_within_an_epoch() {
        let mut c = Channels::default();
        assert!(c.accept(&ev("session:a", Some(5), "E1")));
        assert!(!c.accept(&ev("session:a", Some(5), "E1")));
        assert!(!c.accept(&ev("session:a", Some(3), "E1")));
        assert!(c.accept(&ev("session:a", Some(6), "E1")));
        // A new epoch starts over; events without a position always pass.
        assert!(c.accept(&ev("session:a", Some(1), "E2")));
        assert!(c.accept(&ev("session:a", None, "")));
        assert!(c.accept(&ev("session:a", None, "")));
        assert_eq!(c.position("session:a"), Some(&StreamPosition { offset: 1, epoch: "E2".into() }));
    }

    #[test]
    fn one_frame_with_recover_plus_one_per_token() {
        let mut c = Channels::default();
        assert!(c.add("project:p1", None));
        assert!(!c.add("project:p1", None));
        c.add("session:s", Some("tok".into()));
        c.add("broadcast:agents", None);
        c.accept(&ev("agent:a1", Some(7), "E"));
        c.accept(&ev("project:p1", Some(2), "E"));
        let b = c.resubscribe();
        assert_eq!(b.len(), 2, "{b:?}");
        assert_eq!(b[0].channels, ["agent:a1", "broadcast:agents", "project:p1"]);
        assert_eq!(b[0].recover.len(), 2);
        assert_eq!(b[0].recover["agent:a1"], StreamPosition { offset: 7, epoch: "E".into() });
        assert_eq!(b[1].channels, ["session:s"]);
        assert_eq!(b[1].token.as_deref(), Some("tok"));
        assert!(c.forget("project:p1"));
        assert!(c.position("project:p1").is_none());
    }

    #[test]
    fn big_sets_are_chunked() {
        let mut c = Channels::default();
        for i in 0..250 {
            c.add(&format!("project:p{i}"), None);
        }
        let sizes: Vec<usize> = c.resubscribe().iter().map(|b| b.channels.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 250);
        assert!(sizes.iter().all(|s| *s <= MAX_CHANNELS_PER_FRAME));
    }

    #[test]
    fn results_parse() {
        let r: SubscribeResult = serde_json::from_value(json!({
            "subscribed": ["a:b"], "rejected": [{"channel": "project:x", "code": "forbidden", "message": "no"}],
            "recovered": {"a:b": true}
        }))
        .expect("result");
        assert_eq!(r.rejected[0].error.code, gateway_protocol::ErrorCode::Forbidden);
        assert!(r.recovered["a:b"]);
    }
}
