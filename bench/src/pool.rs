//! The parent's side of the workers: spawns `gateway-bench worker` processes, splits a
//! run between them, sends commands and gathers their answers (every wait bounded).

use std::{collections::BTreeMap, net::Ipv4Addr, process::Stdio, time::Duration};

use anyhow::{Context, bail};
use futures_util::future::join_all;
use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
    time::{Instant, timeout},
};

use crate::proto::{ChurnSpec, Cmd, ConnectSpec, Ev, Tally, hist_add, merge_counts, new_hist};

/// One worker process.
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Its index (for its share of the run).
    pub index: usize,
    /// Last progress seen: (done, failed).
    pub progress: (u64, u64),
}

impl Worker {
    async fn spawn(index: usize) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("own executable")?;
        let mut child = Command::new(exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawn worker")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        Ok(Worker { child, stdin, lines: BufReader::new(stdout).lines(), index, progress: (0, 0) })
    }

    async fn send(&mut self, cmd: &Cmd) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(cmd)?;
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// The next answer that is not progress, within `limit`.
    async fn answer(&mut self, limit: Duration) -> anyhow::Result<Ev> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = timeout(left, self.lines.next_line())
                .await
                .with_context(|| format!("worker {} did not answer within {limit:?}", self.index))??
                .with_context(|| format!("worker {} exited", self.index))?;
            match serde_json::from_str::<Ev>(&line) {
                Ok(Ev::Progress { done, failed }) => self.progress = (done, failed),
                Ok(Ev::Error { message }) => bail!("worker {}: {message}", self.index),
                Ok(ev) => return Ok(ev),
                Err(e) => bail!("worker {}: bad line {line:?}: {e}", self.index),
            }
        }
    }

    async fn call(&mut self, cmd: &Cmd, limit: Duration) -> anyhow::Result<Ev> {
        self.send(cmd).await?;
        self.answer(limit).await
    }
}

/// The totals of a connect phase or a churn run, over all workers.
pub struct Totals {
    /// Connections open and subscribed (or cycles completed).
    pub ok: u64,
    /// Failed handshakes (or cycles failed or not run).
    pub failed: u64,
    /// Reason → count.
    pub errors: BTreeMap<String, u64>,
    /// µs to `connected`.
    pub handshake: Histogram<u64>,
    /// Wall time (the slowest worker).
    pub elapsed: Duration,
}

impl Totals {
    fn new() -> Self {
        Totals { ok: 0, failed: 0, errors: BTreeMap::new(), handshake: new_hist(), elapsed: Duration::ZERO }
    }

    /// Adds one worker's tally.
    fn add(&mut self, t: &Tally) {
        self.ok += t.ok;
        self.failed += t.failed;
        merge_counts(&mut self.errors, &t.errors);
        hist_add(&mut self.handshake, &t.handshake);
        self.elapsed = self.elapsed.max(Duration::from_millis(t.elapsed_ms));
    }
}

/// The result of a connect phase, over all workers.
pub struct ConnectOutcome {
    /// Connections open and subscribed, failures, handshake latency.
    pub totals: Totals,
    /// µs to the subscribe response.
    pub ready: Histogram<u64>,
}

/// The result of one measured phase, over all workers.
pub struct PhaseOutcome {
    /// Events received.
    pub received: u64,
    /// Events expected.
    pub expected: u64,
    /// Events of other phases seen.
    pub stale: u64,
    /// Connections open now.
    pub open: u64,
    /// Connections lost since connecting.
    pub lost: u64,
    /// Close reasons of lost connections.
    pub close_codes: BTreeMap<String, u64>,
    /// Publish → receive, µs.
    pub latency: Histogram<u64>,
    /// Time of the phase's first and last receipt (µs since the epoch).
    pub span_us: Option<(u64, u64)>,
}

/// All workers of a run.
pub struct Pool {
    workers: Vec<Worker>,
}

/// `n` split into `parts` nearly equal shares: (first, count) each.
pub fn split(n: u64, parts: usize) -> Vec<(u64, u64)> {
    let parts = parts.max(1) as u64;
    let (base, extra) = (n / parts, n % parts);
    let mut first = 0;
    (0..parts)
        .map(|i| {
            let count = base + u64::from(i < extra);
            let r = (first, count);
            first += count;
            r
        })
        .collect()
}

/// The loopback source addresses 127.0.0.2 … 127.0.0.(1+n).
pub fn source_ips(n: usize) -> Vec<Ipv4Addr> {
    (0..n.clamp(1, 250)).map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8)).collect()
}

impl Pool {
    /// Spawns `n` workers.
    pub async fn spawn(n: usize) -> anyhow::Result<Self> {
        let mut workers = Vec::new();
        for i in 0..n.max(1) {
            workers.push(Worker::spawn(i).await?);
        }
        Ok(Pool { workers })
    }

    /// Opens `n` connections split between the workers, printing progress to stderr.
    pub async fn connect(&mut self, n: u64, template: &ConnectSpec, limit: Duration) -> anyhow::Result<ConnectOutcome> {
        self.connect_with(n, limit, |first, count| {
            Cmd::Connect(ConnectSpec { clients: template.clients.share(first, count), ..template.clone() })
        })
        .await
    }

    /// Opens `n` connections split between the workers, worker by worker with the
    /// command `cmd(first, count)` for its share; printing progress to stderr.
    pub async fn connect_with(
        &mut self,
        n: u64,
        limit: Duration,
        cmd: impl Fn(u64, u64) -> Cmd,
    ) -> anyhow::Result<ConnectOutcome> {
        let shares = split(n, self.workers.len());
        for (w, (first, count)) in self.workers.iter_mut().zip(shares) {
            w.send(&cmd(first, count)).await?;
        }
        let answers = self.gather(limit, n, "connected").await?;
        let mut out = ConnectOutcome { totals: Totals::new(), ready: new_hist() };
        for a in answers {
            if let Ev::Connected { tally, ready } = a {
                out.totals.add(&tally);
                hist_add(&mut out.ready, &ready);
            }
        }
        Ok(out)
    }

    /// Waits for one answer from every worker while printing their progress.
    async fn gather(&mut self, limit: Duration, total: u64, what: &str) -> anyhow::Result<Vec<Ev>> {
        let began = Instant::now();
        let deadline = began + limit;
        let mut answers: Vec<Option<Ev>> = (0..self.workers.len()).map(|_| None).collect();
        let mut last_print = Instant::now();
        while answers.iter().any(Option::is_none) {
            if Instant::now() >= deadline {
                bail!("workers did not finish {what} within {limit:?}");
            }
            let pending: Vec<_> = self
                .workers
                .iter_mut()
                .zip(answers.iter())
                .filter(|(_, a)| a.is_none())
                .map(|(w, _)| async move {
                    let r = w.answer(Duration::from_millis(500)).await;
                    (w.index, r)
                })
                .collect();
            for (i, r) in join_all(pending).await {
                match r {
                    Ok(ev) => answers[i] = Some(ev),
                    Err(e) if e.to_string().contains("did not answer") => {}
                    Err(e) => return Err(e),
                }
            }
            if last_print.elapsed() >= Duration::from_secs(2) {
                last_print = Instant::now();
                let done: u64 = self.workers.iter().map(|w| w.progress.0).sum();
                let failed: u64 = self.workers.iter().map(|w| w.progress.1).sum();
                eprintln!("  … {what}: {done}/{total} ok, {failed} failed, {:.0}s", began.elapsed().as_secs_f64());
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }

    /// Starts phase `phase` on every worker.
    pub async fn measure(&mut self, phase: u64) -> anyhow::Result<()> {
        for w in &mut self.workers {
            w.call(&Cmd::Measure { phase }, Duration::from_secs(10)).await?;
        }
        Ok(())
    }

    /// The current phase's counts; `events[c]` = events published to shared channel `c`.
    pub async fn report(&mut self, events: &[u64]) -> anyhow::Result<PhaseOutcome> {
        let mut out = PhaseOutcome {
            received: 0,
            expected: 0,
            stale: 0,
            open: 0,
            lost: 0,
            close_codes: BTreeMap::new(),
            latency: new_hist(),
            span_us: None,
        };
        let cmd = Cmd::Report { events: events.to_vec() };
        for w in &mut self.workers {
            if let Ev::Report {
                received, expected, stale, open, lost, close_codes, latency, first_us, last_us, ..
            } = w.call(&cmd, Duration::from_secs(30)).await?
            {
                if first_us > 0 {
                    out.span_us = Some(match out.span_us {
                        None => (first_us, last_us),
                        Some((a, b)) => (a.min(first_us), b.max(last_us)),
                    });
                }
                out.received += received;
                out.expected += expected;
                out.stale += stale;
                out.open += open;
                out.lost += lost;
                merge_counts(&mut out.close_codes, &close_codes);
                hist_add(&mut out.latency, &latency);
            }
        }
        Ok(out)
    }

    /// Sends `cmd` to every worker in turn; their answers, in worker order.
    pub async fn call_all(&mut self, cmd: &Cmd, limit: Duration) -> anyhow::Result<Vec<Ev>> {
        let mut out = Vec::with_capacity(self.workers.len());
        for w in &mut self.workers {
            out.push(w.call(cmd, limit).await?);
        }
        Ok(out)
    }

    /// Runs `cycles` churn cycles split between the workers.
    pub async fn churn(&mut self, cycles: u64, template: &ChurnSpec, limit: Duration) -> anyhow::Result<Totals> {
        let shares = split(cycles, self.workers.len());
        let n = self.workers.len();
        for (w, (first, count)) in self.workers.iter_mut().zip(shares) {
            let spec = ChurnSpec {
                clients: template.clients.share(template.clients.first + first, count),
                concurrency: template.concurrency.div_ceil(n).max(1),
                ..template.clone()
            };
            w.send(&Cmd::Churn(spec)).await?;
        }
        let answers = self.gather(limit, cycles, "churn cycles").await?;
        let mut out = Totals::new();
        for a in answers {
            if let Ev::ChurnDone(tally) = a {
                out.add(&tally);
            }
        }
        Ok(out)
    }

    /// CPU seconds used by the worker processes so far.
    pub fn cpu_secs(&self) -> f64 {
        self.workers.iter().filter_map(|w| w.child.id().and_then(crate::infra::cpu_secs)).sum()
    }

    /// Closes every connection and ends the workers (bounded; stragglers are killed).
    pub async fn close(mut self) {
        let closes = self.workers.iter_mut().map(|w| async move {
            let _ = w.call(&Cmd::Close, Duration::from_secs(30)).await;
            let _ = timeout(Duration::from_secs(5), w.child.wait()).await;
            let _ = w.child.start_kill();
        });
        join_all(closes).await;
    }
}
