//! Limits (issue 2 §5): the per-connection rate limit (`rate_limited`, then 4008), the
//! bounded outbound queue (a slow consumer is closed 4009 while the others get every
//! event), per-agent, per-user, per-IP and per-node connection limits.

use std::time::Duration;

use gateway_client::{Client, ClientError, Connect, Received};
use gateway_protocol::{ClientFrame, DisconnectReason, ErrorCode, ServerFrame};
use gateway_tests::node::{
    AGENT_KEYS, TestNode, WAIT, connected, eventually, next_error, refusal, subscribe, test_config, user_token,
};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(300);

#[tokio::test]
async fn rate_limit_then_close_4008() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.rate.per_second = 2;
    cfg.rate.burst = 20;
    cfg.rate.per_minute = 1_000;
    cfg.rate.strikes_to_close = 5;
    let node = TestNode::start(cfg).await?;
    let mut c = node.user("u1", &[]).await?;
    connected(&mut c).await?;
    // A burst of 21 frames: 20 answered, the 21st refused with a retry hint.
    for _ in 0..21 {
        c.send(&ClientFrame::Ping).await?;
    }
    let mut pongs = 0;
    let limited = loop {
        match c.recv_timeout(WAIT).await? {
            Received::Frame(ServerFrame::Pong { .. }) => pongs += 1,
            Received::Frame(ServerFrame::Error { error }) => break error,
            other => anyhow::bail!("unexpected {other:?}"),
        }
    };
    assert_eq!(pongs, 20);
    assert_eq!(limited.code, ErrorCode::RateLimited, "{limited:?}");
    assert!(limited.retry_after_ms.is_some_and(|ms| ms > 0 && ms <= 500), "{limited:?}");
    // A frame with an id is refused on that id.
    c.send(&ClientFrame::Request { id: "r1".into(), method: "channels.list".into(), params: Value::Null }).await?;
    let r = gateway_tests::node::response(&mut c, "r1").await?;
    assert_eq!(r.map_err(|e| e.code), Err(ErrorCode::RateLimited));
    // Keeping it up closes the connection.
    for _ in 0..10 {
        if c.send(&ClientFrame::Ping).await.is_err() {
            break;
        }
    }
    let notice = c
        .recv_until(WAIT, |r| match r {
            Received::Frame(ServerFrame::Disconnecting { reason, .. }) => Some(*reason),
            _ => None,
        })
        .await?;
    assert_eq!(notice, DisconnectReason::RateLimited);
    assert_eq!(c.closed(WAIT).await?, Some(4008));
    node.stop().await
}

#[tokio::test]
async fn rate_limit_recovers_after_a_pause() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.rate.per_second = 20;
    cfg.rate.burst = 5;
    let node = TestNode::start(cfg).await?;
    let mut c = node.user("u1", &[]).await?;
    connected(&mut c).await?;
    for _ in 0..6 {
        c.send(&ClientFrame::Ping).await?;
    }
    let e = next_error(&mut c).await?;
    let wait = Duration::from_millis(e.retry_after_ms.unwrap_or(1000));
    tokio::time::sleep(wait + Duration::from_millis(20)).await; // the server's own hint
    c.send(&ClientFrame::Ping).await?;
    c.recv_until(WAIT, |r| matches!(r, Received::Frame(ServerFrame::Pong { .. })).then_some(())).await?;
    node.stop().await
}

#[tokio::test]
async fn slow_consumer_is_closed_4009_and_others_get_everything() -> anyhow::Result<()> {
    const N: u64 = 300;
    let mut cfg = test_config();
    cfg.limits.outbound_queue_frames = 64;
    cfg.limits.outbound_queue_bytes = 256 * 1024;
    let node = TestNode::start(cfg).await?;
    let token = user_token("slow", &[], &[], LONG);
    // A small fixed receive buffer, so the backlog reaches the server's queue quickly.
    let mut slow = Client::connect(Connect::new(node.ws("")).bearer(&token).recv_buffer(16 * 1024)).await?;
    connected(&mut slow).await?;
    subscribe(&mut slow, "s", &["broadcast:firehose"], None).await?;
    let mut fast = node.user("fast", &[]).await?;
    connected(&mut fast).await?;
    subscribe(&mut fast, "s", &["broadcast:firehose"], None).await?;

    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while (seqs.len() as u64) < N {
            let r = fast.recv_timeout(Duration::from_secs(20)).await?;
            match r {
                Received::Frame(ServerFrame::Event(e)) => seqs.push(e.data["seq"].as_u64().unwrap_or(u64::MAX)),
                other => anyhow::bail!("fast consumer got {other:?} after {} events", seqs.len()),
            }
        }
        Ok::<_, anyhow::Error>((seqs, fast))
    });
    // ~10 MB in all: more than the socket buffers and the slow client's queue can hold.
    let pad = "x".repeat(32 * 1024);
    for seq in 0..N {
        let (status, body) = node.publish("broadcast:firehose", "tick", json!({"seq": seq, "pad": pad})).await?;
        assert_eq!(status, 202, "{body}");
    }
    let (seqs, mut fast) = tokio::time::timeout(Duration::from_secs(30), reader).await???;
    assert_eq!(seqs, (0..N).collect::<Vec<_>>(), "the fast consumer lost or reordered events");
    // The slow one reads again: what was buffered, then the 4009 close.
    assert_eq!(slow.closed(Duration::from_secs(10)).await?, Some(4009));
    // The fast one is still connected and served.
    node.publish("broadcast:firehose", "after", json!({})).await?;
    let r = fast.recv_timeout(WAIT).await?;
    assert!(matches!(&r, Received::Frame(ServerFrame::Event(e)) if e.event == "after"), "{r:?}");
    eventually(WAIT, || async { node.health().await.ok().filter(|h| h["websocket"]["connections"] == 1) }).await?;
    node.stop().await
}

/// Connects agent `a1` by `X-API-Key`.
async fn agent_a1(node: &TestNode) -> Result<Client, ClientError> {
    Client::connect(Connect::new(node.ws("")).header("X-API-Key", AGENT_KEYS[0].1)).await
}

#[tokio::test]
async fn per_agent_limit_is_5() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let mut open = Vec::new();
    for i in 0..5 {
        let mut c = agent_a1(&node).await.map_err(|e| anyhow::anyhow!("connection {}: {e}", i + 1))?;
        connected(&mut c).await?;
        open.push(c);
    }
    let (status, body) = refusal(agent_a1(&node).await)?;
    assert_eq!((status, body["code"].as_str()), (429, Some("limit_exceeded")), "{body}");
    // In band, the 6th is refused too, and closed 4004.
    let mut anon = Client::connect(Connect::new(node.ws(""))).await?;
    anon.send(&ClientFrame::Authenticate { token: AGENT_KEYS[0].1.into() }).await?;
    assert_eq!(next_error(&mut anon).await?.code, ErrorCode::LimitExceeded);
    assert_eq!(anon.closed(WAIT).await?, Some(4004));
    // Another agent is not affected.
    let mut a2 = Client::connect(Connect::new(node.ws("")).header("X-API-Key", AGENT_KEYS[1].1)).await?;
    connected(&mut a2).await?;
    // Closing one frees a slot.
    if let Some(c) = open.pop() {
        c.close().await?;
    }
    let mut sixth = eventually(WAIT, || async { agent_a1(&node).await.ok() }).await?;
    connected(&mut sixth).await?;
    let (status, _) = refusal(agent_a1(&node).await)?;
    assert_eq!(status, 429);
    node.stop().await
}

#[tokio::test]
async fn per_user_per_ip_and_per_node_limits() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.limits.per_user = 2;
    let node = TestNode::start(cfg).await?;
    let (_a, _b) = (node.user("u1", &[]).await?, node.user("u1", &[]).await?);
    let (status, body) = refusal(node.user("u1", &[]).await)?;
    assert_eq!((status, body["code"].as_str()), (429, Some("limit_exceeded")), "{body}");
    node.stop().await?;

    let mut cfg = test_config();
    cfg.limits.per_ip = 2;
    let node = TestNode::start(cfg).await?;
    let (_a, _b) = (node.user("u1", &[]).await?, node.user("u2", &[]).await?);
    let (status, body) = refusal(node.user("u3", &[]).await)?;
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")), "{body}");
    node.stop().await?;

    let mut cfg = test_config();
    cfg.limits.max_connections = 2;
    let node = TestNode::start(cfg).await?;
    let (mut a, mut b) = (node.user("u1", &[]).await?, node.user("u2", &[]).await?);
    connected(&mut a).await?;
    connected(&mut b).await?;
    let (status, body) = refusal(node.user("u3", &[]).await)?;
    assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")), "{body}");
    b.close().await?;
    eventually(WAIT, || async { node.user("u3", &[]).await.ok() }).await?;
    node.stop().await
}
