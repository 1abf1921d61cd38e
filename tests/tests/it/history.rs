//! History and recovery (contract §9) on the embedded node: offsets and epochs on every
//! event of a history channel in all three encodings (and none on `broadcast:`), resuming
//! with `recover` after a disconnect (exactly the missed events, in order, then live
//! ones), switch-over while a publisher keeps publishing, windows exceeded, foreign or
//! future positions, recovering one's own auto-joined `agent:`/`user:` channel (also under
//! load), the `history.get` method, and the new epoch of a restarted node.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, bail, ensure};
use gateway::{Config, config::SessionPolicy};
use gateway_client::{Client, ClientError, Connect, Received};
use gateway_protocol::{ClientFrame, Encoding, ErrorBody, ErrorCode, EventFrame, ServerFrame, StreamPosition};
use gateway_tests::node::{AGENT_KEYS, TestNode, WAIT, connected, eventually, post, test_config, user_token};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const LONG: Duration = Duration::from_secs(300);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

/// Session channels open to any authenticated user, and frame rates for bursts.
fn config() -> Config {
    let mut cfg = test_config();
    cfg.channels.session_policy = SessionPolicy::Authenticated;
    (cfg.rate.per_second, cfg.rate.burst, cfg.rate.per_minute) = (1_000, 1_000, 100_000);
    cfg
}

/// A client that keeps every channel event it receives, also while it waits for a
/// response or an ack: a recovery's replay is queued before the subscribe's answer.
struct Rec {
    c: Client,
    events: Vec<EventFrame>,
}

impl Rec {
    /// Connects and waits for `connected`.
    async fn open(conn: Connect) -> anyhow::Result<Rec> {
        let mut c = Client::connect(conn).await?;
        connected(&mut c).await?;
        Ok(Rec { c, events: Vec::new() })
    }

    /// A user with projects `p1` (JSON).
    async fn user(node: &TestNode, sub: &str) -> anyhow::Result<Rec> {
        Self::user_in(node, sub, &["p1"], Encoding::Json).await
    }

    async fn user_in(node: &TestNode, sub: &str, projects: &[&str], enc: Encoding) -> anyhow::Result<Rec> {
        let t = user_token(sub, projects, &[], LONG);
        Self::open(Connect::new(node.ws("")).bearer(&t).encoding(enc)).await
    }

    /// Agent `AGENT_KEYS[0]` (`a1`).
    async fn agent(node: &TestNode) -> anyhow::Result<Rec> {
        Self::open(Connect::new(node.ws("")).bearer(AGENT_KEYS[0].1)).await
    }

    /// Receives one thing within `d`, recording events; `None` on timeout.
    async fn step(&mut self, d: Duration) -> anyhow::Result<Option<ServerFrame>> {
        match self.c.recv_timeout(d).await {
            Err(ClientError::Timeout(_)) => Ok(None),
            Err(e) => Err(e.into()),
            Ok(Received::Frame(ServerFrame::Event(e))) => {
                self.events.push(e.clone());
                Ok(Some(ServerFrame::Event(e)))
            }
            Ok(Received::Frame(f)) => Ok(Some(f)),
            Ok(r) => bail!("unexpected {r:?} (events so far: {})", self.events.len()),
        }
    }

    /// Receives (recording events) until `pick` accepts a frame, bounded by [`WAIT`].
    async fn until_frame<T>(&mut self, mut pick: impl FnMut(&ServerFrame) -> Option<T>) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.step(left).await? {
                Some(f) => {
                    if let Some(t) = pick(&f) {
                        return Ok(t);
                    }
                }
                None => bail!("no matching frame within {WAIT:?}; events: {:?}", brief(&self.events)),
            }
        }
    }

    /// Receives (recording events) until `done` holds over the recorded events, bounded.
    async fn until(&mut self, what: &str, done: impl Fn(&[EventFrame]) -> bool) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(&self.events) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if self.step(left).await?.is_none() {
                bail!("{what}: not within {WAIT:?}; events: {:?}", brief(&self.events));
            }
        }
        Ok(())
    }

    /// Records whatever arrives during `d`.
    async fn settle(&mut self, d: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || self.step(left).await?.is_none() {
                return Ok(());
            }
        }
    }

    /// The response to `id`: its result, or its error.
    async fn response(&mut self, id: &str) -> anyhow::Result<Result<Value, ErrorBody>> {
        self.until_frame(|f| match f {
            ServerFrame::Response { id: rid, result, error } if rid == id => Some(match (result, error) {
                (_, Some(e)) => Err(e.clone()),
                (r, None) => Ok(r.clone().unwrap_or(Value::Null)),
            }),
            _ => None,
        })
        .await
    }

    /// `subscribe` with `recover`; returns the result.
    async fn subscribe(
        &mut self,
        id: &str,
        channels: &[&str],
        recover: &[(&str, StreamPosition)],
    ) -> anyhow::Result<Value> {
        let recover: BTreeMap<String, StreamPosition> =
            recover.iter().map(|(ch, p)| ((*ch).to_owned(), p.clone())).collect();
        self.c
            .send(&ClientFrame::Subscribe {
                id: Some(id.into()),
                channels: channels.iter().map(|s| s.to_string()).collect(),
                token: None,
                recover,
            })
            .await?;
        self.response(id).await?.map_err(|e| anyhow::anyhow!("subscribe {id} failed: {e:?}"))
    }

    /// A request's result, or its error code.
    async fn request(&mut self, id: &str, method: &str, params: Value) -> anyhow::Result<Result<Value, ErrorCode>> {
        self.c.send(&ClientFrame::Request { id: id.into(), method: method.into(), params }).await?;
        Ok(self.response(id).await?.map_err(|e| e.code))
    }

    /// `history.get`; fails on an error answer.
    async fn history(&mut self, id: &str, params: Value) -> anyhow::Result<Value> {
        match self.request(id, "history.get", params.clone()).await? {
            Ok(v) => Ok(v),
            Err(code) => bail!("history.get {params} failed: {code:?}"),
        }
    }

    /// The offsets of every event the store holds on `ch` after `p` (presence events
    /// included), read with `history.get`; fails unless the page is complete.
    async fn stored_after(&mut self, id: &str, ch: &str, p: &StreamPosition) -> anyhow::Result<Vec<u64>> {
        let page = self.history(id, json!({ "channel": ch, "since": p, "limit": 10_000 })).await?;
        ensure!(page["complete"] == json!(true), "the store should reach back to {p:?}: {page}");
        Ok(page_offsets(&page))
    }

    /// The recorded events of `ch`.
    fn on(&self, ch: &str) -> Vec<&EventFrame> {
        self.events.iter().filter(|e| e.channel.as_str() == ch).collect()
    }

    /// The offsets of the recorded events of `ch`, in arrival order.
    fn offsets(&self, ch: &str) -> Vec<u64> {
        self.on(ch).iter().map(|e| e.offset.unwrap_or(0)).collect()
    }

    /// The `n` of the recorded application events of `ch` (not presence), in order.
    fn ns(&self, ch: &str) -> Vec<u64> {
        ns(&self.events, ch)
    }

    /// The position of the last recorded event of `ch`.
    fn last(&self, ch: &str) -> anyhow::Result<StreamPosition> {
        self.on(ch).last().and_then(|e| e.position()).with_context(|| format!("no positioned event on {ch}"))
    }

    /// Closes and waits until the node has let go of every connection but `remaining`.
    async fn leave(self, node: &TestNode, remaining: u64) -> anyhow::Result<()> {
        self.c.close().await?;
        connections(node, remaining).await
    }
}

/// Waits until the node counts `n` connections (a closed client's leave is done).
async fn connections(node: &TestNode, n: u64) -> anyhow::Result<()> {
    eventually(WAIT, || async {
        let h = node.health().await.ok()?;
        (h["websocket"]["connections"].as_u64() == Some(n)).then_some(())
    })
    .await
}

fn is_app(e: &EventFrame) -> bool {
    !e.event.starts_with("presence.")
}

/// The `n` of the application events of `ch` in `events`, in order.
fn ns(events: &[EventFrame], ch: &str) -> Vec<u64> {
    events.iter().filter(|e| e.channel.as_str() == ch && is_app(e)).filter_map(|e| e.data["n"].as_u64()).collect()
}

/// (channel, event, offset, n) of each event, for failure messages.
fn brief(events: &[EventFrame]) -> Vec<String> {
    events.iter().map(|e| format!("{} {} o={:?} n={}", e.channel, e.event.as_str(), e.offset, e.data["n"])).collect()
}

/// Publishes `n` of each of `ns` on `ch` over HTTP, as event `e`.
async fn publish_http(node: &TestNode, ch: &str, ns: impl IntoIterator<Item = u64>) -> anyhow::Result<()> {
    for n in ns {
        let (status, body) = node.publish(ch, "e", json!({ "n": n })).await?;
        ensure!(status == 202, "publish {n} on {ch}: {status} {body}");
    }
    Ok(())
}

/// Asserts that `offsets` strictly increase: offsets grow along a channel (§9), so an
/// equal or smaller one is a duplicate or out of order. They need not be contiguous (the
/// store draws them from one sequence for all its channels): that nothing is missing is
/// proven by the payloads' `n` (see [`assert_ns_run`]) or against a `history.get` page.
fn assert_increasing(offsets: &[u64], what: &str) {
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{what}: offsets must strictly increase: {offsets:?}");
}

/// Asserts that the payload numbers `ns` are exactly `from, from+1, …, to`: every event
/// published in that run, in order, no gap, none twice.
fn assert_ns_run(ns: &[u64], from: u64, to: u64, what: &str) {
    let want: Vec<u64> = (from..=to).collect();
    assert_eq!(ns, want.as_slice(), "{what}: payloads must run {from}..={to}, in order, no gap, none twice");
}

fn pos(offset: u64, epoch: &str) -> StreamPosition {
    StreamPosition { offset, epoch: epoch.to_owned() }
}

// ---------------------------------------------------------------------------------------
// 1. Offsets and epochs on the wire
// ---------------------------------------------------------------------------------------

/// Every event of a history channel carries `offset` and `epoch` in JSON (checked on the
/// raw text), MessagePack and flat frames (beside `messageId`); offsets grow along a
/// channel (not necessarily by one), the epoch is one for the node, the same event has
/// the same position for every subscriber; `broadcast:` events carry neither; `project:`, `user:` and `agent:` keep
/// history too.
#[tokio::test]
async fn offsets_and_epoch_in_every_encoding_and_none_on_broadcast() -> anyhow::Result<()> {
    let node = TestNode::start(config()).await?;
    let (ch, bc) = ("session:h1", "broadcast:x");
    let t = user_token("j", &["p1"], &[], LONG);
    let mut json_c = Client::connect(Connect::new(node.ws("")).bearer(&t)).await?;
    connected(&mut json_c).await?;
    json_c
        .send(&ClientFrame::Subscribe {
            id: Some("s".into()),
            channels: vec![ch.into(), bc.into(), "project:p1".into()],
            token: None,
            recover: BTreeMap::new(),
        })
        .await?;
    let answered = json_c
        .recv_until(WAIT, |r| matches!(r, Received::Frame(ServerFrame::Response { id, .. }) if id == "s").then_some(()))
        .await;
    answered?;
    let mut mp = Rec::user_in(&node, "m", &["p1"], Encoding::MsgPack).await?;
    let r = mp.subscribe("s", &[ch, bc, "project:p1"], &[]).await?;
    assert_eq!(r["subscribed"], json!([ch, bc, "project:p1"]), "{r}");
    let t = user_token("f", &["p1"], &[], LONG);
    let url = node.ws(&format!("?subscribe={ch},{bc}"));
    let mut flat = Client::connect(Connect::new(url).bearer(&t).encoding(Encoding::Flat)).await?;
    flat.recv_until(WAIT, |r| matches!(r, Received::Flat(v) if v["type"] == "connected").then_some(())).await?;

    publish_http(&node, ch, 1..=3).await?;
    publish_http(&node, bc, [100]).await?;
    publish_http(&node, "project:p1", [7]).await?;
    publish_http(&node, "user:m", [8]).await?;

    // JSON, on the raw text: every session/project event has both keys, broadcast none.
    let mut raw: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !raw.iter().any(|v| v["channel"] == "project:p1" && v["event"] == "e") {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match json_c.recv_message(left).await? {
            gateway_client::Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                if v["type"] == "event" {
                    raw.push(v);
                }
            }
            m => bail!("unexpected message on a JSON connection: {m:?}"),
        }
    }
    let epoch = raw[0]["epoch"].as_str().context("epoch on the first JSON event")?.to_owned();
    assert!(!epoch.is_empty());
    let mut json_positions = BTreeMap::new();
    let (mut session_offsets, mut session_ns) = (Vec::new(), Vec::new());
    for v in &raw {
        if v["channel"] == bc {
            assert!(v.get("offset").is_none() && v.get("epoch").is_none(), "broadcast event with a position: {v}");
            continue;
        }
        assert!(v["offset"].as_u64().is_some_and(|o| o > 0), "no offset: {v}");
        assert_eq!(v["epoch"], json!(epoch), "one epoch per node: {v}");
        if v["channel"] == ch {
            session_offsets.push(v["offset"].as_u64().unwrap_or(0));
            if v["event"] == "e" {
                session_ns.push(v["data"]["n"].as_u64().unwrap_or(0));
            }
        }
        if v["event"] == "e" {
            json_positions.insert(v["id"].as_str().unwrap_or("").to_owned(), v["offset"].clone());
        }
    }
    assert!(raw.iter().any(|v| v["channel"] == bc), "the broadcast event arrived");
    assert!(session_offsets.len() >= 3, "{raw:?}");
    assert_eq!(session_ns, vec![1, 2, 3], "JSON session events: {raw:?}");
    assert_increasing(&session_offsets, "JSON session events");

    // MessagePack: decoded positions, same epoch, same offsets as the JSON subscriber saw.
    mp.until("msgpack gets all", |ev| {
        ns(ev, ch).len() == 3 && ns(ev, bc).len() == 1 && ns(ev, "project:p1").len() == 1 && ns(ev, "user:m").len() == 1
    })
    .await?;
    for e in &mp.events {
        if e.channel.as_str() == bc {
            assert_eq!((e.offset, &e.epoch), (None, &None), "broadcast event with a position: {e:?}");
            continue;
        }
        assert!(e.offset.is_some_and(|o| o > 0), "no offset: {e:?}");
        assert_eq!(e.epoch.as_deref(), Some(epoch.as_str()), "{e:?}");
        if let Some(o) = json_positions.get(&e.id) {
            assert_eq!(&json!(e.offset), o, "same event, same offset for every subscriber: {e:?}");
        }
    }
    assert_eq!(mp.ns(ch), vec![1, 2, 3], "msgpack session events");
    assert_increasing(&mp.offsets(ch), "msgpack session events");
    // `user:m` keeps history of its own: its event's position is the one the store shows.
    let user_ev: Vec<EventFrame> = mp.on("user:m").into_iter().filter(|e| is_app(e)).cloned().collect();
    assert_eq!(user_ev.len(), 1, "{user_ev:?}");
    let page = mp.history("hm", json!({ "channel": "user:m" })).await?;
    assert_eq!(page_offsets(&page), vec![user_ev[0].offset.context("user:m offset")?], "user:m's own event: {page}");
    assert_eq!((page["offset"].as_u64(), page["epoch"].as_str()), (user_ev[0].offset, Some(epoch.as_str())), "{page}");

    // Flat: `offset`/`epoch` beside `messageId`; none on broadcast.
    let mut flat_events: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while flat_events.iter().filter(|v| v["type"] == "e").count() < 4 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match flat.recv_timeout(left).await? {
            Received::Flat(v) if v.get("messageId").is_some() => flat_events.push(v),
            Received::Flat(_) => {}
            r => bail!("unexpected {r:?}"),
        }
    }
    let mut flat_offsets = Vec::new();
    for v in &flat_events {
        if v["channel"] == bc {
            assert!(v.get("offset").is_none() && v.get("epoch").is_none(), "{v}");
            continue;
        }
        assert!(v["offset"].as_u64().is_some(), "flat event without offset: {v}");
        assert_eq!(v["epoch"], json!(epoch), "{v}");
        flat_offsets.push(v["offset"].as_u64().unwrap_or(0));
        if let Some(o) = v["messageId"].as_str().and_then(|id| json_positions.get(id)) {
            assert_eq!(&v["offset"], o, "{v}");
        }
    }
    let flat_ns: Vec<u64> =
        flat_events.iter().filter(|v| v["channel"] == ch).filter_map(|v| v["payload"]["n"].as_u64()).collect();
    assert_eq!(flat_ns, vec![1, 2, 3], "flat session events: {flat_events:?}");
    assert_increasing(&flat_offsets, "flat session events");

    // Agents' own channel too.
    let mut agent = Rec::agent(&node).await?;
    publish_http(&node, "agent:a1", [1, 2]).await?;
    agent.until("agent gets 2", |ev| ns(ev, "agent:a1").len() == 2).await?;
    assert_eq!(agent.ns("agent:a1"), vec![1, 2]);
    let offs = agent.offsets("agent:a1");
    assert_increasing(&offs, "agent:a1");
    assert_eq!(agent.events[0].epoch.as_deref(), Some(epoch.as_str()));
    let page = agent.history("ha", json!({ "channel": "agent:a1" })).await?;
    assert_eq!(page_offsets(&page), offs, "the positions the store shows: {page}");
    // Closed before the stop: the drain then has nobody to wait for.
    drop((json_c, mp, flat, agent));
    node.stop().await
}

// ---------------------------------------------------------------------------------------
// 2. Resume on the same node
// ---------------------------------------------------------------------------------------

/// A subscriber sees 1..5, goes away, 10 events are published, it comes back with
/// `recover` at the last position it saw: `recovered: true`, exactly the missed events in
/// order with no gap and none twice (presence events of the channel included), then live
/// ones.
#[tokio::test]
async fn resume_replays_exactly_the_missed_events_then_live() -> anyhow::Result<()> {
    let node = TestNode::start(config()).await?;
    let ch = "session:r1";
    let mut r = Rec::user(&node, "u1").await?;
    r.subscribe("s", &[ch], &[]).await?;
    publish_http(&node, ch, 1..=5).await?;
    r.until("first five", |ev| ns(ev, ch).len() == 5).await?;
    r.settle(QUIET).await?;
    assert_eq!(r.ns(ch), vec![1, 2, 3, 4, 5]);
    let last = r.last(ch)?;
    r.leave(&node, 0).await?;

    publish_http(&node, ch, 6..=15).await?;

    let mut r = Rec::user(&node, "u1").await?;
    let res = r.subscribe("s", &[ch], &[(ch, last.clone())]).await?;
    assert_eq!(res["recovered"], json!({ ch: true }), "{res}");
    assert_eq!(res["subscribed"], json!([ch]), "{res}");
    let replayed_before_answer = r.ns(ch);
    r.until("the missed ten", |ev| ns(ev, ch).len() >= 10).await?;
    publish_http(&node, ch, 16..=18).await?;
    r.until("three live", |ev| ns(ev, ch).len() >= 13).await?;
    r.settle(QUIET).await?;
    assert_ns_run(&r.ns(ch), 6, 18, "missed then live");
    let offs = r.offsets(ch);
    assert_increasing(&offs, "after the recovery");
    assert!(offs[0] > last.offset, "nothing at or before the position again: {offs:?} after {last:?}");
    // Presence events included: exactly what the store holds after the position.
    assert_eq!(offs, r.stored_after("h", ch, &last).await?, "every stored event after the position, once");
    assert!(r.on(ch).iter().all(|e| e.epoch.as_deref() == Some(last.epoch.as_str())));
    assert!(
        replayed_before_answer.starts_with(&[6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
        "the replay is queued before the subscribe's answer: {replayed_before_answer:?}"
    );
    // Closed before the stop: the drain then has nobody to wait for.
    drop(r);
    node.stop().await
}

/// A replay of almost the whole default window (200) is recovered, in MessagePack.
#[tokio::test]
async fn resume_across_nearly_the_whole_default_window() -> anyhow::Result<()> {
    let node = TestNode::start(config()).await?;
    let ch = "session:big";
    let mut r = Rec::user_in(&node, "u1", &[], Encoding::MsgPack).await?;
    r.subscribe("s", &[ch], &[]).await?;
    publish_http(&node, ch, [0]).await?;
    r.until("one", |ev| ns(ev, ch).len() == 1).await?;
    let last = r.last(ch)?;
    r.leave(&node, 0).await?;
    // 190 events and the leave: within the 200 kept.
    publish_http(&node, ch, 1..=190).await?;
    let mut r = Rec::user_in(&node, "u1", &[], Encoding::MsgPack).await?;
    let res = r.subscribe("s", &[ch], &[(ch, last.clone())]).await?;
    assert_eq!(res["recovered"], json!({ ch: true }), "{res}");
    r.until("190 replayed", |ev| ns(ev, ch).len() >= 190).await?;
    r.settle(QUIET).await?;
    assert_ns_run(&r.ns(ch), 1, 190, "full replay");
    let offs = r.offsets(ch);
    assert_increasing(&offs, "full replay");
    assert!(offs[0] > last.offset, "nothing at or before the position again: {offs:?} after {last:?}");
    assert_eq!(offs, r.stored_after("h", ch, &last).await?, "every stored event after the position, once");
    // Closed before the stop: the drain then has nobody to wait for.
    drop(r);
    node.stop().await
}

// ---------------------------------------------------------------------------------------
// 3. Switch-over under load
// ---------------------------------------------------------------------------------------

/// Publishes on `ch` from a WebSocket client every 2 ms until `stop`; then waits for the
/// ack of its last publish and returns the client (still connected) and how many it sent.
async fn ws_publisher(mut p: Rec, ch: String, stop: CancellationToken) -> anyhow::Result<(Rec, u64)> {
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut n, mut acked) = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                n += 1;
                let frame = ClientFrame::Publish {
                    id: Some(format!("p{n}")),
                    channel: ch.clone(),
                    event: "chat".into(),
                    data: json!({ "n": n }),
                };
                p.c.send(&frame).await?;
            }
            r = p.c.recv() => match r? {
                Received::Frame(ServerFrame::Ack { id }) => {
                    acked = id.trim_start_matches('p').parse().unwrap_or(acked);
                }
                Received::Frame(ServerFrame::Response { error: Some(e), .. }) => bail!("publisher refused: {e:?}"),
                Received::Frame(ServerFrame::Error { error }) => bail!("publisher error: {error:?}"),
                Received::Closed(c) => bail!("publisher closed: {c:?}"),
                _ => {}
            },
        }
    }
    if acked < n {
        let id = format!("p{n}");
        p.until_frame(|f| matches!(f, ServerFrame::Ack { id: got } if *got == id).then_some(())).await?;
    }
    // Its own events were recorded while it waited; they are not needed.
    p.events.clear();
    Ok((p, n))
}

/// While a publisher keeps publishing every 2 ms, a client disconnects and recovers five
/// times (away 0–50 ms). Every round answers `recovered: true`, and everything it ever
/// received on the channel has strictly increasing offsets up to the final offset, and
/// the publisher's counter is one run, no gap and none twice, up to its last publish.
#[tokio::test]
async fn switch_over_under_load_is_gapless_and_duplicate_free() -> anyhow::Result<()> {
    let mut cfg = config();
    (cfg.rate.per_second, cfg.rate.burst, cfg.rate.per_minute) = (5_000, 5_000, 1_000_000);
    let node = TestNode::start(cfg).await?;
    let ch = "session:load";
    let mut publisher = Rec::user(&node, "pub").await?;
    publisher.subscribe("s", &[ch], &[]).await?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(ws_publisher(publisher, ch.to_owned(), stop.clone()));

    let mut all: Vec<EventFrame> = Vec::new();
    let mut last: Option<StreamPosition> = None;
    let mut reader = None;
    for (round, away_ms) in [0u64, 10, 50, 0, 20].into_iter().enumerate() {
        let mut r = Rec::user(&node, "reader").await?;
        match &last {
            None => {
                r.subscribe("s", &[ch], &[]).await?;
            }
            Some(p) => {
                let res = r.subscribe("s", &[ch], &[(ch, p.clone())]).await?;
                assert_eq!(res["recovered"], json!({ ch: true }), "round {round}: {res}");
            }
        }
        r.settle(Duration::from_millis(150)).await?;
        ensure!(!r.on(ch).is_empty(), "round {round}: nothing received while the publisher runs");
        last = Some(r.last(ch)?);
        if round == 4 {
            reader = Some(r);
            break;
        }
        all.append(&mut r.events);
        r.c.close().await?;
        tokio::time::sleep(Duration::from_millis(away_ms)).await;
    }
    stop.cancel();
    let (publisher, sent) = tokio::time::timeout(WAIT, task).await.context("publisher did not stop")???;
    let mut reader = reader.context("last round's reader")?;
    let final_offset =
        reader.history("h", json!({ "channel": ch, "limit": 1 })).await?["offset"].as_u64().context("latest offset")?;
    reader.until("the final offset", |ev| ev.iter().any(|e| e.offset == Some(final_offset))).await?;
    reader.settle(QUIET).await?;
    all.append(&mut reader.events);

    let offs: Vec<u64> = all.iter().filter(|e| e.channel.as_str() == ch).map(|e| e.offset.unwrap_or(0)).collect();
    assert_increasing(&offs, "every round together");
    assert_eq!(offs.last(), Some(&final_offset), "up to the final offset");
    let seen = ns(&all, ch);
    assert_ns_run(&seen, seen[0], sent, "publisher's counter, every round together");
    assert!(sent > 100, "the publisher kept publishing during the rounds ({sent})");
    // Closed before the stop: the drain then has nobody to wait for.
    drop((publisher, reader));
    node.stop().await
}

// ---------------------------------------------------------------------------------------
// 4, 5. Positions the store cannot serve
// ---------------------------------------------------------------------------------------

/// With a window of 5, ten events published while away: `recovered: false`, nothing of
/// them is replayed, only later live events arrive.
#[tokio::test]
async fn window_exceeded_is_not_recovered_and_replays_nothing() -> anyhow::Result<()> {
    let mut cfg = config();
    cfg.history.session.size = 5;
    let node = TestNode::start(cfg).await?;
    let ch = "session:w";
    let mut r = Rec::user(&node, "u1").await?;
    r.subscribe("s", &[ch], &[]).await?;
    publish_http(&node, ch, [1]).await?;
    r.until("one", |ev| ns(ev, ch).len() == 1).await?;
    let last = r.last(ch)?;
    r.leave(&node, 0).await?;
    publish_http(&node, ch, 2..=11).await?;

    let mut r = Rec::user(&node, "u1").await?;
    let res = r.subscribe("s", &[ch], &[(ch, last)]).await?;
    assert_eq!(res["recovered"], json!({ ch: false }), "{res}");
    assert_eq!(res["subscribed"], json!([ch]), "still subscribed: {res}");
    r.settle(QUIET).await?;
    assert_eq!(r.ns(ch), Vec::<u64>::new(), "nothing replayed");
    publish_http(&node, ch, [12, 13]).await?;
    r.until("live", |ev| ns(ev, ch).len() == 2).await?;
    r.settle(QUIET).await?;
    assert_eq!(r.ns(ch), vec![12, 13], "only live events");
    node.stop().await
}

/// A position of another epoch, one from the future, and a channel without history are
/// all `recovered: false` with nothing replayed; one recover answers each channel it
/// names on its own, and offset 0 of the current epoch replays all that is kept.
#[tokio::test]
async fn foreign_epoch_future_offset_and_no_history_are_not_recovered() -> anyhow::Result<()> {
    let node = TestNode::start(config()).await?;
    let (a, b, c, d) = ("session:a", "session:b", "session:c", "session:d");
    for ch in [a, b, c, d] {
        publish_http(&node, ch, 1..=3).await?;
    }
    let mut probe = Rec::user(&node, "probe").await?;
    let page = probe.history("h", json!({ "channel": a })).await?;
    let epoch = page["epoch"].as_str().context("epoch")?.to_owned();
    assert_eq!(page_ns(&page), vec![1, 2, 3], "{page}");
    let a_offsets = page_offsets(&page);
    assert_increasing(&a_offsets, a);
    assert_eq!(page["offset"].as_u64(), a_offsets.last().copied(), "{page}");
    let page = probe.history("hc", json!({ "channel": c })).await?;
    let c_latest = page["offset"].as_u64().context("c's latest offset")?;

    let mut r = Rec::user(&node, "u1").await?;
    let res = r
        .subscribe(
            "s",
            &[a, b, c, d, "broadcast:x"],
            &[
                (a, pos(a_offsets[0], &epoch)),
                (b, pos(1, "not-the-epoch")),
                (c, pos(c_latest + 1_000, &epoch)),
                (d, pos(0, &epoch)),
                ("broadcast:x", pos(0, &epoch)),
            ],
        )
        .await?;
    assert_eq!(res["subscribed"], json!([a, b, c, d, "broadcast:x"]), "{res}");
    assert_eq!(res["recovered"], json!({ a: true, b: false, c: false, d: true, "broadcast:x": false }), "{res}");
    r.settle(QUIET).await?;
    assert_eq!(r.ns(a), vec![2, 3], "after the first event's offset");
    assert_eq!(r.ns(b), Vec::<u64>::new(), "foreign epoch: nothing");
    assert_eq!(r.ns(c), Vec::<u64>::new(), "future offset: nothing");
    assert_eq!(r.ns(d), vec![1, 2, 3], "offset 0: everything kept");
    // Each of them is live now.
    for ch in [a, b, c, d] {
        publish_http(&node, ch, [4]).await?;
    }
    r.until("live everywhere", |ev| [a, b, c, d].iter().all(|ch| ns(ev, ch).last() == Some(&4))).await?;
    r.settle(QUIET).await?;
    for ch in [a, b, c, d] {
        assert_eq!(r.ns(ch).iter().filter(|n| **n == 4).count(), 1, "{ch}: live event once");
    }
    // Closed before the stop: the drain then has nobody to wait for.
    drop((probe, r));
    node.stop().await
}

/// A session window with a 1 s TTL and no presence events (only the publishes take
/// offsets on its channels).
fn short_ttl() -> Config {
    let mut cfg = config();
    cfg.history.session = gateway::config::NsHistory { size: 100, ttl_ms: 1_000 };
    cfg.channels.presence = Vec::new();
    cfg
}

/// An event older than the TTL is gone: a position before it is `recovered: false`, one
/// at the newest offset (nothing missed) is still `true`.
#[tokio::test]
async fn ttl_expired_events_are_not_recovered() -> anyhow::Result<()> {
    let node = TestNode::start(short_ttl()).await?;
    let (ch, quiet) = ("session:ttl", "session:ttl-quiet");
    let mut r = Rec::user(&node, "u1").await?;
    r.subscribe("s", &[ch, quiet], &[]).await?;
    publish_http(&node, ch, [1]).await?;
    publish_http(&node, quiet, [1]).await?;
    r.until("ones", |ev| ns(ev, ch).len() == 1 && ns(ev, quiet).len() == 1).await?;
    let (at, quiet_at) = (r.last(ch)?, r.last(quiet)?);
    r.leave(&node, 0).await?;
    publish_http(&node, ch, [2]).await?;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let mut r = Rec::user(&node, "u1").await?;
    let page = r.history("h", json!({ "channel": ch })).await?;
    assert_eq!(page["events"], json!([]), "expired: {page}");
    let res = r.subscribe("s", &[ch, quiet], &[(ch, at), (quiet, quiet_at)]).await?;
    assert_eq!(res["recovered"], json!({ ch: false, quiet: true }), "{res}");
    r.settle(QUIET).await?;
    assert_eq!(r.ns(ch), Vec::<u64>::new(), "nothing replayed");
    // Closed before the stop: the drain then has nobody to wait for.
    drop(r);
    node.stop().await
}

/// Offsets never go back within an epoch, also after a channel's events all expired and
/// the store's sweep dropped its log: otherwise a client holding an old position is told
/// `recovered: true` against new events that reuse its offsets, and misses some of them.
#[tokio::test]
async fn offsets_do_not_restart_after_the_sweep_within_an_epoch() -> anyhow::Result<()> {
    let node = TestNode::start(short_ttl()).await?;
    let ch = "session:swept";
    let mut r = Rec::user(&node, "u1").await?;
    r.subscribe("s", &[ch], &[]).await?;
    publish_http(&node, ch, [1, 2]).await?;
    r.until("two", |ev| ns(ev, ch).len() == 2).await?;
    let at = r.last(ch)?;
    r.leave(&node, 0).await?;
    publish_http(&node, ch, [3]).await?;
    // TTL 1 s, sweep every 5 s: after this every event expired and the sweep has run.
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    publish_http(&node, ch, [4, 5, 6]).await?;

    let mut r = Rec::user(&node, "u1").await?;
    let res = r.subscribe("s", &[ch], &[(ch, at.clone())]).await?;
    r.settle(QUIET).await?;
    // Event 3 expired unseen: this position cannot be recovered.
    assert_eq!(res["recovered"], json!({ ch: false }), "{res}; got {:?}", r.ns(ch));
    let page = r.history("h", json!({ "channel": ch })).await?;
    assert_eq!(page_ns(&page), vec![4, 5, 6], "{page}");
    // Event 3 (never seen) took an offset after `at`'s; the new ones come after both.
    let same_epoch = page["epoch"] == json!(at.epoch);
    assert!(
        !same_epoch || page_offsets(&page).iter().all(|o| *o > at.offset + 1),
        "offsets reused within epoch {} (event 2 was at {}): {page}",
        at.epoch,
        at.offset
    );
    // Closed before the stop: the drain then has nobody to wait for.
    drop(r);
    node.stop().await
}

// ---------------------------------------------------------------------------------------
// 6. Recovering one's own auto-joined channel
// ---------------------------------------------------------------------------------------

/// An agent's `agent:a1` is joined at connect. It sees t1, t2, goes away; t3–t5 are
/// assigned; it reconnects and t6 arrives live before it asks; `subscribe` with `recover`
/// at t2 then delivers t3–t5, t6 not again, and t7 live, each exactly once.
#[tokio::test]
async fn agent_recovers_its_own_channel_exactly_once() -> anyhow::Result<()> {
    let node = TestNode::start(config()).await?;
    let ch = "agent:a1";
    let task = |n: u64| json!({ "n": n, "task": format!("t{n}") });
    let mut a = Rec::agent(&node).await?;
    for n in 1..=2 {
        node.publish(ch, "task:assigned", task(n)).await?;
    }
    a.until("t1, t2", |ev| ns(ev, ch).len() == 2).await?;
    let last = a.last(ch)?;
    a.leave(&node, 0).await?;
    for n in 3..=5 {
        let (status, _) = node.publish(ch, "task:assigned", task(n)).await?;
        assert_eq!(status, 202);
    }

    let mut a = Rec::agent(&node).await?;
    node.publish(ch, "task:assigned", task(6)).await?;
    a.until("t6 live", |ev| ns(ev, ch) == [6]).await?;
    let res = a.subscribe("s", &[ch], &[(ch, last.clone())]).await?;
    assert_eq!(res["recovered"], json!({ ch: true }), "{res}");
    assert_eq!(res["subscribed"], json!([ch]), "{res}");
    node.publish(ch, "task:assigned", task(7)).await?;
    a.until("t7", |ev| ns(ev, ch).contains(&7)).await?;
    a.settle(QUIET).await?;
    assert_eq!(a.ns(ch), vec![6, 3, 4, 5, 7], "t6 live, then the missed t3–t5, then t7; each once");
    assert!(a.on(ch).iter().all(|e| e.event.as_str() == "task:assigned"));
    // Offsets follow the order of assignment, and are exactly what the store holds after t2.
    let mut by_n: Vec<(u64, u64)> =
        a.on(ch).iter().map(|e| (e.data["n"].as_u64().unwrap_or(0), e.offset.unwrap_or(0))).collect();
    by_n.sort_unstable();
    let offs: Vec<u64> = by_n.iter().map(|(_, o)| *o).collect();
    assert_increasing(&offs, "agent:a1 t3–t7 in assignment order");
    assert!(offs[0] > last.offset, "nothing at or before t2's offset: {by_n:?} after {last:?}");
    assert_eq!(offs, a.stored_after("h", ch, &last).await?, "agent:a1 after t2");
    // Closed before the stop: the drain then has nobody to wait for.
    drop(a);
    node.stop().await
}

/// The same for a user's `user:<sub>`, recovering right after connect (no live event in
/// between); recovering again later on the same connection with the last position it
/// has adds nothing.
#[tokio::test]
async fn user_recovers_its_own_channel_right_after_connect() -> anyhow::Result<()> {
    let node = TestNode::start(config()).await?;
    let ch = "user:u7";
    let mut u = Rec::user(&node, "u7").await?;
    publish_http(&node, ch, [1]).await?;
    u.until("one", |ev| ns(ev, ch).len() == 1).await?;
    let first = u.last(ch)?;
    u.leave(&node, 0).await?;
    publish_http(&node, ch, 2..=4).await?;

    let mut u = Rec::user(&node, "u7").await?;
    let res = u.subscribe("s", &[ch], &[(ch, first.clone())]).await?;
    assert_eq!(res["recovered"], json!({ ch: true }), "{res}");
    u.until("2..4", |ev| ns(ev, ch).len() == 3).await?;
    publish_http(&node, ch, [5]).await?;
    u.until("5", |ev| ns(ev, ch).len() == 4).await?;
    let now = u.last(ch)?;
    let res = u.subscribe("s2", &[ch], &[(ch, now)]).await?;
    assert_eq!(res["recovered"], json!({ ch: true }), "{res}");
    publish_http(&node, ch, [6]).await?;
    u.until("6", |ev| ns(ev, ch).contains(&6)).await?;
    u.settle(QUIET).await?;
    assert_ns_run(&u.ns(ch), 2, 6, "user:u7");
    let offs = u.offsets(ch);
    assert_increasing(&offs, "user:u7");
    assert!(offs[0] > first.offset, "nothing at or before the position again: {offs:?} after {first:?}");
    assert_eq!(offs, u.stored_after("h", ch, &first).await?, "user:u7 after 1");
    // Closed before the stop: the drain then has nobody to wait for.
    drop(u);
    node.stop().await
}

/// A connection that recovered a channel and then recovers it again from the same (older)
/// position, e.g. a client retrying a `subscribe` whose answer was slow, must not get the
/// replayed events a second time (§9: "the events after N that it has not received yet
/// are delivered, none twice"). Both for a channel joined with `recover` and for the own
/// `user:` channel joined at connect.
#[tokio::test]
async fn recovering_twice_from_the_same_position_delivers_nothing_twice() -> anyhow::Result<()> {
    let node = TestNode::start(config()).await?;
    // A session channel: joined with recover, then the same subscribe again.
    let ch = "session:twice";
    let mut u = Rec::user(&node, "u8").await?;
    u.subscribe("s", &[ch], &[]).await?;
    publish_http(&node, ch, [1]).await?;
    u.until("one", |ev| ns(ev, ch).len() == 1).await?;
    let p = u.last(ch)?;
    u.leave(&node, 0).await?;
    publish_http(&node, ch, 2..=4).await?;
    let mut u = Rec::user(&node, "u8").await?;
    for id in ["s1", "s2"] {
        let res = u.subscribe(id, &[ch], &[(ch, p.clone())]).await?;
        assert_eq!(res["recovered"], json!({ ch: true }), "{res}");
    }
    u.settle(QUIET).await?;
    assert_ns_run(&u.ns(ch), 2, 4, "session channel");
    let offs = u.offsets(ch);
    assert_increasing(&offs, "session channel");
    assert!(offs[0] > p.offset, "nothing at or before the position again: {offs:?} after {p:?}");
    assert_eq!(offs, u.stored_after("h", ch, &p).await?, "session channel: every stored event after it, once");
    u.leave(&node, 0).await?;

    // The own channel, joined at connect.
    let ch = "user:u7";
    let mut u = Rec::user(&node, "u7").await?;
    publish_http(&node, ch, [1]).await?;
    u.until("one", |ev| ns(ev, ch).len() == 1).await?;
    let first = u.last(ch)?;
    u.leave(&node, 0).await?;
    publish_http(&node, ch, 2..=4).await?;
    let mut u = Rec::user(&node, "u7").await?;
    let res = u.subscribe("s", &[ch], &[(ch, first.clone())]).await?;
    assert_eq!(res["recovered"], json!({ ch: true }), "{res}");
    u.until("2..4", |ev| ns(ev, ch).len() == 3).await?;
    publish_http(&node, ch, [5]).await?;
    u.until("5", |ev| ns(ev, ch).len() == 4).await?;
    let res = u.subscribe("s2", &[ch], &[(ch, first)]).await?;
    assert_eq!(res["recovered"], json!({ ch: true }), "{res}");
    publish_http(&node, ch, [6]).await?;
    u.until("6", |ev| ns(ev, ch).contains(&6)).await?;
    u.settle(QUIET).await?;
    assert_ns_run(&u.ns(ch), 2, 6, "own channel");
    assert_increasing(&u.offsets(ch), "own channel");
    // Closed before the stop: the drain then has nobody to wait for.
    drop(u);
    node.stop().await
}

/// An HTTP publisher assigns tasks to `agent:a1` every 2 ms while the agent reconnects
/// and recovers its own channel five times, sometimes at once, sometimes after a pause:
/// per connection, what arrives after the last position it had is exactly the run of tasks
/// up to the newest, none twice, with offsets growing with the task's number; the live
/// events that came before the recover and the replayed older ones each in order; all
/// rounds together one run of tasks up to the last one published, at the final offset.
#[tokio::test]
async fn own_channel_switch_over_under_load() -> anyhow::Result<()> {
    let node = TestNode::start(config()).await?;
    let ch = "agent:a1";
    let stop = CancellationToken::new();
    let url = node.http("/api/publish");
    let publisher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                n += 1;
                let (status, body) =
                    post(&url, json!({ "channel": ch, "event": "task:assigned", "data": { "n": n } })).await?;
                ensure!(status == 202, "{status} {body}");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            anyhow::Ok(n)
        })
    };

    let mut a = Rec::agent(&node).await?;
    a.settle(Duration::from_millis(100)).await?;
    let mut last = a.last(ch)?;
    let mut all = a.ns(ch);
    assert_increasing(&a.offsets(ch), "before the first round");
    let mut last_n = *all.last().context("events before the first round")?;
    assert_ns_run(&all, all[0], last_n, "before the first round");
    for (round, away_ms) in [0u64, 20, 0, 50, 5].into_iter().enumerate() {
        a.c.close().await?;
        tokio::time::sleep(Duration::from_millis(away_ms)).await;
        a = Rec::agent(&node).await?;
        if round % 2 == 1 {
            // Let live events arrive between connect and the recover.
            a.settle(Duration::from_millis(20)).await?;
        }
        let res = a.subscribe("s", &[ch], &[(ch, last.clone())]).await?;
        assert_eq!(res["recovered"], json!({ ch: true }), "round {round}: {res}");
        a.settle(Duration::from_millis(100)).await?;
        let offs = a.offsets(ch);
        // As a set: the tasks after the last one it had, none missing, none twice, with
        // offsets after its position that grow with the task's number.
        let mut by_offset: Vec<(u64, u64)> =
            a.on(ch).iter().map(|e| (e.offset.unwrap_or(0), e.data["n"].as_u64().unwrap_or(0))).collect();
        by_offset.sort_unstable();
        let sorted: Vec<u64> = by_offset.iter().map(|(o, _)| *o).collect();
        let round_ns: Vec<u64> = by_offset.iter().map(|(_, n)| *n).collect();
        let top = *sorted.last().context("events this round")?;
        assert_increasing(&sorted, &format!("round {round} as a set"));
        assert!(sorted[0] > last.offset, "round {round}: nothing at or before {last:?} again: {offs:?}");
        let top_n = last_n + round_ns.len() as u64;
        assert_ns_run(&round_ns, last_n + 1, top_n, &format!("round {round} as a set, by offset"));
        // Live events that arrived before the recover come first (unless the replay
        // did); the older ones after them, each part in order.
        let head = offs[0];
        let older: Vec<u64> = offs.iter().copied().filter(|o| *o < head).collect();
        let newer: Vec<u64> = offs.iter().copied().filter(|o| *o >= head).collect();
        assert!(older.windows(2).all(|w| w[0] < w[1]), "round {round}: replay in order: {offs:?}");
        assert!(newer.windows(2).all(|w| w[0] < w[1]), "round {round}: live in order: {offs:?}");
        last = pos(top, &last.epoch);
        last_n = top_n;
        all.extend(round_ns);
    }
    stop.cancel();
    let sent = tokio::time::timeout(WAIT, publisher).await.context("publisher did not stop")???;
    assert!(sent > 50, "the publisher kept publishing ({sent})");
    let final_offset =
        a.history("h", json!({ "channel": ch, "limit": 1 })).await?["offset"].as_u64().context("offset")?;
    a.until("final", |ev| ev.iter().any(|e| e.offset == Some(final_offset))).await?;
    a.settle(QUIET).await?;
    let mut tail: Vec<(u64, u64)> = a
        .on(ch)
        .iter()
        .filter(|e| e.offset.is_some_and(|o| o > last.offset))
        .map(|e| (e.offset.unwrap_or(0), e.data["n"].as_u64().unwrap_or(0)))
        .collect();
    tail.sort_unstable();
    assert_eq!(tail.last().map(|(o, _)| *o).unwrap_or(last.offset), final_offset, "up to the final offset");
    all.extend(tail.iter().map(|(_, n)| *n));
    let first = all[0];
    assert_ns_run(&all, first, sent, "every round together");
    // Closed before the stop: the drain then has nobody to wait for.
    drop(a);
    node.stop().await
}

// ---------------------------------------------------------------------------------------
// 7. history.get
// ---------------------------------------------------------------------------------------

fn page_ns(page: &Value) -> Vec<u64> {
    page["events"].as_array().into_iter().flatten().filter_map(|e| e["data"]["n"].as_u64()).collect()
}

fn page_offsets(page: &Value) -> Vec<u64> {
    page["events"].as_array().into_iter().flatten().filter_map(|e| e["offset"].as_u64()).collect()
}

/// `history.get`: the latest events with `limit`; the first `limit` after `since` with
/// `complete:false` while more follow; `since` beyond the window or of another epoch →
/// `complete:false`; forbidden to who may not subscribe; `not_found` without history;
/// events carry their positions, the same a live subscriber saw.
#[tokio::test]
async fn history_get_latest_since_limits_and_permissions() -> anyhow::Result<()> {
    let mut cfg = config();
    cfg.history.session.size = 8;
    let size = 8;
    let node = TestNode::start(cfg).await?;
    let ch = "session:g";
    // A live subscriber first (its own join is older than the window): it learns the
    // position of every publish, which is what the pages must show.
    let mut u = Rec::user_in(&node, "u1", &["p1"], Encoding::Json).await?;
    u.subscribe("s", &[ch], &[]).await?;
    publish_http(&node, ch, 1..=12).await?;
    u.until("twelve", |ev| ns(ev, ch).len() == 12).await?;
    assert_ns_run(&u.ns(ch), 1, 12, "live");
    assert_increasing(&u.offsets(ch), "live");
    let live: BTreeMap<u64, EventFrame> =
        u.on(ch).into_iter().filter(|e| is_app(e)).map(|e| (e.data["n"].as_u64().unwrap_or(0), e.clone())).collect();
    // The offset of the live event with `n`.
    let at = |n: u64| live[&n].offset.unwrap_or(0);
    let offsets_of = |ns: &[u64]| ns.iter().map(|n| at(*n)).collect::<Vec<u64>>();
    let latest = at(12);

    // Latest: the last `limit` kept, oldest first, at the positions seen live.
    let p = u.history("h1", json!({ "channel": ch, "limit": 3 })).await?;
    assert_eq!((p["channel"].clone(), p["offset"].clone()), (json!(ch), json!(latest)), "{p}");
    assert_eq!(page_ns(&p), vec![10, 11, 12], "{p}");
    assert_eq!(page_offsets(&p), offsets_of(&[10, 11, 12]), "{p}");
    let epoch = p["epoch"].as_str().context("epoch")?.to_owned();
    assert_eq!(live[&12].epoch.as_deref(), Some(epoch.as_str()), "{p}");
    for e in p["events"].as_array().into_iter().flatten() {
        assert_eq!(e["epoch"], json!(epoch), "{e}");
        assert_eq!((e["channel"].clone(), e["event"].clone()), (json!(ch), json!("e")), "{e}");
        assert!(e["id"].as_str().is_some_and(|s| !s.is_empty()) && e["ts"].as_u64().is_some(), "{e}");
    }
    // Without limit: everything kept, the window of 8 (the store may also hold the one
    // before it, to prove positions; then it says the page is not all it has, or shows it).
    let p = u.history("h2", json!({ "channel": ch })).await?;
    let got = page_ns(&p);
    assert!(got.len() == size || got.len() == size + 1, "the window of {size} (or one more): {p}");
    assert_ns_run(&got[got.len() - size..], 5, 12, "the window");
    assert_eq!(page_offsets(&p), offsets_of(&got), "{p}");
    assert!(p["complete"] == json!(true) || got.len() == size, "a page with all it holds is complete: {p}");
    // A limit above the window is capped.
    let p = u.history("h3", json!({ "channel": ch, "limit": 1000 })).await?;
    let got = page_ns(&p);
    assert!(got.len() == size || got.len() == size + 1, "capped at the window of {size} (or one more): {p}");
    assert_ns_run(&got[got.len() - size..], 5, 12, "capped");

    // Since: the first `limit` after it.
    let p = u.history("h4", json!({ "channel": ch, "since": pos(at(6), &epoch), "limit": 3 })).await?;
    assert_eq!((page_ns(&p), p["complete"].clone()), (vec![7, 8, 9], json!(false)), "more follow: {p}");
    assert_eq!(page_offsets(&p), offsets_of(&[7, 8, 9]), "{p}");
    let p = u.history("h5", json!({ "channel": ch, "since": pos(at(9), &epoch), "limit": 3 })).await?;
    assert_eq!((page_ns(&p), p["complete"].clone()), (vec![10, 11, 12], json!(true)), "{p}");
    let p = u.history("h6", json!({ "channel": ch, "since": pos(latest, &epoch) })).await?;
    assert_eq!((page_ns(&p), p["complete"].clone(), p["offset"].clone()), (vec![], json!(true), json!(latest)), "{p}");
    // Just inside the window (oldest kept is 5): since 4 reaches.
    let p = u.history("h7", json!({ "channel": ch, "since": pos(at(4), &epoch), "limit": 100 })).await?;
    assert_eq!((page_ns(&p), p["complete"].clone()), ((5..=12).collect::<Vec<u64>>(), json!(true)), "{p}");
    assert_eq!(page_offsets(&p), offsets_of(&(5..=12).collect::<Vec<u64>>()), "{p}");
    // Beyond the window, another epoch, the future: not complete.
    for (id, since) in [("h8", pos(at(3), &epoch)), ("h9", pos(at(6), "other")), ("h10", pos(latest + 1_000, &epoch))] {
        let p = u.history(id, json!({ "channel": ch, "since": since })).await?;
        assert_eq!(p["complete"], json!(false), "{since:?}: {p}");
        assert_eq!(p["epoch"], json!(epoch), "{p}");
    }

    // The positions a live subscriber sees are the ones the page shows.
    publish_http(&node, ch, [13]).await?;
    u.until("13", |ev| ns(ev, ch).contains(&13)).await?;
    let live = u.on(ch).into_iter().find(|e| e.data["n"] == 13).cloned().context("13")?;
    let p = u.history("h11", json!({ "channel": ch, "limit": 8 })).await?;
    let in_page = p["events"].as_array().into_iter().flatten().find(|e| e["data"]["n"] == 13).context("13 in page")?;
    assert_eq!((in_page["offset"].as_u64(), in_page["id"].as_str()), (live.offset, Some(live.id.as_str())));
    assert!(live.offset > Some(latest), "{live:?}");
    assert_eq!(p["offset"].as_u64(), u.on(ch).last().and_then(|e| e.offset), "latest offset: {p}");

    // Empty channel of a history namespace: an empty page.
    let p = u.history("h12", json!({ "channel": "session:empty" })).await?;
    assert_eq!((p["events"].clone(), p["offset"].clone(), p["complete"].clone()), (json!([]), json!(0), json!(true)));

    // Permissions and errors.
    let e = |r: Result<Value, ErrorCode>| r.err();
    assert_eq!(
        e(u.request("x1", "history.get", json!({ "channel": "project:p9" })).await?),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        e(u.request("x2", "history.get", json!({ "channel": "user:someone" })).await?),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(e(u.request("x3", "history.get", json!({ "channel": "agent:a1" })).await?), Some(ErrorCode::Forbidden));
    assert_eq!(
        e(u.request("x4", "history.get", json!({ "channel": "broadcast:x" })).await?),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(e(u.request("x5", "history.get", json!({ "channel": "nope" })).await?), Some(ErrorCode::BadChannel));
    assert_eq!(e(u.request("x6", "history.get", json!({})).await?), Some(ErrorCode::BadRequest));
    // Allowed where it may subscribe without having joined: its project and own channel.
    publish_http(&node, "project:p1", [1]).await?;
    let p = u.history("h13", json!({ "channel": "project:p1" })).await?;
    assert_eq!(page_ns(&p), vec![1], "{p}");
    let p = u.history("h14", json!({ "channel": "user:u1" })).await?;
    assert_eq!(p["events"], json!([]), "{p}");
    // An agent reads its own channel, not another's.
    let mut a = Rec::agent(&node).await?;
    publish_http(&node, "agent:a1", [1, 2]).await?;
    a.until("2", |ev| ns(ev, "agent:a1").len() == 2).await?;
    let p = a.history("h", json!({ "channel": "agent:a1", "limit": 1 })).await?;
    let two = a.on("agent:a1").into_iter().find(|e| e.data["n"] == 2).and_then(|e| e.offset).context("2")?;
    assert_eq!((page_ns(&p), page_offsets(&p)), (vec![2], vec![two]), "{p}");
    assert_eq!(e(a.request("x", "history.get", json!({ "channel": "agent:a2" })).await?), Some(ErrorCode::Forbidden));
    // Closed before the stop: the drain then has nobody to wait for.
    drop((u, a));
    node.stop().await
}

/// The page's `events` are "event frames" (§9 → §2): `{"type":"event", …}` like the
/// live ones, so a client can feed them through the same handler.
#[tokio::test]
async fn history_get_events_are_event_frames() -> anyhow::Result<()> {
    let node = TestNode::start(config()).await?;
    let ch = "session:frames";
    publish_http(&node, ch, [1]).await?;
    let mut u = Rec::user(&node, "u1").await?;
    let p = u.history("h", json!({ "channel": ch })).await?;
    let e = &p["events"][0];
    assert_eq!(e["data"]["n"], json!(1), "{p}");
    assert_eq!(e["type"], json!("event"), "an event frame: {e}");
    // Closed before the stop: the drain then has nobody to wait for.
    drop(u);
    node.stop().await
}

// ---------------------------------------------------------------------------------------
// 8. A restarted node is a new store
// ---------------------------------------------------------------------------------------

/// Stop the node and start it again with the same configuration (on a new port): new
/// events carry a new epoch (their offsets are the new store's), and recovering the old
/// position is `recovered: false` with nothing replayed.
#[tokio::test]
async fn restart_gives_a_new_epoch_and_old_positions_are_not_recovered() -> anyhow::Result<()> {
    let cfg = config();
    let node = TestNode::start(cfg.clone()).await?;
    let ch = "session:rs";
    let mut r = Rec::user(&node, "u1").await?;
    r.subscribe("s", &[ch], &[]).await?;
    publish_http(&node, ch, 1..=3).await?;
    r.until("three", |ev| ns(ev, ch).len() == 3).await?;
    let last = r.last(ch)?;
    drop(r);
    node.stop().await?;

    let node = TestNode::start(cfg).await?;
    publish_http(&node, ch, 4..=5).await?;
    let mut r = Rec::user(&node, "u1").await?;
    let page = r.history("h", json!({ "channel": ch })).await?;
    assert_ne!(page["epoch"], json!(last.epoch), "a new store, a new epoch: {page}");
    assert_eq!(page_ns(&page), vec![4, 5], "only the new store's events: {page}");
    assert_increasing(&page_offsets(&page), "the new store");
    let res = r.subscribe("s", &[ch], &[(ch, last.clone())]).await?;
    assert_eq!(res["recovered"], json!({ ch: false }), "{res}");
    r.settle(QUIET).await?;
    assert_eq!(r.ns(ch), Vec::<u64>::new(), "nothing replayed from the new store");
    publish_http(&node, ch, [6]).await?;
    r.until("6", |ev| ns(ev, ch).contains(&6)).await?;
    let six = r.on(ch).into_iter().find(|e| e.data["n"] == 6).cloned().context("6")?;
    assert_eq!(six.epoch.as_deref(), page["epoch"].as_str(), "live events carry the new epoch");
    assert_ne!(six.epoch.as_deref(), Some(last.epoch.as_str()));
    // Closed before the stop: the drain then has nobody to wait for.
    drop(r);
    node.stop().await
}
