//! `soak`: connect churn, fan-out and requests at once against one node for
//! `--duration` seconds. The node's RSS, open file descriptors, queued bytes and task
//! counts are read before the load, after the warm-up, a few times under load and once
//! the load is gone; the verdicts: RSS grows at most `--rss-bound` % between the warm-up
//! and the end of the load, and fds, queued bytes, tasks and connections return to their
//! idle level.
//!
//! The load: `--n` subscribers of `--channels` broadcast channels (held by the worker
//! processes) fed by a NATS publisher at `--rate` events/s; connect → subscribe → close
//! cycles at `--churn-rate`/s; `--req-clients` connections sending `request` frames at
//! `--req-rate`/s in all, in turn `channels.list`, `history.get` of the client's own
//! channel and the backend method `bench.echo`, which a responder on NATS answers.

pub mod load;
pub mod probe;

use std::{collections::VecDeque, time::Duration};

use anyhow::Context;
use serde_json::json;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use super::{check_capacity, connect_spec, run_in, workers_for};
use crate::{
    Args,
    pool::{PhaseOutcome, Pool, source_ips},
    report::{Table, emit_json, lat_json, pct},
    scenario::fanout::event_body,
    setup::Setup,
    token::mint,
    worker::parse_targets,
};
use load::{Clients, Tally, Totals};
use probe::Sample;

/// File descriptors and tasks above the idle level still counted as "back" (a probe's
/// HTTP connection may not be closed yet when the node is read).
const SLACK: u64 = 2;
/// Queued bytes still counted as "back to zero".
const QUEUE_SLACK_BYTES: u64 = 1024;
/// Churn users (one token each, reused round-robin).
const CHURN_USERS: usize = 64;
/// Most churn cycles in flight (the churn rate is a cap).
const CHURN_INFLIGHT: usize = 64;
/// Longest wait for the node to return to idle after the load.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// Runs the scenario against one node the bench starts with NATS and Redis (or `--target`).
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let setup = Setup::new(args, args.nodes.unwrap_or(1), true).await?;
    run_in(setup, async |setup| measure(args, setup).await).await
}

/// The soak's parameters, defaults applied.
struct Params {
    /// Seconds of load.
    duration: f64,
    /// Seconds of load before the RSS reference reading.
    warmup: f64,
    /// Fan-out subscribers.
    n: u64,
    /// Events per second, all channels together.
    rate: f64,
    /// Broadcast channels the subscribers are spread over.
    channels: usize,
    /// Churn cycles per second.
    churn_rate: f64,
    /// Requests per second, all request clients together.
    req_rate: f64,
    /// Request clients.
    req_clients: usize,
    /// Readings under load after the warm-up.
    samples: usize,
}

impl Params {
    fn new(args: &Args) -> Self {
        let duration = args.duration.unwrap_or(60.0).max(10.0);
        Params {
            duration,
            warmup: args.warmup.unwrap_or((duration / 5.0).clamp(5.0, 120.0)).min(duration / 2.0),
            n: args.n.unwrap_or(1000),
            rate: args.rate.unwrap_or(10.0),
            channels: args.channels.unwrap_or(4).max(1),
            churn_rate: args.churn_rate,
            req_rate: args.req_rate,
            req_clients: args.req_clients.max(1),
            samples: args.samples.max(1),
        }
    }
}

/// Waits (bounded) until the node is back at `base`'s level; returns the last reading.
async fn settle(setup: &Setup, base: &Sample, origin: Instant) -> Sample {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let s = probe::sample(setup, "after", origin).await;
        if back(base, &s).iter().all(|(_, ok)| *ok) || Instant::now() >= deadline {
            return s;
        }
        sleep(Duration::from_millis(500)).await;
    }
}

/// The return-to-idle verdicts of `end` against `base`: (name, pass).
fn back(base: &Sample, end: &Sample) -> [(&'static str, bool); 5] {
    let within = |b: Option<u64>, e: Option<u64>| matches!((b, e), (Some(b), Some(e)) if e <= b + SLACK);
    [
        ("fds", within(base.fds, end.fds)),
        ("queue", end.queue_bytes <= QUEUE_SLACK_BYTES),
        ("tasks", within(base.tasks, end.tasks)),
        ("runtime_tasks", within(base.runtime_tasks, end.runtime_tasks)),
        ("connections", end.connections <= base.connections && end.subscriptions <= base.subscriptions),
    ]
}

/// Asks the workers (bounded) until every published event arrived or nothing moved for 2 s.
async fn drained(pool: &mut Pool, per_channel: &[u64]) -> anyhow::Result<PhaseOutcome> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = (u64::MAX, Instant::now());
    loop {
        sleep(Duration::from_millis(500)).await;
        let out = pool.report(per_channel).await?;
        if out.received >= out.expected || Instant::now() >= deadline {
            return Ok(out);
        }
        if out.received != last.0 {
            last = (out.received, Instant::now());
        } else if last.1.elapsed() >= Duration::from_secs(2) {
            return Ok(out);
        }
    }
}

/// `count` (user, token) pairs named `<prefix><i>`.
fn users(args: &Args, prefix: &str, count: usize) -> anyhow::Result<Vec<(String, String)>> {
    (0..count)
        .map(|i| {
            let user = format!("{prefix}{i}");
            let token = mint(&args.secret, &user)?;
            Ok((user, token))
        })
        .collect()
}

async fn measure(args: &Args, setup: &Setup) -> anyhow::Result<()> {
    let p = Params::new(args);
    let run = std::process::id();
    let nats_url = setup.nats_url.clone().context("soak publishes on NATS: start it (default) or pass --nats-url")?;
    let nats = async_nats::connect(&nats_url).await.context("connect to NATS")?;
    let stop = CancellationToken::new();
    let responder = load::responder(nats.clone(), &args.subject_prefix, stop.clone()).await?;
    if p.req_rate / p.req_clients as f64 > 1.6 {
        eprintln!(
            "warning: over 1.6 requests/s per client exceed the default rate.per_minute (100): expect rate_limited"
        );
    }

    let origin = Instant::now();
    sleep(Duration::from_secs(1)).await;
    let baseline = probe::sample(setup, "baseline (idle)", origin).await;
    eprintln!("soak: baseline {}", baseline.cell());

    let workers = workers_for(args, p.n);
    check_capacity(args, p.n, workers)?;
    let names: Vec<String> = (0..p.channels).map(|c| format!("broadcast:bench-soak-{run}-{c}")).collect();
    let subjects: Vec<String> =
        names.iter().map(|c| format!("{}.ev.{}", args.subject_prefix, c.replacen(':', ".", 1))).collect();
    let spec = connect_spec(args, setup, format!("soak{run}-"), names, workers);
    let mut pool = Pool::spawn(workers).await?;
    let connected = pool.connect(p.n, &spec, Duration::from_secs(120 + p.n / 50)).await?.totals;
    pool.measure(1).await?;

    let clients = |users| Clients {
        targets: parse_targets(&setup.ws_targets()).unwrap_or_default(),
        src_ips: source_ips(args.src_ips),
        users,
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let churn_clients = clients(users(args, &format!("soak{run}-churn-"), CHURN_USERS)?);
    let req_clients = clients(users(args, &format!("soak{run}-req-"), p.req_clients)?);
    let (churn_tally, req_tally) = (Tally::new(), Tally::new());
    let churn_channel = format!("broadcast:bench-soak-{run}-churn");
    let churn = tokio::spawn(load::churn(
        churn_clients,
        churn_channel,
        p.churn_rate,
        CHURN_INFLIGHT,
        churn_tally.clone(),
        stop.clone(),
    ));
    let requests =
        tokio::spawn(load::requests(req_clients, p.req_clients, p.req_rate, true, req_tally.clone(), stop.clone()));
    eprintln!(
        "soak: {:.0} s: {} subscribers on {} channels at {} events/s, churn {}/s, {} request clients at {}/s",
        p.duration, connected.ok, p.channels, p.rate, p.churn_rate, p.req_clients, p.req_rate
    );

    // Publish at the rate, reading the node at the sample times, until the duration is over.
    let load_start = Instant::now();
    let end = load_start + Duration::from_secs_f64(p.duration);
    let mut due: VecDeque<(Instant, String)> = VecDeque::new();
    due.push_back((load_start + Duration::from_secs_f64(p.warmup), "after warm-up".into()));
    for i in 1..=p.samples {
        let t = p.warmup + (p.duration - p.warmup) * i as f64 / p.samples as f64;
        let label = if i == p.samples { "end of load".to_owned() } else { "under load".to_owned() };
        due.push_back((load_start + Duration::from_secs_f64(t), label));
    }
    let mut samples = vec![baseline.clone()];
    let mut per_channel = vec![0u64; subjects.len()];
    let mut k = 0u64;
    loop {
        let next_pub = load_start + Duration::from_secs_f64(k as f64 / p.rate.max(1e-3));
        match due.front() {
            Some((at, _)) if *at <= next_pub || next_pub >= end => {
                let Some((at, label)) = due.pop_front() else { break };
                sleep_until(at).await;
                let s = probe::sample(setup, &label, origin).await;
                eprintln!("soak: +{:.0} s {label}: {}", s.t_secs, s.cell());
                samples.push(s);
            }
            None if next_pub >= end => break,
            _ => {
                sleep_until(next_pub).await;
                let c = (k % subjects.len() as u64) as usize;
                nats.publish(subjects[c].clone(), event_body(1, k, args.payload).into())
                    .await
                    .context("nats publish")?;
                per_channel[c] += 1;
                k += 1;
            }
        }
    }
    stop.cancel();
    nats.flush().await.context("nats flush")?;
    let _ = churn.await;
    let opened = requests.await.unwrap_or(0);
    let fanout = drained(&mut pool, &per_channel).await?;
    pool.close().await;
    let answered = responder.await.unwrap_or(0);
    let after = settle(setup, &baseline, origin).await;
    eprintln!("soak: after the load: {}", after.cell());
    samples.push(after.clone());

    report(
        args,
        setup,
        &p,
        &Outcome {
            subscribers: connected.ok,
            published: k,
            fanout,
            churn: churn_tally.totals(),
            requests: req_tally.totals(),
            request_clients: opened,
            answered,
            samples,
        },
    );
    Ok(())
}

/// What the soak saw.
struct Outcome {
    /// Subscribers connected and subscribed.
    subscribers: u64,
    /// Events published.
    published: u64,
    /// What the subscribers received.
    fanout: PhaseOutcome,
    /// The churn cycles.
    churn: Totals,
    /// The requests.
    requests: Totals,
    /// Request clients that connected.
    request_clients: usize,
    /// Requests the NATS responder answered.
    answered: u64,
    /// The node readings, baseline first, after the load last.
    samples: Vec<Sample>,
}

/// `part` of `whole` in percent (100 when nothing was expected).
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 { 100.0 } else { part as f64 / whole as f64 * 100.0 }
}

fn report(args: &Args, setup: &Setup, p: &Params, o: &Outcome) {
    let base = &o.samples[0];
    let after = &o.samples[o.samples.len() - 1];
    let warm = o.samples.iter().find(|s| s.label == "after warm-up");
    let last_load = o.samples.iter().rev().find(|s| s.label == "end of load");
    let growth = match (warm.and_then(|s| s.rss_kib), last_load.and_then(|s| s.rss_kib)) {
        (Some(w), Some(e)) if w > 0 => Some((e as f64 - w as f64) / w as f64 * 100.0),
        _ => None,
    };
    let delivered = percent(o.fanout.received, o.fanout.expected);
    let churn_failed_pct = 100.0 - percent(o.churn.ok, o.churn.ok + o.churn.failed);
    let req_failed_pct = 100.0 - percent(o.requests.ok, o.requests.ok + o.requests.failed);
    let verdicts = back(base, after);
    let passed = |name: &str| verdicts.iter().any(|(n, ok)| *n == name && *ok);

    let mut t = Table::new(format!(
        "soak: {:.0} s of churn + fan-out + requests on {} node(s), warm-up {:.0} s",
        p.duration,
        setup.nodes.len(),
        p.warmup
    ));
    t.row(
        "load",
        format!(
            "{} subscribers × {} ch at {} ev/s; churn {}/s; {} req clients at {}/s",
            o.subscribers, p.channels, p.rate, p.churn_rate, o.request_clients, p.req_rate
        ),
    );
    t.bar(
        "fan-out delivered",
        format!("{} of {} ({delivered:.3}%), {} events published", o.fanout.received, o.fanout.expected, o.published),
        ">= 99%",
        delivered >= 99.0,
    );
    t.row(
        "fan-out latency p50 / p99 / max",
        format!(
            "{:.2} / {:.2} / {:.2} ms",
            pct(&o.fanout.latency, 0.5),
            pct(&o.fanout.latency, 0.99),
            pct(&o.fanout.latency, 1.0)
        ),
    );
    t.row("subscribers lost during the soak", format!("{} {:?}", o.fanout.lost, o.fanout.close_codes));
    t.bar(
        "churn cycles ok / failed / skipped",
        format!("{} / {} / {}", o.churn.ok, o.churn.failed, o.churn.skipped),
        "failed <= 0.1%",
        o.churn.ok > 0 && churn_failed_pct <= 0.1,
    );
    t.row(
        "churn handshake p50 / p99",
        format!("{:.2} / {:.2} ms", pct(&o.churn.latency, 0.5), pct(&o.churn.latency, 0.99)),
    );
    t.bar(
        "requests ok / failed",
        format!("{} / {} (backend answered {})", o.requests.ok, o.requests.failed, o.answered),
        "failed <= 0.1%",
        o.requests.ok > 0 && req_failed_pct <= 0.1,
    );
    t.row(
        "request latency p50 / p99 / max",
        format!(
            "{:.2} / {:.2} / {:.2} ms",
            pct(&o.requests.latency, 0.5),
            pct(&o.requests.latency, 0.99),
            pct(&o.requests.latency, 1.0)
        ),
    );
    for s in &o.samples {
        t.row(&format!("node @ {:+.0} s, {}", s.t_secs, s.label), s.cell());
    }
    t.sized_bar(
        "RSS growth, warm-up → end of load",
        growth.map(|g| format!("{g:+.2}%")),
        &format!("<= {}%", args.rss_bound),
        true,
        growth.is_some_and(|g| g <= args.rss_bound),
        ("RSS growth", "unknown (pass --pid with --target)"),
    );
    let opt = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
    t.bar(
        "open fds after / idle",
        format!("{} / {}", opt(after.fds), opt(base.fds)),
        &format!("<= idle + {SLACK}"),
        passed("fds"),
    );
    t.bar(
        "queued bytes after",
        format!("{} B", after.queue_bytes),
        &format!("<= {QUEUE_SLACK_BYTES} B"),
        passed("queue"),
    );
    t.bar(
        "tracked tasks after / idle",
        format!("{} / {}", opt(after.tasks), opt(base.tasks)),
        &format!("<= idle + {SLACK}"),
        passed("tasks"),
    );
    t.bar(
        "runtime tasks after / idle",
        format!("{} / {}", opt(after.runtime_tasks), opt(base.runtime_tasks)),
        &format!("<= idle + {SLACK}"),
        passed("runtime_tasks"),
    );
    t.bar(
        "connections / subscriptions after",
        format!("{} / {}", after.connections, after.subscriptions),
        "idle level",
        passed("connections"),
    );
    for (what, totals) in [("churn", &o.churn), ("requests", &o.requests)] {
        if !totals.errors.is_empty() {
            t.note(format!("{what} failures: {:?}", totals.errors));
        }
    }
    t.note(format!("requests by method: {:?}", o.requests.ok_by));
    t.print();
    let samples: Vec<_> = o.samples.iter().map(|s| json!(s)).collect();
    emit_json(
        "soak",
        json!({"duration_s": p.duration, "warmup_s": p.warmup, "subscribers": p.n, "channels": p.channels,
               "rate": p.rate, "payload": args.payload, "churn_rate": p.churn_rate, "req_rate": p.req_rate,
               "req_clients": p.req_clients, "rss_bound_pct": args.rss_bound, "gateway_env": args.gateway_env}),
        setup,
        json!({
            "subscribers": o.subscribers, "published": o.published,
            "fanout": {"expected": o.fanout.expected, "received": o.fanout.received, "delivered_pct": delivered,
                       "lost": o.fanout.lost, "close_codes": o.fanout.close_codes, "latency": lat_json(&o.fanout.latency)},
            "churn": {"ok": o.churn.ok, "failed": o.churn.failed, "skipped": o.churn.skipped,
                      "errors": o.churn.errors, "handshake": lat_json(&o.churn.latency)},
            "requests": {"clients": o.request_clients, "ok": o.requests.ok, "failed": o.requests.failed,
                         "errors": o.requests.errors, "ok_by_method": o.requests.ok_by,
                         "backend_answered": o.answered, "latency": lat_json(&o.requests.latency)},
            "samples": samples, "rss_growth_after_warmup_pct": growth,
        }),
        json!({
            "delivered_ge_99pct": delivered >= 99.0,
            "churn_failed_le_0_1pct": o.churn.ok > 0 && churn_failed_pct <= 0.1,
            "requests_failed_le_0_1pct": o.requests.ok > 0 && req_failed_pct <= 0.1,
            "rss_growth_within_bound": growth.is_some_and(|g| g <= args.rss_bound),
            "fds_back": passed("fds"), "queue_bytes_back": passed("queue"), "tasks_back": passed("tasks"),
            "runtime_tasks_back": passed("runtime_tasks"), "connections_back": passed("connections"),
        }),
    );
}
