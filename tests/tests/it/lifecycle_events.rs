//! Lifecycle events on real NATS and Redis (contract §10): an agent's `agent:status`
//! once per cluster-wide transition (also when two nodes race, and `reason: "lost"` after
//! its node was killed with SIGKILL), the backend hooks `gw.lc.connected` /
//! `gw.lc.disconnected`, and the client's correlation passed upstream as headers that
//! data cannot forge.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use async_nats::Subscriber;
use futures_util::StreamExt;
use gateway::Config;
use gateway_client::{Client, Connect, Received};
use gateway_protocol::{ClientFrame, ClientTimestamp, Encoding, ServerFrame};
use gateway_tests::{
    node::{AGENT_KEYS, ProcessNode, TestNode, connected, test_config, user_token},
    servers::{NatsServer, RedisServer},
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(5);
/// Long enough for a second announcement to show up if there were one.
const QUIET: Duration = Duration::from_millis(700);
const LEASE_MS: u64 = 2_000;
const REFRESH_MS: u64 = 300;

fn clustered(nats: &NatsServer, redis: &RedisServer) -> Config {
    let mut cfg = test_config();
    cfg.nats_url = nats.url.clone();
    cfg.redis_url = redis.url.clone();
    cfg.presence.lease_ms = LEASE_MS;
    cfg.presence.refresh_ms = REFRESH_MS;
    cfg
}

/// A flat dashboard as seed 001 writes it, subscribed to `broadcast:agents`.
async fn dashboard(url: &str) -> anyhow::Result<Client> {
    let t = user_token("dash", &[], &[], Duration::from_secs(300));
    let url = format!("{url}?token={t}&format=flat&subscribe=broadcast:agents");
    let mut c = Client::connect(Connect::new(url).format(Encoding::Flat)).await?;
    c.recv_until(T, |r| matches!(r, Received::Flat(v) if v["type"] == "connected").then_some(())).await?;
    Ok(c)
}

async fn agent(ws: &str, key: &str) -> anyhow::Result<(Client, String)> {
    let mut c = Client::connect(Connect::new(ws).header("X-API-Key", key)).await?;
    let (id, _) = connected(&mut c).await?;
    Ok((c, id))
}

/// Every `agent:status` payload about `agent` a flat dashboard receives within `d`.
async fn statuses(c: &mut Client, agent: &str, d: Duration) -> anyhow::Result<Vec<Value>> {
    let deadline = tokio::time::Instant::now() + d;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_timeout(left).await {
            Ok(Received::Flat(v)) if v["type"] == "agent:status" && v["payload"]["agentId"] == agent => {
                ensure!(v["channel"] == "broadcast:agents", "{v}");
                out.push(v["payload"].clone());
            }
            Ok(Received::Closed(c)) => bail!("dashboard closed: {c:?}"),
            Ok(_) => {}
            Err(gateway_client::ClientError::Timeout(_)) => return Ok(out),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits for the next status about `agent`, then makes sure no other follows.
async fn one_status(c: &mut Client, agent: &str, limit: Duration) -> anyhow::Result<Value> {
    let first = c
        .recv_until(limit, |r| match r {
            Received::Flat(v) if v["type"] == "agent:status" && v["payload"]["agentId"] == agent => {
                Some(v["payload"].clone())
            }
            _ => None,
        })
        .await
        .with_context(|| format!("no agent:status for {agent}"))?;
    let more = statuses(c, agent, QUIET).await?;
    ensure!(more.is_empty(), "more than one status: {first} then {more:?}");
    Ok(first)
}

/// Checks seed 001's payload shape: `{agentId, status, timestamp}` (+ `reason`).
fn check_status(p: &Value, agent: &str, status: &str, reason: Option<&str>) -> anyhow::Result<()> {
    let mut keys: Vec<&str> = p.as_object().context("payload object")?.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let want: &[&str] = if reason.is_some() {
        &["agentId", "reason", "status", "timestamp"]
    } else {
        &["agentId", "status", "timestamp"]
    };
    ensure!(keys == want, "payload keys {keys:?}: {p}");
    ensure!(p["agentId"] == agent && p["status"] == status, "{p}");
    ensure!(p["timestamp"].as_u64().is_some_and(|t| t > 1_700_000_000_000), "{p}");
    ensure!(p.get("reason").and_then(Value::as_str) == reason, "{p}");
    Ok(())
}

/// A hook as a backend sees it: (subject, body, headers `Gw-Principal-Id`, `Gw-Connection`, `Gw-Node`).
type Hook = (String, Value, [Option<String>; 3]);

/// The hooks about `agent` received within `d`.
async fn hooks(sub: &mut Subscriber, agent: &str, want: usize, d: Duration) -> anyhow::Result<Vec<Hook>> {
    let deadline = tokio::time::Instant::now() + d;
    let mut out = Vec::new();
    while out.len() < want {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(Some(msg)) = tokio::time::timeout(left, sub.next()).await else { break };
        let body: Value = serde_json::from_slice(&msg.payload)?;
        if body["id"] != agent {
            continue;
        }
        let h = msg.headers.clone().unwrap_or_default();
        let get = |k: &str| h.get(k).map(|v| v.to_string());
        out.push((msg.subject.to_string(), body, [get("Gw-Principal-Id"), get("Gw-Connection"), get("Gw-Node")]));
    }
    Ok(out)
}

fn check_hook(h: &Hook, subject: &str, conn: &str, node: &str, reason: Option<&str>) -> anyhow::Result<()> {
    let (s, body, [who, hconn, hnode]) = h;
    ensure!(s == subject, "{s} != {subject}: {body}");
    ensure!(body["kind"] == "agent" && body["connection"] == conn && body["node"] == node, "{body}");
    ensure!(body["ts"].as_u64().is_some_and(|t| t > 0), "{body}");
    ensure!(body.get("reason").and_then(Value::as_str) == reason, "{body}");
    ensure!(who.as_deref() == body["id"].as_str() && hconn.as_deref() == Some(conn), "headers of {body}");
    ensure!(hnode.as_deref() == Some(node), "Gw-Node {hnode:?} for {body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_status_once_per_transition_across_nodes_with_hooks() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let redis = RedisServer::start().await?;
    let a = TestNode::start(clustered(&nats, &redis)).await?;
    let b = TestNode::start(clustered(&nats, &redis)).await?;
    let backend = async_nats::connect(&nats.url).await?;
    let mut lc = backend.subscribe("gw.lc.>").await?;
    backend.flush().await?;
    let mut dashes = vec![dashboard(&a.ws("")).await?, dashboard(&b.ws("")).await?];
    let (_, key) = AGENT_KEYS[0];

    // First connection (node a): online, seen on both nodes' dashboards.
    let (first, c1) = agent(&a.ws(""), key).await?;
    for d in &mut dashes {
        check_status(&one_status(d, "a1", T).await?, "a1", "online", None)?;
    }
    // A second connection (node b), then the first closes: no transition, no status.
    let (second, c2) = agent(&b.ws(""), key).await?;
    first.close().await?;
    for d in &mut dashes {
        let none = statuses(d, "a1", QUIET).await?;
        ensure!(none.is_empty(), "status without a transition: {none:?}");
    }
    // The last one closes: offline, once.
    second.close().await?;
    for d in &mut dashes {
        check_status(&one_status(d, "a1", T).await?, "a1", "offline", None)?;
    }
    // Backends saw each connection open and close, with the ids the agent was given.
    let got = hooks(&mut lc, "a1", 4, T).await?;
    ensure!(got.len() == 4, "hooks {got:?}");
    let of = |conn: &str| got.iter().filter(|h| h.1["connection"] == conn).collect::<Vec<_>>();
    let (node_a, node_b) = (a.cfg.node_id.as_str(), b.cfg.node_id.as_str());
    for (conn, node) in [(&c1, node_a), (&c2, node_b)] {
        let hs = of(conn);
        ensure!(hs.len() == 2, "hooks of {conn}: {hs:?}");
        check_hook(hs[0], "gw.lc.connected", conn, node, None)?;
        check_hook(hs[1], "gw.lc.disconnected", conn, node, Some("normal"))?;
    }

    // Two nodes racing for the first connection: one online; and for the last: one offline.
    let (wa, wb) = (a.ws(""), b.ws(""));
    let (x, y) = tokio::join!(agent(&wa, key), agent(&wb, key));
    let ((x, _), (y, _)) = (x?, y?);
    for d in &mut dashes {
        check_status(&one_status(d, "a1", T).await?, "a1", "online", None)?;
    }
    let (cx, cy) = tokio::join!(x.close(), y.close());
    cx?;
    cy?;
    for d in &mut dashes {
        check_status(&one_status(d, "a1", T).await?, "a1", "offline", None)?;
    }
    // Users have connections (hooks) but no status.
    let mut u = a.user("someone", &[]).await?;
    connected(&mut u).await?;
    let got = hooks(&mut lc, "someone", 1, T).await?;
    ensure!(got.len() == 1 && got[0].1["kind"] == "user" && got[0].0 == "gw.lc.connected", "{got:?}");
    ensure!(statuses(&mut dashes[0], "someone", QUIET).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_agents_go_offline_lost_once_and_hooks_report_lost() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let redis = RedisServer::start().await?;
    // Two live nodes: both reap, only one may report.
    let w1 = TestNode::start(clustered(&nats, &redis)).await?;
    let w2 = TestNode::start(clustered(&nats, &redis)).await?;
    let mut victim = ProcessNode::start(&[
        ("GATEWAY_NATS_URL", nats.url.clone()),
        ("GATEWAY_REDIS_URL", redis.url.clone()),
        ("GATEWAY_PRESENCE__LEASE_MS", LEASE_MS.to_string()),
        ("GATEWAY_PRESENCE__REFRESH_MS", REFRESH_MS.to_string()),
    ])
    .await?;
    let backend = async_nats::connect(&nats.url).await?;
    let mut lc = backend.subscribe("gw.lc.>").await?;
    backend.flush().await?;
    let mut dashes = vec![dashboard(&w1.ws("")).await?, dashboard(&w2.ws("")).await?];
    let (_, key) = AGENT_KEYS[1];
    let (_agent, conn) = agent(&victim.ws(""), key).await?;
    for d in &mut dashes {
        check_status(&one_status(d, "a2", T).await?, "a2", "online", None)?;
    }
    let opened = hooks(&mut lc, "a2", 1, T).await?;
    ensure!(opened.len() == 1, "{opened:?}");
    check_hook(&opened[0], "gw.lc.connected", &conn, &victim.node_id, None)?;

    victim.kill9().await?;
    let killed_ms = gateway_protocol::now_ms();
    let limit = Duration::from_millis(LEASE_MS + 4 * REFRESH_MS + 3_000);
    let mut took = None;
    for d in &mut dashes {
        let status = one_status(d, "a2", limit).await?;
        // Measured from the kill to the event (not to the end of the quiet wait).
        let at = status["timestamp"].as_u64().unwrap_or_default();
        took.get_or_insert(at.saturating_sub(killed_ms));
        check_status(&status, "a2", "offline", Some("lost"))?;
    }
    eprintln!("offline (lost) published {took:?} ms after kill -9 (lease {LEASE_MS} ms, refresh {REFRESH_MS} ms)");
    let lost = hooks(&mut lc, "a2", 2, Duration::from_millis(2 * REFRESH_MS + 1_000)).await?;
    ensure!(lost.len() == 1, "lost reported {} times: {lost:?}", lost.len());
    check_hook(&lost[0], "gw.lc.disconnected", &conn, &victim.node_id, Some("lost"))?;
    // The agent is gone: its next connection is online again.
    let (_back, _) = agent(&w1.ws(""), key).await?;
    check_status(&one_status(&mut dashes[1], "a2", T).await?, "a2", "online", None)?;
    Ok(())
}

/// The next upstream message: its body and headers `Gw-Message-Id`, `Gw-Correlation-Id`,
/// `Gw-Client-Ts`, `Gw-Principal-Id`.
async fn next(up: &mut Subscriber) -> anyhow::Result<(Value, [Option<String>; 4])> {
    let msg = tokio::time::timeout(T, up.next()).await?.context("subscription ended")?;
    let h = msg.headers.clone().unwrap_or_default();
    let get = |k: &str| h.get(k).map(|v| v.to_string());
    let headers = ["Gw-Message-Id", "Gw-Correlation-Id", "Gw-Client-Ts", "Gw-Principal-Id"].map(get);
    Ok((serde_json::from_slice(&msg.payload)?, headers))
}

#[tokio::test]
async fn upstream_send_passes_client_correlation_as_headers_that_data_cannot_forge() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let redis = RedisServer::start().await?;
    let node = TestNode::start(clustered(&nats, &redis)).await?;
    let backend = async_nats::connect(&nats.url).await?;
    let mut up = backend.subscribe("gw.up.>").await?;
    backend.flush().await?;
    // Flat, as seed 000's agents send: the fields beside `type`/`payload`.
    let c = Connect::new(node.ws("?format=flat")).header("X-API-Key", AGENT_KEYS[0].1).format(Encoding::Flat);
    let mut flat = Client::connect(c).await?;
    let forged = json!({"Gw-Message-Id": "forged", "Gw-Correlation-Id": "forged", "headers": {"Gw-Client-Ts": "0"}});
    let frame = json!({"type": "task:done", "payload": forged, "messageId": "x1", "correlationId": "c-1",
        "timestamp": 1707163200000u64});
    flat.send_text(&frame.to_string()).await?;
    let (body, h) = next(&mut up).await?;
    ensure!(body == forged, "{body}");
    let want = [Some("x1"), Some("c-1"), Some("1707163200000"), Some("a1")].map(|v| v.map(String::from));
    ensure!(h == want, "headers {h:?}");
    // Without them, the payload's look-alikes set nothing.
    flat.send_text(&json!({"type": "task:done", "payload": forged}).to_string()).await?;
    let (_, h) = next(&mut up).await?;
    ensure!(h == [None, None, None, Some("a1".into())], "headers {h:?}");
    // A value that would start another header line is left out; identity is intact.
    let sneaky = json!({"type": "task:done", "payload": {}, "messageId": "x2\r\nGw-Principal-Id: admin",
        "correlationId": "ok"});
    flat.send_text(&sneaky.to_string()).await?;
    let (_, h) = next(&mut up).await?;
    ensure!(h == [None, Some("ok".into()), None, Some("a1".into())], "headers {h:?}");

    // Canonical: the frame's `id`, and the optional `correlationId` / `timestamp`.
    let (mut canon, _) = agent(&node.ws(""), AGENT_KEYS[1].1).await?;
    canon
        .send(&ClientFrame::Send {
            id: Some("m1".into()),
            event: "status:update".into(),
            data: json!({"s": 1}),
            correlation_id: Some("req-42".into()),
            timestamp: Some(ClientTimestamp::Text("2026-02-05T21:50:00.000Z".into())),
        })
        .await?;
    let (_, h) = next(&mut up).await?;
    let want = [Some("m1"), Some("req-42"), Some("2026-02-05T21:50:00.000Z"), Some("a2")].map(|v| v.map(String::from));
    ensure!(h == want, "headers {h:?}");
    canon.recv_until(T, |r| matches!(r, Received::Frame(ServerFrame::Ack { id }) if id == "m1").then_some(())).await?;
    Ok(())
}
