//! What a scenario runs against: the gateway nodes (started by the bench or given with
//! `--target`), NATS and Redis when the fabric is on, and the summed node probes
//! (RSS, CPU, `/health` tables, `/metrics` counters) the scenarios report.

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::{
    Args,
    infra::{self, Metrics, Nats, Node, NodeSettings, Redis, Scratch},
};

/// What a scenario runs against.
pub struct Setup {
    /// The gateway nodes.
    pub nodes: Vec<Node>,
    nats: Option<Nats>,
    redis: Option<Redis>,
    /// Where to publish events, when NATS is known.
    pub nats_url: Option<String>,
    started: bool,
    _scratch: Option<Scratch>,
}

impl Setup {
    /// Uses the `--target` nodes, or starts `nodes` nodes (and NATS and Redis when `fabric`).
    pub async fn new(args: &Args, nodes: usize, fabric: bool) -> anyhow::Result<Self> {
        if !args.targets.is_empty() {
            let nodes = args
                .targets
                .iter()
                .enumerate()
                .map(|(i, t)| Node::target(t, args.pids.get(i).copied()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if let Some(u) = &args.nats_url {
                let host = u.trim_start_matches("nats://");
                if !(host.starts_with("127.") || host.starts_with("localhost")) {
                    bail!("{u}: the bench only sends traffic to loopback addresses");
                }
            }
            return Ok(Setup {
                nodes,
                nats: None,
                redis: None,
                nats_url: args.nats_url.clone(),
                started: false,
                _scratch: None,
            });
        }
        let scratch = Scratch::new()?;
        let bin = match &args.gateway_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?.parent().context("no executable dir")?.join("gateway"),
        };
        if !bin.exists() {
            bail!("{} not found: build it (cargo build --release -p gateway) or pass --gateway-bin", bin.display());
        }
        let (nats, redis) = if fabric {
            let n = Nats::start(&scratch.0).await?;
            let r = Redis::start(&scratch.0).await?;
            (Some(n), Some(r))
        } else {
            (None, None)
        };
        let extra_env = args
            .gateway_env
            .iter()
            .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).context("--gateway-env KEY=VALUE"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let settings = NodeSettings {
            bin,
            secret: args.secret.clone(),
            admin_key: "bench-admin-key".into(),
            fabric: nats.as_ref().zip(redis.as_ref()).map(|(n, r)| (n.url.clone(), r.url.clone())),
            extra_env,
        };
        let mut started = Vec::new();
        for i in 0..nodes.max(1) {
            started.push(Node::start(&settings, i, &scratch.0).await?);
        }
        let nats_url = nats.as_ref().map(|n| n.url.clone());
        Ok(Setup { nodes: started, nats, redis, nats_url, started: true, _scratch: Some(scratch) })
    }

    /// Stops whatever the bench started.
    pub async fn stop(self) {
        for n in self.nodes {
            n.stop().await;
        }
        if let Some(n) = self.nats {
            n.stop().await;
        }
        if let Some(r) = self.redis {
            r.stop().await;
        }
    }

    /// `ws://host:port/ws` of every node.
    pub fn ws_targets(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.ws.clone()).collect()
    }

    /// Summed CPU seconds of the nodes whose pid is known.
    pub fn cpu_secs(&self) -> Option<f64> {
        let v: Vec<f64> = self.nodes.iter().filter_map(|n| n.pid.and_then(infra::cpu_secs)).collect();
        (!v.is_empty()).then(|| v.iter().sum())
    }

    /// CPU seconds of the NATS server the bench started.
    pub fn nats_cpu_secs(&self) -> Option<f64> {
        self.nats.as_ref().and_then(Nats::pid).and_then(infra::cpu_secs)
    }

    /// `kill -9`s node `i` (one the bench started); its probes answer nothing from then on.
    pub async fn kill9(&mut self, i: usize) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(i).context("no such node")?;
        if !node.kill9().await {
            bail!("node {i} was not started by the bench");
        }
        Ok(())
    }

    /// Summed RSS of the nodes whose pid is known (None when none is).
    pub fn rss_kib(&self) -> Option<u64> {
        let v: Vec<u64> = self.nodes.iter().filter_map(Node::rss_kib).collect();
        (!v.is_empty()).then(|| v.iter().sum())
    }

    /// Summed `/metrics` counters of the nodes that answer.
    pub async fn metrics(&self) -> Metrics {
        let mut m = Metrics::default();
        for n in &self.nodes {
            if let Ok(x) = n.metrics().await {
                m = m.plus(x);
            }
        }
        m
    }

    /// Summed `/health` tables: (connections, channels, subscriptions).
    pub async fn tables(&self) -> anyhow::Result<(u64, u64, u64)> {
        let mut t = (0, 0, 0);
        for n in &self.nodes {
            let (a, b, c) = n.tables().await?;
            t = (t.0 + a, t.1 + b, t.2 + c);
        }
        Ok(t)
    }

    /// Summed `/health` `websocket.trackedIps`.
    pub async fn tracked_ips(&self) -> u64 {
        let mut t = 0;
        for n in &self.nodes {
            if let Ok(h) = n.health().await {
                t += h["websocket"]["trackedIps"].as_u64().unwrap_or(0);
            }
        }
        t
    }

    /// The setup as JSON for the `BENCH_JSON` line.
    pub fn describe(&self) -> Value {
        json!({
            "started_by_bench": self.started,
            "nodes": self.nodes.iter().map(|n| json!({"url": n.http, "pid": n.pid})).collect::<Vec<_>>(),
            "nats": self.nats_url.is_some(),
        })
    }
}
