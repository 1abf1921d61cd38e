//! The worker's side of the `resume` scenario: clients that join a channel with history
//! and one without, record every bench sequence number they receive (to count losses and
//! duplicates against what was published) and the last history position they saw, and,
//! when their connection is lost, reconnect after a random delay to another node and
//! resubscribe with `recover` from that position. Every wait is bounded.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use gateway_protocol::{ClientFrame, StreamPosition};
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    proto::{Ev, ResumeSpec, Tally, TrackReport, hist_pairs, new_hist},
    token::mint_with_projects,
    worker::{CLOSE_ONE_TIMEOUT, Target, Ws, lock, now_us, num_after, open, parse_targets, progress, reason},
};

/// Reconnect attempts of one client before it gives up.
const ATTEMPTS: u64 = 20;
/// Bound of one reconnect attempt (handshake, subscribe, replay, answer).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of closing every client when the worker stops.
const CLOSE_ALL_TIMEOUT: Duration = Duration::from_secs(20);

/// What one client received.
#[derive(Default)]
struct Track {
    /// Index of its history channel.
    ch: usize,
    /// Bit `s` set: sequence number `s` was received.
    seen: Vec<u64>,
    /// Distinct sequence numbers received.
    distinct: u64,
    /// Extra copies received.
    dups: u64,
    /// Events with a lower sequence number than one received before.
    out_of_order: u64,
    /// Highest sequence number received.
    highest: u64,
    /// Last history position seen (from an event, else from the first subscribe answer).
    last: Option<StreamPosition>,
    /// A resubscribe is in flight: events now are its replay.
    replaying: bool,
    /// Per completed resume: (answer µs, first live event µs; 0 = none yet).
    resumes: Vec<(u64, u64)>,
}

impl Track {
    fn record(&mut self, seq: u64) {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= w {
            self.seen.resize(w + 1, 0);
        }
        if self.seen[w] & (1 << b) != 0 {
            self.dups += 1;
        } else {
            self.seen[w] |= 1 << b;
            self.distinct += 1;
        }
        if seq < self.highest {
            self.out_of_order += 1;
        }
        self.highest = self.highest.max(seq);
    }
}

/// The `resume` clients of one worker.
pub struct Tracked {
    tracks: Mutex<Vec<Arc<Mutex<Track>>>>,
    history_received: AtomicU64,
    plain_received: AtomicU64,
    replayed: AtomicU64,
    open: AtomicU64,
    reconnected: AtomicU64,
    /// `recovered` true / false / missing.
    recovered: [AtomicU64; 3],
    close_codes: Mutex<BTreeMap<String, u64>>,
    gave_up: Mutex<BTreeMap<String, u64>>,
    retries: Mutex<BTreeMap<String, u64>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// The quoted string following `key` in `s`.
fn str_after<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    let rest = &s[s.find(key)? + key.len()..];
    Some(&rest[..rest.find('"')?])
}

/// A number in `0..=max` that differs per client and per run (splitmix64).
fn jitter(i: u64, max: u64) -> u64 {
    let mut z = i.wrapping_add(now_us()).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) % (max + 1)
}

impl Tracked {
    /// No clients yet.
    pub fn new() -> Self {
        Tracked {
            tracks: Mutex::new(Vec::new()),
            history_received: AtomicU64::new(0),
            plain_received: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            open: AtomicU64::new(0),
            reconnected: AtomicU64::new(0),
            recovered: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            close_codes: Mutex::new(BTreeMap::new()),
            gave_up: Mutex::new(BTreeMap::new()),
            retries: Mutex::new(BTreeMap::new()),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Counts an event frame: plain-channel bench events by number, history-channel ones
    /// by sequence number; any history event moves the client's position.
    fn on_event(&self, text: &str, t: &mut Track) {
        if text.contains("\"channel\":\"broadcast:") {
            if text.contains("\"bench_s\":") {
                self.plain_received.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        if let (Some(offset), Some(epoch)) = (num_after(text, "\"offset\":"), str_after(text, "\"epoch\":\"")) {
            match &mut t.last {
                Some(p) if p.epoch == epoch => p.offset = offset,
                last => *last = Some(StreamPosition { offset, epoch: epoch.to_owned() }),
            }
        }
        let Some(seq) = num_after(text, "\"bench_s\":") else { return };
        t.record(seq);
        self.history_received.fetch_add(1, Ordering::Relaxed);
        if t.replaying {
            self.replayed.fetch_add(1, Ordering::Relaxed);
        } else if let Some(r) = t.resumes.last_mut()
            && r.1 == 0
        {
            r.1 = now_us();
        }
    }

    /// Reads frames until the connection is lost (its reason) or the worker stops (`None`).
    async fn read(&self, ws: &mut Ws, track: &Mutex<Track>) -> Option<String> {
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) if t.as_str().starts_with("{\"type\":\"event\"") => {
                        self.on_event(t.as_str(), &mut lock(track));
                    }
                    Some(Ok(Message::Close(f))) => {
                        return Some(format!("close_{}", f.map(|f| u16::from(f.code)).unwrap_or(0)));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Some(reason(&e)),
                    None => return Some("eof".into()),
                }
            }
        }
    }

    /// Joins `hist` and `plain`, recovering `hist` from `from`, and waits for the answer
    /// (events before it, the replay, are counted). Returns the answer's `recovered`.
    async fn join(
        &self,
        ws: &mut Ws,
        (hist, plain): (&str, &str),
        from: Option<StreamPosition>,
        track: &Mutex<Track>,
    ) -> Result<Option<bool>, String> {
        let recover = from.map(|p| (hist.to_owned(), p)).into_iter().collect();
        let channels = vec![hist.to_owned(), plain.to_owned()];
        let sub = ClientFrame::Subscribe { id: Some("r".into()), channels, token: None, recover };
        let sub = serde_json::to_string(&sub).map_err(|e| e.to_string())?;
        lock(track).replaying = true;
        let answer = async {
            ws.send(Message::Text(sub.into())).await.map_err(|e| reason(&e))?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str().starts_with("{\"type\":\"response\"") => return Ok(t),
                    Some(Ok(Message::Text(t))) if t.as_str().starts_with("{\"type\":\"event\"") => {
                        self.on_event(t.as_str(), &mut lock(track));
                    }
                    Some(Ok(Message::Close(f))) => {
                        return Err(format!("closed_{}", f.map(|f| u16::from(f.code)).unwrap_or(0)));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(reason(&e)),
                    None => return Err("eof_before_subscribed".into()),
                }
            }
        }
        .await;
        lock(track).replaying = false;
        let v: serde_json::Value = serde_json::from_str(answer?.as_str()).map_err(|e| e.to_string())?;
        let r = &v["result"];
        let joined = r["subscribed"].as_array().is_some_and(|a| [hist, plain].iter().all(|c| a.iter().any(|x| x == c)));
        if !joined {
            return Err(format!("subscribe_rejected_{}", r["rejected"][0]["code"].as_str().unwrap_or("unknown")));
        }
        let mut t = lock(track);
        if t.last.is_none() {
            t.last = serde_json::from_value(r["positions"][hist].clone()).ok();
        }
        Ok(r["recovered"][hist].as_bool())
    }

    /// Reconnects client `i` (last on node `from`) to the other nodes in turn and resumes.
    async fn reconnect(
        &self,
        i: u64,
        from: usize,
        ctx: &Ctx,
        channels: (&str, &str),
        track: &Mutex<Track>,
    ) -> Result<(Ws, usize), String> {
        let n = ctx.targets.len();
        // The dead node's clients spread evenly over the others.
        let spread = if n > 1 { 1 + (i / n as u64) as usize % (n - 1) } else { 0 };
        let ips = &ctx.spec.clients.src_ips;
        let mut last = String::from("stopped");
        for attempt in 0..ATTEMPTS {
            if self.stop.is_cancelled() {
                break;
            }
            let at = (from + spread + attempt as usize) % n;
            let src = ips[((i + attempt) % ips.len() as u64) as usize];
            let pos = lock(track).last.clone();
            let asked = pos.is_some();
            let tried = timeout(ATTEMPT_TIMEOUT, async {
                let (mut ws, _, _) = open(&ctx.targets[at], src, &ctx.token(i)?, None).await?;
                let recovered = self.join(&mut ws, channels, pos, track).await?;
                Ok::<_, String>((ws, recovered))
            })
            .await;
            match tried {
                Ok(Ok((ws, recovered))) => {
                    let k = match recovered {
                        Some(true) if asked => 0,
                        Some(false) if asked => 1,
                        _ => 2,
                    };
                    self.recovered[k].fetch_add(1, Ordering::Relaxed);
                    lock(track).resumes.push((now_us(), 0));
                    return Ok((ws, at));
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = "timeout".into(),
            }
            lock(track).replaying = false;
            *lock(&self.retries).entry(last.clone()).or_default() += 1;
            sleep(Duration::from_millis((100 * (attempt + 1)).min(1_000))).await;
        }
        Err(last)
    }

    /// One client: holds its connection, reconnects and resumes when it is lost.
    async fn client(self: Arc<Self>, i: u64, mut ws: Ws, ctx: Arc<Ctx>, track: Arc<Mutex<Track>>) {
        let mut node = (i % ctx.targets.len() as u64) as usize;
        let (hist, plain) = ctx.channels(i);
        loop {
            let Some(why) = self.read(&mut ws, &track).await else {
                let _ = timeout(CLOSE_ONE_TIMEOUT, async {
                    let _ = ws.close(None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                self.open.fetch_sub(1, Ordering::Relaxed);
                return;
            };
            self.open.fetch_sub(1, Ordering::Relaxed);
            *lock(&self.close_codes).entry(why).or_default() += 1;
            let delay = Duration::from_millis(jitter(i, ctx.spec.jitter_ms));
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = sleep(delay) => {}
            }
            match self.reconnect(i, node, &ctx, (hist, plain), &track).await {
                Ok((w, at)) => {
                    (ws, node) = (w, at);
                    self.open.fetch_add(1, Ordering::Relaxed);
                    self.reconnected.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    *lock(&self.gave_up).entry(e).or_default() += 1;
                    return;
                }
            }
        }
    }
}

/// What every client of a worker shares.
struct Ctx {
    spec: ResumeSpec,
    targets: Vec<Target>,
}

impl Ctx {
    /// Client `i`'s channels: (with history, without).
    fn channels(&self, i: u64) -> (&str, &str) {
        let s = &self.spec;
        let h = &s.history[(i % s.history.len().max(1) as u64) as usize];
        let p = &s.plain[(i % s.plain.len().max(1) as u64) as usize];
        (h, p)
    }

    /// Client `i`'s token: a user that is a member of every project.
    fn token(&self, i: u64) -> Result<String, String> {
        mint_with_projects(&self.spec.clients.secret, &format!("{}{i}", self.spec.clients.user_prefix), &["*"])
            .map_err(|e| e.to_string())
    }
}

/// Opens this worker's share of the clients and starts holding them.
pub async fn connect(spec: ResumeSpec, st: &Arc<Tracked>) -> anyhow::Result<Ev> {
    anyhow::ensure!(!spec.clients.src_ips.is_empty(), "no source addresses");
    anyhow::ensure!(!spec.history.is_empty() && !spec.plain.is_empty(), "no channels");
    let ctx = Arc::new(Ctx { targets: parse_targets(&spec.clients.targets)?, spec });
    let began = Instant::now();
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let ticker = CancellationToken::new();
    progress(ok.clone(), failed.clone(), ticker.clone());
    let (mut errors, mut handshake, mut ready) = (BTreeMap::<String, u64>::new(), new_hist(), new_hist());
    let per = Duration::from_millis(ctx.spec.timeout_ms);
    let c = &ctx.spec.clients;
    let mut results = futures_util::stream::iter(c.first..c.first + c.count)
        .map(|i| {
            let (ctx, st) = (ctx.clone(), st.clone());
            async move {
                let target = &ctx.targets[(i % ctx.targets.len() as u64) as usize];
                let src = ctx.spec.clients.src_ips[(i % ctx.spec.clients.src_ips.len() as u64) as usize];
                let track = Arc::new(Mutex::new(Track {
                    ch: (i % ctx.spec.history.len() as u64) as usize,
                    ..Track::default()
                }));
                let began = Instant::now();
                let opened = timeout(per, async {
                    let (mut ws, hs, _) = open(target, src, &ctx.token(i)?, None).await?;
                    st.join(&mut ws, ctx.channels(i), None, &track).await?;
                    Ok::<_, String>((ws, hs))
                })
                .await
                .unwrap_or_else(|_| Err("timeout".into()));
                opened.map(|(ws, hs)| (i, ws, hs, began.elapsed().as_micros() as u64, track))
            }
        })
        .buffer_unordered(ctx.spec.concurrency.max(1));
    while let Some(r) = results.next().await {
        match r {
            Ok((i, ws, hs, rd, track)) => {
                let _ = handshake.record(hs.max(1));
                let _ = ready.record(rd.max(1));
                st.open.fetch_add(1, Ordering::Relaxed);
                ok.fetch_add(1, Ordering::Relaxed);
                lock(&st.tracks).push(track.clone());
                st.tasks.spawn(st.clone().client(i, ws, ctx.clone(), track));
            }
            Err(e) => {
                failed.fetch_add(1, Ordering::Relaxed);
                *errors.entry(e).or_default() += 1;
            }
        }
    }
    ticker.cancel();
    let tally = Tally {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        errors,
        handshake: hist_pairs(&handshake),
        elapsed_ms: began.elapsed().as_millis() as u64,
    };
    Ok(Ev::Connected { tally, ready: hist_pairs(&ready) })
}

/// The clients' counts; `published[c]` = events published on history channel `c`.
pub fn report(st: &Tracked, published: &[u64]) -> Ev {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut r = TrackReport {
        open: get(&st.open),
        history_received: get(&st.history_received),
        plain_received: get(&st.plain_received),
        reconnected: get(&st.reconnected),
        recovered_true: get(&st.recovered[0]),
        recovered_false: get(&st.recovered[1]),
        recovered_missing: get(&st.recovered[2]),
        replayed: get(&st.replayed),
        close_codes: lock(&st.close_codes).clone(),
        gave_up: lock(&st.gave_up).clone(),
        retries: lock(&st.retries).clone(),
        ..TrackReport::default()
    };
    for t in lock(&st.tracks).iter() {
        let t = lock(t);
        let lost = published.get(t.ch).copied().unwrap_or(0).saturating_sub(t.distinct);
        r.clients += 1;
        r.lost += lost;
        r.duplicated += t.dups;
        r.out_of_order += t.out_of_order;
        r.clients_with_loss += u64::from(lost > 0);
        r.clients_with_dup += u64::from(t.dups > 0);
        r.max_lost = r.max_lost.max(lost);
        r.max_dup = r.max_dup.max(t.dups);
        r.resumes.extend_from_slice(&t.resumes);
    }
    Ev::Tracked(r)
}

/// Closes every client (bounded) and returns how many were open.
pub async fn close(st: &Tracked) -> u64 {
    let n = st.open.load(Ordering::Relaxed);
    st.stop.cancel();
    st.tasks.close();
    let _ = timeout(CLOSE_ALL_TIMEOUT, st.tasks.wait()).await;
    n
}
