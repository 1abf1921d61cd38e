//! `fanout` and `cluster`: N subscribers of shared channels on one node (`fanout`) or
//! spread over several (`cluster`), fed by a NATS publisher at a fixed rate, optionally
//! stepped up to the highest rate that still meets the bar (`--find-max`). Both run the
//! same publishing steps and differ only in their defaults and their bar.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep, sleep_until};

use super::{check_capacity, connect_spec, run_in, workers_for};
use crate::{
    Args,
    infra::Metrics,
    pool::{self, Pool},
    report::{Table, emit_json, lat_json, ms, pct, tables_json},
    setup::Setup,
    worker,
};

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
    /// Whether the step meets the scenario's bar (`cluster`'s or `fanout`'s).
    fn meets_bar(&self, cluster: bool) -> bool {
        if cluster { self.cluster_ok() } else { self.fanout_ok() }
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
pub(crate) fn event_body(phase: u64, seq: u64, payload: usize) -> Vec<u8> {
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

/// Runs `fanout` (one node by default) or, with `cluster`, `cluster` (three by default).
pub async fn run(args: &Args, cluster: bool) -> anyhow::Result<()> {
    let nodes = args.nodes.unwrap_or(if cluster { 3 } else { 1 });
    let setup = Setup::new(args, nodes, true).await?;
    let socketio = args.socketio && !cluster;
    run_in(setup, async |setup| {
        let first = if socketio { Subscribers::Native } else { Subscribers::Default };
        measure(args, cluster, first, setup).await?;
        if socketio {
            measure(args, cluster, Subscribers::SocketIo, setup).await?;
        }
        Ok(())
    })
    .await
}

/// Who subscribes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subscribers {
    /// Native clients on `broadcast:` channels.
    Default,
    /// Native clients on `project:` channels (the baseline of a Socket.IO run).
    Native,
    /// Socket.IO clients in `/project/<id>` namespaces.
    SocketIo,
}

async fn measure(args: &Args, cluster: bool, subs: Subscribers, setup: &Setup) -> anyhow::Result<()> {
    let name = match (cluster, subs) {
        (true, _) => "cluster",
        (false, Subscribers::Default) => "fanout",
        (false, Subscribers::Native) => "fanout-native",
        (false, Subscribers::SocketIo) => "fanout-socketio",
    };
    let n = args.n.unwrap_or(if cluster { 9_000 } else { 10_000 });
    let channels = args.channels.unwrap_or(1).max(1);
    let duration = args.duration.unwrap_or(10.0);
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
    let ns = if subs == Subscribers::Default { "broadcast" } else { "project" };
    let names: Vec<String> = (0..channels).map(|c| format!("{ns}:bench-{name}-{run}-{c}")).collect();
    let subjects: Vec<String> =
        names.iter().map(|c| format!("{}.ev.{}", args.subject_prefix, c.replacen(':', ".", 1))).collect();
    let mut spec = connect_spec(args, setup, format!("{name}{run}-"), names.clone(), workers);
    spec.socketio = subs == Subscribers::SocketIo;
    eprintln!("{name}: {n} subscribers over {channels} channel(s) on {} node(s), {workers} workers", setup.nodes.len());
    let mut pool = Pool::spawn(workers).await?;
    let c = pool.connect(n, &spec, Duration::from_secs(120 + n / 50)).await?.totals;
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
            let s = publish_step(&nats, &mut pool, setup, &subjects, phase, r, duration, args.payload).await?;
            let ok = s.meets_bar(cluster);
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
        steps.push(publish_step(&nats, &mut pool, setup, &subjects, 1, rate, duration, args.payload).await?);
    }
    pool.close().await;

    let bar_step = steps.iter().find(|s| (s.rate - rate).abs() < 1e-9);
    let max_ok = steps
        .iter()
        .filter(|s| s.meets_bar(cluster))
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
    t.reached_note("subscribers", n, c.ok, &c.errors);
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
               "offered_deliveries_per_s": rate * subs_per_channel, "duration_s": duration,
               "payload_bytes": args.payload, "find_max": args.find_max, "workers": workers,
               "gateway_env": args.gateway_env}),
        setup,
        json!({
            "requested": n, "connected": c.ok, "failed": c.failed, "errors": c.errors, "reached": c.ok >= n,
            "health_tables": tables.map(tables_json),
            "handshake": lat_json(&c.handshake),
            "steps": steps.iter().map(Step::json).collect::<Vec<_>>(),
            "max_rate_meeting_bar": max_ok, "max_deliveries_per_s_meeting_bar": max_ok.map(|r| r * subs_per_channel),
        }),
        bars,
    );
    Ok(())
}
