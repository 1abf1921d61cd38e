//! The soak's load besides the fan-out subscribers the worker pool holds: connect churn
//! and `request` frames, both driven from this process at a fixed rate, and the backend
//! the requests reach (a responder on `<prefix>.rpc.bench.echo`, as a service would be).

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use gateway_protocol::ClientFrame;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::{
    sync::Semaphore,
    task::JoinHandle,
    time::{Instant, sleep_until, timeout},
};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    proto::new_hist,
    worker::{self, CLOSE_ONE_TIMEOUT, Target, Ws, lock},
};

/// The backend method the requests ask for besides the built-in ones.
pub const ECHO_METHOD: &str = "bench.echo";
/// How long a client waits for its outstanding answers once the load stops.
const ANSWER_GRACE: Duration = Duration::from_secs(5);

/// What one kind of load did: successes with their latency, failures by reason.
pub struct Tally {
    /// Succeeded.
    ok: AtomicU64,
    /// Failed.
    failed: AtomicU64,
    /// Ticks skipped because too many operations were in flight (the rate is a cap).
    skipped: AtomicU64,
    /// Failure reason → count.
    errors: Mutex<BTreeMap<String, u64>>,
    /// Successes by kind (request method).
    ok_by: Mutex<BTreeMap<String, u64>>,
    /// Latency of the successes, µs.
    latency: Mutex<Histogram<u64>>,
}

/// A copy of a [`Tally`].
pub struct Totals {
    /// Succeeded.
    pub ok: u64,
    /// Failed.
    pub failed: u64,
    /// Not started: the in-flight bound was reached.
    pub skipped: u64,
    /// Failure reason → count.
    pub errors: BTreeMap<String, u64>,
    /// Kind → successes.
    pub ok_by: BTreeMap<String, u64>,
    /// Latency of the successes, µs.
    pub latency: Histogram<u64>,
}

impl Tally {
    /// Nothing yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Tally {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            ok_by: Mutex::new(BTreeMap::new()),
            latency: Mutex::new(new_hist()),
        })
    }

    fn succeed(&self, kind: &str, us: u64) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        *lock(&self.ok_by).entry(kind.to_owned()).or_default() += 1;
        let _ = lock(&self.latency).record(us.clamp(1, 120_000_000));
    }

    fn fail(&self, reason: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *lock(&self.errors).entry(reason).or_default() += 1;
    }

    /// The counts so far.
    pub fn totals(&self) -> Totals {
        Totals {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            errors: lock(&self.errors).clone(),
            ok_by: lock(&self.ok_by).clone(),
            latency: lock(&self.latency).clone(),
        }
    }
}

/// Where and as whom the load's clients connect.
#[derive(Clone)]
pub struct Clients {
    /// The nodes; operation `k` goes to `targets[k % len]`.
    pub targets: Vec<Target>,
    /// Loopback source addresses; operation `k` binds `src_ips[k % len]`.
    pub src_ips: Vec<Ipv4Addr>,
    /// (user id, token) pairs; operation `k` uses `users[k % len]`.
    pub users: Vec<(String, String)>,
    /// Bound of one connect (or cycle).
    pub timeout: Duration,
}

impl Clients {
    fn pick(&self, k: u64) -> (&Target, Ipv4Addr, &(String, String)) {
        let at = |len: usize| (k % len.max(1) as u64) as usize;
        (&self.targets[at(self.targets.len())], self.src_ips[at(self.src_ips.len())], &self.users[at(self.users.len())])
    }
}

/// One churn cycle: connect, join `channel`, close, wait for the server's close.
async fn cycle(target: &Target, src: Ipv4Addr, token: &str, channel: &str) -> Result<u64, String> {
    let (mut ws, handshake, _) = worker::open(target, src, token, Some(channel)).await?;
    ws.close(None).await.map_err(|e| worker::reason(&e))?;
    while let Some(Ok(_)) = ws.next().await {}
    Ok(handshake)
}

/// Connect → subscribe `channel` → close cycles at `rate` per second, at most
/// `max_inflight` at once, until `stop`; then waits (bounded) for the cycles in flight.
pub async fn churn(
    clients: Clients,
    channel: String,
    rate: f64,
    max_inflight: usize,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let tasks = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(max_inflight.max(1)));
    let (clients, channel) = (Arc::new(clients), Arc::new(channel));
    let began = Instant::now();
    for k in 0u64.. {
        let at = began + Duration::from_secs_f64(k as f64 / rate.max(1e-3));
        if stop.run_until_cancelled(sleep_until(at)).await.is_none() {
            break;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tally.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (clients, channel, tally) = (clients.clone(), channel.clone(), tally.clone());
        tasks.spawn(async move {
            let (target, src, (_, token)) = clients.pick(k);
            match timeout(clients.timeout, cycle(target, src, token, &channel)).await {
                Ok(Ok(handshake)) => tally.succeed("cycle", handshake),
                Ok(Err(e)) => tally.fail(e),
                Err(_) => tally.fail("timeout".into()),
            }
            drop(permit);
        });
    }
    tasks.close();
    let _ = timeout(clients.timeout + CLOSE_ONE_TIMEOUT, tasks.wait()).await;
}

/// The `k`-th request of a client of `user`: `channels.list`, `history.get` of its own
/// channel, and (with a backend) the echo method, in turn.
fn request(k: u64, user: &str, backend: bool) -> ClientFrame {
    let (method, params) = match k % if backend { 3 } else { 2 } {
        0 => ("channels.list", Value::Null),
        1 => ("history.get", json!({ "channel": format!("user:{user}"), "limit": 10 })),
        _ => (ECHO_METHOD, json!({ "k": k })),
    };
    ClientFrame::Request { id: k.to_string(), method: method.to_owned(), params }
}

/// One request client: sends a request every `1/rate` s until `stop`, matches the
/// answers, then waits (bounded) for the outstanding ones and closes.
async fn requester(ws: Ws, user: String, rate: f64, backend: bool, tally: Arc<Tally>, stop: CancellationToken) {
    let (mut tx, mut rx) = ws.split();
    let mut pending: HashMap<String, (Instant, &'static str)> = HashMap::new();
    let began = Instant::now();
    let mut k = 0u64;
    let mut grace: Option<Instant> = None;
    loop {
        let next = began + Duration::from_secs_f64(k as f64 / rate.max(1e-3));
        tokio::select! {
            _ = stop.cancelled(), if grace.is_none() => {
                if pending.is_empty() {
                    break;
                }
                grace = Some(Instant::now() + ANSWER_GRACE);
            }
            _ = sleep_until(grace.unwrap_or(next)) => {
                if grace.is_some() {
                    break;
                }
                let frame = request(k, &user, backend);
                let ClientFrame::Request { id, method, .. } = &frame else { break };
                let kind = match method.as_str() {
                    "channels.list" => "channels.list",
                    "history.get" => "history.get",
                    _ => ECHO_METHOD,
                };
                pending.insert(id.clone(), (Instant::now(), kind));
                let text = serde_json::to_string(&frame).unwrap_or_default();
                if let Err(e) = tx.send(Message::Text(text.into())).await {
                    tally.fail(format!("send_{}", worker::reason(&e)));
                    return;
                }
                k += 1;
            }
            m = rx.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                    if v["type"] != "response" {
                        continue;
                    }
                    let Some((sent, kind)) = v["id"].as_str().and_then(|id| pending.remove(id)) else { continue };
                    match v["error"]["code"].as_str() {
                        None => tally.succeed(kind, sent.elapsed().as_micros() as u64),
                        Some(code) => tally.fail(format!("{kind}:{code}")),
                    }
                    if grace.is_some() && pending.is_empty() {
                        break;
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    tally.fail(format!("closed_{}", f.map(|f| u16::from(f.code)).unwrap_or(0)));
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => { tally.fail(worker::reason(&e)); return; }
                None => { tally.fail("eof".into()); return; }
            }
        }
    }
    for _ in pending.drain() {
        tally.fail("unanswered".into());
    }
    if let Ok(mut ws) = tx.reunite(rx) {
        let _ = timeout(CLOSE_ONE_TIMEOUT, async {
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}

/// Opens `n` request clients (connect failures count as failures) and runs them at
/// `rate` requests per second in all until `stop`; returns once every client closed.
pub async fn requests(
    clients: Clients,
    n: usize,
    rate: f64,
    backend: bool,
    tally: Arc<Tally>,
    stop: CancellationToken,
) -> usize {
    let tasks = TaskTracker::new();
    let mut open = 0;
    for k in 0..n as u64 {
        let (target, src, (user, token)) = clients.pick(k);
        match timeout(clients.timeout, worker::open(target, src, token, None)).await {
            Ok(Ok((ws, _, _))) => {
                open += 1;
                let per_client = rate / n.max(1) as f64;
                tasks.spawn(requester(ws, user.clone(), per_client, backend, tally.clone(), stop.clone()));
            }
            Ok(Err(e)) => tally.fail(format!("connect_{e}")),
            Err(_) => tally.fail("connect_timeout".into()),
        }
    }
    tasks.close();
    stop.cancelled().await;
    let _ = timeout(ANSWER_GRACE + CLOSE_ONE_TIMEOUT * 2, tasks.wait()).await;
    open
}

/// Answers `<prefix>.rpc.bench.echo` with the request's params (its `result`) until
/// `stop`; the task returns how many it answered.
pub async fn responder(
    nats: async_nats::Client,
    prefix: &str,
    stop: CancellationToken,
) -> anyhow::Result<JoinHandle<u64>> {
    let subject = format!("{prefix}.rpc.{ECHO_METHOD}");
    let mut sub = nats.queue_subscribe(subject, "bench".into()).await?;
    nats.flush().await?;
    Ok(tokio::spawn(async move {
        let mut answered = 0;
        while let Some(Some(msg)) = stop.run_until_cancelled(sub.next()).await {
            if let Some(reply) = msg.reply
                && nats.publish(reply, msg.payload).await.is_ok()
            {
                answered += 1;
            }
        }
        answered
    }))
}
