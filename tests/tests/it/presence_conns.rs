//! Connection counts in Redis as the source of agent status (contract §10): admission
//! and release say "first" and "last" anywhere, decided atomically so racing nodes
//! cannot both see them, and a dead node's connections are reaped and reported lost by
//! exactly one live node. Three `RedisPresence` instances on one Redis stand for three
//! nodes; every wait is bounded.

use std::{collections::HashSet, sync::Arc, time::Duration};

use anyhow::{Context, bail, ensure};
use gateway::{
    config::Config,
    presence::{Admission, ConnLease, ConnRef, NodeReport, Presence, redis::RedisPresence},
};
use gateway_protocol::{Principal, PrincipalKind};
use gateway_tests::servers::RedisServer;

/// Bound on any single step that should be quick.
const STEP: Duration = Duration::from_secs(5);

/// Three nodes `n0`, `n1`, `n2` on one Redis.
async fn three_nodes(url: &str, lease_ms: u64) -> anyhow::Result<Vec<Arc<RedisPresence>>> {
    let mut out = Vec::new();
    for i in 0..3 {
        let mut cfg = Config { redis_url: url.into(), node_id: format!("n{i}"), ..Config::default() };
        cfg.presence.lease_ms = lease_ms;
        let p = tokio::time::timeout(STEP, RedisPresence::connect(&cfg)).await.context("connect")??;
        out.push(Arc::new(p));
    }
    Ok(out)
}

fn agent(id: &str) -> Principal {
    Principal { kind: PrincipalKind::Agent, id: id.into() }
}

fn conn<'a>(node: &'a str, conn: &'a str, principal: &'a Principal) -> ConnRef<'a> {
    ConnRef { node, conn, principal }
}

fn report(node: &str) -> NodeReport {
    NodeReport { node: node.into(), status: "running".into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_and_last_are_decided_once_when_nodes_race() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let nodes = three_nodes(&redis.url, 30_000).await?;
    for round in 0..10 {
        let who = agent(&format!("racer{round}"));
        let mut tasks = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let (node, who) = (Arc::clone(node), who.clone());
            tasks.push(tokio::spawn(async move {
                let id = format!("n{i}");
                node.admit(&conn(&id, "c", &who), 5).await
            }));
        }
        let mut firsts = 0;
        for t in tasks {
            match tokio::time::timeout(STEP, t).await??? {
                Admission::Admitted { first } => firsts += usize::from(first),
                full => bail!("round {round}: {full:?}"),
            }
        }
        ensure!(firsts == 1, "round {round}: {firsts} admissions saw themselves first");
        let mut tasks = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let (node, who) = (Arc::clone(node), who.clone());
            tasks.push(tokio::spawn(async move {
                let id = format!("n{i}");
                node.release(&conn(&id, "c", &who)).await
            }));
        }
        let mut lasts = 0;
        for t in tasks {
            lasts += usize::from(tokio::time::timeout(STEP, t).await???);
        }
        ensure!(lasts == 1, "round {round}: {lasts} releases saw themselves last");
    }
    // A repeated release is not "last" again.
    let who = agent("once");
    ensure!(nodes[0].admit(&conn("n0", "c", &who), 5).await? == Admission::Admitted { first: true });
    ensure!(nodes[0].release(&conn("n0", "c", &who)).await?);
    ensure!(!nodes[0].release(&conn("n0", "c", &who)).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_node_connections_are_reported_lost_exactly_once() -> anyhow::Result<()> {
    const LEASE_MS: u64 = 500;
    let redis = RedisServer::start().await?;
    let nodes = three_nodes(&redis.url, LEASE_MS).await?;
    let (b, c) = (Arc::clone(&nodes[1]), Arc::clone(&nodes[2]));
    let (a1, a2, a3) = (agent("a1"), agent("a2"), agent("a3"));
    // n0 holds a1 alone, a2 beside a live connection on n1, and a3; then it dies.
    let dead = Arc::clone(&nodes[0]);
    for (id, who) in [("c1", &a1), ("c2", &a2), ("c4", &a3)] {
        ensure!(dead.admit(&conn("n0", id, who), 1).await? == Admission::Admitted { first: true });
    }
    ensure!(b.admit(&conn("n1", "c9", &a2), 5).await? == Admission::Admitted { first: false });
    drop(nodes);
    dead.close().await;
    drop(dead);
    tokio::time::sleep(Duration::from_millis(LEASE_MS + 100)).await;
    // The lapsed entry no longer counts against a3's limit of 1, but a3 has not gone
    // offline yet (nobody reaped it): a new connection is not its first.
    ensure!(c.admit(&conn("n2", "c5", &a3), 1).await? == Admission::Admitted { first: false });

    // n1's own lease lapsed too while nobody ticked: a live node refreshes before it
    // could lapse (refresh < lease), so tick n1 once first, as it would have ticked;
    // otherwise n2 may reap n1's live connection before n1's refresh lands.
    let (rep_b, rep_c) = (report("n1"), report("n2"));
    let mut lost: Vec<ConnLease> = b.maintain(&rep_b).await?.lost;
    // Then n1 and n2 reap concurrently, as their ticks would; each entry comes out of one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while lost.len() < 3 {
        if tokio::time::Instant::now() > deadline {
            bail!("lost connections not reaped within 10 s: {lost:?}");
        }
        let (rb, rc) = tokio::join!(b.maintain(&rep_b), c.maintain(&rep_c));
        lost.extend(rb?.lost);
        lost.extend(rc?.lost);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..3 {
        let (rb, rc) = tokio::join!(b.maintain(&rep_b), c.maintain(&rep_c));
        ensure!(rb?.lost.is_empty() && rc?.lost.is_empty(), "reported twice");
    }
    let got: HashSet<(String, String, String, bool)> =
        lost.iter().map(|l| (l.node.clone(), l.conn.clone(), l.principal.id.clone(), l.edge)).collect();
    let want: HashSet<(String, String, String, bool)> = [("c1", "a1", true), ("c2", "a2", false), ("c4", "a3", false)]
        .into_iter()
        .map(|(c, a, edge)| ("n0".to_owned(), c.to_owned(), a.to_owned(), edge))
        .collect();
    ensure!(lost.len() == 3 && got == want, "lost {lost:?}");
    // The survivors' releases are last now; a1 is gone: its next connection is first.
    ensure!(b.release(&conn("n1", "c9", &a2)).await?, "a2's last connection");
    ensure!(c.release(&conn("n2", "c5", &a3)).await?, "a3's last connection");
    ensure!(b.admit(&conn("n1", "c6", &a1), 1).await? == Admission::Admitted { first: true });
    Ok(())
}
