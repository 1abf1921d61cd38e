//! History in JetStream, for a clustered node. One stream per namespace that keeps
//! history, over that namespace's event subjects (`gw.ev.session.>`), so a backend's
//! plain core-NATS publish is stored like a gateway's. Each stream re-publishes what it
//! stored to `gw.live.<namespace>.…` with `Nats-Sequence` (the event's offset) and
//! `Nats-Last-Sequence` (the previous offset on the same channel): nodes subscribe
//! there, so every delivered event carries its offset and a node can see a hole in a
//! channel's chain. The epoch is the stream's creation time: a stream deleted and made
//! again (its store lost) is a new epoch.
//!
//! Per channel the stream keeps `size + 1` events, so the position of the oldest event a
//! client may hold is still there to prove nothing after it was dropped.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use async_nats::{
    Client, HeaderMap,
    jetstream::{
        self, Context,
        consumer::{DeliverPolicy, pull},
        stream::{Config as StreamConfig, DirectGetErrorKind, DiscardPolicy, Republish, StorageType, Stream},
    },
};
use async_trait::async_trait;
use futures_util::StreamExt;
use gateway_protocol::{Channel, EventFrame, Namespace};

use super::{History, HistoryError, Keeping, Page, ReadFrom};
use crate::{config::Config, events::BusScreen, telemetry};

/// The stream of one namespace.
struct NsStream {
    /// Its handle (name and direct-get API).
    stream: Stream,
    /// Its current epoch, re-read by [`JetStreamHistory::refresh`].
    epoch: RwLock<String>,
}

/// Turns a stored message into an event (the bus's decoder: JSON or MessagePack body).
pub type Decode = fn(&Channel, &[u8], Option<&HeaderMap>) -> Result<EventFrame, String>;

/// The JetStream store.
pub struct JetStreamHistory {
    /// The JetStream API on the node's connection.
    js: Context,
    /// First token of every subject.
    prefix: String,
    /// Which channels keep history.
    keeping: Keeping,
    /// Namespace → its stream.
    streams: HashMap<Namespace, NsStream>,
    /// Body decoder shared with the live path.
    decode: Decode,
    /// What stored events must pass before they are replayed (a backend's forged or
    /// oversized event is stored like any other).
    screen: Arc<BusScreen>,
}

/// Reads up to this many stream sequences ahead by direct gets; beyond, a consumer.
const DIRECT_READS: u64 = 8;
/// How long one message of a replay may take to arrive.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one store request waits for its reply before it is sent again. On a NATS
/// cluster a reply can be lost right after the node reconnected to another server,
/// before the cluster has learned where its reply subscription now lives; waiting out
/// the client's whole request timeout then stalls delivery for seconds.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(750);
/// Attempts of one store request.
const ATTEMPTS: usize = 6;
/// How long the replay consumer may take to be created: it needs the cluster's meta
/// leader, which may be being re-elected; past this, direct gets (any replica answers
/// them) do the replay.
const CONSUMER_TIMEOUT: Duration = Duration::from_secs(2);

fn unavailable(what: &str, e: impl std::fmt::Display) -> HistoryError {
    HistoryError::Unavailable(format!("{what}: {e}"))
}

/// Runs a store request, sending it again when no reply came within
/// [`ATTEMPT_TIMEOUT`]: the outer error is "no reply to any attempt", the inner result
/// the server's answer.
async fn patient<T, E, Fut>(what: &str, mut op: impl FnMut() -> Fut) -> Result<Result<T, E>, HistoryError>
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    for _ in 0..ATTEMPTS {
        if let Ok(answer) = tokio::time::timeout(ATTEMPT_TIMEOUT, op()).await {
            return Ok(answer);
        }
    }
    Err(unavailable(what, format!("no reply to {ATTEMPTS} attempts")))
}

/// Re-reads one stream's epoch. Advisory (it only notices a re-made stream): one bounded
/// attempt, so a catch-up after a reconnect does not wait long on a stream whose leader
/// is being re-elected.
async fn refresh_epoch(s: &NsStream) {
    match tokio::time::timeout(ATTEMPT_TIMEOUT, s.stream.get_info()).await {
        Ok(Ok(info)) => {
            let epoch = epoch_of(&info);
            if let Ok(mut e) = s.epoch.write()
                && *e != epoch
            {
                tracing::warn!(stream = %info.config.name, old = %*e, new = %epoch, "history stream epoch changed");
                *e = epoch;
            }
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "history stream info unavailable"),
        Err(_) => tracing::debug!("history stream info unavailable: timed out"),
    }
}

/// The epoch string of a stream creation time.
fn epoch_of(info: &jetstream::stream::Info) -> String {
    format!("{:x}", info.created.unix_timestamp_nanos())
}

impl JetStreamHistory {
    /// Creates (or updates to the configured limits) the stream of every namespace that
    /// keeps history. Fails clearly when the server has no JetStream.
    pub async fn connect(
        client: Client,
        cfg: &Config,
        decode: Decode,
        screen: Arc<BusScreen>,
    ) -> Result<Self, HistoryError> {
        let js = jetstream::new(client);
        let keeping = Keeping::new(&cfg.history);
        let mut streams = HashMap::new();
        for ns in Namespace::ALL {
            let h = cfg.history.of(ns);
            if h.size == 0 {
                continue;
            }
            let name =
                format!("{}_HISTORY_{}", cfg.subject_prefix.to_ascii_uppercase(), ns.as_str().to_ascii_uppercase());
            let config = StreamConfig {
                name: name.clone(),
                subjects: vec![format!("{}.ev.{}.>", cfg.subject_prefix, ns.as_str())],
                max_messages_per_subject: i64::try_from(h.size + 1).unwrap_or(i64::MAX),
                max_age: Duration::from_millis(h.ttl_ms),
                storage: StorageType::File,
                discard: DiscardPolicy::Old,
                num_replicas: cfg.history.replicas.max(1),
                allow_direct: true,
                republish: Some(Republish {
                    source: format!("{}.ev.{}.>", cfg.subject_prefix, ns.as_str()),
                    destination: format!("{}.live.{}.>", cfg.subject_prefix, ns.as_str()),
                    headers_only: false,
                }),
                ..StreamConfig::default()
            };
            let stream = match js.get_stream(&name).await {
                Ok(mut s) => {
                    let current = s.info().await.map_err(|e| unavailable("stream info", e))?.config.clone();
                    if current.max_messages_per_subject != config.max_messages_per_subject
                        || current.max_age != config.max_age
                        || current.republish != config.republish
                        || current.num_replicas != config.num_replicas
                    {
                        js.update_stream(&config).await.map_err(|e| unavailable("update stream", e))?;
                    }
                    s
                }
                Err(_) => js.get_or_create_stream(config).await.map_err(|e| {
                    unavailable("history needs JetStream (nats-server -js), or history.<namespace>.size = 0", e)
                })?,
            };
            let epoch = epoch_of(stream.cached_info());
            streams.insert(ns, NsStream { stream, epoch: RwLock::new(epoch) });
        }
        Ok(JetStreamHistory { js, prefix: cfg.subject_prefix.clone(), keeping, streams, decode, screen })
    }

    fn ns(&self, ch: &Channel) -> Result<&NsStream, HistoryError> {
        self.streams.get(&ch.namespace()).ok_or_else(|| HistoryError::NotKept(ch.clone()))
    }

    /// The epoch a channel's offsets belong to now.
    pub fn epoch(&self, ch: &Channel) -> Option<String> {
        let s = self.streams.get(&ch.namespace())?;
        Some(s.epoch.read().map(|e| e.clone()).unwrap_or_default())
    }

    /// Re-reads every stream's epoch (periodically): a stream that was lost and made
    /// again has a new one. The streams are asked at once, each bounded.
    pub async fn refresh(&self) {
        futures_util::future::join_all(self.streams.values().map(refresh_epoch)).await;
    }

    /// Re-reads the epoch of `ch`'s stream (after a reconnect, or when offsets went back).
    pub async fn refresh_of(&self, ch: &Channel) {
        if let Some(s) = self.streams.get(&ch.namespace()) {
            refresh_epoch(s).await;
        }
    }

    /// The JetStream API (for acknowledged publishes).
    pub fn context(&self) -> &Context {
        &self.js
    }

    /// Whether `ch` is delivered from the re-published subject.
    pub fn keeps(&self, ch: &Channel) -> bool {
        self.keeping.keeps(ch) && self.streams.contains_key(&ch.namespace())
    }

    /// The stored (event) subject of a channel.
    fn subject(&self, ch: &Channel) -> String {
        ch.subject(&self.prefix)
    }

    /// Whether a message with sequence `seq` of `ch` is stored.
    async fn holds(&self, s: &NsStream, ch: &Channel, seq: u64) -> Result<bool, HistoryError> {
        match patient("direct get", || s.stream.direct_get(seq)).await? {
            Ok(m) => Ok(m.subject.as_str() == self.subject(ch)),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(false),
            Err(e) => Err(unavailable("direct get", e)),
        }
    }

    /// The first stored message of `ch` with a sequence of at least `from`: its sequence
    /// and, if it passes the screen, its event.
    async fn next(
        &self,
        s: &NsStream,
        ch: &Channel,
        from: u64,
    ) -> Result<Option<(u64, Option<EventFrame>)>, HistoryError> {
        let subject = self.subject(ch);
        match patient("direct get", || s.stream.direct_get_next_for_subject(&subject, Some(from.max(1)))).await? {
            Ok(m) => Ok(Some((m.sequence, self.event(ch, s, m)))),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(unavailable("direct get", e)),
        }
    }

    /// A stored message as an event, if it decodes and passes the screen.
    fn event(&self, ch: &Channel, s: &NsStream, m: jetstream::message::StreamMessage) -> Option<EventFrame> {
        let epoch = s.epoch.read().map(|e| e.clone()).unwrap_or_default();
        self.admit_stored(ch, m.sequence, &m.payload, Some(&m.headers), &epoch)
    }

    /// A stored body as an event with its position, if it decodes and passes the screen.
    fn admit_stored(
        &self,
        ch: &Channel,
        seq: u64,
        payload: &[u8],
        headers: Option<&HeaderMap>,
        epoch: &str,
    ) -> Option<EventFrame> {
        let mut ev = match (self.decode)(ch, payload, headers) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::debug!(channel = %ch, error = %e, "undecodable stored event skipped");
                return None;
            }
        };
        stamp(&mut ev, seq, epoch);
        let sig = headers.and_then(|h| h.get(crate::bus::nats::HDR_SIG)).map(|v| v.as_str().to_owned());
        match self.screen.admit(&ev, sig.as_deref()) {
            Ok(()) => Some(ev),
            Err(e) => {
                metrics::counter!(telemetry::EVENTS_REFUSED, "source" => "history", "reason" => e.label()).increment(1);
                None
            }
        }
    }

    /// The stored events of `ch` after `after` (exclusive) and before `before`
    /// (exclusive; 0 = no bound), at most `limit`. For replays and for filling a hole in
    /// the live chain. A few events are read by direct gets (one round trip each); more
    /// through an ordered consumer, which streams them in one go, so a storm of
    /// recoveries costs one request each rather than one per event.
    pub async fn between(
        &self,
        ch: &Channel,
        after: u64,
        before: u64,
        limit: usize,
    ) -> Result<Vec<EventFrame>, HistoryError> {
        let s = self.ns(ch)?;
        let last = self.last_of(s, ch).await?;
        if last == 0 {
            return Ok(Vec::new());
        }
        let end = if before == 0 { last } else { last.min(before - 1) };
        if end <= after || limit == 0 {
            return Ok(Vec::new());
        }
        if end - after <= DIRECT_READS {
            return self.between_direct(s, ch, after, end, limit).await;
        }
        match self.between_consumer(s, ch, after, end, limit).await {
            Err(e) => {
                tracing::debug!(channel = %ch, error = %e, "replay consumer unavailable; reading directly");
                self.between_direct(s, ch, after, end, limit).await
            }
            read => read,
        }
    }

    /// The sequence of `ch`'s latest stored event; 0 when it has none.
    async fn last_of(&self, s: &NsStream, ch: &Channel) -> Result<u64, HistoryError> {
        let subject = self.subject(ch);
        match patient("direct get", || s.stream.direct_get_last_for_subject(&subject)).await? {
            Ok(m) => Ok(m.sequence),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(0),
            Err(e) => Err(unavailable("direct get", e)),
        }
    }

    /// `between` by direct gets, one per event.
    async fn between_direct(
        &self,
        s: &NsStream,
        ch: &Channel,
        after: u64,
        end: u64,
        limit: usize,
    ) -> Result<Vec<EventFrame>, HistoryError> {
        let mut out = Vec::new();
        let mut cursor = after + 1;
        while out.len() < limit && cursor <= end {
            let Some((seq, ev)) = self.next(s, ch, cursor).await? else { break };
            if seq > end {
                break;
            }
            cursor = seq + 1;
            out.extend(ev);
        }
        Ok(out)
    }

    /// `between` through an ordered consumer on the channel's subject, from `after + 1`
    /// up to `end` (a stored sequence of the channel), each message bounded in time.
    async fn between_consumer(
        &self,
        s: &NsStream,
        ch: &Channel,
        after: u64,
        end: u64,
        limit: usize,
    ) -> Result<Vec<EventFrame>, HistoryError> {
        let create = s.stream.create_consumer(pull::OrderedConfig {
            filter_subject: self.subject(ch),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
            ..Default::default()
        });
        let consumer = tokio::time::timeout(CONSUMER_TIMEOUT, create)
            .await
            .map_err(|_| unavailable("replay consumer", "not created in time"))?
            .map_err(|e| unavailable("replay consumer", e))?;
        let mut msgs = consumer.messages().await.map_err(|e| unavailable("replay consumer", e))?;
        let epoch = s.epoch.read().map(|e| e.clone()).unwrap_or_default();
        let mut out = Vec::new();
        while out.len() < limit {
            let m = match tokio::time::timeout(READ_TIMEOUT, msgs.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(unavailable("replay", e)),
                Ok(None) => break,
                Err(_) => return Err(unavailable("replay", "no message within the read timeout")),
            };
            let (seq, pending) = match m.info() {
                Ok(i) => (i.stream_sequence, i.pending),
                Err(e) => return Err(unavailable("replay message info", e)),
            };
            if seq > end {
                break;
            }
            if let Some(ev) = self.admit_stored(ch, seq, &m.payload, m.headers.as_ref(), &epoch) {
                out.push(ev);
            }
            if seq == end || pending == 0 {
                break;
            }
        }
        Ok(out)
    }
}

/// Sets an event's history position. A stored event without its own id gets one from
/// its position, so every node (and every replay) names it the same.
pub fn stamp(ev: &mut EventFrame, seq: u64, epoch: &str) {
    ev.offset = Some(seq);
    ev.epoch = Some(epoch.to_owned());
    if ev.id.is_empty() {
        ev.id = format!("{epoch}-{seq}");
    }
}

#[async_trait]
impl History for JetStreamHistory {
    async fn read(&self, ch: &Channel, from: ReadFrom, limit: usize) -> Result<Page, HistoryError> {
        let s = self.ns(ch)?;
        let epoch = s.epoch.read().map(|e| e.clone()).unwrap_or_default();
        let last = self.last_of(s, ch).await?;
        match from {
            ReadFrom::After(pos) if pos.offset == 0 && pos.epoch == epoch => {
                // The client joined when the channel had no event. All of them are still
                // here unless the channel ever filled its window (size + 1 kept): with
                // at most `size` stored, none was pushed out.
                let size = self.keeping.size(ch);
                let mut events = self.between(ch, 0, 0, size.saturating_add(1)).await?;
                let reaches = events.len() <= size;
                if !reaches {
                    return Ok(Page { events: Vec::new(), last, epoch, reaches: false, complete: false });
                }
                let complete = events.len() <= limit;
                events.truncate(limit);
                Ok(Page { events, last, epoch, reaches, complete })
            }
            ReadFrom::After(pos) => {
                // Everything after `pos` is still stored when `pos` itself is: the stream
                // drops a channel's events oldest first.
                let reaches = pos.epoch == epoch
                    && pos.offset <= last
                    && (pos.offset == last || self.holds(s, ch, pos.offset).await?);
                if !reaches {
                    return Ok(Page { events: Vec::new(), last, epoch, reaches: false, complete: false });
                }
                let mut events = self.between(ch, pos.offset, 0, limit.saturating_add(1)).await?;
                let complete = events.len() <= limit;
                events.truncate(limit);
                Ok(Page { events, last, epoch, reaches: true, complete })
            }
            ReadFrom::Latest if limit == 0 => {
                Ok(Page { events: Vec::new(), last, epoch, reaches: true, complete: last == 0 })
            }
            ReadFrom::Latest => {
                // Walk the channel's stored events (at most size + 1) and keep the last.
                let mut all = self.between(ch, 0, 0, self.keeping.size(ch).saturating_add(1)).await?;
                let keep = all.len().saturating_sub(limit);
                let complete = keep == 0;
                all.drain(..keep);
                Ok(Page { events: all, last, epoch, reaches: true, complete })
            }
        }
    }

    async fn maintain(&self) {
        self.refresh().await;
    }
}
