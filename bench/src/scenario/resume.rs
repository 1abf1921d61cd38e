//! `resume`: recovery after a node crash, and what history costs in steady state.
//!
//! Three clustered nodes (NATS with JetStream, Redis) hold `--subscribers` clients spread
//! over the nodes; client `i` joins `project:r<i % channels>` (history) and
//! `broadcast:r<i % channels>` (none). The bench publishes `--rate` events/s with core
//! NATS publishes to `gw.ev.<namespace>.r<c>`, round-robin over the channels, each
//! carrying the channel's next sequence number (`bench_s`):
//!
//! 1. history off: `--kill-after` seconds on the `broadcast:` channels;
//! 2. history on: `--duration` seconds on the `project:` channels. The same window of
//!    both phases (after a lead-in) gives deliveries/s and node CPU per delivery with and
//!    without history, same subscribers, same rate;
//! 3. `--kill-after` seconds into phase 2 node 0 is `kill -9`ed. Its clients reconnect
//!    after a uniform random delay (`--jitter-ms`) to the other nodes and resubscribe with
//!    `recover` from the last position each saw. After the publisher stops and a drain,
//!    every client's received sequence numbers are compared with what was published:
//!    events lost and duplicated, `recovered` true/false, and the time from the kill to
//!    the resubscribe answer and until the client is caught up: its first live event
//!    after the replay (or the answer itself when the publisher had stopped by then, so
//!    the replay held everything).
//!
//! The default rate (500 events/s, 50,000 deliveries/s) is what this 2-core machine
//! carries with the clients on the same cores; the issue's 2,000 events/s (`--rate
//! 2000`, 200,000 deliveries/s) saturates it: the nodes fall behind the publisher and
//! the resumes come after the history window.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::task::AbortOnDropHandle;

use super::{check_capacity, clients, workers_for};
use crate::{
    Args,
    pool::Pool,
    proto::{Cmd, Ev, ResumeSpec, TrackReport, merge_counts, new_hist},
    report::{Table, emit_json, lat_json, ms, pct},
    setup::Setup,
    worker::now_us,
};

/// Events published so far per channel (the last sequence number of each).
type Counts = Arc<Vec<AtomicU64>>;

fn snapshot(c: &Counts) -> Vec<u64> {
    c.iter().map(|a| a.load(Ordering::Relaxed)).collect()
}

/// Publishes `rate` events/s round-robin over `subjects` for `secs`; each event's
/// `bench_s` is its channel's next sequence number, counted in `counts` once published.
async fn publish(
    nats: async_nats::Client,
    subjects: Vec<String>,
    rate: f64,
    secs: f64,
    payload: usize,
    counts: Counts,
) -> anyhow::Result<()> {
    let total = (rate * secs).ceil().max(1.0) as u64;
    let began = Instant::now();
    for k in 0..total {
        sleep_until(began + Duration::from_secs_f64(k as f64 / rate)).await;
        let c = (k % subjects.len() as u64) as usize;
        let seq = counts[c].load(Ordering::Relaxed) + 1;
        let head = format!(r#"{{"event":"bench","data":{{"bench_s":{seq},"pad":""#);
        let pad = payload.saturating_sub(head.len() + 3);
        let body = format!("{head}{}\"}}}}", "x".repeat(pad));
        nats.publish(subjects[c].clone(), body.into()).await.context("nats publish")?;
        counts[c].store(seq, Ordering::Relaxed);
    }
    nats.flush().await.context("nats flush")
}

/// Starts [`publish`] as a task (aborted when dropped) with fresh counts.
fn start_publisher(
    nats: &async_nats::Client,
    subjects: &[String],
    rate: f64,
    secs: f64,
    payload: usize,
) -> (AbortOnDropHandle<anyhow::Result<()>>, Counts) {
    let counts: Counts = Arc::new(subjects.iter().map(|_| AtomicU64::new(0)).collect());
    let task = tokio::spawn(publish(nats.clone(), subjects.to_vec(), rate, secs, payload, counts.clone()));
    (AbortOnDropHandle::new(task), counts)
}

/// Waits for a publisher to finish (bounded by its length plus a margin).
async fn finish(task: AbortOnDropHandle<anyhow::Result<()>>, secs: f64) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs_f64(secs + 30.0), task)
        .await
        .context("publisher did not finish")?
        .context("publisher task")?
}

/// All workers' counts of the `resume` clients, merged.
async fn track(pool: &mut Pool, published: &[u64]) -> anyhow::Result<TrackReport> {
    let mut r = TrackReport::default();
    for ev in pool.call_all(&Cmd::Track { published: published.to_vec() }, Duration::from_secs(30)).await? {
        let Ev::Tracked(t) = ev else { bail!("unexpected worker answer {ev:?}") };
        let sum = |a: &mut u64, b: u64| *a += b;
        for (a, b) in [
            (&mut r.clients, t.clients),
            (&mut r.open, t.open),
            (&mut r.history_received, t.history_received),
            (&mut r.plain_received, t.plain_received),
            (&mut r.lost, t.lost),
            (&mut r.duplicated, t.duplicated),
            (&mut r.out_of_order, t.out_of_order),
            (&mut r.clients_with_loss, t.clients_with_loss),
            (&mut r.clients_with_dup, t.clients_with_dup),
            (&mut r.reconnected, t.reconnected),
            (&mut r.recovered_true, t.recovered_true),
            (&mut r.recovered_false, t.recovered_false),
            (&mut r.recovered_missing, t.recovered_missing),
            (&mut r.replayed, t.replayed),
        ] {
            sum(a, b);
        }
        r.max_lost = r.max_lost.max(t.max_lost);
        r.max_dup = r.max_dup.max(t.max_dup);
        merge_counts(&mut r.close_codes, &t.close_codes);
        merge_counts(&mut r.gave_up, &t.gave_up);
        merge_counts(&mut r.retries, &t.retries);
        r.resumes.extend(t.resumes);
    }
    Ok(r)
}

/// A steady-state window of one phase.
struct Window {
    secs: f64,
    /// Events published in the window.
    published: u64,
    /// Events received by the clients in the window.
    deliveries: u64,
    /// CPU seconds of all nodes / of nats-server in the window.
    node_cpu: Option<f64>,
    nats_cpu: Option<f64>,
}

impl Window {
    fn per_sec(&self) -> f64 {
        self.deliveries as f64 / self.secs.max(1e-9)
    }
    fn node_us_per_delivery(&self) -> Option<f64> {
        self.node_cpu.filter(|_| self.deliveries > 0).map(|c| c * 1e6 / self.deliveries as f64)
    }
    fn json(&self) -> Value {
        json!({"seconds": self.secs, "published": self.published, "deliveries": self.deliveries,
               "deliveries_per_s": self.per_sec(), "node_cpu_seconds": self.node_cpu,
               "nats_cpu_seconds": self.nats_cpu, "node_cpu_us_per_delivery": self.node_us_per_delivery()})
    }
}

/// Measures `secs` of a running phase: deliveries counted by `received` (history or plain).
async fn window(
    pool: &mut Pool,
    setup: &Setup,
    secs: f64,
    counts: &Counts,
    received: fn(&TrackReport) -> u64,
) -> anyhow::Result<Window> {
    let total = |c: &Counts| snapshot(c).iter().sum::<u64>();
    let (r0, p0, n0, j0, t0) =
        (track(pool, &[]).await?, total(counts), setup.cpu_secs(), setup.nats_cpu_secs(), Instant::now());
    sleep(Duration::from_secs_f64(secs)).await;
    let (r1, p1, n1, j1) = (track(pool, &[]).await?, total(counts), setup.cpu_secs(), setup.nats_cpu_secs());
    Ok(Window {
        secs: t0.elapsed().as_secs_f64(),
        published: p1 - p0,
        deliveries: received(&r1).saturating_sub(received(&r0)),
        node_cpu: n0.zip(n1).map(|(a, b)| b - a),
        nats_cpu: j0.zip(j1).map(|(a, b)| b - a),
    })
}

/// Polls the clients until none misses an event and none is still reconnecting, or
/// nothing moved for 3 s while none is reconnecting (at most `limit`: a client retries
/// an attempt that took 10 s).
async fn drain(pool: &mut Pool, published: &[u64], limit: Duration) -> anyhow::Result<TrackReport> {
    let deadline = Instant::now() + limit;
    let mut last = (u64::MAX, Instant::now());
    loop {
        let r = track(pool, published).await?;
        let reconnecting = reconnecting(&r);
        if (r.lost == 0 && reconnecting == 0) || Instant::now() >= deadline {
            return Ok(r);
        }
        let moved = r.history_received + r.reconnected;
        if moved != last.0 {
            last = (moved, Instant::now());
        } else if reconnecting == 0 && last.1.elapsed() >= Duration::from_secs(3) {
            return Ok(r);
        }
        sleep(Duration::from_millis(500)).await;
    }
}

/// Clients neither open nor given up: between a lost connection and a resume.
fn reconnecting(r: &TrackReport) -> u64 {
    r.clients.saturating_sub(r.open + r.gave_up.values().sum::<u64>())
}

/// Runs the scenario on nodes it starts (it kills one, so no `--target`).
pub async fn run(args: &Args) -> anyhow::Result<()> {
    if !args.targets.is_empty() {
        bail!("resume kills a node: it starts its own (no --target)");
    }
    let mut setup = Setup::new(args, args.nodes.unwrap_or(3).max(2), true).await?;
    let r = measure(args, &mut setup).await;
    setup.stop().await;
    r
}

/// Times from the kill (µs) to each resubscribe answer and to the moment each resumed
/// client was caught up: its first live event after the replay, or the answer itself when
/// it came after the last publish (`published_us`: the replay held everything). Also how
/// many resumes were not caught up.
fn resume_hists(resumes: &[(u64, u64)], kill_us: u64, published_us: u64) -> (Histogram<u64>, Histogram<u64>, u64) {
    let (mut answer, mut caught_up, mut behind) = (new_hist(), new_hist(), 0);
    let since_kill = |t: u64| t.saturating_sub(kill_us).clamp(1, 120_000_000);
    for &(a, l) in resumes {
        let _ = answer.record(since_kill(a));
        let done = match l {
            0 if a >= published_us => a,
            0 => {
                behind += 1;
                continue;
            }
            l => l,
        };
        let _ = caught_up.record(since_kill(done));
    }
    (answer, caught_up, behind)
}

async fn measure(args: &Args, setup: &mut Setup) -> anyhow::Result<()> {
    let n = args.n.unwrap_or(6_000);
    let channels = args.channels.unwrap_or(60).max(1);
    let rate = args.rate.unwrap_or(500.0);
    let duration = args.duration.unwrap_or(30.0);
    let kill_after = args.kill_after.unwrap_or(duration / 2.0).clamp(1.0, duration);
    let lead = (kill_after / 4.0).min(2.0);
    let nodes = setup.nodes.len();
    let nats_url = setup.nats_url.clone().context("resume needs NATS")?;
    let nats = async_nats::connect(&nats_url).await.context("connect to NATS")?;
    let workers = workers_for(args, n);
    check_capacity(args, n, workers)?;
    let hist: Vec<String> = (0..channels).map(|c| format!("project:r{c}")).collect();
    let plain: Vec<String> = (0..channels).map(|c| format!("broadcast:r{c}")).collect();
    let subject = |ch: &String| format!("{}.ev.{}", args.subject_prefix, ch.replacen(':', ".", 1));
    let (hist_subjects, plain_subjects): (Vec<String>, Vec<String>) =
        (hist.iter().map(subject).collect(), plain.iter().map(subject).collect());
    let spec = ResumeSpec {
        clients: clients(args, setup, format!("resume{}-", std::process::id())),
        history: hist.clone(),
        plain: plain.clone(),
        concurrency: args.concurrency.unwrap_or(200).div_ceil(workers).max(1),
        timeout_ms: args.timeout_ms,
        jitter_ms: args.jitter_ms,
    };
    let subs = n as f64 / channels as f64;
    eprintln!("resume: {n} subscribers on {channels} channels x 2, {nodes} nodes, {rate} events/s, {workers} workers");
    let mut pool = Pool::spawn(workers).await?;
    let c = pool
        .connect_with(n, Duration::from_secs(120 + n / 50), |first, count| {
            Cmd::Resume(ResumeSpec { clients: spec.clients.share(first, count), ..spec.clone() })
        })
        .await?
        .totals;
    let tables = setup.tables().await.ok();

    // 1. History off: the broadcast channels.
    eprintln!("  history off: {kill_after:.0} s on broadcast:r*");
    let (task, counts) = start_publisher(&nats, &plain_subjects, rate, kill_after, args.payload);
    sleep(Duration::from_secs_f64(lead)).await;
    let off = window(&mut pool, setup, kill_after - lead, &counts, |r| r.plain_received).await?;
    finish(task, kill_after).await?;
    let off_published: u64 = snapshot(&counts).iter().sum();
    sleep(Duration::from_secs(2)).await;
    let off_received = track(&mut pool, &[]).await?.plain_received;

    // 2. History on: the project channels, the same window; then the kill.
    eprintln!("  history on: {duration:.0} s on project:r*, node 0 killed at {kill_after:.1} s");
    let (task, counts) = start_publisher(&nats, &hist_subjects, rate, duration, args.payload);
    sleep(Duration::from_secs_f64(lead)).await;
    let on = window(&mut pool, setup, kill_after - lead, &counts, |r| r.history_received).await?;
    let kill_us = now_us();
    let at_kill: u64 = snapshot(&counts).iter().sum();
    setup.kill9(0).await?;
    let killed_clients = (0..n).filter(|i| i % nodes as u64 == 0).count() as u64;
    let kill_at = Instant::now();
    while !task.is_finished() && kill_at.elapsed() < Duration::from_secs_f64(duration + 30.0) {
        sleep(Duration::from_secs(2)).await;
        let r = track(&mut pool, &[]).await?;
        eprintln!(
            "  … {:.0}s after the kill: open {}, reconnected {}, recovered {}/{} (true/false), gave up {}",
            kill_at.elapsed().as_secs_f64(),
            r.open,
            r.reconnected,
            r.recovered_true,
            r.recovered_false,
            r.gave_up.values().sum::<u64>()
        );
    }
    finish(task, duration).await?;
    let published_us = now_us();
    let published = snapshot(&counts);
    let total_published: u64 = published.iter().sum();
    let r = drain(&mut pool, &published, Duration::from_secs(90)).await?;
    let drained_s = Instant::now().duration_since(kill_at).as_secs_f64();
    pool.close().await;

    let (answer, caught_up, behind) = resume_hists(&r.resumes, kill_us, published_us);
    let off_expected = off_published as f64 * subs;
    let gave_up: u64 = r.gave_up.values().sum();
    let cost = on.node_us_per_delivery().zip(off.node_us_per_delivery()).map(|(a, b)| (a / b - 1.0) * 100.0);
    let title = format!(
        "resume: {n} subscribers, {nodes} nodes, {channels} history channels (+{channels} without), {rate:.0} events/s ({:.0} deliveries/s offered), kill -9 of node 0 at {kill_after:.1} s",
        rate * subs
    );
    let mut t = Table::new(title);
    t.row("subscribers requested / open", format!("{n} / {} (failed {})", c.ok, c.failed));
    if let Some((conns, chans, s)) = tables {
        t.row("nodes /health connections/channels/subs", format!("{conns} / {chans} / {s}"));
    }
    let cpu = |w: &Window| {
        format!(
            "node {} s ({}), nats-server {} s",
            w.node_cpu.map_or("?".into(), |c| format!("{c:.1}")),
            w.node_us_per_delivery().map_or("?".into(), |u| format!("{u:.2} us per delivery")),
            w.nats_cpu.map_or("?".into(), |c| format!("{c:.1}"))
        )
    };
    for (label, w) in [("history off (broadcast:)", &off), ("history on (project:)", &on)] {
        t.row(
            &format!("{label} deliveries/s"),
            format!("{:.0} (offered {:.0}; {:.1} s window)", w.per_sec(), w.published as f64 / w.secs * subs, w.secs),
        );
        t.row(&format!("{label} CPU"), cpu(w));
    }
    t.row("history off: delivered", format!("{:.2}% of {off_expected:.0}", off_received as f64 / off_expected * 100.0));
    t.row("history's node CPU per delivery", cost.map_or("?".into(), |c| format!("{c:+.1}%")));
    t.row("history events published / at the kill", format!("{total_published} / {at_kill}"));
    t.row("clients of the killed node", killed_clients.to_string());
    t.row("reconnected / gave up / open at end", format!("{} / {gave_up} {:?} / {}", r.reconnected, r.gave_up, r.open));
    t.row("still reconnecting at the end", format!("{} ({drained_s:.0} s after the kill)", reconnecting(&r)));
    t.bar(
        "recovered true / false / not asked",
        format!("{} / {} / {}", r.recovered_true, r.recovered_false, r.recovered_missing),
        "all true",
        r.recovered_false == 0 && r.recovered_missing == 0 && r.recovered_true >= killed_clients,
    );
    t.row("failed reconnect attempts (retried)", format!("{} {:?}", r.retries.values().sum::<u64>(), r.retries));
    t.row("events replayed before the answers", r.replayed.to_string());
    let p = |h: &Histogram<u64>| {
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            pct(h, 0.5),
            pct(h, 0.99),
            if h.is_empty() { f64::NAN } else { ms(h.max()) }
        )
    };
    t.row("kill -> resubscribed p50 / p99 / max", p(&answer));
    t.bar(
        "kill -> caught up p50 / p99 / max",
        p(&caught_up),
        "every resumed client",
        behind == 0 && caught_up.len() >= killed_clients,
    );
    t.bar(
        "events lost (clients, max per client)",
        format!("{} ({}, {})", r.lost, r.clients_with_loss, r.max_lost),
        "0",
        r.lost == 0,
    );
    t.bar(
        "events duplicated (clients, max per client)",
        format!("{} ({}, {})", r.duplicated, r.clients_with_dup, r.max_dup),
        "0",
        r.duplicated == 0,
    );
    t.row("events out of order", r.out_of_order.to_string());
    t.row("connections lost (close reasons)", format!("{} {:?}", r.close_codes.values().sum::<u64>(), r.close_codes));
    t.reached_note("subscribers", n, c.ok, &c.errors);
    t.note("caught up: a resumed client's first live event after its replay (the answer, when no event followed)");
    t.print();
    let ok = r.lost == 0 && r.duplicated == 0 && r.recovered_false == 0 && gave_up + reconnecting(&r) == 0 && c.ok >= n;
    emit_json(
        "resume",
        json!({"subscribers": n, "nodes": nodes, "channels": channels, "rate_events_per_s": rate,
               "offered_deliveries_per_s": rate * subs, "duration_s": duration, "kill_after_s": kill_after,
               "jitter_ms": args.jitter_ms, "payload_bytes": args.payload, "workers": workers,
               "gateway_env": args.gateway_env}),
        setup,
        json!({
            "requested": n, "connected": c.ok, "failed": c.failed, "errors": c.errors,
            "handshake": lat_json(&c.handshake),
            "history_off": off.json(), "history_on": on.json(),
            "history_off_delivered_pct": off_received as f64 / off_expected * 100.0,
            "history_node_cpu_per_delivery_pct": cost,
            "published": total_published, "published_at_kill": at_kill,
            "killed_node_clients": killed_clients, "reconnected": r.reconnected, "gave_up": r.gave_up, "retries": r.retries,
            "open_at_end": r.open, "reconnecting_at_end": reconnecting(&r), "end_after_kill_s": drained_s, "recovered": {"true": r.recovered_true, "false": r.recovered_false, "not_asked": r.recovered_missing},
            "replayed": r.replayed,
            "kill_to_resubscribed": lat_json(&answer), "kill_to_caught_up": lat_json(&caught_up),
            "resumed_not_caught_up": behind,
            "lost": r.lost, "clients_with_loss": r.clients_with_loss, "max_lost_per_client": r.max_lost,
            "duplicated": r.duplicated, "clients_with_dup": r.clients_with_dup, "max_dup_per_client": r.max_dup,
            "out_of_order": r.out_of_order, "close_codes": r.close_codes,
            "history_received": r.history_received,
        }),
        json!({"no_loss": r.lost == 0, "no_duplicates": r.duplicated == 0,
               "all_recovered": r.recovered_false == 0 && r.recovered_missing == 0, "all": ok}),
    );
    Ok(())
}
