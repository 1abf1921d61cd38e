//! Redis presence and API keys against a real `redis-server`: three `RedisPresence`
//! instances with different node ids on one Redis stand for three nodes.
//!
//! Every test starts its own Redis on a free port, so the tests run in parallel; every
//! wait is bounded.

use std::{
    collections::HashSet,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use futures_util::{StreamExt, TryStreamExt};
use gateway::{
    auth::{KeyStore, hash_key},
    config::Config,
    keys::{KeyError, RedisKeyStore},
    presence::{Admission, ChannelStats, ConnRef, Expired, NodeReport, Presence, PresenceError, redis::RedisPresence},
};
use gateway_protocol::{Channel, Principal, PrincipalKind};
use gateway_tests::servers::RedisServer;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Bound on any single step that should be quick.
const STEP: Duration = Duration::from_secs(5);

/// Runs `fut`, failing the test when it takes longer than `limit`.
async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut).await.with_context(|| format!("{what}: no answer within {limit:?}"))
}

fn config(url: &str, node: &str, lease_ms: u64) -> Config {
    let mut cfg = Config { redis_url: url.into(), node_id: node.into(), ..Config::default() };
    cfg.presence.lease_ms = lease_ms;
    cfg
}

/// Three nodes `n0`, `n1`, `n2` on one Redis.
async fn three_nodes(url: &str, lease_ms: u64) -> anyhow::Result<Vec<Arc<RedisPresence>>> {
    let mut out = Vec::new();
    for i in 0..3 {
        let p = within(STEP, "connect", RedisPresence::connect(&config(url, &format!("n{i}"), lease_ms))).await??;
        out.push(Arc::new(p));
    }
    Ok(out)
}

fn agent(id: &str) -> Principal {
    Principal { kind: PrincipalKind::Agent, id: id.into() }
}

fn user(id: &str) -> Principal {
    Principal { kind: PrincipalKind::User, id: id.into() }
}

fn ch(name: &str) -> Channel {
    Channel::parse(name).expect("valid channel")
}

fn conn<'a>(node: &'a str, conn: &'a str, principal: &'a Principal) -> ConnRef<'a> {
    ConnRef { node, conn, principal }
}

fn report(node: &str) -> NodeReport {
    NodeReport { node: node.into(), status: "running".into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admission_race_admits_exactly_the_limit() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let nodes = three_nodes(&redis.url, 30_000).await?;
    for round in 0..5 {
        let who = agent(&format!("racer{round}"));
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (node, who) = (Arc::clone(&nodes[i % 3]), who.clone());
            tasks.push(tokio::spawn(async move {
                let id = format!("n{}", i % 3);
                node.admit(&conn(&id, &format!("c{i}"), &who), 5).await
            }));
        }
        let mut admitted = 0;
        for t in tasks {
            if matches!(within(STEP, "admit", t).await???, Admission::Admitted { .. }) {
                admitted += 1;
            }
        }
        ensure!(admitted == 5, "round {round}: {admitted} of 6 admitted with limit 5");
    }
    // A release frees exactly one slot, on any node.
    let who = agent("racer0");
    for i in 0..6 {
        nodes[i % 3].release(&conn(&format!("n{}", i % 3), &format!("c{i}"), &who)).await?;
    }
    for i in 0..5 {
        let (node, c) = (format!("n{}", i % 3), format!("f{i}"));
        ensure!(matches!(nodes[i % 3].admit(&conn(&node, &c, &who), 5).await?, Admission::Admitted { .. }));
    }
    ensure!(nodes[1].admit(&conn("n1", "extra", &who), 5).await? == Admission::Full { limit: 5 });
    nodes[0].release(&conn("n0", "f3", &who)).await?;
    ensure!(nodes[1].admit(&conn("n1", "extra", &who), 5).await? == Admission::Admitted { first: false });
    ensure!(nodes[0].admit(&conn("n0", "extra2", &who), 5).await? == Admission::Full { limit: 5 });
    Ok(())
}

#[tokio::test]
async fn join_leave_first_last_across_nodes() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let nodes = three_nodes(&redis.url, 30_000).await?;
    let (a, u, s) = (agent("a1"), user("u/1"), ch("session:s1"));
    ensure!(nodes[0].join(&s, &conn("n0", "c1", &a)).await?, "first connection of a1 is first");
    ensure!(!nodes[1].join(&s, &conn("n1", "c2", &a)).await?, "second connection of a1 is not first");
    ensure!(!nodes[1].join(&s, &conn("n1", "c2", &a)).await?, "a repeated join changes nothing");
    ensure!(nodes[2].join(&s, &conn("n2", "c3", &u)).await?, "first connection of u/1 is first");
    let want = vec![u.clone(), a.clone()];
    for n in &nodes {
        ensure!(n.members(&s).await? == want, "members differ between nodes");
        ensure!(n.stats(&s).await? == ChannelStats { connections: 3, users: 1, agents: 1 });
    }
    ensure!(!nodes[2].leave(&s, &conn("n0", "c1", &a)).await?, "a1 still has c2");
    ensure!(nodes[0].leave(&s, &conn("n1", "c2", &a)).await?, "c2 was a1's last");
    ensure!(!nodes[1].leave(&s, &conn("n1", "c2", &a)).await?, "a repeated leave is not last again");
    ensure!(!nodes[1].leave(&s, &conn("n1", "nope", &u)).await?, "leaving without joining is not last");
    for n in &nodes {
        ensure!(n.members(&s).await? == vec![u.clone()]);
    }
    ensure!(nodes[2].leave(&s, &conn("n2", "c3", &u)).await?);
    ensure!(nodes[0].members(&s).await?.is_empty());
    ensure!(nodes[0].stats(&s).await? == ChannelStats::default());
    // Rejoining after the last leave is first again.
    ensure!(nodes[1].join(&s, &conn("n1", "c4", &a)).await?);
    Ok(())
}

#[tokio::test]
async fn expired_entries_are_invisible_before_they_are_reaped() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let nodes = three_nodes(&redis.url, 300).await?;
    let (a, s) = (agent("ghost"), ch("project:p1"));
    nodes[0].join(&s, &conn("n0", "c1", &a)).await?;
    ensure!(nodes[1].members(&s).await? == vec![a.clone()]);
    tokio::time::sleep(Duration::from_millis(450)).await;
    ensure!(nodes[1].members(&s).await?.is_empty(), "an expired entry is still listed");
    ensure!(nodes[2].stats(&s).await? == ChannelStats::default());
    let gone = nodes[1].maintain(&report("n1")).await?.left;
    ensure!(gone == vec![Expired { channel: s, member: a }], "reaped {gone:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_node_leaves_are_reported_exactly_once() -> anyhow::Result<()> {
    const LEASE_MS: u64 = 500;
    let redis = RedisServer::start().await?;
    let nodes = three_nodes(&redis.url, LEASE_MS).await?;
    let (b, c) = (Arc::clone(&nodes[1]), Arc::clone(&nodes[2]));
    let (agent_a, user_u, shared) = (agent("a1"), user("u1"), user("shared"));
    let (s1, s2) = (ch("session:s1"), ch("session:s2"));
    // Node n0 registers and joins, then dies (never maintains again).
    let dead = Arc::clone(&nodes[0]);
    dead.maintain(&report("n0")).await?;
    let first_write = Instant::now();
    dead.join(&s1, &conn("n0", "c1", &agent_a)).await?;
    dead.join(&s1, &conn("n0", "c2", &agent_a)).await?;
    dead.join(&s1, &conn("n0", "c3", &user_u)).await?;
    dead.join(&s2, &conn("n0", "c3", &user_u)).await?;
    dead.join(&s2, &conn("n0", "c4", &shared)).await?;
    // Many channels, so both reapers work on the due set at the same time.
    let many: Vec<Channel> = (0..150).map(|i| ch(&format!("project:p{i}"))).collect();
    for c in &many {
        dead.join(c, &conn("n0", "c1", &agent_a)).await?;
    }
    // `shared` is also in s2 through live node n1: its presence survives n0.
    b.join(&s2, &conn("n1", "c9", &shared)).await?;
    let died = Instant::now();
    drop(nodes);
    dead.close().await;
    drop(dead);

    let mut want: HashSet<(String, Principal)> =
        [("session:s1", &agent_a), ("session:s1", &user_u), ("session:s2", &user_u)]
            .into_iter()
            .map(|(c, p)| (c.to_owned(), p.clone()))
            .collect();
    want.extend(many.iter().map(|c| (c.as_str().to_owned(), agent_a.clone())));
    // n1 and n2 maintain concurrently, as their ticks would; every leave must come out of
    // exactly one of them.
    let (mut from_b, mut from_c) = (Vec::new(), Vec::new());
    let mut detected = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (rep_b, rep_c) = (report("n1"), report("n2"));
    while from_b.len() + from_c.len() < want.len() {
        if Instant::now() > deadline {
            bail!("leaves not detected within 10 s: n1 {from_b:?}, n2 {from_c:?}");
        }
        let (rb, rc) = tokio::join!(b.maintain(&rep_b), c.maintain(&rep_c));
        let (rb, rc) = (rb?, rc?);
        if detected.is_none() && !(rb.is_empty() && rc.is_empty()) {
            detected = Some((first_write.elapsed(), died.elapsed()));
        }
        from_b.extend(rb.left);
        from_c.extend(rc.left);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all: Vec<(String, Principal)> =
        from_b.iter().chain(&from_c).map(|e| (e.channel.as_str().to_owned(), e.member.clone())).collect();
    ensure!(all.len() == want.len(), "duplicate or extra leaves: {all:?}");
    ensure!(all.iter().cloned().collect::<HashSet<_>>() == want, "wrong leaves: {all:?}");
    let (since_first, since_last) = detected.context("no detection time")?;
    eprintln!(
        "lease {LEASE_MS} ms: first leaves {} ms after the dead node's first write, {} ms after its last \
         (n1 reported {}, n2 {})",
        since_first.as_millis(),
        since_last.as_millis(),
        from_b.len(),
        from_c.len()
    );
    ensure!(since_first >= Duration::from_millis(LEASE_MS), "reaped before the lease ran out");
    // Nothing is reported twice afterwards, and the live node's entry survived.
    for _ in 0..3 {
        ensure!(b.maintain(&report("n1")).await?.is_empty());
        ensure!(c.maintain(&report("n2")).await?.is_empty());
    }
    ensure!(c.members(&s2).await? == vec![shared.clone()]);
    ensure!(b.members(&s1).await?.is_empty());
    let live: Vec<String> = c.nodes().await?.into_iter().map(|n| n.node).collect();
    ensure!(live == ["n1", "n2"], "live nodes {live:?}");
    c.deregister("n2").await?;
    let live: Vec<String> = b.nodes().await?.into_iter().map(|n| n.node).collect();
    ensure!(live == ["n1"], "after deregister {live:?}");
    Ok(())
}

/// Presence announcements, as a node would publish them, per (channel, principal).
#[derive(Default)]
struct Ledger(std::collections::HashMap<(String, Principal), Vec<&'static str>>);

impl Ledger {
    fn note(&mut self, ch: &Channel, p: &Principal, event: &'static str, happened: bool) {
        if happened {
            self.0.entry((ch.as_str().to_owned(), p.clone())).or_default().push(event);
        }
    }

    fn extend(&mut self, events: Vec<Expired>, event: &'static str) {
        for e in events {
            self.note(&e.channel, &e.member, event, true);
        }
    }

    /// Every principal's announcements alternate join, leave, … and end with `last`.
    fn check(&self, last: &str) -> anyhow::Result<()> {
        for (key, events) in &self.0 {
            let alternating = events.iter().enumerate().all(|(i, e)| *e == if i % 2 == 0 { "join" } else { "leave" });
            ensure!(alternating && events.last().copied() == Some(last), "{key:?}: {events:?}");
        }
        Ok(())
    }
}

#[tokio::test]
async fn lapsed_lease_rejoin_is_announced_once() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let nodes = three_nodes(&redis.url, 1_000).await?;
    let (n0, n1) = (&nodes[0], &nodes[1]);
    let (a, u, w, x) = (agent("a1"), user("u1"), user("w1"), user("x1"));
    let (s, s2, s3) = (ch("session:s1"), ch("session:s2"), ch("session:s3"));
    let mut ledger = Ledger::default();
    for (c, p, channel) in [("c1", &a, &s), ("c2", &a, &s), ("c3", &u, &s), ("c4", &w, &s2), ("c5", &x, &s3)] {
        ledger.note(channel, p, "join", n0.join(channel, &conn("n0", c, p)).await?);
    }
    // n0 loses Redis for longer than its lease (it never maintains meanwhile); n1 reaps.
    tokio::time::sleep(Duration::from_millis(1_150)).await;
    let reaped = n1.maintain(&report("n1")).await?.left;
    ensure!(reaped.len() == 4, "reaped {reaped:?}");
    ledger.extend(reaped, "leave");
    ensure!(n1.members(&s).await?.is_empty());
    // n0 is back: its refresh restores the entries and reports each principal once.
    ensure!(n0.maintain(&report("n0")).await?.is_empty());
    ensure!(n1.members(&s).await? == vec![u.clone(), a.clone()], "entries not restored");
    ensure!(n1.stats(&s).await? == ChannelStats { connections: 3, users: 1, agents: 1 });
    // Before the node drains: w's only connection closes, which cancels w's pending rejoin
    // (w stays announced gone); x joins on n1 and leaves n0, so x is back through n1.
    let w_last = n0.leave(&s2, &conn("n0", "c4", &w)).await?;
    ensure!(!w_last, "a leave cancelling a pending rejoin must not be announced");
    ledger.note(&s3, &x, "join", n1.join(&s3, &conn("n1", "c6", &x)).await?);
    ledger.note(&s3, &x, "leave", n0.leave(&s3, &conn("n0", "c5", &x)).await?);
    let back = n0.take_rejoined();
    let got: HashSet<(String, Principal)> =
        back.iter().map(|e| (e.channel.as_str().to_owned(), e.member.clone())).collect();
    ensure!(back.len() == 3, "rejoined {back:?}");
    let want = [("session:s1", &a), ("session:s1", &u), ("session:s3", &x)];
    ensure!(got == want.into_iter().map(|(c, p)| (c.to_owned(), p.clone())).collect(), "rejoined {got:?}");
    ledger.extend(back, "join");
    ensure!(n0.take_rejoined().is_empty(), "drained twice");
    ensure!(n0.maintain(&report("n0")).await?.is_empty());
    ensure!(n0.take_rejoined().is_empty(), "a plain refresh reported a rejoin");
    // The real leaves are announced once each, and nothing is reaped again.
    for (c, p) in [("c1", &a), ("c2", &a), ("c3", &u)] {
        ledger.note(&s, p, "leave", n0.leave(&s, &conn("n0", c, p)).await?);
    }
    ledger.note(&s3, &x, "leave", n1.leave(&s3, &conn("n1", "c6", &x)).await?);
    ensure!(n1.maintain(&report("n1")).await?.is_empty());
    for c in [&s, &s2, &s3] {
        ensure!(n1.stats(c).await? == ChannelStats::default());
    }
    ledger.check("leave")?;
    ensure!(ledger.0[&("session:s1".to_owned(), a.clone())] == ["join", "leave", "join", "leave"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_refresh_lets_handshakes_through_and_keeps_leaves() -> anyhow::Result<()> {
    const CHANNELS: usize = 24;
    const PER_CHANNEL: usize = 500;
    let redis = RedisServer::start().await?;
    let nodes = three_nodes(&redis.url, 30_000).await?;
    let n0 = Arc::clone(&nodes[0]);
    let a = agent("many");
    let joins = (0..CHANNELS * PER_CHANNEL).map(|i| {
        let n0 = Arc::clone(&n0);
        let (a, c) = (a.clone(), ch(&format!("project:p{}", i % CHANNELS)));
        async move { n0.join(&c, &conn("n0", &format!("c{i}"), &a)).await }
    });
    let _: Vec<_> = within(Duration::from_secs(60), "bulk join", async {
        futures_util::stream::iter(joins).buffer_unordered(64).try_collect::<Vec<_>>().await
    })
    .await??;
    // Time one full refresh alone, then race one against handshakes and leaves.
    let t = Instant::now();
    n0.maintain(&report("n0")).await?;
    let alone = t.elapsed();
    let maintain = tokio::spawn({
        let n0 = Arc::clone(&n0);
        async move { n0.maintain(&report("n0")).await }
    });
    // Channel p0 loses every connection during the refresh: none may come back.
    let leaves = tokio::spawn({
        let (n0, a, p0) = (Arc::clone(&n0), a.clone(), ch("project:p0"));
        async move {
            for i in (0..CHANNELS * PER_CHANNEL).step_by(CHANNELS) {
                n0.leave(&p0, &conn("n0", &format!("c{i}"), &a)).await?;
            }
            Ok::<_, PresenceError>(())
        }
    });
    let (b, extra) = (user("late"), ch("session:late"));
    let (mut during, mut i) = (0, 0);
    while !maintain.is_finished() {
        within(STEP, "join during refresh", n0.join(&extra, &conn("n0", &format!("late{i}"), &b))).await??;
        i += 1;
        if !maintain.is_finished() {
            during += 1;
        }
    }
    within(STEP, "maintain", maintain).await???;
    within(Duration::from_secs(30), "leaves", leaves).await???;
    eprintln!(
        "refresh of {} entries: {} ms alone; {during} joins completed during it",
        CHANNELS * PER_CHANNEL,
        alone.as_millis()
    );
    ensure!(during >= 5, "handshakes were blocked by the refresh: {during} joins got through");
    n0.maintain(&report("n0")).await?;
    let p0 = n0.stats(&ch("project:p0")).await?;
    ensure!(p0 == ChannelStats::default(), "a refresh re-added left entries: {p0:?}");
    ensure!(n0.stats(&ch("project:p1")).await?.connections == PER_CHANNEL as u64);
    ensure!(n0.stats(&extra).await? == ChannelStats { connections: i, users: 1, agents: 0 });
    Ok(())
}

#[tokio::test]
async fn members_are_capped_and_stats_do_not_list() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let nodes = three_nodes(&redis.url, 30_000).await?;
    let s = ch("project:big");
    let mut who: Vec<Principal> = (0..1_100).map(|i| user(&format!("u{i:04}"))).collect();
    who.extend((0..150).map(|i| agent(&format!("a{i:03}"))));
    let joins = who.iter().enumerate().map(|(i, p)| {
        let n = Arc::clone(&nodes[i % 3]);
        let (s, p) = (s.clone(), p.clone());
        async move {
            let node = format!("n{}", i % 3);
            n.join(&s, &conn(&node, "c1", &p)).await?;
            n.join(&s, &conn(&node, "c2", &p)).await
        }
    });
    let _: Vec<_> = within(Duration::from_secs(60), "bulk join", async {
        futures_util::stream::iter(joins).buffer_unordered(64).try_collect::<Vec<_>>().await
    })
    .await??;
    let members = nodes[1].members(&s).await?;
    ensure!(members.len() == 1_000, "{} members listed", members.len());
    ensure!(members.windows(2).all(|w| w[0] < w[1]), "members not sorted and distinct");
    ensure!(members.iter().all(|p| p.kind == PrincipalKind::User), "users come first");
    ensure!(nodes[2].stats(&s).await? == ChannelStats { connections: 2_500, users: 1_100, agents: 150 });
    // One connection of each leaves: the counts follow, the principals stay.
    for (i, p) in who.iter().enumerate().take(100) {
        nodes[i % 3].leave(&s, &conn(&format!("n{}", i % 3), "c2", p)).await?;
    }
    ensure!(nodes[0].stats(&s).await? == ChannelStats { connections: 2_400, users: 1_100, agents: 150 });
    let few = ch("project:few");
    nodes[0].join(&few, &conn("n0", "c1", &who[1_100])).await?;
    nodes[0].join(&few, &conn("n0", "c2", &who[0])).await?;
    ensure!(nodes[1].members(&few).await? == vec![who[0].clone(), who[1_100].clone()]);
    Ok(())
}

/// Polls `health()` until it reports `status`, bounded.
async fn wait_health(p: &RedisPresence, status: &str, limit: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while p.health().status != status {
        if start.elapsed() > limit {
            bail!("health not {status} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(start.elapsed())
}

#[tokio::test]
async fn redis_restart_fails_fast_then_leases_are_reestablished() -> anyhow::Result<()> {
    let metrics = gateway::telemetry::prometheus();
    let mut redis = RedisServer::start().await?;
    let nodes = three_nodes(&redis.url, 5_000).await?;
    let (n0, n1) = (&nodes[0], &nodes[1]);
    let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
    n0.spawn_monitor(&tasks, cancel.clone());
    let (a, s) = (agent("a1"), ch("session:s1"));
    ensure!(n0.admit(&conn("n0", "c1", &a), 1).await? == Admission::Admitted { first: true });
    ensure!(n0.join(&s, &conn("n0", "c1", &a)).await?);
    n0.maintain(&report("n0")).await?;
    ensure!(n0.health().status == "connected");

    redis.stop().await;
    let down = wait_health(n0, "disconnected", Duration::from_secs(3)).await?;
    eprintln!("redis down: health disconnected after {} ms", down.as_millis());
    // Each operation fails on its own within the command timeout (1 s), never hangs:
    // at once once the client knows the server is gone, after the timeout in the moment
    // before it noticed.
    let mut slowest = Duration::ZERO;
    for step in 0..4 {
        let t = Instant::now();
        let res = match step {
            0 => within(STEP, "members while down", n1.members(&s)).await?.map(drop),
            1 => within(STEP, "join while down", n1.join(&s, &conn("n1", "c2", &a))).await?.map(drop),
            2 => within(STEP, "admit while down", n1.admit(&conn("n1", "c2", &a), 1)).await?.map(drop),
            _ => within(STEP, "maintain while down", n0.maintain(&report("n0"))).await?.map(drop),
        };
        ensure!(matches!(res, Err(PresenceError::Unavailable(_))), "step {step} while down: {res:?}");
        slowest = slowest.max(t.elapsed());
    }
    eprintln!("redis down: slowest failing operation took {} ms", slowest.as_millis());
    ensure!(slowest < Duration::from_millis(1_500), "failures were not quick: {slowest:?}");

    redis.restart().await?;
    let up = wait_health(n0, "connected", Duration::from_secs(10)).await?;
    wait_health(n1, "connected", Duration::from_secs(10)).await?;
    eprintln!("redis back: health connected after {} ms", up.as_millis());
    ensure!(n1.members(&s).await?.is_empty(), "the restarted redis should be empty");
    // n0's next tick restores its entry, its count and its connection lease.
    ensure!(n0.maintain(&report("n0")).await?.is_empty());
    // The count is back too, reported as restored (first again: Redis forgot it).
    let restored = n0.take_restored();
    ensure!(restored.len() == 1 && restored[0].edge && restored[0].conn == "c1", "restored {restored:?}");
    ensure!(n1.members(&s).await? == vec![a.clone()], "membership not re-established");
    ensure!(!n1.join(&s, &conn("n1", "c2", &a)).await?, "the restored entry should count for first/last");
    ensure!(n1.admit(&conn("n1", "c2", &a), 1).await? == Admission::Full { limit: 1 });
    let live: Vec<String> = n1.nodes().await?.into_iter().map(|n| n.node).collect();
    ensure!(live == ["n0"], "registry not re-established: {live:?}");
    let text = metrics.render();
    ensure!(text.contains("gateway_fabric_outages_total{component=\"redis\"}"), "no outage counted:\n{text}");
    // The monitor stops when told.
    cancel.cancel();
    tasks.close();
    within(STEP, "monitor stop", tasks.wait()).await?;
    Ok(())
}

#[tokio::test]
async fn connect_to_nothing_fails_fast() -> anyhow::Result<()> {
    let port = gateway_tests::servers::free_port();
    let t = Instant::now();
    let res = within(
        Duration::from_secs(10),
        "connect",
        RedisPresence::connect(&config(&format!("redis://127.0.0.1:{port}"), "n0", 30_000)),
    )
    .await?;
    ensure!(matches!(res, Err(PresenceError::Unavailable(_))), "connected to nothing");
    ensure!(t.elapsed() < Duration::from_secs(5), "connect took {:?}", t.elapsed());
    Ok(())
}

#[tokio::test]
async fn api_keys_create_lookup_revoke() -> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let store = within(STEP, "connect", RedisKeyStore::connect(&config(&redis.url, "n0", 30_000))).await??;
    let key = store.create("agent-1", &["p1".into(), "*".into()], &["tasks.write".into()]).await?;
    ensure!(key.starts_with("gwk_") && key.len() > 40, "key {key}");
    let hash = hash_key(&key);
    let rec = store.lookup(&hash).await?.context("created key not found")?;
    ensure!(rec.agent_id == "agent-1" && !rec.revoked);
    ensure!(rec.projects == ["p1", "*"] && rec.scopes == ["tasks.write"]);
    ensure!(store.list("agent-1").await? == vec![hash.clone()]);
    // Keys are stored by hash only.
    ensure!(store.lookup(&hash_key(&hash)).await?.is_none());
    ensure!(store.lookup(&hash_key("gwk_unknown")).await?.is_none());

    ensure!(store.revoke(&key).await? == Some("agent-1".into()));
    ensure!(store.lookup(&hash).await?.context("revoked key vanished")?.revoked);
    ensure!(store.revoke(&hash).await? == Some("agent-1".into()), "revoke by hash");
    ensure!(store.revoke("gwk_never-issued").await?.is_none());
    ensure!(matches!(store.create("bad id", &[], &[]).await, Err(KeyError::Invalid(_))));

    // A second store sharing a presence connection sees the same keys.
    let presence = RedisPresence::connect(&config(&redis.url, "n1", 30_000)).await?;
    let shared = RedisKeyStore::new(presence.client().clone(), "gw:");
    let other = shared.create("agent-2", &[], &[]).await?;
    ensure!(store.lookup(&hash_key(&other)).await?.is_some_and(|k| k.agent_id == "agent-2" && k.projects.is_empty()));

    redis.stop().await;
    let res = within(STEP, "lookup while down", store.lookup(&hash)).await?;
    ensure!(res.is_err(), "lookup while down: {res:?}");
    Ok(())
}
