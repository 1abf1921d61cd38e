//! Highly available fabrics for tests, on free ports: a NATS cluster (three
//! `nats-server -js` with routes to each other, JetStream clustered, so streams can have
//! three replicas) and Redis behind Sentinel (a master, a replica and three sentinels
//! with short failure detection). Every process is killed when its handle drops; every
//! wait is bounded.

use std::{path::Path, time::Duration};

use anyhow::{Context, bail};
use async_nats::jetstream;
use tokio::{
    process::{Child, Command},
    time::{Instant, sleep},
};

use crate::{
    resp::{self, Reply},
    servers::{NatsServer, RedisServer, free_ports, launch, launch_nats, log_tail},
};

/// How long a cluster may take to elect its JetStream meta leader and place an R3 stream.
const CLUSTER_READY: Duration = Duration::from_secs(20);
/// How long sentinels may take to find each other and the replica.
const SENTINELS_READY: Duration = Duration::from_secs(20);
/// Start attempts on fresh ports (a port may be taken between the probe and the bind).
const ATTEMPTS: usize = 3;

/// A three-server NATS cluster with JetStream.
pub struct NatsCluster {
    /// The servers; `servers[i].url` is a client URL of server `i`.
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` servers routed to each other and waits until JetStream can place a
    /// stream with `n` replicas (≤ 20 s).
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match Self::try_start(n).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("nats cluster did not start")))
    }

    async fn try_start(n: usize) -> anyhow::Result<Self> {
        let ports = free_ports::<9>()?;
        let (clients, rest) = ports.split_at(3);
        let (monitors, routes) = rest.split_at(3);
        anyhow::ensure!(n <= 3, "at most 3 servers");
        let name = format!("c{}-{}", std::process::id(), clients[0]);
        let route_urls = |skip: usize| {
            (0..n)
                .filter(|&j| j != skip)
                .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
                .collect::<Vec<_>>()
                .join(",")
        };
        // Launch all at once: each waits for the others' routes before it elects.
        let mut launching = Vec::new();
        for i in 0..n {
            let dir = tempfile::Builder::new().prefix("nats-cluster-").tempdir()?;
            let extra = vec![
                "--cluster_name".into(),
                name.clone(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", routes[i]),
                "--routes".into(),
                route_urls(i),
            ];
            let (port, monitor) = (clients[i], monitors[i]);
            launching.push(async move {
                let child = launch_nats(dir.path(), port, monitor, &extra).await?;
                anyhow::Ok(NatsServer::running(dir, port, monitor, child, extra))
            });
        }
        let servers = futures_util::future::join_all(launching).await.into_iter().collect::<Result<Vec<_>, _>>()?;
        let cluster = NatsCluster { servers };
        cluster.wait_replicated(n).await?;
        Ok(cluster)
    }

    /// Waits until an R`n` stream can be created (and deletes it): the meta leader is
    /// elected and every peer is known.
    async fn wait_replicated(&self, n: usize) -> anyhow::Result<()> {
        let client = async_nats::connect(self.running_urls()).await?;
        let js = jetstream::new(client);
        let name = "HARNESS_READY";
        let deadline = Instant::now() + CLUSTER_READY;
        loop {
            let cfg = jetstream::stream::Config {
                name: name.into(),
                subjects: vec!["harness.ready".into()],
                num_replicas: n,
                ..Default::default()
            };
            match tokio::time::timeout(Duration::from_secs(3), js.create_stream(cfg)).await {
                Ok(Ok(_)) => {
                    let _ = js.delete_stream(name).await;
                    return Ok(());
                }
                Ok(Err(e)) if Instant::now() >= deadline => bail!("JetStream cluster not ready: {e}"),
                Err(_) if Instant::now() >= deadline => bail!("JetStream cluster not ready: timed out"),
                _ => sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Every client URL, comma-separated (what a node's `nats_url` takes).
    pub fn urls(&self) -> String {
        self.servers.iter().map(|s| s.url.as_str()).collect::<Vec<_>>().join(",")
    }

    /// Client URLs of the servers still running.
    pub fn running_urls(&self) -> Vec<String> {
        self.servers.iter().filter(|s| s.is_running()).map(|s| s.url.clone()).collect()
    }

    /// The index of the running server that holds a client connection named `name`.
    pub async fn server_of(&self, name: &str) -> Option<usize> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
        for (i, s) in self.servers.iter().enumerate().filter(|(_, s)| s.is_running()) {
            let url = format!("{}/connz?limit=10000", s.monitor_url);
            let Ok(r) = http.get(url).send().await else { continue };
            let Ok(body) = r.json::<serde_json::Value>().await else { continue };
            let conns = body["connections"].as_array().cloned().unwrap_or_default();
            if conns.iter().any(|c| c["name"] == name) {
                return Some(i);
            }
        }
        None
    }

    /// Moves the leadership of `stream` off server `from` (stepdown requests, bounded by
    /// `limit`); the new leader is chosen by the cluster.
    pub async fn lead_elsewhere(&self, stream: &str, from: usize, limit: Duration) -> anyhow::Result<()> {
        let client = async_nats::connect(self.running_urls()).await?;
        let deadline = Instant::now() + limit;
        let avoid = self.servers[from].name();
        loop {
            match self.stream_leader(stream).await {
                Some(l) if l != avoid => return Ok(()),
                _ if Instant::now() >= deadline => bail!("{stream} still led by {avoid} after {limit:?}"),
                Some(_) => {
                    let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
                    let _ = tokio::time::timeout(Duration::from_secs(2), client.request(subject, "".into())).await;
                }
                None => {}
            }
            sleep(Duration::from_millis(200)).await;
        }
    }

    /// The index of the running server named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.is_running() && s.name() == name)
    }

    /// The name of the JetStream meta leader (from `/jsz`).
    pub async fn meta_leader(&self) -> Option<String> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
        for s in self.servers.iter().filter(|s| s.is_running()) {
            let Ok(r) = http.get(format!("{}/jsz", s.monitor_url)).send().await else { continue };
            let Ok(body) = r.json::<serde_json::Value>().await else { continue };
            if let Some(l) = body["meta_cluster"]["leader"].as_str() {
                return Some(l.to_owned());
            }
        }
        None
    }

    /// The name of the server leading stream `stream` (from `/jsz`).
    pub async fn stream_leader(&self, stream: &str) -> Option<String> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
        for s in self.servers.iter().filter(|s| s.is_running()) {
            let url = format!("{}/jsz?accounts=true&streams=true", s.monitor_url);
            let Ok(r) = http.get(url).send().await else { continue };
            let Ok(body) = r.json::<serde_json::Value>().await else { continue };
            for acc in body["account_details"].as_array().cloned().unwrap_or_default() {
                for st in acc["stream_detail"].as_array().cloned().unwrap_or_default() {
                    if st["name"] == stream
                        && let Some(l) = st["cluster"]["leader"].as_str()
                    {
                        return Some(l.to_owned());
                    }
                }
            }
        }
        None
    }
}

/// The master name the sentinels monitor.
pub const SENTINEL_MASTER: &str = "gwmaster";

/// A Redis master, one replica and three sentinels watching them.
pub struct RedisSentinels {
    /// `[master, replica]` as started (after a failover the replica is the master).
    pub servers: Vec<RedisServer>,
    /// The sentinels.
    pub sentinels: Vec<Sentinel>,
}

/// One `redis-sentinel` process.
pub struct Sentinel {
    /// Its port.
    pub port: u16,
    /// Config file (rewritten by the sentinel) and log; deleted on drop.
    dir: tempfile::TempDir,
    /// The process (killed when dropped).
    _child: Child,
}

impl Sentinel {
    /// Where the sentinel logs.
    pub fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("sentinel.log")
    }
}

impl RedisSentinels {
    /// Starts a master, a replica of it and three sentinels (quorum 2, master down after
    /// 1 s unanswered), and waits until every sentinel knows the replica and the other
    /// two sentinels (≤ 20 s), so a failover can start at once.
    pub async fn start() -> anyhow::Result<Self> {
        let master = RedisServer::start().await?;
        let replica =
            RedisServer::start_with(vec!["--replicaof".into(), "127.0.0.1".into(), master.port.to_string()]).await?;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(start_sentinel(master.port).await?);
        }
        let set = RedisSentinels { servers: vec![master, replica], sentinels };
        set.wait_sentinels().await?;
        Ok(set)
    }

    /// Sentinel addresses, `127.0.0.1:port` (what `redis_sentinel.nodes` takes).
    pub fn nodes(&self) -> Vec<String> {
        self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect()
    }

    /// The master's port as the sentinels report it (the first one that answers).
    pub async fn master_port(&self) -> anyhow::Result<u16> {
        for s in &self.sentinels {
            if let Ok(r) = resp::command(s.port, &["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER]).await
                && let Some(p) = r.items().get(1).and_then(Reply::int)
            {
                return Ok(u16::try_from(p)?);
            }
        }
        bail!("no sentinel names a master")
    }

    /// The server (index in `servers`) on `port`.
    pub fn server_on(&self, port: u16) -> Option<usize> {
        self.servers.iter().position(|s| s.port == port)
    }

    async fn wait_sentinels(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + SENTINELS_READY;
        loop {
            let mut ready = 0;
            for s in &self.sentinels {
                let Ok(r) = resp::command(s.port, &["SENTINEL", "master", SENTINEL_MASTER]).await else { continue };
                let others = r.field("num-other-sentinels").and_then(Reply::int).unwrap_or(0);
                let replicas = r.field("num-slaves").and_then(Reply::int).unwrap_or(0);
                if others >= 2 && replicas >= 1 {
                    ready += 1;
                }
            }
            let synced = resp::command(self.servers[1].port, &["INFO", "replication"])
                .await
                .ok()
                .and_then(|r| r.text().map(|t| t.contains("master_link_status:up")))
                .unwrap_or(false);
            if ready == self.sentinels.len() && synced {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self.sentinels.iter().map(|s| log_tail(&s.log_path())).collect();
                bail!("sentinels not ready ({ready} of 3, replica synced: {synced}); logs:\n{}", logs.join("\n--\n"));
            }
            sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Starts one sentinel watching the master on `master_port`, on a free port.
async fn start_sentinel(master_port: u16) -> anyhow::Result<Sentinel> {
    let dir = tempfile::Builder::new().prefix("sentinel-").tempdir()?;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let [port] = free_ports::<1>()?;
        match launch_sentinel(dir.path(), port, master_port).await {
            Ok(child) => return Ok(Sentinel { port, dir, _child: child }),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("redis-sentinel did not start")))
}

async fn launch_sentinel(dir: &Path, port: u16, master_port: u16) -> anyhow::Result<Child> {
    let conf = dir.join("sentinel.conf");
    let text = format!(
        "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
         sentinel monitor {m} 127.0.0.1 {master_port} 2\n\
         sentinel down-after-milliseconds {m} 1000\n\
         sentinel failover-timeout {m} 5000\n\
         sentinel parallel-syncs {m} 1\n",
        dir = dir.display(),
        m = SENTINEL_MASTER,
    );
    std::fs::write(&conf, text)?;
    let log = dir.join("sentinel.log");
    let mut cmd = Command::new("redis-sentinel");
    cmd.arg(&conf);
    let ready =
        move |_pid| async move { matches!(resp::command(port, &["PING"]).await, Ok(Reply::Text(t)) if t == "PONG") };
    launch(cmd, &log, ready).await.with_context(|| format!("redis-sentinel on port {port}"))
}

impl RedisSentinels {
    /// Kills the current master (SIGKILL); returns its index in `servers`.
    pub async fn kill_master(&mut self) -> anyhow::Result<usize> {
        let port = self.master_port().await?;
        let i = self.server_on(port).context("master is none of ours")?;
        self.servers[i].stop().await;
        Ok(i)
    }

    /// Waits (bounded by `limit`) until the sentinels name a master other than `old_port`.
    pub async fn wait_new_master(&self, old_port: u16, limit: Duration) -> anyhow::Result<u16> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(p) = self.master_port().await
                && p != old_port
            {
                return Ok(p);
            }
            if Instant::now() >= deadline {
                bail!("no failover within {limit:?}");
            }
            sleep(Duration::from_millis(50)).await;
        }
    }
}
