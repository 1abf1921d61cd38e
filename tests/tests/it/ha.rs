//! High availability of the fabric: nodes on a three-server NATS cluster (history
//! streams with three replicas) keep delivering every history event when the server
//! they are connected to dies; nodes on Redis behind Sentinel keep presence, counts and
//! API keys working after the master dies and a replica is promoted. The pauses are
//! measured and printed (`--no-capture` shows them).

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, ensure};
use async_nats::{HeaderMap, jetstream};
use gateway::{Config, config::SessionPolicy, keys::RedisKeyStore};
use gateway_client::{Client, ClientError, Connect, Received};
use gateway_protocol::{ClientFrame, EventFrame, ServerFrame, StreamPosition};
use gateway_tests::{
    ha::{NatsCluster, RedisSentinels, SENTINEL_MASTER},
    node::{TestNode, connected, eventually, response, subscribe, test_config},
    probe::{conn_entries, presence_entries, wait_ready},
    servers::{NatsServer, RedisServer},
};
use serde_json::json;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(5);

fn base_config() -> Config {
    let mut cfg = test_config();
    // Longer than a failover takes (as in production: 30 s), so leases outlive it.
    cfg.presence.lease_ms = 10_000;
    cfg.presence.refresh_ms = 300;
    cfg.fabric.nats_ping_interval_ms = 300;
    cfg.auth.key_cache_ms = 100;
    cfg.channels.session_policy = SessionPolicy::Authenticated;
    cfg
}

async fn user(node: &TestNode, sub: &str) -> anyhow::Result<Client> {
    let mut c = node.user(sub, &["p1"]).await?;
    connected(&mut c).await?;
    Ok(c)
}

/// Subscribes `ch` and returns the position to recover from.
async fn join(c: &mut Client, ch: &str) -> anyhow::Result<StreamPosition> {
    c.send(&ClientFrame::Subscribe {
        id: Some("j".into()),
        channels: vec![ch.into()],
        token: None,
        recover: BTreeMap::new(),
    })
    .await?;
    let r = response(c, "j").await?.map_err(|e| anyhow::anyhow!("subscribe: {e:?}"))?;
    serde_json::from_value(r["positions"][ch].clone()).context("position")
}

/// A backend that publishes `count` events through JetStream, one every `every`, each
/// retried (same `Nats-Msg-Id`, so stored once) until the cluster acknowledges it: the
/// way a backend that must lose nothing publishes. Returns how many publishes it retried.
fn backend(
    urls: Vec<String>,
    subject: &'static str,
    count: u64,
    every: Duration,
) -> tokio::task::JoinHandle<anyhow::Result<u64>> {
    tokio::spawn(async move {
        let nc = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(1))
            .connect(urls)
            .await?;
        let js = jetstream::new(nc);
        let mut tick = tokio::time::interval(every);
        let mut retried = 0;
        for n in 0..count {
            tick.tick().await;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let mut h = HeaderMap::new();
                h.insert("Nats-Msg-Id", format!("ha-{n}").as_str());
                let body = json!({"event": "e", "data": {"n": n}}).to_string();
                let acked = async { js.publish_with_headers(subject, h, body.into()).await?.await };
                match tokio::time::timeout(Duration::from_secs(2), acked).await {
                    Ok(Ok(_)) => break,
                    _ if Instant::now() >= deadline => anyhow::bail!("event {n} never acknowledged"),
                    _ => {
                        retried += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        Ok(retried)
    })
}

/// Which server of the cluster a test kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// The server the node is connected to, after the history stream's leadership was
    /// moved off it: the node's own failover.
    NodeServer,
    /// The server leading the history stream (the node is moved off it first): the
    /// stream's leader election.
    StreamLeader,
}

/// A node on a three-server cluster with replicated history; a backend publishes 150
/// events (50/s) through JetStream while `victim` is killed. Checks every event arrives
/// once, in order, and returns the longest delivery silence after the kill and how many
/// publishes the backend had to retry.
async fn server_loss(victim: Victim) -> anyhow::Result<(Duration, u64)> {
    let mut cluster = NatsCluster::start(3).await?;
    let redis = RedisServer::start().await?;
    let mut cfg = base_config();
    cfg.nats_url = cluster.urls();
    cfg.redis_url = redis.url.clone();
    cfg.history.replicas = 3;
    let a = TestNode::start(cfg).await?;
    let node_id = a.cfg.node_id.clone();
    let (ch, subject, stream) = ("session:ha", "gw.ev.session.ha", "GW_HISTORY_SESSION");
    let on = eventually(T, || cluster.server_of(&node_id)).await?;
    cluster.lead_elsewhere(stream, on, Duration::from_secs(10)).await?;
    let victim = match victim {
        Victim::NodeServer => on,
        Victim::StreamLeader => {
            let leader = cluster.stream_leader(stream).await.context("no stream leader")?;
            cluster.index_of(&leader).context("leader is none of ours")?
        }
    };
    let mut c = user(&a, "u1").await?;
    join(&mut c, ch).await?;
    let total = 150u64;
    let others: Vec<String> =
        cluster.servers.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, s)| s.url.clone()).collect();
    let feed = backend(others, subject, total, Duration::from_millis(20));
    let reader = tokio::spawn(async move {
        let mut got: Vec<(Instant, EventFrame)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.last().is_none_or(|(_, e)| e.data["n"] != total - 1) {
            let left = deadline.saturating_duration_since(Instant::now());
            match c.recv_timeout(left).await {
                Ok(Received::Frame(ServerFrame::Event(e))) if e.channel.as_str() == ch && e.event == "e" => {
                    got.push((Instant::now(), e))
                }
                Ok(_) => {}
                Err(e) => return (Err(anyhow::Error::from(e)), got),
            }
        }
        (Ok(()), got)
    });
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    cluster.servers[victim].stop().await;
    let killed = Instant::now();
    let retried = tokio::time::timeout(Duration::from_secs(35), feed).await???;
    let (res, got) = tokio::time::timeout(Duration::from_secs(35), reader).await??;
    res.with_context(|| format!("{} events arrived", got.len()))?;
    let ns: Vec<u64> = got.iter().filter_map(|(_, e)| e.data["n"].as_u64()).collect();
    ensure!(ns == (0..total).collect::<Vec<_>>(), "want 0..{total} once in order, got {ns:?}");
    ensure!(got.windows(2).all(|w| w[0].1.offset < w[1].1.offset), "offsets must grow");
    // The longest silence a subscriber saw after the kill.
    let after: Vec<Instant> = got.iter().map(|(t, _)| *t).filter(|t| *t >= killed).collect();
    let stall = std::iter::once(killed).chain(after).collect::<Vec<_>>().windows(2).map(|w| w[1] - w[0]).max();
    if victim == on {
        let moved_to = eventually(T, || cluster.server_of(&node_id)).await?;
        ensure!(moved_to != victim, "the node is still on the killed server");
    }
    Ok((stall.unwrap_or_default(), retried))
}

#[tokio::test]
async fn losing_the_nats_server_a_node_uses_loses_no_history_event() -> anyhow::Result<()> {
    let (stall, retried) = server_loss(Victim::NodeServer).await?;
    eprintln!(
        "nats: the node's server killed (1 of 3, not the stream leader): delivery stalled {} ms at most, \
         all 150 events once in order, {retried} publishes retried",
        stall.as_millis()
    );
    ensure!(stall < Duration::from_secs(2), "delivery stalled {stall:?}");
    Ok(())
}

#[tokio::test]
async fn losing_the_history_stream_leader_loses_no_event() -> anyhow::Result<()> {
    let (stall, retried) = server_loss(Victim::StreamLeader).await?;
    eprintln!(
        "nats: the history stream's leader killed (1 of 3, not the node's server): delivery stalled {} ms at most \
         (the stream's leader election), all 150 events once in order, {retried} publishes retried",
        stall.as_millis()
    );
    ensure!(stall < Duration::from_secs(12), "delivery stalled {stall:?}");
    Ok(())
}

/// Connects an agent with `key`.
async fn agent(node: &TestNode, key: &str) -> Result<Client, ClientError> {
    Client::connect(Connect::new(node.ws("")).header("X-API-Key", key)).await
}

/// `presence.get` through `c`: member ids, sorted.
async fn members(c: &mut Client, channel: &str) -> anyhow::Result<Vec<String>> {
    c.send(&ClientFrame::Request {
        id: "m".into(),
        method: "presence.get".into(),
        params: json!({"channel": channel}),
    })
    .await?;
    let r = response(c, "m").await?.map_err(|e| anyhow::anyhow!("presence.get: {e:?}"))?;
    let mut ids: Vec<String> =
        r["members"].as_array().into_iter().flatten().filter_map(|m| m["id"].as_str().map(String::from)).collect();
    ids.sort();
    Ok(ids)
}

#[tokio::test]
async fn redis_master_failover_keeps_presence_counts_and_api_keys() -> anyhow::Result<()> {
    let mut redis = RedisSentinels::start().await?;
    let nats = NatsServer::start().await?;
    let mut cfg = base_config();
    cfg.nats_url = nats.url.clone();
    cfg.redis_sentinel.nodes = redis.nodes();
    cfg.redis_sentinel.master = SENTINEL_MASTER.into();
    let a = TestNode::start(cfg.clone()).await?;
    let b = TestNode::start(gateway::Config { node_id: format!("{}-b", cfg.node_id), ..cfg.clone() }).await?;
    let keys = RedisKeyStore::connect(&cfg).await?;
    let key = keys.create("robot", &["p1".to_owned()], &[]).await?;
    let mut bot = agent(&a, &key).await?;
    connected(&mut bot).await?;
    let mut watcher = user(&b, "watcher").await?;
    subscribe(&mut watcher, "w", &["project:p1"], None).await?;
    let mut member = user(&a, "u1").await?;
    subscribe(&mut member, "s", &["project:p1"], None).await?;
    // Let the replica catch up (replication is asynchronous: writes of the last moment
    // before a master dies can be lost, which the leases repair but a key would not).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let old = redis.master_port().await?;
    redis.kill_master().await?;
    let killed = Instant::now();
    let promoted = redis.wait_new_master(old, Duration::from_secs(15)).await?;
    let failover = killed.elapsed();
    // Agents are refused while counts cannot be checked; the pause ends with the first
    // admitted agent.
    let mut second = loop {
        match agent(&a, &key).await {
            Ok(c) => break c,
            Err(_) if killed.elapsed() < Duration::from_secs(20) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => return Err(e).context("no agent admitted within 20 s of the failover"),
        }
    };
    let pause = killed.elapsed();
    connected(&mut second).await?;
    let ready_a = wait_ready(a.addr, 200, T).await? + pause;
    let ready_b = wait_ready(b.addr, 200, T).await? + pause;
    eprintln!(
        "redis master killed: sentinels promoted port {promoted} after {} ms; agents admitted again after {} ms; \
         /ready 200 on both nodes by {} ms",
        failover.as_millis(),
        pause.as_millis(),
        ready_a.max(ready_b).as_millis()
    );
    // Presence, counts and keys on the new master.
    let after = Instant::now();
    assert_eq!(members(&mut watcher, "project:p1").await?, ["u1", "watcher"]);
    gateway_tests::probe::until(T, || async {
        let entries = presence_entries(promoted, "project:p1").await.map_err(|e| format!("{e}"))?;
        let robots = conn_entries(promoted, "agent", "robot").await.map_err(|e| format!("{e}"))?;
        let want: BTreeMap<String, i64> = [("user/u1".to_owned(), 1), ("user/watcher".to_owned(), 1)].into();
        if entries == want && robots == 2 { Ok(()) } else { Err(format!("{entries:?}, robot conns {robots}")) }
    })
    .await?;
    // The test's own key-store client reconnects on its own schedule (and a sentinel
    // may close connections made to the promoted server once more): its first command
    // can fail; the pause it sees is part of the measurement.
    let fresh = loop {
        match keys.create("robot2", &["p1".to_owned()], &[]).await {
            Ok(k) => break k,
            Err(_) if after.elapsed() < T => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => return Err(e).context("no key created within 5 s"),
        }
    };
    let keys_back = after.elapsed();
    let mut bot2 = agent(&b, &fresh).await?;
    connected(&mut bot2).await?;
    assert_eq!(keys.revoke(&key).await?.as_deref(), Some("robot"));
    eprintln!(
        "after the failover: presence and counts right at once; a new API key created {} ms later (test's own \
         client) and accepted; the old one revoked",
        keys_back.as_millis()
    );
    Ok(())
}
