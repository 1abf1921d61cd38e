//! The reconnecting SDK (`gateway_client::Gateway`) against real nodes: a node restart
//! and a `kill -9` behind a switchable TCP relay (subscriptions resume, the offline queue
//! is flushed in order, a pending request fails cleanly), the close-code policy (no
//! reconnect after 401, 4001, 4003, 4010; reconnect after 1011 and 4009), the token
//! callback on reconnect and for `refresh`, and seed 000's agent helpers. The "nothing
//! lost with recover" checks need server history (contract §9) and are ignored until it
//! lands. Every wait is bounded; every port is free.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use gateway_client::{Gateway, GatewayBuilder, GatewayError, Notice, State, StopReason};
use gateway_protocol::{DisconnectReason, EventFrame};
use gateway_tests::{
    node::{AGENT_KEYS, ProcessNode, TestNode, channel_token, post, test_config, user_token},
    servers::{NatsServer, RedisServer},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::Mutex,
    task::JoinHandle,
};

/// The bound of one wait.
const T: Duration = Duration::from_secs(10);

/// A builder with quick reconnects for tests (full jitter under 50–400 ms).
fn quick(url: String) -> GatewayBuilder {
    Gateway::builder(url).backoff(Duration::from_millis(50), Duration::from_millis(400)).request_timeout(T)
}

fn token(sub: &str, projects: &[&str]) -> String {
    user_token(sub, projects, &[], Duration::from_secs(300))
}

/// Waits (bounded) until the state satisfies `pick`.
async fn wait_state(gw: &Gateway, what: &str, pick: impl Fn(&State) -> bool) -> anyhow::Result<State> {
    let mut rx = gw.state();
    let s = tokio::time::timeout(T, rx.wait_for(|s| pick(s)))
        .await
        .with_context(|| format!("state never became {what}; now {:?}", *gw.state().borrow()))?
        .context("state channel closed")?
        .clone();
    Ok(s)
}

/// The node of the current connection, once connected.
async fn connected_node(gw: &Gateway) -> anyhow::Result<String> {
    match wait_state(gw, "connected", State::is_connected).await? {
        State::Connected { node, .. } => Ok(node),
        s => bail!("not connected: {s:?}"),
    }
}

/// Waits until connected to a node other than `old`.
async fn reconnected_away_from(gw: &Gateway, old: &str) -> anyhow::Result<String> {
    match wait_state(gw, "connected elsewhere", |s| matches!(s, State::Connected { node, .. } if node != old)).await? {
        State::Connected { node, .. } => Ok(node),
        s => bail!("not connected: {s:?}"),
    }
}

/// The next event of a stream other than presence, bounded.
async fn next_app(s: &mut (impl futures_util::Stream<Item = EventFrame> + Unpin)) -> anyhow::Result<EventFrame> {
    loop {
        let ev = tokio::time::timeout(T, s.next()).await.context("no event in time")?.context("stream ended")?;
        if !ev.event.starts_with("presence.") {
            return Ok(ev);
        }
    }
}

/// Waits for the `Recovered` notice of `channel`.
async fn recovered(n: &mut gateway_client::Notices, channel: &str) -> anyhow::Result<bool> {
    loop {
        match tokio::time::timeout(T, n.next()).await.context("no recovered notice")?.context("ended")? {
            Notice::Recovered { channel: c, recovered } if c == channel => return Ok(recovered),
            _ => {}
        }
    }
}

/// Stays stopped: asserts the state does not leave `Stopped` for `d`.
async fn stays_stopped(gw: &Gateway, d: Duration) -> anyhow::Result<StopReason> {
    let stop = wait_state(gw, "stopped", |s| matches!(s, State::Stopped(_))).await?;
    tokio::time::sleep(d).await;
    let now = gw.state().borrow().clone();
    anyhow::ensure!(now == stop, "left Stopped: {now:?}");
    match stop {
        State::Stopped(r) => Ok(r),
        s => bail!("{s:?}"),
    }
}

// ------------------------------------------------------------------ the relay

/// A TCP relay in front of a node: accepts on a free port and forwards each connection
/// to the current target. Switching the target moves later connections; `inject_close`
/// ends every live WebSocket with a close frame of our choosing (the relay forwards the
/// server's frames whole, so it can add one at a frame boundary).
struct Relay {
    addr: SocketAddr,
    target: Arc<std::sync::Mutex<SocketAddr>>,
    links: Arc<Mutex<Vec<Link>>>,
    accept: JoinHandle<()>,
}

struct Link {
    down: Arc<Mutex<OwnedWriteHalf>>,
    pumps: [JoinHandle<()>; 2],
}

impl Relay {
    async fn start(target: SocketAddr) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let target = Arc::new(std::sync::Mutex::new(target));
        let links: Arc<Mutex<Vec<Link>>> = Arc::default();
        let (t, l) = (target.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let to = *t.lock().unwrap_or_else(|e| e.into_inner());
                // A dead target: drop the client, it sees a failed handshake.
                let Ok(up) = TcpStream::connect(to).await else { continue };
                let (client_r, client_w) = client.into_split();
                let (up_r, mut up_w) = up.into_split();
                let down = Arc::new(Mutex::new(client_w));
                let upward = tokio::spawn(async move {
                    let mut client_r = client_r;
                    let _ = tokio::io::copy(&mut client_r, &mut up_w).await;
                    let _ = up_w.shutdown().await;
                });
                let d = down.clone();
                let downward = tokio::spawn(async move {
                    let _ = pump_frames(up_r, &d).await;
                    let _ = d.lock().await.shutdown().await;
                });
                let mut links = l.lock().await;
                links.retain(|k| !k.pumps[1].is_finished());
                links.push(Link { down, pumps: [upward, downward] });
            }
        });
        Ok(Relay { addr, target, links, accept })
    }

    fn ws(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn switch(&self, to: SocketAddr) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }

    /// Ends every live connection with a WebSocket close frame `code`.
    async fn inject_close(&self, code: u16) -> anyhow::Result<()> {
        for link in self.links.lock().await.drain(..) {
            let mut w = link.down.lock().await;
            for p in &link.pumps {
                p.abort();
            }
            let reason = b"relay";
            let mut frame = vec![0x88, (2 + reason.len()) as u8];
            frame.extend_from_slice(&code.to_be_bytes());
            frame.extend_from_slice(reason);
            w.write_all(&frame).await?;
            w.shutdown().await?;
        }
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(links) = self.links.try_lock() {
            for l in links.iter() {
                l.pumps.iter().for_each(JoinHandle::abort);
            }
        }
    }
}

/// Forwards the server's side: the HTTP response head, then whole WebSocket frames, each
/// written under the lock (so an injected close never lands inside a frame).
async fn pump_frames(up: OwnedReadHalf, down: &Mutex<OwnedWriteHalf>) -> std::io::Result<()> {
    let mut up = BufReader::new(up);
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut line = Vec::new();
        if up.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        head.extend_from_slice(&line);
    }
    down.lock().await.write_all(&head).await?;
    if !head.starts_with(b"HTTP/1.1 101") {
        let mut rest = Vec::new();
        up.read_to_end(&mut rest).await?;
        return down.lock().await.write_all(&rest).await;
    }
    loop {
        let mut h = [0u8; 2];
        up.read_exact(&mut h).await?;
        let mut frame = h.to_vec();
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                up.read_exact(&mut b).await?;
                frame.extend_from_slice(&b);
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                up.read_exact(&mut b).await?;
                frame.extend_from_slice(&b);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let masked = if h[1] & 0x80 != 0 { 4 } else { 0 };
        let mut body = vec![0u8; masked + len as usize];
        up.read_exact(&mut body).await?;
        frame.extend_from_slice(&body);
        down.lock().await.write_all(&frame).await?;
    }
}

// ------------------------------------------------------------------ tests

fn cluster_config(nats: &NatsServer, redis: &RedisServer) -> gateway::Config {
    let mut cfg = test_config();
    cfg.nats_url = nats.url.clone();
    cfg.redis_url = redis.url.clone();
    cfg
}

/// Starts an in-process node on `addr` (a restarted node), retrying while the old socket
/// still holds the port.
async fn start_on(mut cfg: gateway::Config, addr: SocketAddr) -> anyhow::Result<TestNode> {
    cfg.listen = addr;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match TestNode::start(cfg.clone()).await {
            Ok(n) => return Ok(n),
            Err(e) if tokio::time::Instant::now() > deadline => return Err(e.context("restart on the same address")),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn connection_id(gw: &Gateway) -> anyhow::Result<String> {
    match wait_state(gw, "connected", State::is_connected).await? {
        State::Connected { connection_id, .. } => Ok(connection_id),
        s => bail!("not connected: {s:?}"),
    }
}

#[tokio::test]
async fn node_restart_resubscribes_and_flushes_the_queue_in_order() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let addr = node.addr;
    let gw = quick(node.ws("")).token(token("u1", &["p1"])).start()?;
    let first = connected_node(&gw).await?;
    let mut project = gw.subscribe("project:p1").await?;
    let mut session = gw.subscribe_with_token("session:s1", &channel_token("session:s1", "u1")).await?;
    let mut notices = gw.notices();
    node.publish("project:p1", "task.created", json!({"n": 0})).await?;
    assert_eq!(next_app(&mut project).await?.data["n"], 0);

    node.stop().await?;
    wait_state(&gw, "reconnecting", |s| matches!(s, State::Reconnecting { .. })).await?;
    // While the node is down, five publishes wait in the offline queue, in call order.
    let mut sends = Vec::new();
    for i in 0..5 {
        let g = gw.clone();
        sends.push(tokio::spawn(async move { g.publish("session:s1", "msg", json!({ "n": i })).await }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sends.iter().all(|s| !s.is_finished()), "a publish finished while offline");

    let node = start_on(test_config(), addr).await?;
    assert_eq!(reconnected_away_from(&gw, &first).await?, node.cfg.node_id);
    for s in sends {
        tokio::time::timeout(T, s).await.context("publish not acked")??.context("publish failed")?;
    }
    // Flushed after the re-subscribe (a publish needs the channel joined), in order.
    for i in 0..5 {
        assert_eq!(next_app(&mut session).await?.data["n"], i);
    }
    // Both subscriptions resumed, and each reported whether it recovered.
    node.publish("project:p1", "task.created", json!({"n": 1})).await?;
    assert_eq!(next_app(&mut project).await?.data["n"], 1);
    let mut reported = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(T, notices.next()).await?.context("notices ended")? {
            Notice::Recovered { channel, .. } => reported.push(channel),
            n => bail!("unexpected notice {n:?}"),
        }
    }
    reported.sort();
    assert_eq!(reported, ["project:p1", "session:s1"]);
    gw.close().await;
    assert_eq!(*gw.state().borrow(), State::Stopped(StopReason::Closed));
    node.stop().await
}

#[tokio::test]
async fn kill9_behind_a_relay_moves_to_another_node_and_fails_the_pending_request() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let redis = RedisServer::start().await?;
    let mut a =
        ProcessNode::start(&[("GATEWAY_NATS_URL", nats.url.clone()), ("GATEWAY_REDIS_URL", redis.url.clone())]).await?;
    let b = TestNode::start(cluster_config(&nats, &redis)).await?;
    let relay = Relay::start(a.addr).await?;
    let gw = quick(relay.ws()).token(token("u1", &["p1"])).start()?;
    assert_eq!(connected_node(&gw).await?, a.node_id);
    let mut project = gw.subscribe("project:p1").await?;
    b.publish("project:p1", "task.created", json!({"n": 0})).await?;
    assert_eq!(next_app(&mut project).await?.data["n"], 0);

    // A backend that takes the request and never answers: it is in flight on A.
    let nc = async_nats::connect(&nats.url).await?;
    let mut rpc = nc.subscribe("gw.rpc.slow").await?;
    nc.flush().await?;
    // The node's own NATS link may still be coming up: retry until the backend sees it.
    let mut tries = 0;
    let pending = loop {
        let g = gw.clone();
        let mut pending = tokio::spawn(async move { g.request("slow", json!({}), Duration::from_secs(30)).await });
        tokio::select! {
            m = rpc.next() => {
                m.context("backend subscription ended")?;
                break pending;
            }
            r = &mut pending => {
                tries += 1;
                anyhow::ensure!(tries < 50, "the request never reached the backend: {r:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = tokio::time::sleep(T) => bail!("the request never reached the backend"),
        }
    };
    relay.switch(b.addr);
    a.kill9().await?;
    let r = tokio::time::timeout(T, pending).await.context("request still pending")??;
    assert_eq!(r, Err(GatewayError::Disconnected));
    assert_eq!(reconnected_away_from(&gw, &a.node_id).await?, b.cfg.node_id);
    // The subscription resumed on B.
    b.publish("project:p1", "task.created", json!({"n": 1})).await?;
    assert_eq!(next_app(&mut project).await?.data["n"], 1);
    // Requests work again (and fail with the server's error body).
    let e = gw.request("presence.get", json!({"channel": "project:p9"}), T).await;
    assert!(matches!(&e, Err(GatewayError::Server(b)) if b.code == gateway_protocol::ErrorCode::Forbidden), "{e:?}");
    gw.close().await;
    b.stop().await
}

#[tokio::test]
async fn refused_credentials_and_kicks_stop_without_reconnecting() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    // A bad token: handshake 401, no retry loop.
    let bad = quick(node.ws("")).token("not-a-token").connect().await;
    match bad {
        Err(GatewayError::Stopped(StopReason::Refused { status: 401, body })) => {
            assert_eq!(body["code"], "unauthorized");
        }
        Err(e) => bail!("unexpected error {e}"),
        Ok(_) => bail!("connected with a bad token"),
    }
    // An unknown API key (as X-API-Key): the same.
    let gw = quick(node.ws("")).api_key("no-such-key").start()?;
    assert!(matches!(stays_stopped(&gw, Duration::from_millis(500)).await?, StopReason::Refused { status: 401, .. }));

    // 4010: the admin disconnects the user; the notice says not to come back.
    let gw = quick(node.ws("")).token(token("u1", &[])).connect().await?;
    let (status, _) =
        post(&node.http("/api/disconnect"), json!({"kind": "user", "id": "u1", "reason": "kicked"})).await?;
    assert_eq!(status, 202);
    let stop = stays_stopped(&gw, Duration::from_secs(1)).await?;
    assert_eq!(stop, StopReason::Notice { reason: DisconnectReason::Kicked, code: Some(4010) });
    assert_eq!(stop.close_code(), Some(4010));
    assert_eq!(node.health().await?["websocket"]["connections"], 0);
    let after = gw.send("status:update", json!({})).await;
    assert!(matches!(after, Err(GatewayError::Stopped(StopReason::Notice { .. }))), "{after:?}");
    node.stop().await
}

#[tokio::test]
async fn terminal_close_codes_stop_and_transient_ones_reconnect() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let relay = Relay::start(node.addr).await?;
    for code in [4001u16, 4003] {
        let gw = quick(relay.ws()).token(token("u1", &[])).connect().await?;
        relay.inject_close(code).await?;
        let stop = stays_stopped(&gw, Duration::from_millis(800)).await?;
        assert_eq!(stop.close_code(), Some(code), "{stop:?}");
    }
    let gw = quick(relay.ws()).token(token("u1", &[])).connect().await?;
    let mut notices = gw.notices();
    for code in [1011u16, 4009, 1001] {
        let before = connection_id(&gw).await?;
        relay.inject_close(code).await?;
        let after = match wait_state(
            &gw,
            "a new connection",
            |s| matches!(s, State::Connected { connection_id, .. } if *connection_id != before),
        )
        .await?
        {
            State::Connected { connection_id, .. } => connection_id,
            s => bail!("{s:?}"),
        };
        assert_ne!(after, before, "after {code}");
        // The auto-joined user channel had no position: nothing to recover, nothing reported.
        assert!(tokio::time::timeout(Duration::from_millis(100), notices.next()).await.is_err());
    }
    gw.close().await;
    node.stop().await
}

#[tokio::test]
async fn token_callback_is_asked_on_every_reconnect_and_to_refresh() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let relay = Relay::start(node.addr).await?;
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let gw = quick(relay.ws())
        .token_source(move || {
            c.fetch_add(1, Ordering::SeqCst);
            // Three-second tokens: the connection must refresh to outlive the first.
            async { Ok::<_, std::convert::Infallible>(user_token("u1", &["p1"], &[], Duration::from_secs(3))) }
        })
        .connect()
        .await?;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let first = connection_id(&gw).await?;
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    assert_eq!(connection_id(&gw).await?, first, "the token expired: refresh did not happen");
    let refreshed = calls.load(Ordering::SeqCst);
    assert!(refreshed >= 2, "{refreshed} calls");
    relay.inject_close(1011).await?;
    let second = match wait_state(
        &gw,
        "reconnected",
        |s| matches!(s, State::Connected { connection_id, .. } if *connection_id != first),
    )
    .await?
    {
        State::Connected { connection_id, .. } => connection_id,
        s => bail!("{s:?}"),
    };
    assert_ne!(second, first);
    assert!(calls.load(Ordering::SeqCst) > refreshed, "the reconnect did not ask for a token");
    gw.close().await;
    node.stop().await
}

#[tokio::test]
async fn seed_000_agent_handles_task_assigned_and_reports_status() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let (agent, key) = AGENT_KEYS[0];
    let gw = quick(node.ws("")).api_key(key).connect().await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Value, Result<(), GatewayError>)>(4);
    let g = gw.clone();
    gw.on("task:assigned", move |ev| {
        let (g, tx) = (g.clone(), tx.clone());
        async move {
            let r = g.send_status_update("busy", json!({"currentTask": ev.data["id"], "progress": 0})).await;
            let _ = tx.send((ev.data, r)).await;
        }
    });
    gw.send_status_update("idle", Value::Null).await?;
    node.publish(&format!("agent:{agent}"), "task:assigned", json!({"id": "t1"})).await?;
    let (task, status) = tokio::time::timeout(T, rx.recv()).await?.context("handler never ran")?;
    assert_eq!(task["id"], "t1");
    status?;
    gw.close().await;
    node.stop().await
}

// ------------------------------------------------------------------ needs server history

/// Publishes `n` numbered events on `channel` through `node`'s HTTP API, one every
/// `every`; returns how many were accepted.
fn publisher(url: String, channel: &'static str, n: u32, every: Duration) -> JoinHandle<anyhow::Result<u32>> {
    tokio::spawn(async move {
        for i in 0..n {
            let (status, body) = post(&url, json!({"channel": channel, "event": "tick", "data": {"n": i}})).await?;
            anyhow::ensure!(status == 202, "publish {i}: {status} {body}");
            tokio::time::sleep(every).await;
        }
        Ok(n)
    })
}

/// Reads `n` numbered events and asserts they are exactly 0..n, in order.
async fn exactly_once_in_order(sub: &mut gateway_client::Subscription, n: u32) -> anyhow::Result<()> {
    for i in 0..n {
        let ev = next_app(sub).await.with_context(|| format!("event {i} lost"))?;
        assert_eq!(ev.data["n"], i, "expected event {i}, got {ev:?}");
    }
    assert!(tokio::time::timeout(Duration::from_millis(500), next_app(sub)).await.is_err(), "a duplicate arrived");
    Ok(())
}

#[tokio::test]
async fn nothing_is_lost_across_a_node_restart_with_recover() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let redis = RedisServer::start().await?;
    let a = TestNode::start(cluster_config(&nats, &redis)).await?;
    let b = TestNode::start(cluster_config(&nats, &redis)).await?;
    let addr = a.addr;
    let gw = quick(a.ws("")).token(token("u1", &["p1"])).start()?;
    let first = connected_node(&gw).await?;
    let mut sub = gw.subscribe("project:p1").await?;
    let mut notices = gw.notices();
    let feed = publisher(b.http("/api/publish"), "project:p1", 60, Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.stop().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a = start_on(cluster_config(&nats, &redis), addr).await?;
    reconnected_away_from(&gw, &first).await?;
    assert!(recovered(&mut notices, "project:p1").await?, "the server could not recover");
    assert_eq!(tokio::time::timeout(T, feed).await???, 60);
    exactly_once_in_order(&mut sub, 60).await?;
    gw.close().await;
    a.stop().await?;
    b.stop().await
}

#[tokio::test]
async fn nothing_is_lost_across_kill9_with_recover() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let redis = RedisServer::start().await?;
    let mut a =
        ProcessNode::start(&[("GATEWAY_NATS_URL", nats.url.clone()), ("GATEWAY_REDIS_URL", redis.url.clone())]).await?;
    let b = TestNode::start(cluster_config(&nats, &redis)).await?;
    let relay = Relay::start(a.addr).await?;
    let (agent, key) = AGENT_KEYS[0];
    let gw = quick(relay.ws()).api_key(key).start()?;
    connected_node(&gw).await?;
    let mut project = gw.subscribe("project:p1").await?;
    // The agent's own channel is auto-joined: its task:assigned must survive too.
    let mut tasks = gw.subscribe(&format!("agent:{agent}")).await?;
    let mut notices = gw.notices();
    let feed = publisher(b.http("/api/publish"), "project:p1", 60, Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.switch(b.addr);
    a.kill9().await?;
    b.publish(&format!("agent:{agent}"), "task:assigned", json!({"n": 0})).await?;
    reconnected_away_from(&gw, &a.node_id).await?;
    assert!(recovered(&mut notices, "project:p1").await?);
    assert_eq!(tokio::time::timeout(T, feed).await???, 60);
    exactly_once_in_order(&mut project, 60).await?;
    exactly_once_in_order(&mut tasks, 1).await?;
    gw.close().await;
    b.stop().await
}
