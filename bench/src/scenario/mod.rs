//! The scenarios (`idle`, `fanout`/`cluster`, `churn`, `resume`, `soak`) and what they share: running
//! against a [`Setup`] that is always stopped, sizing the worker pool and the connect spec.

pub mod churn;
pub mod fanout;
pub mod idle;
pub mod resume;
pub mod soak;

use anyhow::bail;

use crate::{
    Args, Scenario,
    pool::source_ips,
    proto::{Clients, ConnectSpec},
    setup::Setup,
};

/// Runs `body` against `setup`, then stops the setup (also when `body` failed).
pub async fn run_in(setup: Setup, body: impl AsyncFnOnce(&Setup) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let r = body(&setup).await;
    setup.stop().await;
    r
}

/// Worker processes for `n` connections: `--workers`, or enough for `--per-worker` (at least 2).
pub fn workers_for(args: &Args, n: u64) -> usize {
    args.workers.unwrap_or_else(|| (n.div_ceil(args.per_worker.max(1)) as usize).max(2))
}

/// Fails when one worker would hold more connections than a process can open; warns
/// when an idle run exceeds what one node can hold.
pub fn check_capacity(args: &Args, n: u64, workers: usize) -> anyhow::Result<()> {
    let per = n.div_ceil(workers as u64);
    if per > 19_000 {
        bail!("{n} connections over {workers} workers is {per} per process; one process holds ~19,000 (use --workers)");
    }
    if n > 18_500 * args.targets.len().max(1) as u64 && args.scenario == Scenario::Idle {
        eprintln!("warning: {n} connections on one node exceed its ~19,000 open files; expect failures");
    }
    Ok(())
}

/// The clients of a run on the setup's nodes, users `<user_prefix>…`; the pool fills in
/// each worker's share.
pub fn clients(args: &Args, setup: &Setup, user_prefix: String) -> Clients {
    Clients {
        targets: setup.ws_targets(),
        secret: args.secret.clone(),
        user_prefix,
        first: 0,
        count: 0,
        src_ips: source_ips(args.src_ips),
    }
}

/// The connect template for subscribers of `channels` on the setup's nodes (the pool
/// fills in each worker's share); users are `<user_prefix><index>`.
pub fn connect_spec(
    args: &Args,
    setup: &Setup,
    user_prefix: String,
    channels: Vec<String>,
    workers: usize,
) -> ConnectSpec {
    ConnectSpec {
        clients: clients(args, setup, user_prefix),
        channels,
        concurrency: args.concurrency.unwrap_or(200).div_ceil(workers).max(1),
        timeout_ms: args.timeout_ms,
        socketio: false,
    }
}
