//! `gateway-bench`: load benchmark for the gateway (issue 4).
//!
//! ```text
//! gateway-bench idle    [--n 15000]                       RSS per idle subscribed connection
//! gateway-bench fanout  [--n 10000 --rate 20 --duration 10] [--find-max] [--socketio]
//! gateway-bench cluster [--nodes 3 --n 9000 --deliveries 20000 --duration 10]
//! gateway-bench churn   [--cycles 100000 --concurrency 64]
//! gateway-bench resume  [--subscribers 6000 --channels 60 --rate 500 --duration 30 --kill-after 15]
//! gateway-bench soak    [--duration 60 --n 1000 --rate 10 --churn-rate 20 --req-rate 40 --req-clients 40]
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
mod native;
mod pool;
mod proto;
mod report;
mod scenario;
mod setup;
mod sio;
mod token;
mod tracked;
mod worker;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

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
    /// History channels on 3 nodes under load; one node is `kill -9`ed and its clients
    /// resume elsewhere with `recover`: losses, duplicates, catch-up time, history's cost.
    Resume,
    /// Churn, fan-out and requests at once for `--duration`; RSS, fds, queued bytes and
    /// tasks before, during and after, and whether they return to idle.
    Soak,
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
    /// Connections (idle, fanout, cluster, resume, soak). Defaults: 15000 / 10000 / 9000 / 6000 / 1000.
    #[arg(long, visible_alias = "subscribers")]
    n: Option<u64>,
    /// Events per second published (all channels together). Defaults: fanout 20, resume 500, soak 10.
    #[arg(long)]
    rate: Option<f64>,
    /// Target deliveries per second (sets the rate from the subscriber count). Default cluster 20000.
    #[arg(long)]
    deliveries: Option<f64>,
    /// Seconds each measured publishing phase lasts (resume: the whole publishing on
    /// history channels, the kill included; soak: the whole load). Defaults: 10; resume 30; soak 60.
    #[arg(long)]
    duration: Option<f64>,
    /// Shared channels the subscribers are spread over (the publisher round-robins them).
    /// Defaults: 1; resume 60; soak 4.
    #[arg(long)]
    channels: Option<usize>,
    /// resume: seconds after publishing on history channels began that one node is
    /// `kill -9`ed (default: half of --duration).
    #[arg(long)]
    kill_after: Option<f64>,
    /// resume: a client of the killed node reconnects after a uniform random delay of
    /// 0..=this many ms.
    #[arg(long, default_value_t = 1000)]
    jitter_ms: u64,
    /// Event body size on NATS in bytes (`{"event","data"}`).
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// fanout/cluster: step the rate up and report the highest that still meets the bar.
    #[arg(long)]
    find_max: bool,
    /// fanout: measure native subscribers, then the same number of Socket.IO
    /// subscribers (Engine.IO over WebSocket) at the same rate on the same node, on a
    /// `project:` channel both times.
    #[arg(long)]
    socketio: bool,
    /// Churn cycles.
    #[arg(long)]
    cycles: Option<u64>,
    /// soak: seconds of load before the RSS reference is read (default: a fifth of
    /// --duration, 5..=120).
    #[arg(long)]
    warmup: Option<f64>,
    /// soak: connect → subscribe → close cycles per second (at most 64 in flight).
    #[arg(long, default_value_t = 20.0)]
    churn_rate: f64,
    /// soak: `request` frames per second, all request clients together.
    #[arg(long, default_value_t = 40.0)]
    req_rate: f64,
    /// soak: connections sending requests (keep under 1.6 requests/s each: the node's
    /// default rate limit is 100 frames a minute per connection).
    #[arg(long, default_value_t = 40)]
    req_clients: usize,
    /// soak: readings of the node under load after the warm-up (the last at the end).
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// soak: most RSS growth allowed between the warm-up and the end of the load, %.
    #[arg(long, default_value_t = 10.0)]
    rss_bound: f64,
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

/// Runs the chosen scenario.
async fn run(args: Args) -> anyhow::Result<()> {
    match args.scenario {
        Scenario::Idle => scenario::idle::run(&args).await,
        Scenario::Fanout => scenario::fanout::run(&args, false).await,
        Scenario::Cluster => scenario::fanout::run(&args, true).await,
        Scenario::Churn => scenario::churn::run(&args).await,
        Scenario::Resume => scenario::resume::run(&args).await,
        Scenario::Soak => scenario::soak::run(&args).await,
        Scenario::Worker => Ok(()),
    }
}
