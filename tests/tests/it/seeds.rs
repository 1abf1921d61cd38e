//! Seed clients unchanged (contract §12), the gateway's side: the example configs in
//! `deploy/examples/` load; `ws_default_format` picks a path's encoding only when the
//! client names none; `auth.require_credentials` refuses before the upgrade;
//! `channels.auto_join` joins under the usual permissions; `backend_http` carries
//! requests and upstream sends to an HTTP backend with the gateway's headers, in order,
//! bounded in time and concurrency. The seed documents' own client code runs in
//! `tests/seeds/` (Node) against the binary with these configs.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, ensure};
use gateway::{Config, config::SessionPolicy};
use gateway_client::{Client, ClientError, Connect, Received};
use gateway_protocol::{Encoding, ErrorCode, ServerFrame};
use gateway_tests::{
    backend::Backend,
    node::{
        ADMIN_KEY, AGENT_KEYS, SECRET, TestNode, WAIT, connected, next_error, refusal, response, test_config,
        user_token,
    },
};
use serde_json::{Value, json};

fn example(seed: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../deploy/examples/{seed}.toml"))
}

/// A seed's example configuration with the test node's address, secrets and keys.
fn seed_config(seed: &str) -> anyhow::Result<Config> {
    let mut cfg = Config::load(Some(&example(seed))).with_context(|| format!("{seed}.toml"))?;
    let t = test_config();
    (cfg.listen, cfg.node_id, cfg.jwt_secret, cfg.admin_key, cfg.api_keys) =
        (t.listen, t.node_id, SECRET.into(), ADMIN_KEY.into(), t.api_keys);
    (cfg.drain, cfg.limits.per_ip, cfg.limits.pending_per_ip) = (t.drain, t.limits.per_ip, t.limits.pending_per_ip);
    cfg.limits.handshakes_per_ip_per_sec = t.limits.handshakes_per_ip_per_sec;
    Ok(cfg)
}

fn token(sub: &str, projects: &[&str]) -> String {
    user_token(sub, projects, &[], Duration::from_secs(300))
}

/// The first message of a connection, as it came.
async fn hello(c: &mut Client) -> anyhow::Result<Received> {
    Ok(c.recv_timeout(WAIT).await?)
}

/// Waits for the `ack` of `id`, or the error answering it.
async fn acked(c: &mut Client, id: &str) -> anyhow::Result<Result<(), gateway_protocol::ErrorBody>> {
    Ok(c.recv_until(WAIT, |r| match r {
        Received::Frame(ServerFrame::Ack { id: a }) if a == id => Some(Ok(())),
        Received::Frame(ServerFrame::Response { id: a, error: Some(e), .. }) if a == id => Some(Err(e.clone())),
        _ => None,
    })
    .await?)
}

#[tokio::test]
async fn example_configs_load_and_say_what_each_seed_needs() -> anyhow::Result<()> {
    let s0 = seed_config("seed-000")?;
    ensure!(s0.ws_paths == ["/ws"] && s0.default_encoding("/ws") == Encoding::Flat);
    ensure!(s0.backend_http.enabled() && !s0.auth.require_credentials);
    ensure!((s0.heartbeat.interval_ms, s0.heartbeat.timeout_ms, s0.limits.per_agent) == (30_000, 10_000, 5));
    for seed in ["seed-001", "seed-002"] {
        let c = seed_config(seed)?;
        ensure!(c.ws_paths.contains(&"/".to_owned()) && c.default_encoding("/") == Encoding::Flat, "{seed}");
        ensure!(c.default_encoding("/ws") == Encoding::Json, "{seed}");
        ensure!(c.auth.require_credentials && c.channels.auto_join.user == ["broadcast:agents"], "{seed}");
        ensure!(c.listen.port() != 3000 && Config::load(Some(&example(seed)))?.listen.port() == 3000, "{seed}");
    }
    let s3 = seed_config("seed-003")?;
    ensure!(s3.ws_paths == ["/ws"] && s3.default_encoding("/ws") == Encoding::Json);
    ensure!(s3.auth.require_credentials && s3.backend_http.enabled());
    ensure!(s3.channels.session_policy == SessionPolicy::Authenticated);
    Ok(())
}

#[tokio::test]
async fn default_format_follows_the_path_and_the_client_still_wins() -> anyhow::Result<()> {
    let node = TestNode::start(seed_config("seed-001")?).await?;
    let t = token("u1", &[]);
    let bare = format!("ws://{}/", node.addr);
    // No subprotocol, no `?format=`: `/` speaks flat, `/ws` canonical JSON.
    let mut c = Client::connect(Connect::new(&bare).bearer(&t).format(Encoding::Flat)).await?;
    let h = hello(&mut c).await?;
    ensure!(matches!(&h, Received::Flat(v) if v["type"] == "connected" && v["payload"]["userId"] == "u1"), "{h:?}");
    let mut c = Client::connect(Connect::new(node.ws("")).bearer(&t)).await?;
    ensure!(matches!(hello(&mut c).await?, Received::Frame(ServerFrame::Connected { .. })));
    // `?format=` and a subprotocol still win on `/`.
    let mut c = Client::connect(Connect::new(format!("{bare}?format=json")).bearer(&t)).await?;
    ensure!(matches!(hello(&mut c).await?, Received::Frame(ServerFrame::Connected { .. })));
    for e in [Encoding::Json, Encoding::MsgPack] {
        let mut c = Client::connect(Connect::new(&bare).bearer(&t).encoding(e)).await?;
        ensure!(matches!(hello(&mut c).await?, Received::Frame(ServerFrame::Connected { .. })), "{e:?}");
    }
    Ok(())
}

#[tokio::test]
async fn require_credentials_refuses_before_the_upgrade() -> anyhow::Result<()> {
    let node = TestNode::start(seed_config("seed-002")?).await?;
    let (status, body) = refusal(Client::connect(Connect::new(format!("ws://{}/", node.addr))).await)?;
    ensure!(status == 401 && body["code"] == "unauthorized", "{status} {body}");
    let (status, _) = refusal(Client::connect(Connect::new(node.ws(""))).await)?;
    ensure!(status == 401, "every path: {status}");
    let (status, body) = refusal(Client::connect(Connect::new(node.ws("?token=nope"))).await)?;
    ensure!(status == 401 && body["code"] == "unauthorized", "{status} {body}");
    let mut c = Client::connect(Connect::new(node.ws(&format!("?token={}", token("u1", &[]))))).await?;
    connected(&mut c).await?;
    // Without the setting a bare handshake is upgraded and waits for `authenticate`.
    let plain = TestNode::embedded().await?;
    let mut c = Client::connect(Connect::new(plain.ws(""))).await?;
    c.send_text(&json!({"type": "authenticate", "token": token("u1", &[])}).to_string()).await?;
    connected(&mut c).await?;
    Ok(())
}

#[tokio::test]
async fn auto_join_joins_each_kind_under_the_usual_permissions() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.channels.auto_join.user = vec!["broadcast:agents".into(), "project:p1".into()];
    cfg.channels.auto_join.agent = vec!["broadcast:ops".into()];
    let node = TestNode::start(cfg).await?;
    let mut member = node.user("alice", &["p1"]).await?;
    connected(&mut member).await?;
    ensure!(list(&mut member).await? == ["user:alice", "broadcast:agents", "project:p1"]);
    // A user outside p1 is refused that one (an error frame, as for `?subscribe=`).
    let mut outsider = node.user("bob", &[]).await?;
    connected(&mut outsider).await?;
    let e = next_error(&mut outsider).await?;
    ensure!(e.code == ErrorCode::Forbidden && e.message.starts_with("project:p1"), "{e:?}");
    ensure!(list(&mut outsider).await? == ["user:bob", "broadcast:agents"]);
    let mut agent = Client::connect(Connect::new(node.ws("")).header("X-API-Key", AGENT_KEYS[0].1)).await?;
    connected(&mut agent).await?;
    ensure!(list(&mut agent).await? == ["agent:a1", "broadcast:ops"]);
    // The dashboards got the agent's `agent:status` without subscribing.
    for c in [&mut member, &mut outsider] {
        let ev = gateway_tests::node::next_app_event(c).await?;
        ensure!(ev.event == "agent:status" && ev.data["agentId"] == "a1" && ev.data["status"] == "online", "{ev:?}");
    }
    Ok(())
}

/// The connection's channels (`channels.list`).
async fn list(c: &mut Client) -> anyhow::Result<Vec<String>> {
    c.send_text(&json!({"type": "request", "id": "ls", "method": "channels.list"}).to_string()).await?;
    let r = response(c, "ls").await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(serde_json::from_value(r["channels"].clone())?)
}

/// A node on a backend stub, and agent `a1` connected to it (JSON frames) with its
/// connection id.
async fn on_backend(
    backend: &Backend,
    timeout_ms: u64,
    max_concurrency: usize,
) -> anyhow::Result<(TestNode, Client, String)> {
    let mut cfg = test_config();
    cfg.backend_http.url = backend.url.clone();
    cfg.backend_http.token = "backend-secret".into();
    cfg.backend_http.max_concurrency = max_concurrency;
    cfg.fabric.request_timeout_ms = timeout_ms;
    let node = TestNode::start(cfg).await?;
    let mut agent = Client::connect(Connect::new(node.ws("")).header("X-API-Key", AGENT_KEYS[0].1)).await?;
    let (conn, _) = connected(&mut agent).await?;
    Ok((node, agent, conn))
}

async fn request(
    c: &mut Client,
    id: &str,
    method: &str,
    params: Value,
) -> anyhow::Result<Result<Value, gateway_protocol::ErrorBody>> {
    c.send_text(&json!({"type": "request", "id": id, "method": method, "params": params}).to_string()).await?;
    response(c, id).await
}

#[tokio::test]
async fn backend_http_carries_requests_and_sends_with_the_gateways_headers() -> anyhow::Result<()> {
    let backend = Backend::start().await?;
    let (node, mut agent, conn) = on_backend(&backend, 5_000, 64).await?;
    // request → POST /rpc {method, params}; the reply is the result.
    let r = request(&mut agent, "r1", "sessions.create", json!({"projectId": "prj_1", "title": "New Chat"})).await?;
    ensure!(r == Ok(json!({"method": "sessions.create"})), "{r:?}");
    let r = request(&mut agent, "r2", "echo", json!({"x": [1, 2]})).await?;
    ensure!(r == Ok(json!({"x": [1, 2]})), "{r:?}");
    let call = backend.calls().into_iter().find(|c| c.body["method"] == "sessions.create").context("no rpc call")?;
    ensure!(call.path == "/rpc" && call.body["params"] == json!({"projectId": "prj_1", "title": "New Chat"}));
    ensure!(
        call.header("authorization") == "Bearer backend-secret" && call.header("content-type") == "application/json"
    );
    ensure!(call.header("gw-principal-kind") == "agent" && call.header("gw-principal-id") == "a1");
    ensure!(call.header("gw-node") == node.cfg.node_id && call.header("gw-message-id") == "r1");
    ensure!(call.header("gw-connection") == conn);
    // Its error body is the error; non-2xx is `unavailable`.
    let r = request(&mut agent, "r3", "missing", json!({})).await?;
    ensure!(matches!(&r, Err(e) if e.code == ErrorCode::NotFound && e.message == "no such thing"), "{r:?}");
    let r = request(&mut agent, "r4", "fail", json!({})).await?;
    ensure!(matches!(&r, Err(e) if e.code == ErrorCode::Unavailable), "{r:?}");

    // send → POST /up {event, data} with the client's correlation, acked after the 2xx;
    // a burst arrives in the order sent and is acked in that order.
    let frame = json!({"type": "send", "id": "m1", "event": "status:update", "data": {"status": "busy"},
        "correlationId": "c-9", "timestamp": 1707163200000u64});
    agent.send_text(&frame.to_string()).await?;
    ensure!(acked(&mut agent, "m1").await?.is_ok());
    let up = backend.calls().into_iter().find(|c| c.path == "/up").context("no up call")?;
    ensure!(up.body == json!({"event": "status:update", "data": {"status": "busy"}}), "{:?}", up.body);
    ensure!(up.header("gw-message-id") == "m1" && up.header("gw-correlation-id") == "c-9");
    ensure!(up.header("gw-client-ts") == "1707163200000" && up.header("gw-principal-id") == "a1");
    ensure!(up.header("authorization") == "Bearer backend-secret");
    for i in 0..10 {
        let f = json!({"type": "send", "id": format!("b{i}"), "event": "task:progress", "data": {"n": i}});
        agent.send_text(&f.to_string()).await?;
    }
    for i in 0..10 {
        let got = agent
            .recv_until(WAIT, |r| match r {
                Received::Frame(ServerFrame::Ack { id }) if id.starts_with('b') => Some(id.clone()),
                _ => None,
            })
            .await?;
        ensure!(got == format!("b{i}"), "ack {got} out of order");
    }
    let order: Vec<Value> = backend
        .calls()
        .into_iter()
        .filter(|c| c.body["event"] == "task:progress")
        .map(|c| c.body["data"]["n"].clone())
        .collect();
    ensure!(order == (0..10).map(|i| json!(i)).collect::<Vec<_>>(), "{order:?}");
    // A refused send is an error naming it; a slow one does not hold up other frames.
    agent.send_text(&json!({"type": "send", "id": "f1", "event": "fail:me"}).to_string()).await?;
    ensure!(matches!(acked(&mut agent, "f1").await?, Err(e) if e.code == ErrorCode::Unavailable));
    agent.send_text(&json!({"type": "send", "id": "s1", "event": "slow:event"}).to_string()).await?;
    agent.send_text(&json!({"type": "ping"}).to_string()).await?;
    let first = agent
        .recv_until(WAIT, |r| match r {
            Received::Frame(ServerFrame::Pong { .. }) => Some("pong"),
            Received::Frame(ServerFrame::Ack { id }) if id == "s1" => Some("ack"),
            _ => None,
        })
        .await?;
    ensure!(first == "pong", "the slow send held up the ping");
    ensure!(acked(&mut agent, "s1").await?.is_ok());
    // Events still flow through the bus.
    let mut user = node.user("u1", &[]).await?;
    connected(&mut user).await?;
    node.publish("user:u1", "note", json!({"k": 1})).await?;
    let ev = gateway_tests::node::next_app_event(&mut user).await?;
    ensure!(ev.event == "note" && ev.data == json!({"k": 1}));
    Ok(())
}

#[tokio::test]
async fn backend_http_timeouts_and_a_dead_backend() -> anyhow::Result<()> {
    let backend = Backend::start().await?;
    let (_node, mut agent, _) = on_backend(&backend, 300, 64).await?;
    let started = std::time::Instant::now();
    let r = request(&mut agent, "r1", "stall", json!({})).await?;
    ensure!(matches!(&r, Err(e) if e.code == ErrorCode::Timeout), "{r:?}");
    ensure!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    // Nothing listening at the URL: requests and sends are `unavailable`.
    let dead = format!("http://127.0.0.1:{}", gateway_tests::servers::free_port());
    let mut cfg = test_config();
    cfg.backend_http.url = dead;
    let node = TestNode::start(cfg).await?;
    let mut c = Client::connect(Connect::new(node.ws("")).header("X-API-Key", AGENT_KEYS[0].1)).await?;
    connected(&mut c).await?;
    let r = request(&mut c, "r2", "sessions.create", json!({})).await?;
    ensure!(matches!(&r, Err(e) if e.code == ErrorCode::Unavailable), "{r:?}");
    c.send_text(&json!({"type": "send", "id": "m1", "event": "status:update"}).to_string()).await?;
    ensure!(matches!(acked(&mut c, "m1").await?, Err(e) if e.code == ErrorCode::Unavailable));
    Ok(())
}

#[tokio::test]
async fn backend_http_bounds_the_calls_in_flight() -> anyhow::Result<()> {
    let backend = Backend::start().await?;
    let (node, mut a, _) = on_backend(&backend, 5_000, 2).await?;
    let mut b = node.user("u1", &[]).await?;
    connected(&mut b).await?;
    for c in [&mut a, &mut b] {
        for i in 0..3 {
            let f = json!({"type": "request", "id": format!("q{i}"), "method": "slow", "params": {}});
            c.send_text(&f.to_string()).await?;
        }
    }
    for c in [&mut a, &mut b] {
        for i in 0..3 {
            let r = response(c, &format!("q{i}")).await?;
            ensure!(r.is_ok(), "{r:?}");
        }
    }
    ensure!(backend.max_inflight() == 2, "at most 2 at once, saw {}", backend.max_inflight());
    Ok(())
}

#[tokio::test]
async fn without_backend_http_requests_stay_on_the_bus() -> anyhow::Result<()> {
    // The embedded twin answers `unavailable`, as before.
    let node = TestNode::embedded().await?;
    let mut c = node.user("u1", &[]).await?;
    connected(&mut c).await?;
    let r = request(&mut c, "r1", "sessions.create", json!({})).await?;
    ensure!(matches!(&r, Err(e) if e.code == ErrorCode::Unavailable), "{r:?}");
    let e = Client::connect(Connect::new(node.ws("?format=xml"))).await;
    ensure!(matches!(e, Err(ClientError::Refused { status: 400, .. })));
    Ok(())
}
