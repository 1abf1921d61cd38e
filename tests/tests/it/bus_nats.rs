//! `NatsBus` against a real `nats-server`: event delivery (JSON and MessagePack), interest
//! bookkeeping as the server sees it, upstream headers, request/reply outcomes, the
//! subscribe proxy, cluster-wide disconnects, and recovery from a server restart.
//!
//! Every test starts its own server on free ports, so they run in parallel.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use futures_util::StreamExt;
use gateway::{
    bus::{Bus, BusError, Correlation, DisconnectCommand, Inbound, Origin, nats::NatsBus},
    config::Config,
};
use gateway_protocol::{Channel, ErrorCode, EventFrame, Principal, PrincipalKind, now_ms};
use gateway_tests::servers::{NatsServer, free_port};
use serde_json::{Value, json};
use tokio::time::{sleep, timeout};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Longest any single wait in these tests may take.
const WAIT: Duration = Duration::from_secs(10);

/// An `Inbound` that records what the bus delivers; its interest set is the "hub truth".
#[derive(Default)]
struct Recorder {
    /// Events delivered, in order.
    events: Mutex<Vec<EventFrame>>,
    /// Disconnect commands delivered.
    commands: Mutex<Vec<DisconnectCommand>>,
    /// Channels with a "local subscriber".
    wanted: Mutex<HashSet<Channel>>,
}

impl Recorder {
    fn events(&self) -> Vec<EventFrame> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
    fn commands(&self) -> Vec<DisconnectCommand> {
        self.commands.lock().map(|c| c.clone()).unwrap_or_default()
    }
    fn want(&self, ch: &Channel, on: bool) {
        if let Ok(mut w) = self.wanted.lock() {
            if on {
                w.insert(ch.clone());
            } else {
                w.remove(ch);
            }
        }
    }
}

impl Inbound for Recorder {
    fn event(&self, ev: EventFrame) {
        if let Ok(mut e) = self.events.lock() {
            e.push(ev);
        }
    }
    fn control(&self, cmd: DisconnectCommand) {
        if let Ok(mut c) = self.commands.lock() {
            c.push(cmd);
        }
    }
    fn has_subscribers(&self, ch: &Channel) -> bool {
        self.wanted.lock().map(|w| w.contains(ch)).unwrap_or(false)
    }
}

/// A bus on `server` for node `node`, with its recorder and lifecycle handles.
struct Node {
    bus: NatsBus,
    rec: Arc<Recorder>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Node {
    async fn start(server: &NatsServer, node: &str) -> Result<Node> {
        // The core-NATS path: no namespace keeps history here (the JetStream path has
        // its own tests in history_cluster.rs).
        let history = gateway::config::HistoryConfig {
            session: Default::default(),
            project: Default::default(),
            user: Default::default(),
            agent: Default::default(),
            ..Default::default()
        };
        let cfg = Config { nats_url: server.url.clone(), node_id: node.into(), history, ..Config::default() };
        let rec = Arc::new(Recorder::default());
        let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let bus = NatsBus::connect(&cfg, rec.clone(), &tasks, shutdown.clone()).await?;
        Ok(Node { bus, rec, tasks, shutdown })
    }

    /// Shuts down and checks that every task the bus spawned stops promptly.
    async fn finish(self) -> Result<()> {
        self.shutdown.cancel();
        self.tasks.close();
        timeout(Duration::from_secs(5), self.tasks.wait()).await.context("bus tasks did not stop")?;
        Ok(())
    }
}

fn ch(s: &str) -> Channel {
    Channel::parse(s).expect("valid channel")
}

/// Polls `cond` every 10 ms until it holds, at most `limit`.
async fn until(limit: Duration, mut cond: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            bail!("condition not met within {limit:?}");
        }
        sleep(Duration::from_millis(10)).await;
    }
    Ok(start.elapsed())
}

/// Waits until the server lists a subscription on `subject`: a plain client's `flush()`
/// only drains its socket, so without this a test could publish before the SUB lands.
async fn subscribed(server: &NatsServer, subject: &str) -> Result<()> {
    let start = Instant::now();
    while !server.subscriptions().await?.iter().any(|s| s == subject) {
        ensure!(start.elapsed() < WAIT, "{subject} not subscribed within {WAIT:?}");
        sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn user(id: &str) -> Principal {
    Principal { kind: PrincipalKind::User, id: id.into() }
}

#[tokio::test]
async fn events_json_and_msgpack_reach_inbound() -> Result<()> {
    let server = NatsServer::start().await?;
    let node = Node::start(&server, "n1").await?;
    let s1 = ch("session:s1");
    node.rec.want(&s1, true);
    node.bus.sync_interest(&s1).await?;
    let backend = async_nats::connect(&server.url).await?;

    // JSON without id/ts: the node assigns a uuid v7 and its clock.
    let before = now_ms();
    backend.publish("gw.ev.session.s1", r#"{"event":"message.created","data":{"x":1}}"#.into()).await?;
    until(WAIT, || node.rec.events().len() == 1).await?;
    let ev = &node.rec.events()[0];
    assert_eq!((ev.channel.as_str(), ev.event.as_str(), &ev.data), ("session:s1", "message.created", &json!({"x":1})));
    assert_eq!(ev.id.len(), 36, "uuid: {}", ev.id);
    assert_eq!(ev.id.as_bytes()[14], b'7', "uuid v7: {}", ev.id);
    assert!(ev.ts >= before && ev.ts <= now_ms());

    // Undecodable bodies are dropped without harm.
    backend.publish("gw.ev.session.s1", "not json".into()).await?;
    backend.publish("gw.ev.session.s1", r#"{"data":1}"#.into()).await?;

    // MessagePack {"event":"typing","data":{"a":1},"id":"m-1","ts":1234}, flagged by header.
    let mut mp = vec![0x84, 0xa5];
    mp.extend(b"event");
    mp.push(0xa6);
    mp.extend(b"typing");
    mp.push(0xa4);
    mp.extend(b"data");
    mp.extend([0x81, 0xa1, b'a', 0x01, 0xa2]);
    mp.extend(b"id");
    mp.push(0xa3);
    mp.extend(b"m-1");
    mp.push(0xa2);
    mp.extend(b"ts");
    mp.extend([0xcd, 0x04, 0xd2]);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/msgpack");
    backend.publish_with_headers("gw.ev.session.s1", headers, Bytes::from(mp)).await?;
    until(WAIT, || node.rec.events().len() == 2).await?;
    let ev = &node.rec.events()[1];
    assert_eq!((ev.event.as_str(), &ev.data, ev.id.as_str(), ev.ts), ("typing", &json!({"a":1}), "m-1", 1234));

    // The bus's own publish reaches every subscribed node, itself included, id and ts kept.
    let frame = EventFrame {
        channel: s1.clone(),
        event: "e".into(),
        data: json!([1]),
        id: "id-9".into(),
        ts: 42,
        from: None,
        offset: None,
        epoch: None,
    };
    node.bus.publish(&frame).await?;
    until(WAIT, || node.rec.events().len() == 3).await?;
    assert_eq!(node.rec.events()[2], frame);
    sleep(Duration::from_millis(100)).await;
    assert_eq!(node.rec.events().len(), 3, "bad bodies must not be delivered");
    node.finish().await
}

#[tokio::test]
async fn interest_follows_the_hub() -> Result<()> {
    let server = NatsServer::start().await?;
    let node = Node::start(&server, "n1").await?;
    let s1 = ch("session:s1");
    let count =
        || async { server.subscriptions().await.map(|s| s.iter().filter(|s| *s == "gw.ev.session.s1").count()) };

    node.bus.sync_interest(&s1).await?;
    assert_eq!(count().await?, 0, "no local subscriber, no NATS subscription");
    node.rec.want(&s1, true);
    node.bus.sync_interest(&s1).await?;
    node.bus.sync_interest(&s1).await?;
    assert_eq!(count().await?, 1);
    assert_eq!(node.bus.subscribed_channels().await, 1);
    node.rec.want(&s1, false);
    node.bus.sync_interest(&s1).await?;
    assert_eq!(count().await?, 0, "unsubscribed before sync_interest returned");
    assert_eq!(node.bus.subscribed_channels().await, 0);
    assert!(server.subscriptions().await?.iter().any(|s| s == "gw.ctl.disconnect"));
    node.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_interest_storm_converges() -> Result<()> {
    let server = NatsServer::start().await?;
    let node = Arc::new(Node::start(&server, "n1").await?);
    let channels: Vec<Channel> = (0..5).map(|i| ch(&format!("session:c{i}"))).collect();
    let mut storm = Vec::new();
    for t in 0..50usize {
        let (node, channels) = (node.clone(), channels.clone());
        storm.push(tokio::spawn(async move {
            for j in 0..20usize {
                let c = &channels[(t + j) % channels.len()];
                node.rec.want(c, (t * 7 + j * 3) % 4 != 0);
                if j % 3 == 0 {
                    tokio::task::yield_now().await;
                }
                node.bus.sync_interest(c).await?;
            }
            Ok::<_, BusError>(())
        }));
    }
    for h in storm {
        timeout(Duration::from_secs(30), h).await.context("storm timed out")???;
    }
    let subs = server.subscriptions().await?;
    let mut wanted = 0;
    for c in &channels {
        let on = node.rec.has_subscribers(c);
        wanted += usize::from(on);
        let n = subs.iter().filter(|s| **s == c.subject("gw")).count();
        assert_eq!(n, usize::from(on), "{c}: wanted {on}, server has {n} subscriptions");
    }
    assert_eq!(node.bus.subscribed_channels().await, wanted);
    // Exactly one delivery per event on a wanted channel: no duplicate subscriptions.
    let backend = async_nats::connect(&server.url).await?;
    for c in &channels {
        backend.publish(c.subject("gw"), r#"{"event":"e"}"#.into()).await?;
    }
    until(WAIT, || node.rec.events().len() >= wanted).await?;
    sleep(Duration::from_millis(100)).await;
    assert_eq!(node.rec.events().len(), wanted);
    Arc::try_unwrap(node).map_err(|_| anyhow::anyhow!("node still shared"))?.finish().await
}

#[tokio::test]
async fn upstream_send_carries_gateway_headers() -> Result<()> {
    let server = NatsServer::start().await?;
    let node = Node::start(&server, "n1").await?;
    let backend = async_nats::connect(&server.url).await?;
    let mut q = backend.queue_subscribe("gw.up.status.update", "backends".into()).await?;
    subscribed(&server, "gw.up.status.update").await?;

    let principal = Principal { kind: PrincipalKind::Agent, id: "a1".into() };
    let origin = Origin { principal: &principal, conn: "c-1", node: "n1" };
    let data = json!({"Gw-Principal-Id": "admin", "Gw-Principal-Kind": "user", "state": "busy"});
    // What the client said about its message travels as headers of its own; client
    // values that could start another header line are left out.
    let said = Correlation { message_id: Some("m-9"), correlation_id: Some("corr-1"), client_ts: Some("17".into()) };
    node.bus.send_upstream(&origin, "status:update", &data, &said).await?;
    let msg = timeout(WAIT, q.next()).await?.context("queue subscriber closed")?;
    let h = msg.headers.context("headers")?;
    let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned());
    assert_eq!(get("Gw-Principal-Kind").as_deref(), Some("agent"));
    assert_eq!(get("Gw-Principal-Id").as_deref(), Some("a1"));
    assert_eq!(get("Gw-Connection").as_deref(), Some("c-1"));
    assert_eq!(get("Gw-Node").as_deref(), Some("n1"));
    assert_eq!(get("Content-Type").as_deref(), Some("application/json"));
    assert_eq!(get("Gw-Message-Id").as_deref(), Some("m-9"));
    assert_eq!(get("Gw-Correlation-Id").as_deref(), Some("corr-1"));
    assert_eq!(get("Gw-Client-Ts").as_deref(), Some("17"));
    assert_eq!(serde_json::from_slice::<Value>(&msg.payload)?, data);
    let sneaky = Correlation { message_id: Some("m\r\nGw-Principal-Id: admin"), ..Correlation::default() };
    node.bus.send_upstream(&origin, "status:update", &data, &sneaky).await?;
    let msg = timeout(WAIT, q.next()).await?.context("queue subscriber closed")?;
    let h = msg.headers.context("headers")?;
    assert!(h.get("Gw-Message-Id").is_none());
    assert_eq!(h.get("Gw-Principal-Id").map(|v| v.as_str()), Some("a1"));

    let bad = node.bus.send_upstream(&origin, "a b", &data, &Correlation::default()).await;
    assert!(matches!(bad, Err(BusError::Backend(ref e)) if e.code == ErrorCode::BadRequest), "{bad:?}");
    // An id that would inject a header line is refused, not sent (and does not panic).
    let forged = user("u1\r\nGw-Principal-Id: admin");
    let origin = Origin { principal: &forged, conn: "c-1", node: "n1" };
    let bad = node.bus.send_upstream(&origin, "status:update", &data, &Correlation::default()).await;
    assert!(matches!(bad, Err(BusError::Backend(ref e)) if e.code == ErrorCode::BadRequest), "{bad:?}");
    node.finish().await
}

/// A backend answering `gw.rpc.>` and `gw.auth.subscribe` the way tests need.
async fn start_backend(server: &NatsServer) -> Result<(async_nats::Client, tokio::task::JoinHandle<()>)> {
    let client = async_nats::connect(&server.url).await?;
    let mut rpc = client.subscribe("gw.rpc.>").await?;
    let mut auth = client.subscribe("gw.auth.subscribe").await?;
    subscribed(server, "gw.rpc.>").await?;
    subscribed(server, "gw.auth.subscribe").await?;
    let c = client.clone();
    let task = tokio::spawn(async move {
        loop {
            let msg = tokio::select! { m = rpc.next() => m, m = auth.next() => m };
            let Some(msg) = msg else { return };
            let Some(reply) = msg.reply.clone() else { continue };
            let body: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
            let who = msg.headers.as_ref().and_then(|h| h.get("Gw-Principal-Id")).map(|v| v.as_str().to_owned());
            let answer = match msg.subject.as_str() {
                "gw.rpc.sessions.create" => json!({"created": true, "by": who, "params": body}).to_string(),
                "gw.rpc.sessions.fail" => {
                    json!({"error": {"code": "not_found", "message": "no such session"}}).to_string()
                }
                "gw.rpc.sessions.garbage" => "<html>".into(),
                "gw.rpc.sessions.slow" => continue,
                "gw.auth.subscribe" => {
                    let allow =
                        body["channel"] == "session:ok" && body["principal"] == json!({"kind":"user","id":"u1"});
                    json!({ "allow": allow }).to_string()
                }
                _ => continue,
            };
            let _ = c.publish(reply, answer.into()).await;
        }
    });
    Ok((client, task))
}

#[tokio::test]
async fn requests_map_every_outcome() -> Result<()> {
    let server = NatsServer::start().await?;
    let node = Node::start(&server, "n1").await?;
    let p = user("u1");
    let origin = Origin { principal: &p, conn: "c-1", node: "n1" };
    let short = Duration::from_millis(300);

    let r = node.bus.request(&origin, "sessions.create", &json!({}), short).await;
    assert_eq!(r, Err(BusError::NoResponders));
    let (_backend, task) = start_backend(&server).await?;

    let r = node.bus.request(&origin, "sessions.create", &json!({"title": "t"}), WAIT).await?;
    assert_eq!(r, json!({"created": true, "by": "u1", "params": {"title": "t"}}));
    match node.bus.request(&origin, "sessions.fail", &json!({}), WAIT).await {
        Err(BusError::Backend(e)) => assert_eq!((e.code, e.message.as_str()), (ErrorCode::NotFound, "no such session")),
        other => bail!("expected a backend error, got {other:?}"),
    }
    let r = node.bus.request(&origin, "sessions.garbage", &json!({}), WAIT).await;
    assert!(matches!(r, Err(BusError::BadReply(_))), "{r:?}");

    let start = Instant::now();
    let r = node.bus.request(&origin, "sessions.slow", &json!({}), short).await;
    let took = start.elapsed();
    assert_eq!(r, Err(BusError::Timeout(short)));
    ensure!(took >= short && took < Duration::from_secs(2), "timeout took {took:?}");
    let r = node.bus.request(&origin, "bad method!", &json!({}), short).await;
    assert!(matches!(r, Err(BusError::Backend(ref e)) if e.code == ErrorCode::BadRequest), "{r:?}");
    task.abort();
    node.finish().await
}

#[tokio::test]
async fn subscribe_proxy_allows_and_denies() -> Result<()> {
    let server = NatsServer::start().await?;
    let node = Node::start(&server, "n1").await?;
    let short = Duration::from_millis(300);
    let r = node.bus.authorize_subscribe(&user("u1"), &ch("session:ok"), short).await;
    assert_eq!(r, Err(BusError::NoResponders));
    let (_backend, task) = start_backend(&server).await?;
    assert!(node.bus.authorize_subscribe(&user("u1"), &ch("session:ok"), WAIT).await?);
    assert!(!node.bus.authorize_subscribe(&user("u2"), &ch("session:ok"), WAIT).await?);
    assert!(!node.bus.authorize_subscribe(&user("u1"), &ch("session:other"), WAIT).await?);
    task.abort();
    node.finish().await
}

#[tokio::test]
async fn disconnect_reaches_every_node() -> Result<()> {
    let server = NatsServer::start().await?;
    let (a, b) = (Node::start(&server, "n1").await?, Node::start(&server, "n2").await?);
    let raw = async_nats::connect(&server.url).await?;
    raw.publish("gw.ctl.disconnect", r#"{"kind":"robot","id":"x"}"#.into()).await?;
    raw.publish("gw.ctl.disconnect", r#"{"kind":"user","id":"bad id!"}"#.into()).await?;
    raw.flush().await?;
    let cmd = DisconnectCommand { kind: PrincipalKind::User, id: "u1".into(), reason: "kicked".into() };
    a.bus.disconnect(&cmd).await?;
    until(WAIT, || a.rec.commands().len() == 1 && b.rec.commands().len() == 1).await?;
    assert_eq!(b.rec.commands(), vec![cmd.clone()]);
    assert_eq!(a.rec.commands(), vec![cmd]);
    a.finish().await?;
    b.finish().await
}

#[tokio::test]
async fn connect_fails_fast_without_a_server() -> Result<()> {
    let cfg = Config { nats_url: format!("nats://127.0.0.1:{}", free_port()), ..Config::default() };
    let start = Instant::now();
    let r = NatsBus::connect(&cfg, Arc::new(Recorder::default()), &TaskTracker::new(), CancellationToken::new()).await;
    match r {
        Err(BusError::Unavailable(m)) => assert!(m.contains(&cfg.nats_url), "{m}"),
        Err(e) => bail!("expected Unavailable, got {e:?}"),
        Ok(_) => bail!("connected to nothing"),
    }
    ensure!(start.elapsed() < Duration::from_secs(6), "took {:?}", start.elapsed());
    Ok(())
}

#[tokio::test]
async fn delivery_resumes_after_nats_restart() -> Result<()> {
    let metrics = gateway::telemetry::prometheus();
    let mut server = NatsServer::start().await?;
    let node = Node::start(&server, "n1").await?;
    let s1 = ch("session:s1");
    node.rec.want(&s1, true);
    node.bus.sync_interest(&s1).await?;
    let backend = async_nats::connect(&server.url).await?;
    backend.publish("gw.ev.session.s1", r#"{"event":"before"}"#.into()).await?;
    until(WAIT, || node.rec.events().len() == 1).await?;
    assert_eq!(node.bus.health().status, "connected");
    drop(backend);

    server.stop().await;
    let noticed = until(WAIT, || node.bus.health().status == "disconnected").await?;
    let frame = EventFrame {
        channel: s1.clone(),
        event: "x".into(),
        data: Value::Null,
        id: "i".into(),
        ts: 1,
        from: None,
        offset: None,
        epoch: None,
    };
    assert!(matches!(node.bus.publish(&frame).await, Err(BusError::Unavailable(_))), "publish fails fast while down");
    sleep(Duration::from_millis(500)).await;

    server.restart().await?;
    let restarted = Instant::now();
    let backend = async_nats::connect(&server.url).await?;
    // Publish until one arrives: the bus re-subscribes by itself once it reconnects.
    let mut n = 0;
    let resumed = loop {
        n += 1;
        let body = json!({"event": "after", "data": n}).to_string();
        backend.publish("gw.ev.session.s1", body.into()).await?;
        if node.rec.events().iter().any(|e| e.event == "after") {
            break restarted.elapsed();
        }
        ensure!(restarted.elapsed() < Duration::from_secs(15), "no delivery within 15 s of the restart");
        sleep(Duration::from_millis(20)).await;
    };
    until(WAIT, || node.bus.health().status == "connected").await?;
    assert!(server.subscriptions().await?.iter().any(|s| s == "gw.ev.session.s1"));
    let text = metrics.render();
    let metric = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{component=\"nats\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    ensure!(metric("gateway_fabric_outages_total").is_some_and(|v| v >= 1.0), "outage not counted:\n{text}");
    // (`gateway_fabric_up` is one gauge for every bus in this process, so other tests'
    // shutdowns move it; `health()` above is the per-bus check.)
    let gap = metric("gateway_fabric_gap_seconds_sum").context("gap not recorded")?;
    eprintln!("nats restart: recorded gap {gap:.3} s");
    eprintln!("nats restart: link-down noticed in {noticed:?}; delivery resumed {resumed:?} after the restart");
    node.finish().await
}
