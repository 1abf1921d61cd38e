//! History and recovery on the cluster fabric (contract §9): offsets from JetStream, a
//! client resuming on another node, a node `kill -9`'d while events flow, a node's NATS
//! link cut while a backend keeps publishing (the node fills the hole from the store),
//! and a NATS restart on the same store. Real nats-server (JetStream) and redis-server on
//! free ports, several nodes, every wait bounded.

use std::time::Duration;

use anyhow::{Context, ensure};
use gateway::{Config, config::SessionPolicy};
use gateway_client::{Client, Connect, Received};
use gateway_protocol::{EventFrame, ServerFrame, StreamPosition};
use gateway_tests::{
    node::{ProcessNode, TestNode, connected, test_config, user_token},
    relay::Relay,
    servers::{NatsServer, RedisServer},
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(10);

fn clustered(nats_url: &str, redis: &RedisServer) -> Config {
    let mut cfg = test_config();
    cfg.nats_url = nats_url.to_owned();
    cfg.redis_url = redis.url.clone();
    cfg.channels.session_policy = SessionPolicy::Authenticated;
    cfg
}

async fn user(url: String) -> anyhow::Result<Client> {
    let t = user_token("u1", &["p1"], &[], Duration::from_secs(600));
    let mut c = Client::connect(Connect::new(url).bearer(&t)).await?;
    connected(&mut c).await?;
    Ok(c)
}

/// Subscribes `ch` (recovering from `pos`), collecting events that precede the answer.
async fn join(
    c: &mut Client,
    ch: &str,
    pos: Option<&StreamPosition>,
    into: &mut Vec<EventFrame>,
) -> anyhow::Result<Value> {
    gateway_tests::node::join_recovering(c, ch, pos, into, T).await
}

/// A backend publishing `{"event":"e","data":{"n":n}}` on `subject` every `every`,
/// `count` times; returns how many it published.
fn backend(url: String, subject: &'static str, count: u64, every: Duration) -> JoinHandle<anyhow::Result<u64>> {
    tokio::spawn(async move {
        let nc = async_nats::connect(url).await?;
        let mut tick = tokio::time::interval(every);
        for n in 0..count {
            tick.tick().await;
            nc.publish(subject, json!({"event": "e", "data": {"n": n}}).to_string().into()).await?;
        }
        nc.flush().await?;
        Ok(count)
    })
}

/// Reads events of `ch` until one with `n == last` arrived or the connection ends.
async fn collect(c: &mut Client, ch: &str, last: u64, into: &mut Vec<EventFrame>) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_timeout(left).await {
            Ok(Received::Frame(ServerFrame::Event(e))) if e.channel.as_str() == ch && e.event == "e" => {
                let done = e.data["n"] == last;
                into.push(e);
                if done {
                    return Ok(true);
                }
            }
            Ok(Received::Closed(_)) | Err(gateway_client::ClientError::Ws(_)) => return Ok(false),
            Ok(_) => {}
            Err(e) if into.is_empty() => return Err(e.into()),
            Err(_) => return Ok(false),
        }
    }
}

/// Every `n` from 0 to `count - 1` exactly once, in order, with growing offsets.
fn exactly_once_in_order(events: &[EventFrame], count: u64) -> anyhow::Result<()> {
    let ns: Vec<u64> = events.iter().filter_map(|e| e.data["n"].as_u64()).collect();
    let want: Vec<u64> = (0..count).collect();
    if ns != want {
        let missing: Vec<u64> = want.iter().filter(|n| !ns.contains(n)).copied().collect();
        anyhow::bail!(
            "got {} events, {} missing (first {:?}), want 0..{count} once each in order",
            ns.len(),
            missing.len(),
            missing.first()
        );
    }
    ensure!(events.windows(2).all(|w| w[0].offset < w[1].offset), "offsets must grow");
    Ok(())
}

#[tokio::test]
async fn offsets_come_from_jetstream_and_a_client_resumes_on_another_node() -> anyhow::Result<()> {
    let (nats, redis) = (NatsServer::start().await?, RedisServer::start().await?);
    let a = TestNode::start(clustered(&nats.url, &redis)).await?;
    let b = TestNode::start(Config { node_id: format!("{}-b", a.cfg.node_id), ..clustered(&nats.url, &redis) }).await?;
    let mut c = user(a.ws("")).await?;
    let r = join(&mut c, "session:s", None, &mut Vec::new()).await?;
    let start: StreamPosition = serde_json::from_value(r["positions"]["session:s"].clone()).context("positions")?;
    backend(nats.url.clone(), "gw.ev.session.s", 5, Duration::from_millis(5)).await??;
    let mut seen = Vec::new();
    ensure!(collect(&mut c, "session:s", 4, &mut seen).await?, "first five");
    exactly_once_in_order(&seen, 5)?;
    ensure!(seen.iter().all(|e| e.epoch == Some(start.epoch.clone()) && e.offset > Some(start.offset)));
    let last = seen.last().and_then(EventFrame::position).context("position")?;
    c.close().await?;
    // Away: five more, stored by JetStream.
    let more = backend(nats.url.clone(), "gw.ev.session.s", 10, Duration::from_millis(5)).await??;
    let mut c = user(b.ws("")).await?;
    let mut replay = Vec::new();
    let r = join(&mut c, "session:s", Some(&last), &mut replay).await?;
    assert_eq!(r["recovered"]["session:s"], json!(true), "{r}");
    if replay.len() < more as usize {
        ensure!(collect(&mut c, "session:s", more - 1, &mut replay).await?, "the replay");
    }
    exactly_once_in_order(&replay, more)?;
    ensure!(replay[0].offset > Some(last.offset));
    // An unknown epoch is not recovered.
    let mut d = user(b.ws("")).await?;
    let other = StreamPosition { offset: 1, epoch: "other".into() };
    let r = join(&mut d, "session:s", Some(&other), &mut Vec::new()).await?;
    assert_eq!(r["recovered"]["session:s"], json!(false), "{r}");
    b.stop().await?;
    a.stop().await
}

/// The node a client is on is killed while 500 events/s flow; the client reconnects to
/// another node with its last position and gets every event once, in order.
#[tokio::test]
async fn kill_9_under_500_events_per_second_loses_nothing() -> anyhow::Result<()> {
    let (nats, redis) = (NatsServer::start().await?, RedisServer::start().await?);
    let env = [("GATEWAY_NATS_URL", nats.url.clone()), ("GATEWAY_REDIS_URL", redis.url.clone())];
    let mut a = ProcessNode::start(&env).await?;
    let b = TestNode::start(clustered(&nats.url, &redis)).await?;
    let mut c = user(a.ws("")).await?;
    join(&mut c, "project:p1", None, &mut Vec::new()).await?;
    let total = 1_500;
    let feed = backend(nats.url.clone(), "gw.ev.project.p1", total, Duration::from_millis(2));
    let mut got = Vec::new();
    let reader = tokio::spawn(async move {
        let _ = collect(&mut c, "project:p1", total - 1, &mut got).await;
        got
    });
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    a.kill9().await?;
    let mut got = tokio::time::timeout(T, reader).await??;
    ensure!(!got.is_empty(), "events before the kill");
    let last = got.last().and_then(EventFrame::position).context("position")?;
    let mut c = user(b.ws("")).await?;
    let r = join(&mut c, "project:p1", Some(&last), &mut got).await?;
    assert_eq!(r["recovered"]["project:p1"], json!(true), "{r}");
    if got.last().map(|e| e.data["n"].clone()) != Some(json!(total - 1)) {
        ensure!(collect(&mut c, "project:p1", total - 1, &mut got).await?, "all {total} after the resume");
    }
    assert_eq!(tokio::time::timeout(T, feed).await???, total);
    exactly_once_in_order(&got, total)?;
    b.stop().await
}

/// A node's link to NATS is cut for 2 s while a backend keeps publishing: its clients
/// stay connected and, once the link is back, get every event, in order, once.
#[tokio::test]
async fn a_cut_nats_link_is_filled_from_history() -> anyhow::Result<()> {
    let (nats, redis) = (NatsServer::start().await?, RedisServer::start().await?);
    let relay = Relay::start(([127, 0, 0, 1], nats.port).into()).await?;
    let a = TestNode::start(clustered(&relay.url("nats"), &redis)).await?;
    let mut c = user(a.ws("")).await?;
    join(&mut c, "session:cut", None, &mut Vec::new()).await?;
    // 20 events/s: the cut (2 s) and the client's reconnect backoff (up to 2 s) stay well
    // inside the channel's history window (200 events).
    let total = 120;
    let feed = backend(nats.url.clone(), "gw.ev.session.cut", total, Duration::from_millis(50));
    let mut got = Vec::new();
    let reader = tokio::spawn(async move {
        let ok = collect(&mut c, "session:cut", total - 1, &mut got).await;
        (ok, got)
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    relay.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    relay.heal();
    assert_eq!(tokio::time::timeout(T, feed).await???, total);
    let (ok, got) = tokio::time::timeout(T + T, reader).await??;
    let ns: Vec<u64> = got.iter().filter_map(|e| e.data["n"].as_u64()).collect();
    ensure!(ok?, "the client stayed connected and got the last event; got {} events, last n {:?}", ns.len(), ns.last());
    exactly_once_in_order(&got, total)?;
    a.stop().await
}

/// NATS restarts on the same store: positions taken before still recover.
#[tokio::test]
async fn recovery_survives_a_nats_restart() -> anyhow::Result<()> {
    let (mut nats, redis) = (NatsServer::start().await?, RedisServer::start().await?);
    let a = TestNode::start(clustered(&nats.url, &redis)).await?;
    let mut c = user(a.ws("")).await?;
    join(&mut c, "session:r", None, &mut Vec::new()).await?;
    backend(nats.url.clone(), "gw.ev.session.r", 3, Duration::from_millis(5)).await??;
    let mut seen = Vec::new();
    ensure!(collect(&mut c, "session:r", 2, &mut seen).await?);
    let last = seen.last().and_then(EventFrame::position).context("position")?;
    c.close().await?;
    nats.restart().await?;
    // Published after the restart, while the client is away.
    let published = loop {
        match backend(nats.url.clone(), "gw.ev.session.r", 4, Duration::from_millis(5)).await? {
            Ok(n) => break n,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut c = user(a.ws("")).await?;
    let mut replay = Vec::new();
    let r = join(&mut c, "session:r", Some(&last), &mut replay).await?;
    assert_eq!(r["recovered"]["session:r"], json!(true), "{r}");
    if replay.len() < published as usize {
        ensure!(collect(&mut c, "session:r", published - 1, &mut replay).await?);
    }
    exactly_once_in_order(&replay, published)?;
    a.stop().await
}
