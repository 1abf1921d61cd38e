//! Cluster faults and control: a node killed with SIGKILL leaves no ghosts after its
//! lease (leave announced once), and revoking an API key with the CLI disconnects the
//! agent on every node.

use std::time::{Duration, Instant};

use anyhow::Context;
use gateway_client::{Client, ClientError, Connect, Received};
use gateway_protocol::{DisconnectReason, ServerFrame};
use gateway_tests::{
    node::{ProcessNode, TestNode, connected, gateway_bin, subscribe, test_config, user_token},
    servers::{NatsServer, RedisServer},
};
use serde_json::json;

const T: Duration = Duration::from_secs(5);
const LEASE_MS: u64 = 2_000;
const REFRESH_MS: u64 = 300;

fn node_config(nats: &NatsServer, redis: &RedisServer) -> gateway::Config {
    let mut cfg = test_config();
    cfg.nats_url = nats.url.clone();
    cfg.redis_url = redis.url.clone();
    cfg.presence.lease_ms = LEASE_MS;
    cfg.presence.refresh_ms = REFRESH_MS;
    cfg
}

/// Waits for a presence event about `who` on a client; returns its name.
async fn presence_event(c: &mut Client, who: &str, limit: Duration) -> anyhow::Result<String> {
    Ok(c.recv_until(limit, |r| match r {
        Received::Frame(ServerFrame::Event(e)) if e.event.starts_with("presence.") && e.data["id"] == who => {
            Some(e.event.to_string())
        }
        _ => None,
    })
    .await?)
}

#[tokio::test]
async fn killed_node_members_leave_within_the_lease_exactly_once() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let redis = RedisServer::start().await?;
    let b = TestNode::start(node_config(&nats, &redis)).await?;
    let c = TestNode::start(node_config(&nats, &redis)).await?;
    let mut victim_node = ProcessNode::start(&[
        ("GATEWAY_NATS_URL", nats.url.clone()),
        ("GATEWAY_REDIS_URL", redis.url.clone()),
        ("GATEWAY_PRESENCE__LEASE_MS", LEASE_MS.to_string()),
        ("GATEWAY_PRESENCE__REFRESH_MS", REFRESH_MS.to_string()),
    ])
    .await?;
    let mut watchers = Vec::new();
    for (i, node) in [&b, &c].into_iter().enumerate() {
        let mut w = node.user(&format!("watcher{i}"), &["p1"]).await?;
        connected(&mut w).await?;
        subscribe(&mut w, "s", &["project:p1"], None).await?;
        watchers.push(w);
    }
    let t = user_token("victim", &["p1"], &[], Duration::from_secs(300));
    let mut victim = Client::connect(Connect::new(victim_node.ws("")).bearer(&t)).await?;
    connected(&mut victim).await?;
    subscribe(&mut victim, "s", &["project:p1"], None).await?;
    for w in &mut watchers {
        assert_eq!(presence_event(w, "victim", T).await?, "presence.join");
    }
    victim_node.kill9().await?;
    let killed = Instant::now();
    let limit = Duration::from_millis(LEASE_MS + 4 * REFRESH_MS + 3_000);
    for w in &mut watchers {
        assert_eq!(presence_event(w, "victim", limit).await.context("no leave")?, "presence.leave");
    }
    let took = killed.elapsed();
    eprintln!("leave observed {} ms after kill -9 (lease {LEASE_MS} ms, refresh {REFRESH_MS} ms)", took.as_millis());
    assert!(took <= limit);
    // Exactly once: no second leave arrives on either watcher.
    for w in &mut watchers {
        let again = presence_event(w, "victim", Duration::from_millis(2 * REFRESH_MS + 500)).await;
        assert!(again.is_err(), "second presence event: {again:?}");
    }
    // And presence no longer lists it.
    let w = &mut watchers[0];
    w.send(&gateway_protocol::ClientFrame::Request {
        id: "g".into(),
        method: "presence.get".into(),
        params: json!({"channel": "project:p1"}),
    })
    .await?;
    let members = gateway_tests::node::response(w, "g").await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert!(!members["members"].to_string().contains("victim"), "{members}");
    Ok(())
}

async fn cli(args: &[&str], nats: &NatsServer, redis: &RedisServer) -> anyhow::Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::process::Command::new(gateway_bin()?)
            .args(args)
            .env_clear()
            .env("GATEWAY_NATS_URL", &nats.url)
            .env("GATEWAY_REDIS_URL", &redis.url)
            .output(),
    )
    .await??;
    anyhow::ensure!(out.status.success(), "gateway {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

#[tokio::test]
async fn apikey_revoke_disconnects_live_sessions_everywhere() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let redis = RedisServer::start().await?;
    let key = cli(&["apikey", "create", "--agent", "robot-7", "--projects", "p1"], &nats, &redis).await?;
    assert!(key.starts_with("gwk_"), "{key}");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(TestNode::start(node_config(&nats, &redis)).await?);
    }
    let mut sessions = Vec::new();
    for n in &nodes {
        let mut s = Client::connect(Connect::new(n.ws("")).header("X-API-Key", &key)).await?;
        let (_, who) = connected(&mut s).await?;
        assert_eq!(who, "robot-7");
        sessions.push(s);
    }
    let said = cli(&["apikey", "revoke", &key], &nats, &redis).await?;
    assert!(said.contains("robot-7"), "{said}");
    for s in &mut sessions {
        let notice = s
            .recv_until(T, |r| match r {
                Received::Frame(ServerFrame::Disconnecting { reason, .. }) => Some(*reason),
                _ => None,
            })
            .await?;
        assert_eq!(notice, DisconnectReason::Revoked);
        assert_eq!(s.closed(T).await?, Some(4010));
    }
    // The key no longer opens a connection on any node (the revocation also cleared caches).
    for n in &nodes {
        match Client::connect(Connect::new(n.ws("")).header("X-API-Key", &key)).await {
            Err(ClientError::Refused { status, .. }) => assert_eq!(status, 401),
            other => panic!("revoked key accepted: {:?}", other.map(|_| ())),
        }
    }
    Ok(())
}

#[tokio::test]
async fn redis_outage_keeps_connections_and_follows_the_admission_policy() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let mut redis = RedisServer::start().await?;
    let node = TestNode::start(node_config(&nats, &redis)).await?;
    let mut before = node.user("early", &["p1"]).await?;
    connected(&mut before).await?;
    redis.stop().await;
    // The fault shows in /ready, /health and metrics.
    gateway_tests::node::eventually(T, || async {
        let r = reqwest::get(node.http("/ready")).await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await?;
    let h = node.health().await?;
    assert_eq!((h["status"].as_str(), h["redis"]["status"].as_str()), (Some("degraded"), Some("disconnected")), "{h}");
    let metrics = reqwest::get(node.http("/metrics")).await?.text().await?;
    assert!(metrics.contains("gateway_fabric_up{component=\"redis\"} 0"), "{metrics}");
    // Users are admitted (fail-open), agents are not (fail-closed: their count is unknown).
    let mut user = node.user("late", &["p1"]).await?;
    connected(&mut user).await?;
    let (_, key) = gateway_tests::node::AGENT_KEYS[0];
    match Client::connect(Connect::new(node.ws("")).header("X-API-Key", key)).await {
        Err(ClientError::Refused { status, body }) => {
            assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")), "{body}")
        }
        other => panic!("agent admitted without a count: {:?}", other.map(|_| ())),
    }
    // The connection made before the outage still works.
    before.send(&gateway_protocol::ClientFrame::Ping).await?;
    before.recv_until(T, |r| matches!(r, Received::Frame(ServerFrame::Pong { .. })).then_some(())).await?;
    redis.restart().await?;
    gateway_tests::node::eventually(Duration::from_secs(10), || async {
        let r = reqwest::get(node.http("/ready")).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await?;
    let mut agent = Client::connect(Connect::new(node.ws("")).header("X-API-Key", key)).await?;
    connected(&mut agent).await?;
    Ok(())
}
