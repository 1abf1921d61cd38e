//! Network faults between one node and the fabric, through a relay per node that can
//! stall (connections kept, nothing forwarded, nothing answered), delay or cut its link
//! while the other nodes keep theirs:
//! - Redis stalled 10 s: the node turns unready, refuses new agents (fail-closed: their
//!   count is unknown) and admits users (fail-open); afterwards presence reconciles
//!   (a join made during the stall is announced late, a leave made during it is
//!   announced by the lease) and Redis holds exactly the live connections;
//! - NATS stalled: the node turns unready, recovers, and a subscriber on a history
//!   channel gets every event once, in order; one that reconnects with `recover` too;
//! - Redis partitioned longer than the lease: the node's members are announced as left
//!   (agents offline, `lost`) and as joined again (online) once it is back, once each,
//!   and the counts are right;
//! - a slow link (150 ms each way to NATS and Redis): the node stays ready and correct.
//!
//! Measured durations are printed (`cargo nextest run … --no-capture` shows them).

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, ensure};
use gateway::{Config, config::SessionPolicy};
use gateway_client::{Client, ClientError, Connect, Received};
use gateway_protocol::{ClientFrame, EventFrame, ServerFrame, StreamPosition};
use gateway_tests::{
    node::{AGENT_KEYS, TestNode, connected, response, subscribe, test_config},
    probe::{conn_entries, presence_entries, wait_ready},
    relay::Relay,
    servers::{NatsServer, RedisServer},
};
use serde_json::{Value, json};
use tokio::time::Instant;

const T: Duration = Duration::from_secs(5);

fn node_config(nats: &str, redis: &str, lease_ms: u64) -> Config {
    let mut cfg = test_config();
    cfg.nats_url = nats.to_owned();
    cfg.redis_url = redis.to_owned();
    cfg.presence.lease_ms = lease_ms;
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

async fn agent(node: &TestNode, key: &str) -> Result<Client, ClientError> {
    Client::connect(Connect::new(node.ws("")).header("X-API-Key", key)).await
}

/// A presence or agent-status event: (event name, principal id, reason).
type Seen = (String, String, Option<String>);

/// Reads `c` until `want` (event name, principal id) has been seen `nth` times in all
/// (counting what `log` already holds), logging every presence and agent-status event on
/// the way into `log`; bounded by `limit`.
async fn await_nth(
    c: &mut Client,
    want: (&str, &str),
    nth: usize,
    limit: Duration,
    log: &mut Vec<Seen>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while count(log, want.0, want.1) < nth {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_timeout(left).await {
            Ok(Received::Frame(ServerFrame::Event(e))) => log.extend(seen(&e)),
            Ok(_) => {}
            Err(e) => return Err(e).with_context(|| format!("waiting for {want:?} #{nth}; saw {log:?}")),
        }
    }
    Ok(())
}

/// Logs what arrives on `c` for `d`.
async fn drain(c: &mut Client, d: Duration, log: &mut Vec<Seen>) -> anyhow::Result<()> {
    let deadline = Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_timeout(left).await {
            Ok(Received::Frame(ServerFrame::Event(e))) => log.extend(seen(&e)),
            Ok(_) => {}
            Err(ClientError::Timeout(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

fn seen(e: &EventFrame) -> Option<Seen> {
    let text = |k: &str| e.data[k].as_str().map(String::from);
    match e.event.as_str() {
        "presence.join" | "presence.leave" => Some((e.event.to_string(), text("id")?, None)),
        "agent:status" => Some((format!("agent.{}", text("status")?), text("agentId")?, text("reason"))),
        _ => None,
    }
}

fn count(log: &[Seen], event: &str, who: &str) -> usize {
    log.iter().filter(|s| s.0 == event && s.1 == who).count()
}

/// `presence.get` on `channel` through `c`: the member ids, sorted.
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

fn principals(ids: &[&str]) -> BTreeMap<String, i64> {
    ids.iter().map(|p| (p.to_string(), 1)).collect()
}

#[tokio::test]
async fn redis_stall_refuses_agents_admits_users_and_reconciles_after() -> anyhow::Result<()> {
    // The lease outlasts the stall: this is an outage the node rides out, not a partition.
    const LEASE_MS: u64 = 14_000;
    const STALL: Duration = Duration::from_secs(10);
    let nats = NatsServer::start().await?;
    let redis = RedisServer::start().await?;
    let relay = Relay::start(([127, 0, 0, 1], redis.port).into()).await?;
    let a = TestNode::start(node_config(&nats.url, &relay.url("redis"), LEASE_MS)).await?;
    let b = TestNode::start(node_config(&nats.url, &redis.url, LEASE_MS)).await?;
    let mut watcher = user(&b, "watcher").await?;
    subscribe(&mut watcher, "w", &["project:p1"], None).await?;
    let mut log = Vec::new();
    let mut stay = user(&a, "u-stay").await?;
    subscribe(&mut stay, "s", &["project:p1"], None).await?;
    let mut gone = user(&a, "u-gone").await?;
    subscribe(&mut gone, "s", &["project:p1"], None).await?;
    let (a1, a2) = (AGENT_KEYS[0], AGENT_KEYS[1]);
    let mut agent1 = agent(&a, a1.1).await?;
    connected(&mut agent1).await?;
    await_nth(&mut watcher, ("presence.join", "u-gone"), 1, T, &mut log).await?;

    relay.stall();
    let stalled = Instant::now();
    let unready = wait_ready(a.addr, 503, T).await?;
    // New agents are refused: their count cannot be checked.
    match agent(&a, a2.1).await {
        Err(ClientError::Refused { status, body }) => {
            assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")), "{body}")
        }
        other => panic!("agent admitted while Redis stalls: {:?}", other.map(|_| ())),
    }
    // Users are admitted (fail-open); one joins the channel, one leaves it.
    let mut late = user(&a, "u-late").await?;
    subscribe(&mut late, "s", &["project:p1"], None).await?;
    gone.close().await?;
    // Connections made before keep working.
    stay.send(&ClientFrame::Ping).await?;
    stay.recv_until(T, |r| matches!(r, Received::Frame(ServerFrame::Pong { .. })).then_some(())).await?;
    ensure!(b.health().await?["status"] == "ok", "the other node is not affected");
    tokio::time::sleep(STALL.saturating_sub(stalled.elapsed())).await;

    relay.heal();
    let healed = Instant::now();
    let ready = wait_ready(a.addr, 200, Duration::from_secs(10)).await?;
    // The join made during the stall is announced once the refresh writes it.
    await_nth(&mut watcher, ("presence.join", "u-late"), 1, T, &mut log).await?;
    let joined = healed.elapsed();
    // The leave made during the stall is announced when its lease runs out.
    let lease_left = Duration::from_millis(LEASE_MS).saturating_sub(stalled.elapsed()) + T;
    await_nth(&mut watcher, ("presence.leave", "u-gone"), 1, lease_left, &mut log).await?;
    let left = healed.elapsed();
    drain(&mut watcher, Duration::from_millis(1_000), &mut log).await?;
    eprintln!(
        "redis stall {} ms: unready after {} ms; ready {} ms after heal; late join announced {} ms after heal, \
         stalled leave {} ms after heal (lease {LEASE_MS} ms)",
        STALL.as_millis(),
        unready.as_millis(),
        ready.as_millis(),
        joined.as_millis(),
        left.as_millis()
    );
    for (event, who) in [("presence.join", "u-late"), ("presence.leave", "u-gone")] {
        assert_eq!(count(&log, event, who), 1, "{event} {who} once: {log:?}");
    }
    assert_eq!(count(&log, "presence.leave", "u-stay"), 0, "no leave for a member that stayed: {log:?}");
    // No ghosts, no leaked counts: Redis holds exactly the live connections.
    assert_eq!(members(&mut watcher, "project:p1").await?, ["u-late", "u-stay", "watcher"]);
    let want = principals(&["user/u-late", "user/u-stay", "user/watcher"]);
    assert_eq!(presence_entries(redis.port, "project:p1").await?, want);
    assert_eq!(conn_entries(redis.port, "user", "u-gone").await?, 0, "the stalled close left a count");
    assert_eq!(conn_entries(redis.port, "agent", a1.0).await?, 1);
    assert_eq!(conn_entries(redis.port, "agent", a2.0).await?, 0, "the refused agent left a count");
    // Agents are admitted again.
    let mut agent2 = agent(&a, a2.1).await?;
    connected(&mut agent2).await?;
    assert_eq!(conn_entries(redis.port, "agent", a2.0).await?, 1);
    Ok(())
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

/// Reads events of `ch` until the one with `n == last`, bounded by `limit`.
async fn collect(
    c: &mut Client,
    ch: &str,
    last: u64,
    limit: Duration,
    into: &mut Vec<EventFrame>,
) -> anyhow::Result<()> {
    if into.last().is_some_and(|e| e.data["n"] == last) {
        return Ok(());
    }
    c.recv_until(limit, |r| match r {
        Received::Frame(ServerFrame::Event(e)) if e.channel.as_str() == ch && e.event == "e" => {
            into.push(e.clone());
            (e.data["n"] == last).then_some(())
        }
        _ => None,
    })
    .await
    .with_context(|| format!("{} events, last {:?}", into.len(), into.last().map(|e| e.data["n"].clone())))
}

/// Every `n` in `0..count` once, in order, with growing offsets.
fn exactly_once_in_order(events: &[EventFrame], count: u64) -> anyhow::Result<()> {
    let ns: Vec<u64> = events.iter().filter_map(|e| e.data["n"].as_u64()).collect();
    let missing: Vec<u64> = (0..count).filter(|n| !ns.contains(n)).collect();
    ensure!(
        ns == (0..count).collect::<Vec<_>>(),
        "{} events, missing {missing:?}, want 0..{count} once in order",
        ns.len()
    );
    ensure!(events.windows(2).all(|w| w[0].offset < w[1].offset), "offsets must grow");
    Ok(())
}

#[tokio::test]
async fn nats_stall_marks_the_node_unready_and_loses_no_history_event() -> anyhow::Result<()> {
    const STALL: Duration = Duration::from_secs(4);
    let nats = NatsServer::start().await?;
    let redis = RedisServer::start().await?;
    let relay = Relay::start(([127, 0, 0, 1], nats.port).into()).await?;
    let a = TestNode::start(node_config(&relay.url("nats"), &redis.url, 2_000)).await?;
    let (ch, subject) = ("session:stall", "gw.ev.session.stall");
    let mut stays = user(&a, "u1").await?;
    join(&mut stays, ch, None, &mut Vec::new()).await?;
    let mut leaves = user(&a, "u2").await?;
    let start = join(&mut leaves, ch, None, &mut Vec::new()).await?;
    let start: StreamPosition = serde_json::from_value(start["positions"][ch].clone()).context("position")?;
    // A backend publishes 25 events/s straight to NATS for the whole test.
    let total = 150u64;
    let backend = {
        let url = nats.url.clone();
        tokio::spawn(async move {
            let nc = async_nats::connect(url).await?;
            let mut tick = tokio::time::interval(Duration::from_millis(40));
            for n in 0..total {
                tick.tick().await;
                nc.publish(subject, json!({"event": "e", "data": {"n": n}}).to_string().into()).await?;
            }
            nc.flush().await?;
            anyhow::Ok(())
        })
    };
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let res = collect(&mut stays, ch, total - 1, Duration::from_secs(25), &mut got).await;
        (res, got)
    });
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    relay.stall();
    let stalled = Instant::now();
    let unready = wait_ready(a.addr, 503, T).await?;
    // This client goes away during the stall and comes back with its position.
    leaves.close().await?;
    tokio::time::sleep(STALL.saturating_sub(stalled.elapsed())).await;
    relay.heal();
    let ready = wait_ready(a.addr, 200, Duration::from_secs(10)).await?;
    tokio::time::timeout(Duration::from_secs(15), backend).await???;
    let (res, got) = tokio::time::timeout(Duration::from_secs(30), reader).await??;
    res?;
    exactly_once_in_order(&got, total)?;
    // The largest pause a connected subscriber saw in delivery.
    let gap = got.windows(2).map(|w| w[1].ts.saturating_sub(w[0].ts)).max().unwrap_or(0);
    let mut back = user(&a, "u2").await?;
    let mut replay = Vec::new();
    let r = join(&mut back, ch, Some(&start), &mut replay).await?;
    assert_eq!(r["recovered"][ch], json!(true), "{r}");
    collect(&mut back, ch, total - 1, T, &mut replay).await?;
    exactly_once_in_order(&replay, total)?;
    eprintln!(
        "nats stall {} ms: unready after {} ms, ready {} ms after heal; connected subscriber got all {total} \
         (largest gap between event timestamps {gap} ms); recovering subscriber got all {total}",
        STALL.as_millis(),
        unready.as_millis(),
        ready.as_millis(),
    );
    Ok(())
}

#[tokio::test]
async fn redis_partition_longer_than_the_lease_announces_leave_then_rejoin() -> anyhow::Result<()> {
    const LEASE_MS: u64 = 2_000;
    const PARTITION: Duration = Duration::from_secs(5);
    let nats = NatsServer::start().await?;
    let redis = RedisServer::start().await?;
    let relay = Relay::start(([127, 0, 0, 1], redis.port).into()).await?;
    let a = TestNode::start(node_config(&nats.url, &relay.url("redis"), LEASE_MS)).await?;
    let b = TestNode::start(node_config(&nats.url, &redis.url, LEASE_MS)).await?;
    let mut watcher = user(&b, "watcher").await?;
    subscribe(&mut watcher, "w", &["project:p1", "broadcast:agents"], None).await?;
    let mut log = Vec::new();
    let mut member = user(&a, "u-a").await?;
    subscribe(&mut member, "s", &["project:p1"], None).await?;
    let (id, key) = AGENT_KEYS[0];
    let mut bot = agent(&a, key).await?;
    connected(&mut bot).await?;
    await_nth(&mut watcher, ("agent.online", id), 1, T, &mut log).await?;
    await_nth(&mut watcher, ("presence.join", "u-a"), 1, T, &mut log).await?;

    relay.stall();
    let cut = Instant::now();
    let limit = Duration::from_millis(LEASE_MS) + T;
    await_nth(&mut watcher, ("presence.leave", "u-a"), 1, limit, &mut log).await?;
    let left = cut.elapsed();
    await_nth(&mut watcher, ("agent.offline", id), 1, T, &mut log).await?;
    assert_eq!(conn_entries(redis.port, "agent", id).await?, 0, "reaped while away");
    tokio::time::sleep(PARTITION.saturating_sub(cut.elapsed())).await;

    relay.heal();
    let healed = Instant::now();
    await_nth(&mut watcher, ("presence.join", "u-a"), 2, Duration::from_secs(10), &mut log).await?;
    let rejoined = healed.elapsed();
    await_nth(&mut watcher, ("agent.online", id), 2, T, &mut log).await?;
    drain(&mut watcher, Duration::from_millis(1_500), &mut log).await?;
    eprintln!(
        "redis partition {} ms (lease {LEASE_MS} ms): leave announced {} ms after it began; rejoin {} ms after heal",
        PARTITION.as_millis(),
        left.as_millis(),
        rejoined.as_millis()
    );
    // Once each: join, leave, join again; online, offline (lost), online again.
    assert_eq!((count(&log, "presence.join", "u-a"), count(&log, "presence.leave", "u-a")), (2, 1), "{log:?}");
    assert_eq!((count(&log, "agent.online", id), count(&log, "agent.offline", id)), (2, 1), "{log:?}");
    let offline = log.iter().find(|s| s.0 == "agent.offline").map(|s| s.2.clone());
    assert_eq!(offline, Some(Some("lost".to_owned())), "{log:?}");
    // The connections never noticed, and the counts are right again.
    member.send(&ClientFrame::Ping).await?;
    member.recv_until(T, |r| matches!(r, Received::Frame(ServerFrame::Pong { .. })).then_some(())).await?;
    assert_eq!(members(&mut watcher, "project:p1").await?, ["u-a", "watcher"]);
    assert_eq!(presence_entries(redis.port, "project:p1").await?, principals(&["user/u-a", "user/watcher"]));
    assert_eq!(conn_entries(redis.port, "agent", id).await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_slow_fabric_link_keeps_the_node_ready_and_correct() -> anyhow::Result<()> {
    const DELAY: Duration = Duration::from_millis(150);
    let nats = NatsServer::start().await?;
    let redis = RedisServer::start().await?;
    let nats_relay = Relay::start(([127, 0, 0, 1], nats.port).into()).await?;
    let redis_relay = Relay::start(([127, 0, 0, 1], redis.port).into()).await?;
    let a = TestNode::start(node_config(&nats_relay.url("nats"), &redis_relay.url("redis"), 2_000)).await?;
    let b = TestNode::start(node_config(&nats.url, &redis.url, 2_000)).await?;
    let mut watcher = user(&b, "watcher").await?;
    subscribe(&mut watcher, "w", &["project:p1"], None).await?;
    let mut log = Vec::new();
    // Every byte between node A and the fabric now takes 150 ms each way.
    nats_relay.delay(DELAY);
    redis_relay.delay(DELAY);
    let start = Instant::now();
    let mut slow = user(&a, "u-slow").await?;
    let handshake = start.elapsed();
    let start = Instant::now();
    subscribe(&mut slow, "s", &["project:p1"], None).await?;
    let joined = start.elapsed();
    await_nth(&mut watcher, ("presence.join", "u-slow"), 1, T, &mut log).await?;
    // An event from a backend on NATS reaches the client on the slow node.
    let nc = async_nats::connect(nats.url.as_str()).await?;
    let sent = Instant::now();
    nc.publish("gw.ev.project.p1", json!({"event": "e", "data": {"n": 1}}).to_string().into()).await?;
    nc.flush().await?;
    let ev = slow
        .recv_until(T, |r| match r {
            Received::Frame(ServerFrame::Event(e)) if e.event == "e" => Some(e.clone()),
            _ => None,
        })
        .await?;
    let delivered = sent.elapsed();
    assert_eq!(ev.data["n"], 1);
    // Three pings' worth of time later, the node still counts its links as up.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(gateway_tests::probe::ready_status(a.addr).await, 200, "a slow link is not a dead one");
    assert_eq!(presence_entries(redis.port, "project:p1").await?, principals(&["user/u-slow", "user/watcher"]));
    eprintln!(
        "fabric links delayed {} ms each way: handshake {} ms, subscribe with presence {} ms, backend event \
         delivered after {} ms; node ready throughout",
        DELAY.as_millis(),
        handshake.as_millis(),
        joined.as_millis(),
        delivered.as_millis()
    );
    ensure!(delivered >= DELAY, "the delay applies");
    Ok(())
}
