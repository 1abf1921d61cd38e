//! `churn`: connect → subscribe → disconnect cycles; the node's RSS drift after the first
//! tenth and whether its tables are empty at the end.

use std::time::Duration;

use serde_json::json;
use tokio::time::{Instant, sleep};

use super::{clients, run_in};
use crate::{
    Args,
    pool::Pool,
    proto::{self, ChurnSpec},
    report::{Table, emit_json, lat_json, pct, tables_json},
    setup::Setup,
};

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

/// Runs the scenario: `--cycles` cycles (default 100,000), the first tenth as a baseline.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let setup = Setup::new(args, args.nodes.unwrap_or(1), args.fabric).await?;
    run_in(setup, async |setup| measure(args, setup).await).await
}

async fn measure(args: &Args, setup: &Setup) -> anyhow::Result<()> {
    let cycles = args.cycles.unwrap_or(100_000);
    let first = (cycles / 10).max(1);
    let workers = args.workers.unwrap_or(2);
    let concurrency = args.concurrency.unwrap_or(64);
    let run = std::process::id();
    let spec = ChurnSpec {
        clients: clients(args, setup, format!("churn{run}-")),
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
    let b = pool
        .churn(
            cycles - first,
            &ChurnSpec { clients: spec.clients.share(first, spec.clients.count), ..spec.clone() },
            limit,
        )
        .await?;
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
    t.sized_bar(
        "RSS growth since the first 10%",
        growth.map(|g| format!("{g:+.2}%")),
        "<= 5% at 100,000",
        cycles >= 100_000,
        pass_rss,
        ("RSS growth", "unknown (pass --pid with --target)"),
    );
    t.bar(
        "tables empty at end (conns/channels/subs)",
        format!("{} / {} / {}", tables_b.0, tables_b.1, tables_b.2),
        "0 / 0 / 0",
        empty,
    );
    t.row("tracked client IPs at end", ips.to_string());
    t.reached_note("cycles", cycles, ok, &errors);
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
            "tables_after_first": tables_json(tables_a),
            "tables_end": tables_json(tables_b),
            "tracked_ips_end": ips,
        }),
        json!({"rss_within_5pct": pass_rss, "tables_empty": empty}),
    );
    Ok(())
}
