//! Connection lifecycle (issue 2 §5, §7): the graceful drain (`/ready` 503, upgrades
//! refused, `disconnecting{shutdown}` then 1001 for everyone), no leaks after many
//! connect/subscribe/disconnect cycles, and the heartbeat closing a dead peer.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{StreamExt, stream};
use gateway_client::{Client, Connect, Received};
use gateway_protocol::{ClientFrame, Encoding, ServerFrame};
use gateway_tests::node::{
    AGENT_KEYS, TestNode, WAIT, channel_token, connected, eventually, refusal, response, subscribe, test_config,
    user_token,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LONG: Duration = Duration::from_secs(300);

/// Waits for `disconnecting` and the close; returns (reason, reconnect, close code).
async fn shutdown_notice(c: &mut Client) -> anyhow::Result<(Value, Value, Option<u16>)> {
    let (reason, reconnect) = c
        .recv_until(WAIT, |r| match r {
            Received::Frame(ServerFrame::Disconnecting { reason, reconnect }) => {
                Some((json!(reason), json!(reconnect)))
            }
            Received::Flat(v) if v["type"] == "disconnecting" => {
                Some((v["payload"]["reason"].clone(), v["payload"]["reconnect"].clone()))
            }
            _ => None,
        })
        .await?;
    Ok((reason, reconnect, c.closed(WAIT).await?))
}

#[tokio::test]
async fn graceful_shutdown_drains_everyone_with_1001() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.drain.delay_ms = 1_000;
    cfg.drain.period_ms = 200;
    let mut node = TestNode::start(cfg).await?;
    let token = user_token("u1", &["p1"], &[], LONG);
    let mut clients = Vec::new();
    for c in [
        Connect::new(node.ws("")).bearer(&token),
        Connect::new(node.ws("")).bearer(&token).encoding(Encoding::MsgPack),
        Connect::new(node.ws("?format=flat")).header("X-API-Key", AGENT_KEYS[0].1).format(Encoding::Flat),
        Connect::new(node.ws("")).bearer(&user_token("u2", &[], &[], LONG)),
    ] {
        let mut c = Client::connect(c).await?;
        c.recv_timeout(WAIT).await?; // connected
        clients.push(c);
    }
    // Still waiting to authenticate: also told.
    let mut anon = Client::connect(Connect::new(node.ws(""))).await?;
    let ready = reqwest::get(node.http("/ready")).await?;
    assert_eq!(ready.status().as_u16(), 200);

    node.signal_stop();
    let http = node.http("/ready");
    let body = eventually(WAIT, || {
        let http = http.clone();
        async move {
            let r = reqwest::get(&http).await.ok()?;
            (r.status().as_u16() == 503).then_some(())?;
            r.json::<Value>().await.ok()
        }
    })
    .await?;
    assert_eq!((&body["ready"], &body["reason"]), (&json!(false), &json!("draining")), "{body}");
    let h = node.health().await?;
    assert_eq!(h["websocket"]["status"], "draining", "{h}");
    // New upgrades are refused while draining.
    let (status, body) = refusal(Client::connect(Connect::new(node.ws("")).bearer(&token)).await)?;
    assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")), "{body}");
    // Everyone is told, then closed with 1001.
    for (i, c) in clients.iter_mut().enumerate() {
        let got = shutdown_notice(c).await.with_context(|| format!("client {i}"))?;
        assert_eq!(got, (json!("shutdown"), json!(true), Some(1001)), "client {i}");
    }
    let got = shutdown_notice(&mut anon).await.context("unauthenticated client")?;
    assert_eq!(got, (json!("shutdown"), json!(true), Some(1001)));
    node.stop().await
}

#[tokio::test]
async fn shutdown_with_no_connections_is_quick() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.drain.delay_ms = 10_000;
    cfg.drain.period_ms = 10_000;
    cfg.drain.deadline_ms = 30_000;
    let node = TestNode::start(cfg).await?;
    let began = Instant::now();
    node.stop().await?;
    assert!(began.elapsed() < Duration::from_secs(3), "took {:?}", began.elapsed());
    Ok(())
}

/// One connect/subscribe/disconnect cycle with some variety of carriers and endings.
async fn cycle(node: &TestNode, i: usize) -> anyhow::Result<()> {
    let sub = format!("u{}", i % 20);
    let token = user_token(&sub, &["p1"], &[], LONG);
    // Every fifth authenticates in band.
    let mut c = match i % 5 {
        0 => {
            let mut c = Client::connect(Connect::new(node.ws(""))).await?;
            c.send(&ClientFrame::Authenticate { token }).await?;
            c
        }
        _ => Client::connect(Connect::new(node.ws("?subscribe=broadcast:all")).bearer(&token)).await?,
    };
    connected(&mut c).await?;
    let session = format!("session:s{}", i % 7);
    let ct = channel_token(&session, &sub);
    let r = subscribe(&mut c, "s", &["project:p1", &session], Some(&ct)).await?;
    if r["subscribed"].as_array().map(Vec::len) != Some(2) {
        bail!("cycle {i}: {r}");
    }
    match i % 3 {
        0 => c.close().await?,
        1 => drop(c),
        _ => {
            c.send(&ClientFrame::Unsubscribe { id: Some("u".into()), channels: vec![session] }).await?;
            response(&mut c, "u").await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
            c.close().await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_leak_after_1000_cycles() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let began = Instant::now();
    let failures: Vec<String> = stream::iter(0..1000)
        .map(|i| {
            let node = &node;
            async move { cycle(node, i).await.map_err(|e| format!("cycle {i}: {e}")) }
        })
        .buffer_unordered(20)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    assert!(failures.is_empty(), "{} failures, first: {:?}", failures.len(), failures.first());
    let empty = eventually(Duration::from_secs(10), || async {
        let h = node.health().await.ok()?;
        let ws = &h["websocket"];
        let zero = ["connections", "connectedUsers", "connectedAgents", "channels", "subscriptions", "trackedIps"]
            .iter()
            .all(|k| ws[k] == 0);
        zero.then_some(h)
    })
    .await;
    let h = node.health().await?;
    empty.with_context(|| format!("tables not empty: {}", h["websocket"]))?;
    eprintln!("1000 cycles in {:?}", began.elapsed());

    // Presence and connection counts were released too: u0 may open its full 20
    // connections again, and a channel's presence has only who is there now.
    let mut tabs = Vec::new();
    for _ in 0..20 {
        let mut c = node.user("u0", &["p1"]).await?;
        connected(&mut c).await?;
        tabs.push(c);
    }
    let c = &mut tabs[0];
    subscribe(c, "s", &["project:p1"], None).await?;
    c.send(&ClientFrame::Request {
        id: "r".into(),
        method: "presence.stats".into(),
        params: json!({"channel": "project:p1"}),
    })
    .await?;
    let stats = response(c, "r").await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(stats["stats"], json!({"connections": 1, "users": 1, "agents": 0}), "{stats}");
    node.stop().await
}

/// Opens a WebSocket by hand over raw TCP (with a small fixed receive buffer), with a
/// bearer `token` if given; the caller then reads or answers nothing it does not want to.
async fn raw_socket(node: &TestNode, token: Option<&str>) -> anyhow::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut s = socket.connect(node.addr).await?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n",
        node.addr
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(WAIT, s.read_exact(&mut byte)).await??;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    anyhow::ensure!(head.starts_with("HTTP/1.1 101"), "handshake failed: {head}");
    Ok(s)
}

#[tokio::test]
async fn an_unauthenticated_flood_that_never_reads_still_times_out() -> anyhow::Result<()> {
    let mut cfg = test_config();
    // Long enough for the replies to fill the socket buffers and block the server's
    // writes first (that takes well under a second here).
    cfg.auth.auth_timeout_ms = 1_500;
    let node = TestNode::start(cfg).await?;
    let mut s = raw_socket(&node, None).await?;
    // Masked (zero key) text frames `{"type":"ping"}`, far more pongs than the socket
    // buffers hold, and never a read: the server's replies back up.
    let ping: Vec<u8> = [&[0x81u8, 0x80 | 15, 0, 0, 0, 0][..], br#"{"type":"ping"}"#].concat();
    let flood = ping.repeat(400_000);
    let writer = tokio::spawn(async move {
        let _ = s.write_all(&flood).await;
        s
    });
    let idle = eventually(Duration::from_secs(5), || async {
        node.health().await.ok().filter(|h| h["websocket"]["trackedIps"] == 0)
    })
    .await;
    writer.abort();
    idle.context("the unauthenticated socket outlived its auth timeout")?;
    node.stop().await
}

#[tokio::test]
async fn heartbeat_closes_a_peer_that_does_not_answer() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.heartbeat.interval_ms = 200;
    cfg.heartbeat.timeout_ms = 500;
    let node = TestNode::start(cfg).await?;
    let mut live = node.user("live", &[]).await?;
    connected(&mut live).await?;
    let began = Instant::now();
    let _dead = raw_socket(&node, Some(&user_token("dead", &[], &[], LONG))).await?;
    let users = |n: u64| {
        let node = &node;
        async move { node.health().await.ok().filter(|h| h["websocket"]["connectedUsers"] == n) }
    };
    eventually(WAIT, || users(2)).await?;
    // The live client keeps reading (its library answers pings) while the dead one goes.
    let gone = async {
        eventually(WAIT, || users(1)).await?;
        Ok::<_, anyhow::Error>(began.elapsed())
    };
    let reading = async {
        loop {
            match live.recv_timeout(Duration::from_millis(100)).await {
                Err(gateway_client::ClientError::Timeout(_)) => continue,
                other => break other,
            }
        }
    };
    let took = tokio::select! {
        t = gone => t?,
        r = reading => bail!("the live client stopped: {r:?}"),
    };
    // First ping after 200 ms, no pong by 500 ms later.
    assert!(took >= Duration::from_millis(650), "closed after {took:?}");
    let h = node.health().await?;
    assert_eq!(h["websocket"]["connections"], 1, "{h}");
    // The live one survives several more rounds.
    let until = Instant::now() + Duration::from_millis(1_200);
    while Instant::now() < until {
        match live.recv_timeout(Duration::from_millis(100)).await {
            Err(gateway_client::ClientError::Timeout(_)) => {}
            other => bail!("the live client stopped: {other:?}"),
        }
    }
    live.send(&ClientFrame::Ping).await?;
    let r = live.recv_timeout(WAIT).await?;
    assert!(matches!(r, Received::Frame(ServerFrame::Pong { .. })), "{r:?}");
    node.stop().await
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let mut c = node.user("u1", &[]).await?;
    connected(&mut c).await?;
    c.send_close(1000, "bye").await?;
    let r = c.recv_timeout(WAIT).await?;
    assert_eq!(r.close_code(), Some(1000), "{r:?}");
    // Also while still waiting to authenticate.
    let mut anon = Client::connect(Connect::new(node.ws(""))).await?;
    anon.send_close(4100, "changed my mind").await?;
    let r = anon.recv_timeout(WAIT).await?;
    assert_eq!(r.close_code(), Some(4100), "{r:?}");
    eventually(WAIT, || async { node.health().await.ok().filter(|h| h["websocket"]["connections"] == 0) }).await?;
    node.stop().await
}

#[tokio::test]
async fn admin_disconnect_closes_a_principal_with_4010() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let (mut tab1, mut tab2, mut other) =
        (node.user("u1", &[]).await?, node.user("u1", &[]).await?, node.user("u2", &[]).await?);
    for c in [&mut tab1, &mut tab2, &mut other] {
        connected(c).await?;
    }
    let http = reqwest::Client::new();
    let url = node.http("/api/disconnect");
    let body = json!({"kind": "user", "id": "u1", "reason": "kicked"});
    let r = http.post(&url).json(&body).send().await?;
    assert_eq!(r.status().as_u16(), 401);
    let r = http.post(&url).bearer_auth(gateway_tests::node::ADMIN_KEY).json(&json!({"kind": "robot"})).send().await?;
    assert_eq!(r.status().as_u16(), 400);
    let (status, _) = gateway_tests::node::post(&url, body).await?;
    assert_eq!(status, 202);
    for (i, tab) in [&mut tab1, &mut tab2].into_iter().enumerate() {
        let got = tab
            .recv_until(WAIT, |r| match r {
                Received::Frame(ServerFrame::Disconnecting { reason, reconnect }) => Some((json!(reason), *reconnect)),
                _ => None,
            })
            .await?;
        assert_eq!(got, (json!("kicked"), false), "tab {i}");
        assert_eq!(tab.closed(WAIT).await?, Some(4010), "tab {i}");
    }
    other.send(&ClientFrame::Ping).await?;
    let r = other.recv_timeout(WAIT).await?;
    assert!(matches!(r, Received::Frame(ServerFrame::Pong { .. })), "{r:?}");
    node.stop().await
}

#[tokio::test]
async fn metrics_use_gateway_names() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let mut c = node.user("u1", &[]).await?;
    connected(&mut c).await?;
    node.publish("user:u1", "e", json!(1)).await?;
    c.recv_timeout(WAIT).await?;
    let r = reqwest::get(node.http("/metrics")).await?;
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await?;
    for name in [
        "gateway_connections",
        "gateway_handshakes_total",
        "gateway_frames_out_total",
        "gateway_deliveries_total",
        "gateway_tasks",
        "gateway_runtime_tasks",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing from /metrics");
    }
    node.stop().await
}
