//! Graceful drain behind the load balancer (issue 5 §4): `deploy/local-cluster.sh` runs
//! NATS, Redis, three `gateway serve` nodes and nginx; 1,000 clients connect through nginx,
//! one node gets SIGTERM, and then
//! - every client of that node gets `disconnecting{shutdown, reconnect:true}` and close
//!   1001 within the drain delay + period (+ margin), the closes spread over the period;
//! - each of them reconnects through nginx and lands on one of the other nodes;
//! - `/ready` of the draining node answers 503 from the signal until the process exits;
//! - the clients of the other nodes are not disturbed (and all 1,000 answer a ping at
//!   the end).
//!
//! The measured timeline is printed (`--nocapture` shows it).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use gateway_client::{Client, Connect, Received};
use gateway_protocol::{ClientFrame, DisconnectReason, ServerFrame};
use gateway_tests::{
    cluster_script::{LocalCluster, ensure_open_files, process_alive},
    node::user_token,
};
use tokio::{
    sync::{Semaphore, mpsc, watch},
    time::{Instant, sleep, timeout},
};

const CLIENTS: usize = 1_000;
const NODES: usize = 3;
/// The node that gets SIGTERM (1-based, as in the env file).
const DRAINED: usize = 2;
const DELAY_MS: u64 = 500;
const PERIOD_MS: u64 = 3_000;
const DEADLINE_MS: u64 = 10_000;
/// Slack on top of delay + period for the last close to reach its client.
const CLOSE_MARGIN: Duration = Duration::from_millis(2_500);
/// Handshakes in flight while the clients connect.
const CONNECT_CONCURRENCY: usize = 64;
/// Bound on one handshake (+ `connected` frame).
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Reconnect attempts per closed client (nginx itself retries a draining node's 503).
const RECONNECT_ATTEMPTS: usize = 5;
/// Largest reconnect jitter.
const JITTER_MS: u64 = 200;
/// `/ready` poll interval.
const POLL: Duration = Duration::from_millis(50);

/// `t` in ms after `base` (negative when before it).
fn ms_after(t: Instant, base: Instant) -> i64 {
    if t >= base { t.duration_since(base).as_millis() as i64 } else { -(base.duration_since(t).as_millis() as i64) }
}

/// What one client saw.
#[derive(Debug)]
struct ClientLog {
    idx: usize,
    /// Node of the first connection (None: never connected).
    node: Option<String>,
    /// `disconnecting` frames on the first connection: (at, reason, reconnect).
    disconnecting: Vec<(Instant, DisconnectReason, bool)>,
    /// The close of the first connection: (at, code).
    closed: Option<(Instant, Option<u16>)>,
    /// Anything else that arrived or failed on the first connection.
    unexpected: Vec<String>,
    /// The reconnect through nginx: (at, node).
    reconnect: Option<(Instant, String)>,
    /// Failed reconnect attempts.
    reconnect_failures: Vec<String>,
    /// Anything that arrived on the second connection.
    after_reconnect: Vec<String>,
    /// The final ping on whatever connection the client holds.
    probe: Result<(), String>,
}

/// Counters the test polls while the drain runs.
#[derive(Default)]
struct Progress {
    closed: AtomicUsize,
    reconnected: AtomicUsize,
}

/// Connects through `url` and waits for `connected`; returns the client and its node.
async fn connect(url: &str) -> Result<(Client, String), String> {
    let attempt = async {
        let mut c = Client::connect(Connect::new(url)).await.map_err(|e| format!("connect: {e}"))?;
        let node = c
            .recv_until(HANDSHAKE, |r| match r {
                Received::Frame(ServerFrame::Connected { node, .. }) => Some(node.clone()),
                _ => None,
            })
            .await
            .map_err(|e| format!("connected frame: {e}"))?;
        Ok::<_, String>((c, node))
    };
    timeout(HANDSHAKE, attempt).await.map_err(|_| format!("handshake took over {HANDSHAKE:?}"))?
}

/// Reads until the connection closes (Some(at, code)) or the test finishes (None),
/// handing every frame to `frame`.
async fn read_until_close(
    c: &mut Client,
    finish: &mut watch::Receiver<bool>,
    mut frame: impl FnMut(Instant, Result<ServerFrame, String>),
) -> Option<(Instant, Option<u16>)> {
    loop {
        tokio::select! {
            biased;
            _ = finish.wait_for(|f| *f) => return None,
            r = c.recv() => {
                let at = Instant::now();
                match r {
                    Ok(Received::Closed(code)) => return Some((at, code.map(|(c, _)| c))),
                    Ok(Received::Frame(f)) => frame(at, Ok(f)),
                    Ok(other) => frame(at, Err(format!("{other:?}"))),
                    Err(e) => {
                        frame(at, Err(format!("receive failed: {e}")));
                        return Some((at, None));
                    }
                }
            }
        }
    }
}

/// Sends `ping` and waits for `pong`.
async fn probe(c: &mut Client) -> Result<(), String> {
    c.send(&ClientFrame::Ping).await.map_err(|e| format!("send ping: {e}"))?;
    c.recv_until(Duration::from_secs(10), |r| matches!(r, Received::Frame(ServerFrame::Pong { .. })).then_some(()))
        .await
        .map_err(|e| format!("pong: {e}"))
}

/// One client: connect through nginx (reporting its node), read and record everything;
/// on a close reconnect through nginx after a little jitter and keep reading; when the
/// test finishes, ping on whatever connection it holds.
async fn run_client(
    idx: usize,
    url: String,
    gate: Arc<Semaphore>,
    joined: mpsc::UnboundedSender<(usize, Result<String, String>)>,
    mut finish: watch::Receiver<bool>,
    progress: Arc<Progress>,
) -> ClientLog {
    let mut log = ClientLog {
        idx,
        node: None,
        disconnecting: Vec::new(),
        closed: None,
        unexpected: Vec::new(),
        reconnect: None,
        reconnect_failures: Vec::new(),
        after_reconnect: Vec::new(),
        probe: Err("never connected".into()),
    };
    let first = {
        let _permit = gate.acquire().await;
        let mut tries = Vec::new();
        let mut got = None;
        for _ in 0..3 {
            match connect(&url).await {
                Ok(ok) => {
                    got = Some(ok);
                    break;
                }
                Err(e) => {
                    tries.push(e);
                    sleep(Duration::from_millis(100)).await;
                }
            }
        }
        got.ok_or_else(|| tries.join("; "))
    };
    let (mut client, node) = match first {
        Ok(ok) => ok,
        Err(e) => {
            let _ = joined.send((idx, Err(e)));
            return log;
        }
    };
    log.node = Some(node.clone());
    let _ = joined.send((idx, Ok(node)));

    let closed = read_until_close(&mut client, &mut finish, |at, f| match f {
        Ok(ServerFrame::Disconnecting { reason, reconnect }) => log.disconnecting.push((at, reason, reconnect)),
        Ok(other) => log.unexpected.push(format!("{other:?}")),
        Err(e) => log.unexpected.push(e),
    })
    .await;
    let Some(closed) = closed else {
        log.probe = probe(&mut client).await;
        let _ = client.close().await;
        return log;
    };
    log.closed = Some(closed);
    progress.closed.fetch_add(1, Ordering::SeqCst);
    drop(client);

    // Reconnect through the balancer, as a client told `reconnect:true` would.
    sleep(Duration::from_millis((idx as u64 * 37) % JITTER_MS)).await;
    let mut again = None;
    for _ in 0..RECONNECT_ATTEMPTS {
        if *finish.borrow() {
            break;
        }
        match connect(&url).await {
            Ok((c, node)) => {
                log.reconnect = Some((Instant::now(), node));
                again = Some(c);
                break;
            }
            Err(e) => {
                log.reconnect_failures.push(e);
                sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let Some(mut client) = again else {
        log.probe = Err("did not reconnect".into());
        return log;
    };
    progress.reconnected.fetch_add(1, Ordering::SeqCst);
    let closed = read_until_close(&mut client, &mut finish, |_, f| match f {
        Ok(frame) => log.after_reconnect.push(format!("{frame:?}")),
        Err(e) => log.after_reconnect.push(e),
    })
    .await;
    if let Some((_, code)) = closed {
        log.after_reconnect.push(format!("closed again with {code:?}"));
        log.probe = Err("closed after reconnecting".into());
        return log;
    }
    log.probe = probe(&mut client).await;
    let _ = client.close().await;
    log
}

/// `/ready` answers of one node: (at, status) and refused requests (at, error).
#[derive(Default)]
struct ReadyPoll {
    answers: Vec<(Instant, u16)>,
    failures: Vec<(Instant, String)>,
    /// When the process was first seen gone.
    exited: Option<Instant>,
}

/// Polls `url` every [`POLL`] until process `pid` is gone (bounded by `limit`).
async fn poll_ready(url: String, pid: u32, limit: Duration) -> ReadyPoll {
    let http = match reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(1)).build() {
        Ok(h) => h,
        Err(e) => return ReadyPoll { failures: vec![(Instant::now(), e.to_string())], ..ReadyPoll::default() },
    };
    let mut out = ReadyPoll::default();
    let deadline = Instant::now() + limit;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < deadline {
        tick.tick().await;
        if !process_alive(pid) {
            out.exited = Some(Instant::now());
            break;
        }
        let r = http.get(&url).send().await;
        let at = Instant::now();
        match r {
            Ok(resp) => out.answers.push((at, resp.status().as_u16())),
            Err(e) => out.failures.push((at, e.to_string())),
        }
    }
    out
}

/// Waits (bounded) until `done()`; returns whether it happened.
async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        sleep(Duration::from_millis(10)).await;
    }
    true
}

/// The most closes within any half-open 100 ms window.
fn busiest_100ms(sorted: &[Instant]) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..sorted.len() {
        while sorted[hi].duration_since(sorted[lo]) >= Duration::from_millis(100) {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_one_node_behind_nginx_and_its_clients_reconnect_elsewhere() -> anyhow::Result<()> {
    // 1,000+ client sockets here, up to two per client in an nginx worker, the nodes'
    // share: over the usual soft limit of 1,024 (children inherit the raised limit).
    ensure_open_files(4_096)?;
    let cluster = LocalCluster::start(
        NODES,
        &[
            ("GATEWAY_DRAIN__DELAY_MS", DELAY_MS.to_string()),
            ("GATEWAY_DRAIN__PERIOD_MS", PERIOD_MS.to_string()),
            ("GATEWAY_DRAIN__DEADLINE_MS", DEADLINE_MS.to_string()),
            // Every client comes from nginx's 127.0.0.1, and counts are cluster-wide.
            ("GATEWAY_LIMITS__PER_IP", "100000".into()),
            ("GATEWAY_LIMITS__PENDING_PER_IP", "100000".into()),
            ("GATEWAY_LIMITS__HANDSHAKES_PER_IP_PER_SEC", "0".into()),
            ("GATEWAY_LIMITS__PER_USER", "100000".into()),
        ],
    )
    .await?;
    let lb_ws = cluster.lb_ws_url()?.to_owned();
    let drained_id = cluster.node_id(DRAINED)?.to_owned();
    let drained_pid = cluster.node_pid(DRAINED)?;
    let drained_ready = format!("{}/ready", cluster.node_url(DRAINED)?);
    let node_ids: Vec<String> = (1..=NODES).map(|i| cluster.node_id(i).map(str::to_owned)).collect::<Result<_, _>>()?;

    // --- 1,000 clients through nginx, each reading in its own task ---------------------
    let t_connect = Instant::now();
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let progress = Arc::new(Progress::default());
    let (finish_tx, finish_rx) = watch::channel(false);
    let (joined_tx, mut joined_rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(CLIENTS);
    for idx in 0..CLIENTS {
        let token = user_token(&format!("drain-u{idx}"), &["p1"], &[], Duration::from_secs(600));
        let url = format!("{lb_ws}?token={token}");
        tasks.push(tokio::spawn(run_client(
            idx,
            url,
            gate.clone(),
            joined_tx.clone(),
            finish_rx.clone(),
            progress.clone(),
        )));
    }
    drop(joined_tx);
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    let mut connect_errors = Vec::new();
    let joined = timeout(Duration::from_secs(90), async {
        let mut n = 0;
        while let Some((idx, r)) = joined_rx.recv().await {
            match r {
                Ok(node) => *per_node.entry(node).or_default() += 1,
                Err(e) => connect_errors.push(format!("client {idx}: {e}")),
            }
            n += 1;
            if n == CLIENTS {
                break;
            }
        }
        n
    })
    .await;
    let _ = finish_tx.send(!matches!(joined, Ok(CLIENTS)) || !connect_errors.is_empty());
    assert!(connect_errors.is_empty(), "clients failed to connect through nginx: {connect_errors:?}");
    assert_eq!(joined.ok(), Some(CLIENTS), "not every client connected within 90 s");
    eprintln!(
        "drain_lb: {CLIENTS} clients connected through nginx in {} ms: {per_node:?}",
        t_connect.elapsed().as_millis()
    );
    for id in &node_ids {
        assert!(per_node.contains_key(id), "nginx sent no client to {id}: {per_node:?}");
    }
    let drained_count = per_node.get(&drained_id).copied().unwrap_or(0);
    assert!(drained_count >= 100, "{drained_id} holds only {drained_count} clients: {per_node:?}");
    // Let the last `connected` frames settle before the signal.
    sleep(Duration::from_millis(200)).await;

    // --- SIGTERM one node; poll its /ready directly until it exits --------------------
    let t_sig = Instant::now();
    cluster.sigterm_node(DRAINED)?;
    let poller = tokio::spawn(poll_ready(
        drained_ready,
        drained_pid,
        Duration::from_millis(DEADLINE_MS) + Duration::from_secs(5),
    ));
    let all_back = wait_for(Duration::from_millis(DELAY_MS + PERIOD_MS) + Duration::from_secs(20), || {
        progress.reconnected.load(Ordering::SeqCst) >= drained_count
            && progress.closed.load(Ordering::SeqCst) == progress.reconnected.load(Ordering::SeqCst)
    })
    .await;
    let ready = timeout(Duration::from_millis(DEADLINE_MS) + Duration::from_secs(10), poller).await??;
    // A moment for anything stray to reach the undisturbed clients, then finish.
    sleep(Duration::from_millis(300)).await;
    let _ = finish_tx.send(true);
    let mut logs = Vec::with_capacity(CLIENTS);
    for t in tasks {
        logs.push(timeout(Duration::from_secs(30), t).await??);
    }

    // --- the measured timeline ------------------------------------------------------
    let (drained, others): (Vec<&ClientLog>, Vec<&ClientLog>) =
        logs.iter().partition(|l| l.node.as_deref() == Some(drained_id.as_str()));
    let mut closes: Vec<Instant> = drained.iter().filter_map(|l| l.closed.map(|(at, _)| at)).collect();
    closes.sort();
    let first_notice = drained.iter().filter_map(|l| l.disconnecting.first().map(|d| d.0)).min();
    let reconnects: Vec<Instant> = drained.iter().filter_map(|l| l.reconnect.as_ref().map(|r| r.0)).collect();
    let mut landed: BTreeMap<String, usize> = BTreeMap::new();
    for l in &drained {
        if let Some((_, node)) = &l.reconnect {
            *landed.entry(node.clone()).or_default() += 1;
        }
    }
    let extra_attempts: usize = drained.iter().map(|l| l.reconnect_failures.len()).sum();
    let answers_503 = ready.answers.iter().filter(|(_, s)| *s == 503).count();
    let first_503 = ready.answers.iter().find(|(_, s)| *s == 503).map(|a| a.0);
    let last_answer = ready.answers.last().map(|a| a.0);
    let max_gap = ready.answers.windows(2).map(|w| w[1].0.duration_since(w[0].0)).max().unwrap_or_default();
    let busiest = busiest_100ms(&closes);
    let at = |t: Option<Instant>| t.map(|t| format!("{} ms", ms_after(t, t_sig))).unwrap_or_else(|| "-".into());
    let span = match (closes.first(), closes.last()) {
        (Some(a), Some(b)) => b.duration_since(*a),
        _ => Duration::ZERO,
    };
    let mut buckets = vec![0usize; ((DELAY_MS + PERIOD_MS) / 500 + 4) as usize];
    for t in &closes {
        let b = (t.duration_since(t_sig).as_millis() / 500) as usize;
        if let Some(slot) = buckets.get_mut(b) {
            *slot += 1;
        }
    }
    let non_503: Vec<(i64, u16)> =
        ready.answers.iter().filter(|(_, s)| *s != 503).map(|(t, s)| (ms_after(*t, t_sig), *s)).collect();
    let lines = [
        ("/ready 503 first seen", at(first_503)),
        ("first disconnecting frame", at(first_notice)),
        ("first close (1001)", at(closes.first().copied())),
        (
            "last close (1001)",
            format!(
                "{}  (span {} ms; busiest 100 ms window {} closes = {:.1} %)",
                at(closes.last().copied()),
                span.as_millis(),
                busiest,
                100.0 * busiest as f64 / closes.len().max(1) as f64
            ),
        ),
        ("closes per 500 ms", format!("{buckets:?}")),
        (
            "all reconnected",
            format!(
                "{}  ({} of {} via nginx, onto {landed:?}; extra attempts {extra_attempts})",
                at(reconnects.iter().max().copied()),
                reconnects.len(),
                drained.len()
            ),
        ),
        ("node exited", at(ready.exited)),
        (
            "/ready answers",
            format!(
                "{} ({answers_503} x 503, others {non_503:?}); last {}, largest gap {} ms, refused {}",
                ready.answers.len(),
                at(last_answer),
                max_gap.as_millis(),
                ready.failures.len()
            ),
        ),
    ];
    let mut report = format!(
        "drain_lb: timeline, ms after SIGTERM to {drained_id} ({} of {CLIENTS} clients on it; \
         drain delay {DELAY_MS} ms, period {PERIOD_MS} ms, deadline {DEADLINE_MS} ms):",
        drained.len()
    );
    for (label, value) in lines {
        report.push_str(&format!("\n  {label:<27}{value}"));
    }
    eprintln!("{report}");
    if !all_back {
        eprintln!("drain_lb: {drained_id} log tail:\n{}", cluster.node_log_tail(DRAINED, 20));
    }

    // --- every client of the drained node: notice, then 1001, within delay + period -----
    let close_bound = Duration::from_millis(DELAY_MS + PERIOD_MS) + CLOSE_MARGIN;
    assert_eq!(drained.len(), drained_count);
    for l in &drained {
        let Some((closed_at, code)) = l.closed else {
            panic!("client {} on {drained_id} was never closed: {l:?}", l.idx);
        };
        assert_eq!(code, Some(1001), "client {} closed with {code:?}: {l:?}", l.idx);
        match l.disconnecting[..] {
            [(at, DisconnectReason::Shutdown, true)] => {
                assert!(at <= closed_at, "client {}: disconnecting after the close: {l:?}", l.idx)
            }
            _ => panic!("client {}: expected one disconnecting{{shutdown, reconnect:true}}: {l:?}", l.idx),
        }
        assert!(l.unexpected.is_empty(), "client {} got unexpected frames: {l:?}", l.idx);
        let after = closed_at.duration_since(t_sig);
        assert!(
            after <= close_bound,
            "client {} closed {} ms after SIGTERM, later than delay + period + margin ({} ms)",
            l.idx,
            after.as_millis(),
            close_bound.as_millis()
        );
    }
    // Nothing is closed before the delay (the balancer's time to notice /ready).
    let first_close = closes.first().copied().unwrap_or(t_sig);
    assert!(
        first_close.duration_since(t_sig) >= Duration::from_millis(DELAY_MS.saturating_sub(50)),
        "first close {} ms after SIGTERM, before the drain delay",
        ms_after(first_close, t_sig)
    );

    // --- spread over the period, not at once ---------------------------------------
    assert!(
        span >= Duration::from_millis(PERIOD_MS / 2),
        "closes span only {} ms (< 50 % of the {PERIOD_MS} ms drain period)",
        span.as_millis()
    );
    assert!(busiest * 5 <= closes.len(), "{busiest} of {} closes fell within one 100 ms window (> 20 %)", closes.len());

    // --- everyone reconnected through nginx, never onto the draining node ---------------
    for l in &drained {
        let Some((_, node)) = &l.reconnect else {
            panic!("client {} did not reconnect: {l:?}", l.idx);
        };
        assert_ne!(node, &drained_id, "client {} reconnected onto the draining node", l.idx);
        assert!(node_ids.contains(node), "client {} reconnected onto unknown node {node}", l.idx);
        assert!(l.after_reconnect.is_empty(), "client {} disturbed after reconnecting: {l:?}", l.idx);
        assert_eq!(l.probe, Ok(()), "client {}: ping after reconnecting: {l:?}", l.idx);
    }
    assert!(all_back, "not every closed client reconnected in time");

    // --- /ready of the draining node: 503 from the signal until the process exited ------
    assert!(ready.exited.is_some(), "{drained_id} still running {} ms after SIGTERM", DEADLINE_MS + 5_000);
    let exited = ready.exited.unwrap_or(t_sig);
    assert!(
        exited.duration_since(t_sig) <= Duration::from_millis(DEADLINE_MS),
        "{drained_id} exited {} ms after SIGTERM, past the {DEADLINE_MS} ms deadline",
        ms_after(exited, t_sig)
    );
    let first_503 = first_503.unwrap_or_else(|| panic!("/ready of {drained_id} never answered 503"));
    // The signal is handled asynchronously: a poll in the first few ms may still see 200
    // (seen under CPU contention), but none after half the delay, none once the node said
    // 503, and 503 came before any close.
    for (t, status) in &ready.answers {
        if *t < first_503 {
            assert!(
                t.duration_since(t_sig) < Duration::from_millis(DELAY_MS / 2),
                "/ready answered {status} {} ms after SIGTERM",
                ms_after(*t, t_sig)
            );
        } else {
            assert_eq!(*status, 503, "/ready answered {status} {} ms after SIGTERM", ms_after(*t, t_sig));
        }
    }
    assert!(first_503 <= first_close, "/ready still 200 when the first close arrived");
    assert!(answers_503 >= 20, "only {answers_503} /ready answers during the drain");
    let last = last_answer.unwrap_or(t_sig);
    let last_close = closes.last().copied().unwrap_or(t_sig);
    assert!(
        last + Duration::from_millis(1_000) >= last_close,
        "/ready answers stopped at {} ms, long before the last close at {} ms",
        ms_after(last, t_sig),
        ms_after(last_close, t_sig)
    );

    // --- the other nodes' clients were not disturbed -----------------------------------
    assert_eq!(others.len(), CLIENTS - drained_count);
    for l in &others {
        assert!(
            l.disconnecting.is_empty() && l.closed.is_none() && l.unexpected.is_empty(),
            "client {} on {:?} was disturbed: {l:?}",
            l.idx,
            l.node
        );
        assert_eq!(l.probe, Ok(()), "client {} on {:?}: ping at the end: {l:?}", l.idx, l.node);
    }
    Ok(())
}
