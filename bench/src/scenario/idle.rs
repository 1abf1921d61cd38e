//! `idle`: N authenticated, subscribed connections held open; the node's RSS per connection.

use std::time::Duration;

use serde_json::json;
use tokio::time::sleep;

use super::{check_capacity, connect_spec, run_in, workers_for};
use crate::{
    Args,
    pool::{ConnectOutcome, Pool},
    report::{Table, emit_json, lat_json, ms, pct, tables_json},
    setup::Setup,
};

/// Runs the scenario: `--n` connections (default 15,000).
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let n = args.n.unwrap_or(15_000);
    let setup = Setup::new(args, args.nodes.unwrap_or(1), args.fabric).await?;
    run_in(setup, async |setup| measure(args, n, setup).await).await
}

async fn measure(args: &Args, n: u64, setup: &Setup) -> anyhow::Result<()> {
    let workers = workers_for(args, n);
    check_capacity(args, n, workers)?;
    sleep(Duration::from_millis(500)).await;
    let rss_before = setup.rss_kib();
    let run = std::process::id();
    let channel = format!("broadcast:bench-idle-{run}");
    let spec = connect_spec(args, setup, format!("idle{run}-"), vec![channel], workers);
    eprintln!("idle: {n} connections over {workers} workers to {} node(s)", setup.nodes.len());
    let mut pool = Pool::spawn(workers).await?;
    let limit = Duration::from_secs(120 + n / 50);
    let ConnectOutcome { totals: c, ready } = pool.connect(n, &spec, limit).await?;
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
    t.row("subscribed p50 / p99", format!("{:.2} / {:.2} ms", pct(&ready, 0.5), pct(&ready, 0.99)));
    match (rss_before, rss_after) {
        (Some(b), Some(a)) => {
            t.row("node RSS before / after", format!("{:.1} / {:.1} MiB", b as f64 / 1024.0, a as f64 / 1024.0))
        }
        _ => t.row("node RSS", "unknown (pass --pid with --target)"),
    }
    let pass_rss = per_conn_kib.is_some_and(|k| k <= 8.0) && c.ok >= n && n >= 15_000;
    t.sized_bar(
        "RSS per connection",
        per_conn_kib.map(|k| format!("{k:.2} KiB")),
        "<= 8 KiB at 15,000",
        n >= 15_000,
        pass_rss,
        ("RSS per connection", "unknown"),
    );
    if n < 15_000 {
        t.note(format!("n = {n} is below the bar's 15,000: the bar is not judged"));
    }
    t.reached_note("connections", n, c.ok, &c.errors);
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
            "health_tables": tables.map(tables_json),
            "connect_rate_per_s": rate, "connect_seconds": c.elapsed.as_secs_f64(),
            "handshake": lat_json(&c.handshake), "subscribed": lat_json(&ready),
        }),
        json!({"rss_per_conn_le_8kib_at_15k": pass_rss}),
    );
    Ok(())
}
