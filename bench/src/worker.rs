//! The worker process (`gateway-bench worker`): holds client connections for the parent,
//! which drives it with JSON lines on stdin and reads JSON lines from its stdout.
//!
//! One process holds at most ~19k sockets (20,000 open files, not raisable here), so the
//! parent spreads clients over several workers, and each worker spreads its sockets over
//! several loopback source addresses so no single address runs out of ephemeral ports.

use std::{
    collections::BTreeMap,
    io::Write,
    net::{Ipv4Addr, SocketAddr, ToSocketAddrs},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpStream,
    time::timeout,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{self, Message},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use crate::native::open;
use crate::{
    proto::{ChurnSpec, Cmd, ConnectSpec, Ev, Tally, hist_pairs, new_hist},
    token::mint,
    tracked::{self, Tracked},
};

/// A client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// How long closing every held connection may take.
const CLOSE_ALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one close handshake may take.
pub const CLOSE_ONE_TIMEOUT: Duration = Duration::from_secs(3);

/// Writes one event line to stdout.
pub fn emit(ev: &Ev) {
    if let Ok(line) = serde_json::to_string(ev) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Counts shared by the connection tasks of one worker.
struct State {
    phase: AtomicU64,
    received: AtomicU64,
    stale: AtomicU64,
    first_us: AtomicU64,
    last_us: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    open: AtomicU64,
    lost: AtomicU64,
    /// Open connections per shared channel.
    open_per_channel: Mutex<Vec<u64>>,
    /// `open_per_channel` at the start of the current phase.
    phase_open: Mutex<Vec<u64>>,
    close_codes: Mutex<BTreeMap<String, u64>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// Locks `m`, also when a holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Microseconds since the Unix epoch (the clock the publisher stamps events with).
pub fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// The unsigned number following `key` in `s` (keys are written without spaces).
pub fn num_after(s: &str, key: &str) -> Option<u64> {
    let i = s.find(key)? + key.len();
    let digits: &str = {
        let rest = &s[i..];
        let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        &rest[..end]
    };
    digits.parse().ok()
}

impl State {
    fn new() -> Self {
        State {
            phase: AtomicU64::new(u64::MAX),
            received: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            first_us: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
            latency: Mutex::new(new_hist()),
            open: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            open_per_channel: Mutex::new(Vec::new()),
            phase_open: Mutex::new(Vec::new()),
            close_codes: Mutex::new(BTreeMap::new()),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Counts a bench event (text frames carrying `bench_p`/`bench_t`); others are ignored.
    fn on_text(&self, text: &str) {
        let Some(phase) = num_after(text, "\"bench_p\":") else { return };
        if phase != self.phase.load(Ordering::Relaxed) {
            self.stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        let now = now_us();
        if self.first_us.load(Ordering::Relaxed) == 0 {
            self.first_us.store(now, Ordering::Relaxed);
        }
        self.last_us.store(now, Ordering::Relaxed);
        if let Some(t) = num_after(text, "\"bench_t\":") {
            let lat = now.saturating_sub(t).max(1);
            let _ = lock(&self.latency).record(lat.min(120_000_000));
        }
    }

    fn lose(&self, ch: usize, why: String) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.lost.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = lock(&self.open_per_channel).get_mut(ch) {
            *n = n.saturating_sub(1);
        }
        *lock(&self.close_codes).entry(why).or_default() += 1;
    }
}

/// A parsed target: the URL for the upgrade request and the address to connect to.
#[derive(Clone)]
pub struct Target {
    /// `ws://host:port/path`.
    pub url: String,
    addr: SocketAddr,
}

impl Target {
    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Parses `ws://host:port/…` targets (IPv4 only).
pub fn parse_targets(urls: &[String]) -> anyhow::Result<Vec<Target>> {
    urls.iter()
        .map(|u| {
            let rest = u.strip_prefix("ws://").with_context(|| format!("{u}: only ws:// targets"))?;
            let hostport = rest.split('/').next().unwrap_or(rest);
            let addr = hostport
                .to_socket_addrs()
                .with_context(|| format!("resolve {hostport}"))?
                .find(SocketAddr::is_ipv4)
                .with_context(|| format!("{hostport}: no IPv4 address"))?;
            Ok(Target { url: u.clone(), addr })
        })
        .collect()
}

/// A short failure reason for the error table.
pub fn reason(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(resp) => format!("http_{}", resp.status().as_u16()),
        tungstenite::Error::Io(io) => format!("io_{:?}", io.kind()),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => "closed".into(),
        tungstenite::Error::Protocol(p) => format!("protocol_{p:?}").chars().take(60).collect(),
        other => format!("{other}").chars().take(60).collect(),
    }
}

/// Holds a connection: counts events until the server closes it or the worker stops.
async fn hold(mut ws: Ws, ch: usize, st: Arc<State>) {
    loop {
        tokio::select! {
            _ = st.stop.cancelled() => {
                let _ = timeout(CLOSE_ONE_TIMEOUT, async {
                    let _ = ws.close(None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                }).await;
                st.open.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            m = ws.next() => match m {
                // An Engine.IO ping (Socket.IO subscribers): answer it or be dropped.
                Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                    let _ = ws.send(Message::Text("3".into())).await;
                }
                Some(Ok(Message::Text(t))) => st.on_text(t.as_str()),
                Some(Ok(Message::Close(f))) => {
                    st.lose(ch, format!("close_{}", f.map(|f| u16::from(f.code)).unwrap_or(0)));
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => { st.lose(ch, reason(&e)); return; }
                None => { st.lose(ch, "eof".into()); return; }
            }
        }
    }
}

/// Spawns a ticker that emits progress every second until `done` is cancelled.
pub fn progress(ok: Arc<AtomicU64>, failed: Arc<AtomicU64>, done: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = done.cancelled() => return,
                _ = tick.tick() => emit(&Ev::Progress {
                    done: ok.load(Ordering::Relaxed),
                    failed: failed.load(Ordering::Relaxed),
                }),
            }
        }
    });
}

async fn connect(spec: ConnectSpec, st: &Arc<State>) -> anyhow::Result<Ev> {
    let targets = parse_targets(&spec.clients.targets)?;
    anyhow::ensure!(!spec.clients.src_ips.is_empty(), "no source addresses");
    *lock(&st.open_per_channel) = vec![0; spec.channels.len().max(1)];
    let began = Instant::now();
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let ticker = CancellationToken::new();
    progress(ok.clone(), failed.clone(), ticker.clone());
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut handshake = new_hist();
    let mut ready = new_hist();
    let per = Duration::from_millis(spec.timeout_ms);
    let spec = &spec;
    let targets = &targets;
    let mut results = futures_util::stream::iter(spec.clients.first..spec.clients.first + spec.clients.count)
        .map(|i| async move {
            let target = &targets[(i % targets.len() as u64) as usize];
            let src = spec.clients.src_ips[(i % spec.clients.src_ips.len() as u64) as usize];
            let ch = (i % spec.channels.len().max(1) as u64) as usize;
            let user = format!("{}{i}", spec.clients.user_prefix);
            let channel = spec.channels.get(ch).map(String::as_str);
            // Every project: the channels may be `project:` ones (`fanout --socketio`).
            let token =
                crate::token::mint_with_projects(&spec.clients.secret, &user, &["*"]).map_err(|e| e.to_string())?;
            let opened = if spec.socketio {
                timeout(per, crate::sio::open(target, src, &token, channel.unwrap_or_default())).await
            } else {
                timeout(per, open(target, src, &token, channel)).await
            };
            match opened {
                Ok(Ok((ws, hs, rd))) => Ok((ws, hs, rd, ch)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err("timeout".to_owned()),
            }
        })
        .buffer_unordered(spec.concurrency.max(1));
    while let Some(r) = results.next().await {
        match r {
            Ok((ws, hs, rd, ch)) => {
                let _ = handshake.record(hs.max(1));
                let _ = ready.record(rd.max(1));
                st.open.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = lock(&st.open_per_channel).get_mut(ch) {
                    *n += 1;
                }
                ok.fetch_add(1, Ordering::Relaxed);
                st.tasks.spawn(hold(ws, ch, st.clone()));
            }
            Err(e) => {
                failed.fetch_add(1, Ordering::Relaxed);
                *errors.entry(e).or_default() += 1;
            }
        }
    }
    ticker.cancel();
    Ok(Ev::Connected {
        tally: Tally {
            ok: ok.load(Ordering::Relaxed),
            failed: failed.load(Ordering::Relaxed),
            errors,
            handshake: hist_pairs(&handshake),
            elapsed_ms: began.elapsed().as_millis() as u64,
        },
        ready: hist_pairs(&ready),
    })
}

/// One churn cycle: connect, subscribe, close, wait for the server's close.
async fn cycle(target: &Target, src: Ipv4Addr, token: &str, channel: &str) -> Result<u64, String> {
    let (mut ws, hs, _) = open(target, src, token, Some(channel)).await?;
    ws.close(None).await.map_err(|e| reason(&e))?;
    loop {
        match ws.next().await {
            None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    Ok(hs)
}

async fn churn(spec: ChurnSpec) -> anyhow::Result<Ev> {
    let targets = parse_targets(&spec.clients.targets)?;
    anyhow::ensure!(!spec.clients.src_ips.is_empty(), "no source addresses");
    let began = Instant::now();
    let deadline = began + Duration::from_millis(spec.deadline_ms);
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let handshake = Arc::new(Mutex::new(new_hist()));
    let ticker = CancellationToken::new();
    progress(ok.clone(), failed.clone(), ticker.clone());
    let spec = Arc::new(spec);
    let targets = Arc::new(targets);
    let mut slots = Vec::new();
    for slot in 0..spec.concurrency.max(1) {
        let (spec, targets, next, ok, failed, errors, handshake) = (
            spec.clone(),
            targets.clone(),
            next.clone(),
            ok.clone(),
            failed.clone(),
            errors.clone(),
            handshake.clone(),
        );
        slots.push(tokio::spawn(async move {
            // One user per slot: a slot has at most one connection open at a time.
            let user = format!("{}{}-{slot}", spec.clients.user_prefix, spec.clients.first);
            let Ok(token) = mint(&spec.clients.secret, &user) else { return };
            let per = Duration::from_millis(spec.timeout_ms);
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= spec.clients.count || Instant::now() >= deadline {
                    return;
                }
                let i = spec.clients.first + k;
                let target = &targets[(i % targets.len() as u64) as usize];
                let src = spec.clients.src_ips[(i % spec.clients.src_ips.len() as u64) as usize];
                match timeout(per, cycle(target, src, &token, &spec.channel)).await {
                    Ok(Ok(hs)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let _ = lock(&handshake).record(hs.max(1));
                    }
                    Ok(Err(e)) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        *lock(&errors).entry(e).or_default() += 1;
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        *lock(&errors).entry("timeout".into()).or_default() += 1;
                    }
                }
            }
        }));
    }
    for s in slots {
        let _ = s.await;
    }
    ticker.cancel();
    let undone = spec.clients.count.saturating_sub(ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed));
    let mut errors = lock(&errors).clone();
    if undone > 0 {
        *errors.entry("not_run_deadline".into()).or_default() += undone;
    }
    Ok(Ev::ChurnDone(Tally {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed) + undone,
        errors,
        handshake: hist_pairs(&lock(&handshake)),
        elapsed_ms: began.elapsed().as_millis() as u64,
    }))
}

/// Closes every held connection (bounded) and returns how many there were.
async fn close_all(st: &Arc<State>) -> u64 {
    let n = st.open.load(Ordering::Relaxed);
    st.stop.cancel();
    st.tasks.close();
    let _ = timeout(CLOSE_ALL_TIMEOUT, st.tasks.wait()).await;
    n
}

/// The worker's main loop: one command per stdin line until `close` or end of input.
pub async fn run() -> anyhow::Result<()> {
    let st = Arc::new(State::new());
    let tracked = Arc::new(Tracked::new());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let cmd: Cmd = match serde_json::from_str(&line) {
            Ok(c) => c,
            Err(e) => {
                emit(&Ev::Error { message: format!("bad command: {e}") });
                continue;
            }
        };
        let ev = match cmd {
            Cmd::Connect(spec) => connect(spec, &st).await.unwrap_or_else(|e| Ev::Error { message: format!("{e:#}") }),
            Cmd::Measure { phase } => {
                *lock(&st.phase_open) = lock(&st.open_per_channel).clone();
                st.received.store(0, Ordering::Relaxed);
                st.stale.store(0, Ordering::Relaxed);
                st.first_us.store(0, Ordering::Relaxed);
                st.last_us.store(0, Ordering::Relaxed);
                lock(&st.latency).reset();
                st.phase.store(phase, Ordering::Relaxed);
                Ev::Ack
            }
            Cmd::Report { events } => {
                let expected = lock(&st.phase_open).iter().zip(events.iter()).map(|(open, ev)| open * ev).sum::<u64>();
                Ev::Report {
                    phase: st.phase.load(Ordering::Relaxed),
                    received: st.received.load(Ordering::Relaxed),
                    expected,
                    stale: st.stale.load(Ordering::Relaxed),
                    open: st.open.load(Ordering::Relaxed),
                    lost: st.lost.load(Ordering::Relaxed),
                    close_codes: lock(&st.close_codes).clone(),
                    latency: hist_pairs(&lock(&st.latency)),
                    first_us: st.first_us.load(Ordering::Relaxed),
                    last_us: st.last_us.load(Ordering::Relaxed),
                }
            }
            Cmd::Resume(spec) => {
                tracked::connect(spec, &tracked).await.unwrap_or_else(|e| Ev::Error { message: format!("{e:#}") })
            }
            Cmd::Track { published } => tracked::report(&tracked, &published),
            Cmd::Churn(spec) => churn(spec).await.unwrap_or_else(|e| Ev::Error { message: format!("{e:#}") }),
            Cmd::Close => {
                let closed = close_all(&st).await + tracked::close(&tracked).await;
                emit(&Ev::Closed { closed });
                return Ok(());
            }
        };
        emit(&ev);
    }
    // The parent went away: close what we hold and exit.
    close_all(&st).await;
    tracked::close(&tracked).await;
    Ok(())
}
