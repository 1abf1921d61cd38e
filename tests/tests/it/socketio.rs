//! Socket.IO (contract §11) at the packet level, for the failure paths a real client
//! never takes: Engine.IO protocol refusals (version, transport, unknown session,
//! overlapping polls, oversized bodies), malformed and binary Socket.IO packets, the
//! namespace limit, the auth timeout, and cleanup when a polling client vanishes. The
//! behaviours a `socket.io-client` user sees are tested with that package in
//! `tests/socketio/`.

use std::time::Duration;

use anyhow::{Context, ensure};
use futures_util::{SinkExt, StreamExt};
use gateway_tests::node::{TestNode, WAIT, eventually, test_config, user_token};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// A long-polling Engine.IO client speaking raw packets.
struct Polling {
    http: reqwest::Client,
    base: String,
    sid: String,
}

impl Polling {
    async fn open(node: &TestNode) -> anyhow::Result<Polling> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(40)).build()?;
        let base = node.http("/socket.io/?EIO=4&transport=polling");
        let open = http.get(&base).send().await?.text().await?;
        let v: Value = serde_json::from_str(open.strip_prefix('0').context("open packet")?)?;
        let sid = v["sid"].as_str().context("sid")?.to_owned();
        Ok(Polling { http, base, sid })
    }

    fn url(&self) -> String {
        format!("{}&sid={}", self.base, self.sid)
    }

    async fn post(&self, body: &str) -> anyhow::Result<reqwest::StatusCode> {
        Ok(self.http.post(self.url()).body(body.to_owned()).send().await?.status())
    }

    /// The next poll's packets.
    async fn poll(&self) -> anyhow::Result<Vec<String>> {
        let text = tokio::time::timeout(WAIT, self.http.get(self.url()).send()).await??.text().await?;
        Ok(text.split('\x1e').map(str::to_owned).collect())
    }

    /// Polls until a packet starting with `prefix` comes.
    async fn until(&self, prefix: &str) -> anyhow::Result<String> {
        for _ in 0..10 {
            if let Some(p) = self.poll().await?.into_iter().find(|p| p.starts_with(prefix)) {
                return Ok(p);
            }
        }
        anyhow::bail!("no packet starting with {prefix}")
    }
}

#[tokio::test]
async fn engine_io_refusals_are_400_with_the_reference_codes() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let get = |q: &str| reqwest::get(node.http(&format!("/socket.io/{q}")));
    for (q, code) in [
        ("?EIO=3&transport=polling", 5),
        ("?EIO=4&transport=carrier-pigeon", 0),
        ("?EIO=4&transport=polling&sid=nope", 1),
    ] {
        let r = get(q).await?;
        ensure!(r.status() == 400, "{q}: {}", r.status());
        let body: Value = r.json().await?;
        ensure!(body["code"] == code, "{q}: {body}");
    }
    // A handshake is a GET.
    let r = reqwest::Client::new().post(node.http("/socket.io/?EIO=4&transport=polling")).send().await?;
    ensure!(r.status() == 400, "{}", r.status());
    Ok(())
}

#[tokio::test]
async fn a_second_waiting_poll_ends_the_session() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let p = Polling::open(&node).await?;
    let first = tokio::spawn({
        let (http, url) = (p.http.clone(), p.url());
        async move { http.get(url).send().await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = p.http.get(p.url()).send().await?.status();
    let first = tokio::time::timeout(WAIT, first).await???;
    ensure!(first == 400 && second == 400, "{first} {second}");
    let gone = p.http.get(p.url()).send().await?;
    ensure!(gone.status() == 400, "{}", gone.status());
    Ok(())
}

#[tokio::test]
async fn oversized_bodies_and_malformed_packets_are_refused_without_harm() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.limits.max_protocol_errors = 3;
    let node = TestNode::start(cfg).await?;
    let p = Polling::open(&node).await?;
    let big = "4".repeat(node.cfg.limits.max_frame_bytes + 1);
    ensure!(p.post(&big).await? == 413, "oversized body");
    // Binary packets are not supported but do not count as malformed.
    let token = user_token("u1", &["p1"], &[], Duration::from_secs(300));
    ensure!(p.post(&format!("40/portal,{{\"token\":\"{token}\"}}")).await? == 200);
    p.until("40/portal,").await?;
    ensure!(p.post("451-/portal,[\"x\",{\"_placeholder\":true,\"num\":0}]\x1ebAQID").await? == 200);
    let v = p.until("42/portal,[\"validation_error\"").await?;
    ensure!(v.contains("binary"), "{v}");
    // Two malformed packets: still connected. The third ends the session.
    ensure!(p.post("x\x1e42/portal,[1]").await? == 200);
    ensure!(p.post("42/portal,7[\"ping_upstream\"]").await? == 200);
    let answer = p.until("43/portal,7").await?;
    ensure!(answer.starts_with("43/portal,7[{"), "still answered: {answer}");
    ensure!(p.post("9").await? == 200);
    let last = p.poll().await?;
    ensure!(last.iter().any(|a| a == "1"), "closed: {last:?}");
    // The node is unharmed and holds nothing of it.
    eventually(WAIT, || async {
        let h = node.health().await.ok()?;
        (h["websocket"]["connections"] == 0 && h["socketio"]["polling"] == 0).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn namespaces_beyond_the_limit_and_unknown_ones_are_refused() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.socketio.max_namespaces = 2;
    let node = TestNode::start(cfg).await?;
    let p = Polling::open(&node).await?;
    let token = user_token("u1", &["*"], &[], Duration::from_secs(300));
    ensure!(p.post("40/nowhere,").await? == 200);
    let e = p.until("44/nowhere,").await?;
    ensure!(e.contains("\"code\":\"bad_request\""), "{e}");
    for ns in ["/portal", "/project/a", "/project/b"] {
        ensure!(p.post(&format!("40{ns},{{\"token\":\"{token}\"}}")).await? == 200);
    }
    let e = p.until("44/project/b,").await?;
    ensure!(e.contains("limit_exceeded"), "{e}");
    Ok(())
}

#[tokio::test]
async fn a_socket_that_never_authenticates_is_told_and_dropped() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.auth.auth_timeout_ms = 300;
    let node = TestNode::start(cfg).await?;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/socket.io/?EIO=4&transport=websocket", node.addr)).await?;
    let open = tokio::time::timeout(WAIT, ws.next()).await?.context("open")??;
    ensure!(open.to_text()?.starts_with("0{"), "{open:?}");
    ws.send(Message::text("40/monitoring,")).await?;
    let mut seen = Vec::new();
    while !seen.iter().any(|t: &String| t == "41/monitoring,") {
        let m = tokio::time::timeout(WAIT, ws.next()).await?.context("closed")??;
        seen.push(m.to_text()?.to_owned());
    }
    ensure!(seen[0].starts_with("40/monitoring,{\"sid\""), "{seen:?}");
    ensure!(seen.iter().any(|t| t.contains("authentication_failed")), "{seen:?}");
    Ok(())
}

#[tokio::test]
async fn a_polling_client_that_vanishes_is_reaped_with_its_sockets() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.socketio.ping_interval_ms = 200;
    cfg.socketio.ping_timeout_ms = 200;
    let node = TestNode::start(cfg).await?;
    let p = Polling::open(&node).await?;
    let token = user_token("u1", &["p1"], &[], Duration::from_secs(300));
    ensure!(p.post(&format!("40/project/p1,{{\"token\":\"{token}\"}}")).await? == 200);
    p.until("40/project/p1,").await?;
    let h = node.health().await?;
    ensure!(h["websocket"]["connections"] == 1 && h["socketio"]["polling"] == 1, "{h}");
    // It stops polling: gone after a ping interval and timeout.
    eventually(Duration::from_secs(5), || async {
        let h = node.health().await.ok()?;
        let w = &h["websocket"];
        (w["connections"] == 0 && w["subscriptions"] == 0 && h["socketio"]["polling"] == 0).then_some(())
    })
    .await?;
    Ok(())
}
