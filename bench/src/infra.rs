//! What a scenario runs against: `nats-server` (with JetStream) and `redis-server` on free
//! loopback ports, gateway nodes from the release binary configured by environment, or
//! nodes that are already running (`--target`). Also the node probes: RSS from `/proc`,
//! `/health` tables and `/metrics` counters. Every wait is bounded.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
    time::{Instant, sleep, timeout},
};

/// How long a server may take to accept connections after it was spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts on fresh ports (a port may be taken between our probe and the server's bind).
const START_ATTEMPTS: usize = 5;

/// A scratch directory for logs and the JetStream store, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh directory under the system temp dir.
    pub fn new() -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let p = std::env::temp_dir().join(format!("gateway-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("BENCH_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `N` distinct ports free a moment ago on 127.0.0.1.
fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    let listeners = (0..N).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0u16; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr()?.port();
    }
    Ok(ports)
}

fn log_to(path: &Path) -> anyhow::Result<Stdio> {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    Ok(Stdio::from(f))
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

async fn accepts(port: u16) -> bool {
    TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await.is_ok()
}

async fn pong(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await else { return false };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).await.is_ok() && &buf == b"+PONG\r\n"
}

/// Spawns `cmd` (output to `log`, killed on drop) and waits until `ready`.
async fn launch<F, Fut>(mut cmd: Command, log: &Path, mut ready: F) -> anyhow::Result<Child>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    cmd.stdin(Stdio::null()).stdout(log_to(log)?).stderr(log_to(log)?).kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("spawn {:?}", cmd.as_std().get_program()))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("exited during start-up: {status}\n{}", log_tail(log));
        }
        if timeout(Duration::from_secs(1), ready()).await.unwrap_or(false) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.start_kill();
            bail!("not ready within {READY_TIMEOUT:?}\n{}", log_tail(log));
        }
        sleep(Duration::from_millis(25)).await;
    }
}

/// Starts `name` on fresh free ports (up to [`START_ATTEMPTS`] times): `command` builds its
/// command line for the ports, `ready` probes the first port. Returns that port and the child.
async fn start_server<const N: usize, Fut>(
    name: &str,
    log: &Path,
    command: impl Fn([u16; N]) -> Command,
    ready: impl Fn(u16) -> Fut,
) -> anyhow::Result<(u16, Child)>
where
    Fut: std::future::Future<Output = bool>,
{
    let mut last = None;
    for _ in 0..START_ATTEMPTS {
        let ports = free_ports::<N>()?;
        let port = ports[0];
        match launch(command(ports), log, || ready(port)).await {
            Ok(child) => return Ok((port, child)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("{name} did not start")).context(name.to_owned()))
}

/// Kills and reaps a child, bounded.
async fn kill(mut child: Child) {
    let _ = child.start_kill();
    let _ = timeout(Duration::from_secs(5), child.wait()).await;
}

/// A `nats-server -js` on free ports.
pub struct Nats {
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
}

impl Nats {
    /// Starts one and waits until it accepts connections.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let command = |[port, mport]: [u16; 2]| {
            let mut cmd = Command::new("nats-server");
            cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-m", &mport.to_string(), "-sd"])
                .arg(dir.join(format!("js-{port}")));
            cmd
        };
        let (port, child) = start_server("nats-server", &dir.join("nats.log"), command, accepts).await?;
        Ok(Nats { url: format!("nats://127.0.0.1:{port}"), child })
    }

    /// Stops it.
    pub async fn stop(self) {
        kill(self.child).await;
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// A `redis-server` without persistence on a free port.
pub struct Redis {
    /// `redis://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
}

impl Redis {
    /// Starts one and waits until it answers PING.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let command = |[port]: [u16; 1]| {
            let mut cmd = Command::new("redis-server");
            cmd.args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1", "--port", &port.to_string()])
                .arg("--dir")
                .arg(dir)
                .args(["--maxclients", "10000"]);
            cmd
        };
        let (port, child) = start_server("redis-server", &dir.join("redis.log"), command, pong).await?;
        Ok(Redis { url: format!("redis://127.0.0.1:{port}"), child })
    }

    /// Stops it.
    pub async fn stop(self) {
        kill(self.child).await;
    }
}

/// How the bench configures the nodes it starts.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// The `gateway` binary.
    pub bin: PathBuf,
    /// HS256 secret.
    pub secret: String,
    /// Admin key.
    pub admin_key: String,
    /// `GATEWAY_NATS_URL`/`GATEWAY_REDIS_URL`, when clustered.
    pub fabric: Option<(String, String)>,
    /// Extra `KEY=VALUE` environment (after the bench's own, so it wins).
    pub extra_env: Vec<(String, String)>,
}

/// A gateway node: one the bench started, or one it was pointed at.
pub struct Node {
    /// `http://host:port`.
    pub http: String,
    /// `ws://host:port/ws`.
    pub ws: String,
    /// The node process (for RSS), when known.
    pub pid: Option<u32>,
    child: Option<Child>,
}

impl Node {
    /// Starts `gateway serve` with the bench's configuration and waits for `/health`.
    pub async fn start(s: &NodeSettings, index: usize, dir: &Path) -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let [port] = free_ports::<1>()?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut cmd = Command::new(&s.bin);
            cmd.arg("serve")
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("RUST_LOG", "warn")
                .env("GATEWAY_LISTEN", addr.to_string())
                .env("GATEWAY_NODE_ID", format!("bench-{index}"))
                .env("GATEWAY_JWT_SECRET", &s.secret)
                .env("GATEWAY_ADMIN_KEY", &s.admin_key)
                .env("GATEWAY_LIMITS__PER_IP", "1000000")
                .env("GATEWAY_LIMITS__PENDING_PER_IP", "1000000")
                .env("GATEWAY_LIMITS__HANDSHAKES_PER_IP_PER_SEC", "0")
                .env("GATEWAY_LIMITS__MAX_PENDING", "100000")
                .env("GATEWAY_LIMITS__PER_USER", "1000")
                .env("GATEWAY_LIMITS__MAX_CONNECTIONS", "100000")
                .env("GATEWAY_DRAIN__DELAY_MS", "0")
                .env("GATEWAY_DRAIN__PERIOD_MS", "500")
                .env("GATEWAY_DRAIN__DEADLINE_MS", "5000");
            if let Some((nats, redis)) = &s.fabric {
                cmd.env("GATEWAY_NATS_URL", nats).env("GATEWAY_REDIS_URL", redis);
            }
            for (k, v) in &s.extra_env {
                cmd.env(k, v);
            }
            let log = dir.join(format!("node-{index}.log"));
            let health = format!("http://{addr}/health");
            let probe = || {
                let h = health.clone();
                async move { http_client().get(&h).send().await.is_ok() }
            };
            match launch(cmd, &log, probe).await {
                Ok(child) => {
                    return Ok(Node {
                        http: format!("http://{addr}"),
                        ws: format!("ws://{addr}/ws"),
                        pid: child.id(),
                        child: Some(child),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("gateway did not start")).context("gateway node"))
    }

    /// A running node at `url` (`http://host:port` or `ws://host:port[/ws]`), loopback only.
    pub fn target(url: &str, pid: Option<u32>) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .with_context(|| format!("{url}: expected http:// or ws://"))?;
        let hostport = rest.split('/').next().unwrap_or(rest);
        let host = hostport.rsplit_once(':').map(|(h, _)| h).unwrap_or(hostport);
        let loopback = host == "localhost" || host.starts_with("127.") || host == "[::1]";
        if !loopback {
            bail!("{url}: the bench only sends traffic to loopback addresses");
        }
        Ok(Node { http: format!("http://{hostport}"), ws: format!("ws://{hostport}/ws"), pid, child: None })
    }

    /// Resident set of the node process in KiB (`VmRSS`), when its pid is known.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid?)
    }

    /// `GET /health`.
    pub async fn health(&self) -> anyhow::Result<Value> {
        Ok(http_client().get(format!("{}/health", self.http)).send().await?.json().await?)
    }

    /// `/health` `websocket.{connections, channels, subscriptions}`.
    pub async fn tables(&self) -> anyhow::Result<(u64, u64, u64)> {
        let h = self.health().await?;
        let w = &h["websocket"];
        let get = |k: &str| w[k].as_u64().with_context(|| format!("/health websocket.{k} missing"));
        Ok((get("connections")?, get("channels")?, get("subscriptions")?))
    }

    /// Sums of selected `/metrics` counters.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let body = http_client().get(format!("{}/metrics", self.http)).send().await?.text().await?;
        Ok(Metrics::parse(&body))
    }

    /// `kill -9`s a node the bench started and reaps it (bounded); false for a `--target`
    /// node or one already killed.
    pub async fn kill9(&mut self) -> bool {
        let Some(c) = self.child.take() else { return false };
        kill(c).await;
        self.pid = None;
        true
    }

    /// Stops a node the bench started (SIGKILL; nothing to drain for).
    pub async fn stop(mut self) {
        if let Some(c) = self.child.take() {
            kill(c).await;
        }
    }
}

/// A client with a short timeout for probes.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default()
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) of `pid` in seconds, from `/proc/<pid>/stat` (100 ticks/s).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may contain spaces) start at state, field 3.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Selected counters from a node's `/metrics`.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Metrics {
    /// `gateway_slow_consumer_closes_total`.
    pub slow_consumer_closes: u64,
    /// `gateway_drops_total`, all reasons except `no_subscribers`.
    pub drops: u64,
    /// `gateway_drops_total{reason="no_subscribers"}`.
    pub drops_no_subscribers: u64,
    /// `gateway_deliveries_total`.
    pub deliveries: u64,
}

impl Metrics {
    fn parse(body: &str) -> Self {
        let mut m = Metrics::default();
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else { continue };
            let v = value.parse::<f64>().unwrap_or(0.0) as u64;
            if name.starts_with("gateway_slow_consumer_closes_total") {
                m.slow_consumer_closes += v;
            } else if name.starts_with("gateway_drops_total") {
                if name.contains("no_subscribers") {
                    m.drops_no_subscribers += v;
                } else {
                    m.drops += v;
                }
            } else if name.starts_with("gateway_deliveries_total") {
                m.deliveries += v;
            }
        }
        m
    }

    /// `self - before`, per counter.
    pub fn since(self, before: Metrics) -> Metrics {
        Metrics {
            slow_consumer_closes: self.slow_consumer_closes.saturating_sub(before.slow_consumer_closes),
            drops: self.drops.saturating_sub(before.drops),
            drops_no_subscribers: self.drops_no_subscribers.saturating_sub(before.drops_no_subscribers),
            deliveries: self.deliveries.saturating_sub(before.deliveries),
        }
    }

    /// Adds another node's counters.
    pub fn plus(self, o: Metrics) -> Metrics {
        Metrics {
            slow_consumer_closes: self.slow_consumer_closes + o.slow_consumer_closes,
            drops: self.drops + o.drops,
            drops_no_subscribers: self.drops_no_subscribers + o.drops_no_subscribers,
            deliveries: self.deliveries + o.deliveries,
        }
    }
}

/// The machine, for the report.
pub fn machine() -> Value {
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let nofile = std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3).map(String::from))
        .unwrap_or_default();
    serde_json::json!({
        "nproc": nproc,
        "mem_total_mib": mem_kib / 1024,
        "cpu": cpu,
        "kernel": kernel,
        "open_files_limit": nofile,
    })
}
