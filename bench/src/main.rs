//! `gateway-bench`: load benchmark for the gateway (issue 4).
//!
//! ```text
//! gateway-bench idle    [--n 15000]                       RSS per idle subscribed connection
//! gateway-bench fanout  [--n 10000 --rate 20 --duration 10] [--find-max]
//! gateway-bench cluster [--nodes 3 --n 9000 --deliveries 20000 --duration 10]
//! gateway-bench churn   [--cycles 100000 --concurrency 64]
//! ```
//!
//! By default it starts what it needs: `nats-server -js` and `redis-server` on free ports
//! (for `fanout`, `cluster`, or any scenario with `--fabric`) and gateway nodes from the
//! `gateway` binary next to its own executable, configured through `GATEWAY_*`. With
//! `--target URL` (repeatable) it uses running nodes instead (`--pid` for RSS,
//! `--nats-url` to publish). Clients run in worker processes (this binary, `worker`),
//! spread over loopback source addresses 127.0.0.2…; every run prints a table and one
//! `BENCH_JSON {…}` line, and says when a requested size was not reached.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod infra;
mod pool;
mod proto;
mod token;
mod worker;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep, sleep_until};

use crate::{
    infra::{Metrics, Nats, Node, NodeSettings, Redis, Scratch},
    pool::{Pool, source_ips},
    proto::{ChurnSpec, ConnectSpec},
};

/// Which scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// N authenticated, subscribed connections held open; RSS per connection.
    Idle,
    /// N subscribers of one channel on one node; a NATS publisher at a fixed rate.
    Fanout,
    /// The same across several nodes (default 3).
    Cluster,
    /// Connect/subscribe/disconnect cycles; RSS drift and empty tables.
    Churn,
    /// Internal: a client worker process driven over stdin/stdout.
    #[value(hide = true)]
    Worker,
}

/// Load benchmark for the gateway.
#[derive(Debug, Parser)]
#[command(name = "gateway-bench", version, about)]
struct Args {
    /// Scenario.
    scenario: Scenario,
    /// Connections (idle, fanout, cluster). Defaults: 15000 / 10000 / 9000.
    #[arg(long)]
    n: Option<u64>,
    /// Events per second published (all channels together). Default fanout 20.
    #[arg(long)]
    rate: Option<f64>,
    /// Target deliveries per second (sets the rate from the subscriber count). Default cluster 20000.
    #[arg(long)]
    deliveries: Option<f64>,
    /// Seconds each measured publishing phase lasts.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Shared channels the subscribers are spread over (the publisher round-robins them).
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Event body size on NATS in bytes (`{"event","data"}`).
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// fanout/cluster: step the rate up and report the highest that still meets the bar.
    #[arg(long)]
    find_max: bool,
    /// Churn cycles.
    #[arg(long)]
    cycles: Option<u64>,
    /// Handshakes (or churn cycles) in flight at once, over all workers.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Gateway nodes to start (cluster default 3, otherwise 1).
    #[arg(long)]
    nodes: Option<usize>,
    /// Start NATS and Redis and connect the nodes to them (always on for fanout/cluster).
    #[arg(long)]
    fabric: bool,
    /// Use running nodes (http://host:port or ws://host:port/ws) instead of starting them. Repeatable.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Process ids of the --target nodes, in order, for RSS. Repeatable.
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// NATS URL to publish to when using --target.
    #[arg(long)]
    nats_url: Option<String>,
    /// First token of NATS subjects.
    #[arg(long, default_value = "gw")]
    subject_prefix: String,
    /// HS256 secret (given to started nodes; must match --target nodes).
    #[arg(long, env = "BENCH_JWT_SECRET", default_value = "bench-secret-0123456789abcdef0123")]
    secret: String,
    /// The gateway binary (default: `gateway` next to this executable).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Extra environment for started nodes, `KEY=VALUE` (e.g. GATEWAY_LIMITS__READ_BUFFER_BYTES=512). Repeatable.
    #[arg(long = "gateway-env")]
    gateway_env: Vec<String>,
    /// Worker processes (default: enough for --per-worker, at least 2).
    #[arg(long)]
    workers: Option<usize>,
    /// Most connections one worker holds (one process has 20,000 open files at most).
    #[arg(long, default_value_t = 8000)]
    per_worker: u64,
    /// Loopback source addresses to spread sockets over (127.0.0.2 …).
    #[arg(long, default_value_t = 16)]
    src_ips: usize,
    /// Bound of one handshake in ms.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// idle: seconds to hold the connections before reading RSS.
    #[arg(long, default_value_t = 5)]
    settle: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.scenario == Scenario::Worker {
        // One thread per worker: the parent runs several workers to use every core.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return rt.block_on(worker::run());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.scenario {
        Scenario::Idle => idle(&args).await,
        Scenario::Fanout => fanout(&args, false).await,
        Scenario::Cluster => fanout(&args, true).await,
        Scenario::Churn => churn(&args).await,
        Scenario::Worker => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// Setup

/// What a scenario runs against.
struct Setup {
    nodes: Vec<Node>,
    nats: Option<Nats>,
    redis: Option<Redis>,
    nats_url: Option<String>,
    started: bool,
    _scratch: Option<Scratch>,
}

impl Setup {
    async fn new(args: &Args, nodes: usize, fabric: bool) -> anyhow::Result<Self> {
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

    async fn stop(self) {
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

    fn ws_targets(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.ws.clone()).collect()
    }

    /// Summed CPU seconds of the nodes whose pid is known.
    fn cpu_secs(&self) -> Option<f64> {
        let v: Vec<f64> = self.nodes.iter().filter_map(|n| n.pid.and_then(infra::cpu_secs)).collect();
        (!v.is_empty()).then(|| v.iter().sum())
    }

    /// Summed RSS of the nodes whose pid is known (None when none is).
    fn rss_kib(&self) -> Option<u64> {
        let v: Vec<u64> = self.nodes.iter().filter_map(Node::rss_kib).collect();
        (!v.is_empty()).then(|| v.iter().sum())
    }

    async fn metrics(&self) -> Metrics {
        let mut m = Metrics::default();
        for n in &self.nodes {
            if let Ok(x) = n.metrics().await {
                m = m.plus(x);
            }
        }
        m
    }

    /// Summed `/health` tables: (connections, channels, subscriptions).
    async fn tables(&self) -> anyhow::Result<(u64, u64, u64)> {
        let mut t = (0, 0, 0);
        for n in &self.nodes {
            let (a, b, c) = n.tables().await?;
            t = (t.0 + a, t.1 + b, t.2 + c);
        }
        Ok(t)
    }

    /// Summed `/health` `websocket.trackedIps`.
    async fn tracked_ips(&self) -> u64 {
        let mut t = 0;
        for n in &self.nodes {
            if let Ok(h) = n.health().await {
                t += h["websocket"]["trackedIps"].as_u64().unwrap_or(0);
            }
        }
        t
    }

    fn describe(&self) -> Value {
        json!({
            "started_by_bench": self.started,
            "nodes": self.nodes.iter().map(|n| json!({"url": n.http, "pid": n.pid})).collect::<Vec<_>>(),
            "nats": self.nats_url.is_some(),
        })
    }
}

fn workers_for(args: &Args, n: u64) -> usize {
    args.workers.unwrap_or_else(|| (n.div_ceil(args.per_worker.max(1)) as usize).max(2))
}

fn check_capacity(args: &Args, n: u64, workers: usize) -> anyhow::Result<()> {
    let per = n.div_ceil(workers as u64);
    if per > 19_000 {
        bail!("{n} connections over {workers} workers is {per} per process; one process holds ~19,000 (use --workers)");
    }
    if n > 18_500 * args.targets.len().max(1) as u64 && args.scenario == Scenario::Idle {
        eprintln!("warning: {n} connections on one node exceed its ~19,000 open files; expect failures");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reporting

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() { f64::NAN } else { ms(h.value_at_quantile(q)) }
}

fn lat_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!(null);
    }
    json!({
        "count": h.len(),
        "p50_ms": pct(h, 0.5), "p90_ms": pct(h, 0.9), "p99_ms": pct(h, 0.99),
        "p999_ms": pct(h, 0.999), "max_ms": ms(h.max()), "mean_ms": h.mean() / 1000.0,
    })
}

/// A table of (metric, value, bar, verdict) rows.
struct Table {
    title: String,
    rows: Vec<[String; 4]>,
    notes: Vec<String>,
}

impl Table {
    fn new(title: impl Into<String>) -> Self {
        Table { title: title.into(), rows: Vec::new(), notes: Vec::new() }
    }

    fn row(&mut self, metric: &str, value: impl Into<String>) {
        self.rows.push([metric.into(), value.into(), String::new(), String::new()]);
    }

    fn bar(&mut self, metric: &str, value: impl Into<String>, bar: &str, pass: bool) {
        self.rows.push([metric.into(), value.into(), bar.into(), if pass { "PASS" } else { "FAIL" }.into()]);
    }

    /// A bar row that is only judged at the bar's size (`None` prints `n/a`).
    fn bar_opt(&mut self, metric: &str, value: impl Into<String>, bar: &str, pass: Option<bool>) {
        let v = match pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "n/a",
        };
        self.rows.push([metric.into(), value.into(), bar.into(), v.into()]);
    }

    fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }

    fn print(&self) {
        let w: Vec<usize> =
            (0..4).map(|c| self.rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0).max(6)).collect();
        let line = format!("+{}+", w.iter().map(|n| "-".repeat(n + 2)).collect::<Vec<_>>().join("+"));
        println!();
        println!("== {} ==", self.title);
        println!("{line}");
        let head = ["metric", "value", "bar", "result"];
        println!("| {} |", head.iter().zip(&w).map(|(h, n)| format!("{h:<n$}")).collect::<Vec<_>>().join(" | "));
        println!("{line}");
        for r in &self.rows {
            println!("| {} |", r.iter().zip(&w).map(|(h, n)| format!("{h:<n$}")).collect::<Vec<_>>().join(" | "));
        }
        println!("{line}");
        for n in &self.notes {
            println!("  note: {n}");
        }
    }
}

fn emit_json(scenario: &str, params: Value, setup: &Setup, results: Value, bars: Value) {
    let line = json!({
        "scenario": scenario,
        "machine": infra::machine(),
        "params": params,
        "setup": setup.describe(),
        "results": results,
        "bars": bars,
    });
    println!("BENCH_JSON {line}");
}

fn reached_note(t: &mut Table, what: &str, requested: u64, got: u64, errors: &std::collections::BTreeMap<String, u64>) {
    if got < requested {
        t.note(format!(
            "REQUESTED {what} NOT REACHED: {got} of {requested} ({} short); failures: {errors:?}",
            requested - got
        ));
    }
}

// ---------------------------------------------------------------------------------------
// idle

async fn idle(args: &Args) -> anyhow::Result<()> {
    let n = args.n.unwrap_or(15_000);
    let setup = Setup::new(args, args.nodes.unwrap_or(1), args.fabric).await?;
    let r = idle_run(args, n, &setup).await;
    setup.stop().await;
    r
}

async fn idle_run(args: &Args, n: u64, setup: &Setup) -> anyhow::Result<()> {
    let workers = workers_for(args, n);
    check_capacity(args, n, workers)?;
    sleep(Duration::from_millis(500)).await;
    let rss_before = setup.rss_kib();
    let run = std::process::id();
    let channel = format!("broadcast:bench-idle-{run}");
    let spec = ConnectSpec {
        targets: setup.ws_targets(),
        secret: args.secret.clone(),
        user_prefix: format!("idle{run}-"),
        first: 0,
        count: 0,
        src_ips: source_ips(args.src_ips),
        channels: vec![channel.clone()],
        concurrency: args.concurrency.unwrap_or(200).div_ceil(workers).max(1),
        timeout_ms: args.timeout_ms,
    };
    eprintln!("idle: {n} connections over {workers} workers to {} node(s)", setup.nodes.len());
    let mut pool = Pool::spawn(workers).await?;
    let limit = Duration::from_secs(120 + n / 50);
    let c = pool.connect(n, &spec, limit).await?;
    sleep(Duration::from_secs(args.settle)).await;
    let rss_after = setup.rss_kib();
    let tables = setup.tables().await.ok();
    let still = pool.report(&[0]).await?;
    pool.close().await;

    let per_conn_kib = match (rss_before, rss_after) {
        (Some(b), Some(a)) if c.ok > 0 => Some((a as f64 - b as f64) / c.ok as f64),
        _ => None,
    };
    let rate = c.ok as f64 / c.elapsed.as_secs_f64().max(1e-9);
    let mut t = Table::new(format!("idle: {n} authenticated subscribed connections"));
    t.row("connections requested", n.to_string());
    t.row("connections open+subscribed", format!("{} (failed {})", c.ok, c.failed));
    t.row("still open at RSS reading", still.open.to_string());
    if let Some((conns, chans, subs)) = tables {
        t.row("node /health connections/channels/subs", format!("{conns} / {chans} / {subs}"));
    }
    t.row("connect rate", format!("{rate:.0} conn/s ({:.1} s)", c.elapsed.as_secs_f64()));
    t.row(
        "handshake p50 / p99 / max",
        format!("{:.2} / {:.2} / {:.2} ms", pct(&c.handshake, 0.5), pct(&c.handshake, 0.99), ms(c.handshake.max())),
    );
    t.row("subscribed p50 / p99", format!("{:.2} / {:.2} ms", pct(&c.ready, 0.5), pct(&c.ready, 0.99)));
    match (rss_before, rss_after) {
        (Some(b), Some(a)) => {
            t.row("node RSS before / after", format!("{:.1} / {:.1} MiB", b as f64 / 1024.0, a as f64 / 1024.0))
        }
        _ => t.row("node RSS", "unknown (pass --pid with --target)"),
    }
    let pass_rss = per_conn_kib.is_some_and(|k| k <= 8.0) && c.ok >= n && n >= 15_000;
    match per_conn_kib {
        Some(k) => t.bar_opt(
            "RSS per connection",
            format!("{k:.2} KiB"),
            "<= 8 KiB at 15,000",
            (n >= 15_000).then_some(pass_rss),
        ),
        None => t.row("RSS per connection", "unknown"),
    }
    if n < 15_000 {
        t.note(format!("n = {n} is below the bar's 15,000: the bar is not judged"));
    }
    reached_note(&mut t, "connections", n, c.ok, &c.errors);
    if !c.errors.is_empty() {
        t.note(format!("failures: {:?}", c.errors));
    }
    if still.lost > 0 {
        t.note(format!("{} connections were lost while held: {:?}", still.lost, still.close_codes));
    }
    t.print();
    emit_json(
        "idle",
        json!({"n": n, "workers": workers, "src_ips": args.src_ips, "gateway_env": args.gateway_env, "fabric": args.fabric}),
        setup,
        json!({
            "requested": n, "connected": c.ok, "failed": c.failed, "errors": c.errors, "reached": c.ok >= n,
            "open_at_reading": still.open, "lost": still.lost,
            "rss_before_kib": rss_before, "rss_after_kib": rss_after, "rss_per_conn_kib": per_conn_kib,
            "health_tables": tables.map(|(a, b, c)| json!({"connections": a, "channels": b, "subscriptions": c})),
            "connect_rate_per_s": rate, "connect_seconds": c.elapsed.as_secs_f64(),
            "handshake": lat_json(&c.handshake), "subscribed": lat_json(&c.ready),
        }),
        json!({"rss_per_conn_le_8kib_at_15k": pass_rss}),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// fanout / cluster

/// The result of one publishing step.
struct Step {
    rate: f64,
    published: u64,
    publish_secs: f64,
    /// From the first publish to the last receipt.
    span_secs: f64,
    out: pool::PhaseOutcome,
    metrics: Metrics,
    /// CPU seconds used by the nodes / the client workers during the step.
    node_cpu: Option<f64>,
    client_cpu: f64,
}

impl Step {
    fn delivered(&self) -> f64 {
        if self.out.expected == 0 { 0.0 } else { self.out.received as f64 / self.out.expected as f64 * 100.0 }
    }
    fn per_sec(&self) -> f64 {
        self.out.received as f64 / self.span_secs.max(self.publish_secs).max(1e-9)
    }
    /// Node CPU µs per delivery.
    fn node_us_per_delivery(&self) -> Option<f64> {
        self.node_cpu.filter(|_| self.out.received > 0).map(|c| c * 1e6 / self.out.received as f64)
    }
    fn fanout_ok(&self) -> bool {
        self.delivered() >= 99.0 && pct(&self.out.latency, 0.99) <= 50.0
    }
    fn cluster_ok(&self) -> bool {
        self.delivered() >= 99.0 && pct(&self.out.latency, 0.5) <= 1.0 && pct(&self.out.latency, 0.99) <= 5.0
    }
    fn json(&self) -> Value {
        json!({
            "rate_events_per_s": self.rate, "published": self.published, "publish_seconds": self.publish_secs,
            "expected": self.out.expected, "received": self.out.received, "delivered_pct": self.delivered(),
            "deliveries_per_s": self.per_sec(), "span_seconds": self.span_secs, "stale": self.out.stale,
            "node_cpu_seconds": self.node_cpu, "client_cpu_seconds": self.client_cpu,
            "node_cpu_us_per_delivery": self.node_us_per_delivery(),
            "latency": lat_json(&self.out.latency),
            "open_after": self.out.open, "lost_total": self.out.lost, "close_codes": self.out.close_codes,
            "node_slow_consumer_closes": self.metrics.slow_consumer_closes, "node_drops": self.metrics.drops,
            "node_drops_no_subscribers": self.metrics.drops_no_subscribers, "node_deliveries": self.metrics.deliveries,
        })
    }
}

/// The NATS body of one bench event, padded to `payload` bytes.
fn event_body(phase: u64, seq: u64, payload: usize) -> Vec<u8> {
    let t = worker::now_us();
    let head = format!(r#"{{"event":"bench","data":{{"bench_p":{phase},"bench_s":{seq},"bench_t":{t},"pad":""#);
    let tail = "\"}}";
    let pad = payload.saturating_sub(head.len() + tail.len());
    let mut s = String::with_capacity(payload);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str(tail);
    s.into_bytes()
}

#[allow(clippy::too_many_arguments)]
async fn publish_step(
    nats: &async_nats::Client,
    pool: &mut Pool,
    setup: &Setup,
    subjects: &[String],
    phase: u64,
    rate: f64,
    duration: f64,
    payload: usize,
) -> anyhow::Result<Step> {
    let before = setup.metrics().await;
    let cpu0 = (setup.cpu_secs(), pool.cpu_secs());
    pool.measure(phase).await?;
    let start_us = worker::now_us();
    let total = (rate * duration).ceil().max(1.0) as u64;
    let mut per_channel = vec![0u64; subjects.len()];
    let began = Instant::now();
    for k in 0..total {
        sleep_until(began + Duration::from_secs_f64(k as f64 / rate)).await;
        let c = (k % subjects.len() as u64) as usize;
        nats.publish(subjects[c].clone(), event_body(phase, k, payload).into()).await.context("nats publish")?;
        per_channel[c] += 1;
    }
    nats.flush().await.context("nats flush")?;
    let publish_secs = began.elapsed().as_secs_f64().max(duration.min(total as f64 / rate));
    // Drain: until everything arrived or nothing moved for 2 s (bounded).
    let drain_deadline = Instant::now() + Duration::from_secs(20);
    let mut last = (u64::MAX, Instant::now());
    let out = loop {
        sleep(Duration::from_millis(500)).await;
        let out = pool.report(&per_channel).await?;
        if out.received >= out.expected || Instant::now() >= drain_deadline {
            break out;
        }
        if out.received != last.0 {
            last = (out.received, Instant::now());
        } else if last.1.elapsed() >= Duration::from_secs(2) {
            break out;
        }
    };
    let cpu1 = (setup.cpu_secs(), pool.cpu_secs());
    let metrics = setup.metrics().await.since(before);
    let span_secs = out.span_us.map_or(0.0, |(_, last)| last.saturating_sub(start_us) as f64 / 1e6);
    let node_cpu = cpu0.0.zip(cpu1.0).map(|(a, b)| b - a);
    Ok(Step { rate, published: total, publish_secs, span_secs, out, metrics, node_cpu, client_cpu: cpu1.1 - cpu0.1 })
}

async fn fanout(args: &Args, cluster: bool) -> anyhow::Result<()> {
    let nodes = args.nodes.unwrap_or(if cluster { 3 } else { 1 });
    let setup = Setup::new(args, nodes, true).await?;
    let r = fanout_run(args, cluster, &setup).await;
    setup.stop().await;
    r
}

async fn fanout_run(args: &Args, cluster: bool, setup: &Setup) -> anyhow::Result<()> {
    let name = if cluster { "cluster" } else { "fanout" };
    let n = args.n.unwrap_or(if cluster { 9_000 } else { 10_000 });
    let channels = args.channels.max(1);
    let subs_per_channel = n as f64 / channels as f64;
    let rate = match (args.rate, args.deliveries) {
        (Some(r), _) => r,
        (None, Some(d)) => d / subs_per_channel,
        (None, None) if cluster => 20_000.0 / subs_per_channel,
        (None, None) => 20.0,
    };
    let nats_url = setup.nats_url.clone().context("fanout needs NATS: start it (default) or pass --nats-url")?;
    let nats = async_nats::connect(&nats_url).await.context("connect to NATS")?;
    let workers = workers_for(args, n);
    check_capacity(args, n, workers)?;
    let run = std::process::id();
    let names: Vec<String> = (0..channels).map(|c| format!("broadcast:bench-{name}-{run}-{c}")).collect();
    let subjects: Vec<String> =
        names.iter().map(|c| format!("{}.ev.{}", args.subject_prefix, c.replacen(':', ".", 1))).collect();
    let spec = ConnectSpec {
        targets: setup.ws_targets(),
        secret: args.secret.clone(),
        user_prefix: format!("{name}{run}-"),
        first: 0,
        count: 0,
        src_ips: source_ips(args.src_ips),
        channels: names.clone(),
        concurrency: args.concurrency.unwrap_or(200).div_ceil(workers).max(1),
        timeout_ms: args.timeout_ms,
    };
    eprintln!("{name}: {n} subscribers over {channels} channel(s) on {} node(s), {workers} workers", setup.nodes.len());
    let mut pool = Pool::spawn(workers).await?;
    let c = pool.connect(n, &spec, Duration::from_secs(120 + n / 50)).await?;
    let tables = setup.tables().await.ok();
    // Warm-up (phase 0, not counted): NATS interest is in place on every node.
    let warm =
        publish_step(&nats, &mut pool, setup, &subjects, 0, (channels as f64 * 5.0).min(50.0), 2.0, args.payload)
            .await?;
    eprintln!("  warm-up: {:.1}% delivered", warm.delivered());

    let mut steps: Vec<Step> = Vec::new();
    if args.find_max {
        // Up from a quarter of the bar's rate; when even that fails, halve down (bounded).
        let up = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0];
        let down = [0.125, 0.0625, 0.03125, 0.015625];
        let mut going_down = false;
        let mut queue: Vec<f64> = up.to_vec();
        let mut i = 0;
        while i < queue.len() && steps.len() < up.len() + down.len() {
            let r = rate * queue[i];
            let phase = steps.len() as u64 + 1;
            eprintln!("  step {phase}: {r:.3} events/s ({:.0} deliveries/s offered)", r * subs_per_channel);
            let s = publish_step(&nats, &mut pool, setup, &subjects, phase, r, args.duration, args.payload).await?;
            let ok = if cluster { s.cluster_ok() } else { s.fanout_ok() };
            eprintln!(
                "    delivered {:.2}%, p99 {:.2} ms, {:.0}/s -> {}",
                s.delivered(),
                pct(&s.out.latency, 0.99),
                s.per_sec(),
                if ok { "ok" } else { "fails" }
            );
            steps.push(s);
            if going_down && ok {
                break;
            }
            if !ok {
                if steps.len() == 1 && !going_down {
                    going_down = true;
                    queue = down.to_vec();
                    i = 0;
                    continue;
                }
                if !going_down {
                    break;
                }
            }
            i += 1;
        }
    } else {
        steps.push(publish_step(&nats, &mut pool, setup, &subjects, 1, rate, args.duration, args.payload).await?);
    }
    pool.close().await;

    let bar_step = steps.iter().find(|s| (s.rate - rate).abs() < 1e-9);
    let max_ok = steps
        .iter()
        .filter(|s| if cluster { s.cluster_ok() } else { s.fanout_ok() })
        .map(|s| s.rate)
        .fold(None, |a: Option<f64>, r| Some(a.map_or(r, |a| a.max(r))));
    let title = format!(
        "{name}: {n} subscribers, {} node(s), {channels} channel(s), {rate:.2} events/s ({:.0} deliveries/s offered), {} B events",
        setup.nodes.len(),
        rate * subs_per_channel,
        args.payload
    );
    let mut t = Table::new(title);
    t.row("subscribers requested / open", format!("{n} / {} (failed {})", c.ok, c.failed));
    if let Some((conns, chans, subs)) = tables {
        t.row("nodes /health connections/channels/subs", format!("{conns} / {chans} / {subs}"));
    }
    t.row("connect rate", format!("{:.0} conn/s", c.ok as f64 / c.elapsed.as_secs_f64().max(1e-9)));
    for s in &steps {
        let label = if steps.len() > 1 { format!(" @{:.2} ev/s", s.rate) } else { String::new() };
        let l = &s.out.latency;
        t.row(&format!("published{label}"), format!("{} events in {:.1} s", s.published, s.publish_secs));
        t.row(
            &format!("deliveries/s{label}"),
            format!(
                "{:.0} (offered {:.0}; first publish to last receipt {:.1} s)",
                s.per_sec(),
                s.rate * subs_per_channel,
                s.span_secs
            ),
        );
        t.row(
            &format!("CPU node / clients{label}"),
            format!(
                "{} / {:.1} s{}",
                s.node_cpu.map_or("?".into(), |c| format!("{c:.1}")),
                s.client_cpu,
                s.node_us_per_delivery().map_or(String::new(), |u| format!(" ({u:.2} us node CPU per delivery)"))
            ),
        );
        let deliv_pass = s.delivered() >= 99.0;
        t.bar(
            &format!("delivered{label}"),
            format!("{:.2}% ({} / {})", s.delivered(), s.out.received, s.out.expected),
            ">= 99%",
            deliv_pass,
        );
        if cluster {
            t.bar(&format!("latency p50{label}"), format!("{:.2} ms", pct(l, 0.5)), "<= 1 ms", pct(l, 0.5) <= 1.0);
            t.bar(&format!("latency p99{label}"), format!("{:.2} ms", pct(l, 0.99)), "<= 5 ms", pct(l, 0.99) <= 5.0);
        } else {
            t.row(&format!("latency p50{label}"), format!("{:.2} ms", pct(l, 0.5)));
            t.bar(&format!("latency p99{label}"), format!("{:.2} ms", pct(l, 0.99)), "<= 50 ms", pct(l, 0.99) <= 50.0);
        }
        t.row(&format!("latency p99.9 / max{label}"), format!("{:.2} / {:.2} ms", pct(l, 0.999), ms(l.max())));
        t.row(
            &format!("node drops / slow-consumer closes{label}"),
            format!("{} / {}", s.metrics.drops, s.metrics.slow_consumer_closes),
        );
        t.row(&format!("client connections lost (total){label}"), format!("{} {:?}", s.out.lost, s.out.close_codes));
    }
    if args.find_max {
        t.row(
            "highest rate meeting the bar",
            match max_ok {
                Some(r) => format!("{r:.2} events/s = {:.0} deliveries/s", r * subs_per_channel),
                None => "none of the steps".into(),
            },
        );
    }
    reached_note(&mut t, "subscribers", n, c.ok, &c.errors);
    let default_size = if cluster { n == 9_000 && setup.nodes.len() == 3 } else { n == 10_000 };
    if !default_size {
        t.note("size differs from the issue's bar; verdicts are for this size only");
    }
    t.print();
    let bars = match bar_step {
        Some(s) if cluster => {
            json!({"delivered_ge_99": s.delivered() >= 99.0, "p50_le_1ms": pct(&s.out.latency, 0.5) <= 1.0, "p99_le_5ms": pct(&s.out.latency, 0.99) <= 5.0, "all": s.cluster_ok() && c.ok >= n})
        }
        Some(s) => {
            json!({"delivered_ge_99": s.delivered() >= 99.0, "p99_le_50ms": pct(&s.out.latency, 0.99) <= 50.0, "all": s.fanout_ok() && c.ok >= n})
        }
        None => json!({"all": false, "note": "the bar's rate was not reached by the ladder"}),
    };
    emit_json(
        name,
        json!({"n": n, "nodes": setup.nodes.len(), "channels": channels, "rate_events_per_s": rate,
               "offered_deliveries_per_s": rate * subs_per_channel, "duration_s": args.duration,
               "payload_bytes": args.payload, "find_max": args.find_max, "workers": workers,
               "gateway_env": args.gateway_env}),
        setup,
        json!({
            "requested": n, "connected": c.ok, "failed": c.failed, "errors": c.errors, "reached": c.ok >= n,
            "health_tables": tables.map(|(a, b, c)| json!({"connections": a, "channels": b, "subscriptions": c})),
            "handshake": lat_json(&c.handshake),
            "steps": steps.iter().map(Step::json).collect::<Vec<_>>(),
            "max_rate_meeting_bar": max_ok, "max_deliveries_per_s_meeting_bar": max_ok.map(|r| r * subs_per_channel),
        }),
        bars,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// churn

/// Waits (bounded) until the nodes' tables are empty; returns the last reading.
async fn wait_empty(setup: &Setup, limit: Duration) -> (u64, u64, u64) {
    let deadline = Instant::now() + limit;
    loop {
        let t = setup.tables().await.unwrap_or((u64::MAX, u64::MAX, u64::MAX));
        if t == (0, 0, 0) || Instant::now() >= deadline {
            return t;
        }
        sleep(Duration::from_millis(200)).await;
    }
}

async fn churn(args: &Args) -> anyhow::Result<()> {
    let setup = Setup::new(args, args.nodes.unwrap_or(1), args.fabric).await?;
    let r = churn_run(args, &setup).await;
    setup.stop().await;
    r
}

async fn churn_run(args: &Args, setup: &Setup) -> anyhow::Result<()> {
    let cycles = args.cycles.unwrap_or(100_000);
    let first = (cycles / 10).max(1);
    let workers = args.workers.unwrap_or(2);
    let concurrency = args.concurrency.unwrap_or(64);
    let run = std::process::id();
    let spec = ChurnSpec {
        targets: setup.ws_targets(),
        secret: args.secret.clone(),
        user_prefix: format!("churn{run}-"),
        first: 0,
        count: 0,
        src_ips: source_ips(args.src_ips),
        channel: format!("broadcast:bench-churn-{run}"),
        concurrency,
        timeout_ms: args.timeout_ms,
        deadline_ms: 600_000 + cycles * 20,
    };
    let limit = Duration::from_millis(spec.deadline_ms + 60_000);
    sleep(Duration::from_millis(500)).await;
    let rss_start = setup.rss_kib();
    eprintln!("churn: {cycles} cycles, concurrency {concurrency}, {workers} workers");
    let mut pool = Pool::spawn(workers).await?;
    let a = pool.churn(first, &spec, limit).await?;
    let tables_a = wait_empty(setup, Duration::from_secs(30)).await;
    sleep(Duration::from_secs(1)).await;
    let rss_a = setup.rss_kib();
    eprintln!("  first {first} cycles: {} ok, RSS {:?} KiB, tables {tables_a:?}", a.ok, rss_a);
    let b = pool.churn(cycles - first, &ChurnSpec { first, ..spec.clone() }, limit).await?;
    let tables_b = wait_empty(setup, Duration::from_secs(30)).await;
    sleep(Duration::from_secs(1)).await;
    let rss_b = setup.rss_kib();
    let ips = setup.tracked_ips().await;
    pool.close().await;

    let ok = a.ok + b.ok;
    let failed = a.failed + b.failed;
    let mut errors = a.errors.clone();
    proto::merge_counts(&mut errors, &b.errors);
    let mut hs = a.handshake.clone();
    let _ = hs.add(&b.handshake);
    let secs = (a.elapsed + b.elapsed).as_secs_f64();
    let growth = match (rss_a, rss_b) {
        (Some(x), Some(y)) if x > 0 => Some((y as f64 - x as f64) / x as f64 * 100.0),
        _ => None,
    };
    let empty = tables_b == (0, 0, 0);
    let pass_rss = growth.is_some_and(|g| g <= 5.0) && cycles >= 100_000 && ok == cycles;
    let mut t = Table::new(format!("churn: {cycles} connect/subscribe/disconnect cycles, concurrency {concurrency}"));
    t.row("cycles completed / failed", format!("{ok} / {failed}"));
    t.row("cycle rate", format!("{:.0} cycles/s ({secs:.1} s)", ok as f64 / secs.max(1e-9)));
    t.row("handshake p50 / p99", format!("{:.2} / {:.2} ms", pct(&hs, 0.5), pct(&hs, 0.99)));
    let mib = |k: Option<u64>| k.map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    t.row("node RSS at start", mib(rss_start));
    t.row(&format!("node RSS after {first} cycles"), mib(rss_a));
    t.row(&format!("node RSS after {cycles} cycles"), mib(rss_b));
    match growth {
        Some(g) => t.bar_opt(
            "RSS growth since the first 10%",
            format!("{g:+.2}%"),
            "<= 5% at 100,000",
            (cycles >= 100_000).then_some(pass_rss),
        ),
        None => t.row("RSS growth", "unknown (pass --pid with --target)"),
    }
    t.bar(
        "tables empty at end (conns/channels/subs)",
        format!("{} / {} / {}", tables_b.0, tables_b.1, tables_b.2),
        "0 / 0 / 0",
        empty,
    );
    t.row("tracked client IPs at end", ips.to_string());
    reached_note(&mut t, "cycles", cycles, ok, &errors);
    if cycles < 100_000 {
        t.note("cycles below the bar's 100,000: the RSS bar is not judged");
    }
    t.print();
    emit_json(
        "churn",
        json!({"cycles": cycles, "concurrency": concurrency, "workers": workers, "first_phase_cycles": first,
               "fabric": args.fabric, "gateway_env": args.gateway_env}),
        setup,
        json!({
            "ok": ok, "failed": failed, "errors": errors, "reached": ok == cycles,
            "cycles_per_s": ok as f64 / secs.max(1e-9), "handshake": lat_json(&hs),
            "rss_start_kib": rss_start, "rss_after_first_kib": rss_a, "rss_end_kib": rss_b, "rss_growth_pct": growth,
            "tables_after_first": {"connections": tables_a.0, "channels": tables_a.1, "subscriptions": tables_a.2},
            "tables_end": {"connections": tables_b.0, "channels": tables_b.1, "subscriptions": tables_b.2},
            "tracked_ips_end": ips,
        }),
        json!({"rss_within_5pct": pass_rss, "tables_empty": empty}),
    );
    Ok(())
}
