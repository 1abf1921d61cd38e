//! Real `nats-server` and `redis-server` processes on free ports, one set per test.
//!
//! Tests run in parallel in many processes, so nothing here is fixed or shared: every
//! server gets ports the OS just handed out, its own temporary directory (logs, JetStream
//! store), and is killed when its handle drops. Every wait is bounded, and a server that
//! exits during start-up (say another process grabbed its port in the meantime) is
//! retried on new ports.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
    time::{Instant, sleep, timeout},
};

/// How long a server may take to accept connections after it was spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restart keeps trying to re-bind the previous ports.
const REBIND_TIMEOUT: Duration = Duration::from_secs(10);
/// Start attempts on fresh ports before giving up (a port may be taken between our probe
/// and the server's bind).
const START_ATTEMPTS: usize = 5;
/// Pause between readiness probes.
const POLL: Duration = Duration::from_millis(25);

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    free_ports::<1>().map(|[p]| p).expect("no free port on 127.0.0.1")
}

/// `N` distinct ports, all bound at once so the OS cannot hand out the same one twice.
pub(crate) fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    let listeners = (0..N).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0u16; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr()?.port();
    }
    Ok(ports)
}

/// Opens `path` for a child's stdout/stderr (appending, so restarts keep earlier logs).
fn log_file(path: &Path) -> anyhow::Result<Stdio> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open log {}", path.display()))?;
    Ok(Stdio::from(f))
}

/// The last lines of a log, for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Spawns `cmd` with its output appended to `log`, killed when the handle drops.
fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<Child> {
    cmd.stdin(Stdio::null()).stdout(log_file(log)?).stderr(log_file(log)?).kill_on_drop(true);
    cmd.spawn().with_context(|| format!("spawn {:?}", cmd.as_std().get_program()))
}

/// Waits until `probe(child pid)` succeeds, failing early when the child exits. Bounded
/// by `limit`.
async fn wait_ready<F, Fut>(child: &mut Child, limit: Duration, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("server exited during start-up: {status}");
        }
        let pid = child.id().unwrap_or_default();
        if timeout(Duration::from_secs(1), probe(pid)).await.unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("server not ready within {limit:?}");
        }
        sleep(POLL).await;
    }
}

/// Reads the first line a server sends on `port` (NATS greets with `INFO {…}`).
async fn greeting(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await.ok()?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.ends_with(b"\r\n") && buf.len() < 64 * 1024 {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).ok()
}

/// The `server_name` in the `INFO` a NATS server greets clients with on `port`.
async fn info_name(port: u16) -> Option<String> {
    let line = greeting(port).await?;
    let info: serde_json::Value = serde_json::from_str(line.strip_prefix("INFO ")?.trim_end()).ok()?;
    info.get("server_name")?.as_str().map(String::from)
}

/// Kills and reaps a child, bounded (SIGKILL cannot be ignored, so this is quick).
pub(crate) async fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.start_kill();
        let _ = timeout(Duration::from_secs(5), c.wait()).await;
    }
}

/// A `nats-server` with JetStream and the HTTP monitor, on free ports.
pub struct NatsServer {
    /// Client URL, `nats://127.0.0.1:PORT`.
    pub url: String,
    /// Client port (kept across restarts).
    pub port: u16,
    /// Monitoring base URL, `http://127.0.0.1:MPORT`, for `/connz` and `/healthz`.
    pub monitor_url: String,
    /// Monitoring port (kept across restarts).
    monitor_port: u16,
    /// Holds the log file and JetStream store; deleted on drop.
    dir: tempfile::TempDir,
    /// The running process; `None` while stopped.
    child: Option<Child>,
    /// Arguments beyond the defaults (cluster routes), kept for restarts.
    extra: Vec<String>,
}

impl NatsServer {
    /// Starts a server and waits (≤ 10 s) until its client port accepts connections.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("nats-").tempdir()?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let [port, monitor_port] = free_ports::<2>()?;
            match launch_nats(dir.path(), port, monitor_port, &[]).await {
                Ok(child) => return Ok(NatsServer::running(dir, port, monitor_port, child, Vec::new())),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("nats-server did not start")))
    }

    /// A handle on a server started by [`launch_nats`] with `extra` arguments.
    pub(crate) fn running(
        dir: tempfile::TempDir,
        port: u16,
        monitor_port: u16,
        child: Child,
        extra: Vec<String>,
    ) -> Self {
        NatsServer {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            monitor_url: format!("http://127.0.0.1:{monitor_port}"),
            monitor_port,
            dir,
            child: Some(child),
            extra,
        }
    }

    /// Whether the process is running (not stopped by the test).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Where the server writes its log.
    pub fn log_path(&self) -> PathBuf {
        nats_log(self.dir.path())
    }

    /// Its `server_name` (in `/varz`, `/jsz` and cluster leader fields).
    pub fn name(&self) -> String {
        nats_name(self.port, self.monitor_port)
    }

    /// Kills the server (SIGKILL, no goodbye to clients) and waits for it to exit.
    pub async fn stop(&mut self) {
        kill(&mut self.child).await;
    }

    /// Stops the server if running and starts it again on the same ports, retrying the
    /// bind for up to 10 s.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        let (dir, port, monitor, extra) = (self.dir.path(), self.port, self.monitor_port, &self.extra);
        self.child = Some(relaunch("nats-server", || launch_nats(dir, port, monitor, extra)).await?);
        Ok(())
    }

    /// Subjects of every client subscription on the server (`/connz?subs=1`), including
    /// clients' request inboxes.
    pub async fn subscriptions(&self) -> anyhow::Result<Vec<String>> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        let body: serde_json::Value = http
            .get(format!("{}/connz?subs=1&limit=10000", self.monitor_url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let conns = body.get("connections").and_then(|c| c.as_array()).cloned().unwrap_or_default();
        Ok(conns
            .iter()
            .filter_map(|c| c.get("subscriptions_list").and_then(|l| l.as_array()))
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect())
    }
}

/// A `redis-server` without persistence, on a free port.
pub struct RedisServer {
    /// Client URL, `redis://127.0.0.1:PORT`.
    pub url: String,
    /// Port (kept across restarts).
    pub port: u16,
    /// Holds the log file and working directory; deleted on drop.
    dir: tempfile::TempDir,
    /// The running process; `None` while stopped.
    child: Option<Child>,
    /// Arguments beyond the defaults (`--replicaof`), kept for restarts.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server and waits (≤ 10 s) until it answers `PING`.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Vec::new()).await
    }

    /// Starts a server with `extra` arguments (e.g. `--replicaof 127.0.0.1 PORT`).
    pub async fn start_with(extra: Vec<String>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("redis-").tempdir()?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let [port] = free_ports::<1>()?;
            match launch_redis(dir.path(), port, &extra).await {
                Ok(child) => {
                    let url = format!("redis://127.0.0.1:{port}");
                    return Ok(RedisServer { url, port, dir, child: Some(child), extra });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// Where the server writes its log.
    pub fn log_path(&self) -> PathBuf {
        redis_log(self.dir.path())
    }

    /// Kills the server (SIGKILL) and waits for it to exit. Its data is gone.
    pub async fn stop(&mut self) {
        kill(&mut self.child).await;
    }

    /// Stops the server if running and starts an empty one on the same port, retrying the
    /// bind for up to 10 s.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        let (dir, port, extra) = (self.dir.path(), self.port, &self.extra);
        self.child = Some(relaunch("redis-server", || launch_redis(dir, port, extra)).await?);
        Ok(())
    }
}

/// Launches a server again on its previous ports, retrying while the old socket still
/// holds them, for up to [`REBIND_TIMEOUT`].
async fn relaunch<F, Fut>(what: &str, mut launch: F) -> anyhow::Result<Child>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Child>>,
{
    let deadline = Instant::now() + REBIND_TIMEOUT;
    loop {
        match launch().await {
            Ok(child) => return Ok(child),
            Err(e) if Instant::now() >= deadline => return Err(e.context(format!("restart {what}"))),
            Err(_) => sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Whether the Redis answering on `port` is process `pid` (not a stranger on our port).
pub(crate) async fn redis_pid(port: u16, pid: u32) -> bool {
    let Ok(mut s) = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await else {
        return false;
    };
    if s.write_all(b"INFO server\r\n").await.is_err() {
        return false;
    }
    let want = format!("process_id:{pid}\r\n");
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    while buf.len() < 64 * 1024 {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let text = String::from_utf8_lossy(&buf);
        if text.contains(&want) {
            return true;
        }
        if text.contains("process_id:") && text.contains("\r\n\r\n") {
            return false;
        }
    }
    false
}

/// The NATS log inside a server's directory.
fn nats_log(dir: &Path) -> PathBuf {
    dir.join("nats.log")
}

/// The Redis log inside a server's directory.
fn redis_log(dir: &Path) -> PathBuf {
    dir.join("redis.log")
}

/// The unique `server_name` of the server on these ports, started by this process.
fn nats_name(port: u16, monitor_port: u16) -> String {
    format!("test-{}-{port}-{monitor_port}", std::process::id())
}

/// Spawns `nats-server` on the given ports, with `extra` arguments (cluster routes), and
/// waits until both accept connections.
pub(crate) async fn launch_nats(dir: &Path, port: u16, monitor_port: u16, extra: &[String]) -> anyhow::Result<Child> {
    // A unique name lets the readiness probe tell our server from a stranger that took
    // one of the ports between our probe and its bind (it happens with many processes).
    let name = nats_name(port, monitor_port);
    let mut cmd = Command::new("nats-server");
    cmd.args(["-js", "-a", "127.0.0.1", "-n", &name, "-p"])
        .arg(port.to_string())
        .arg("-m")
        .arg(monitor_port.to_string())
        .arg("-sd")
        .arg(dir.join("js"))
        .args(extra);
    let log = nats_log(dir);
    let varz = format!("http://127.0.0.1:{monitor_port}/varz");
    let ready = |_pid| {
        let (varz, name) = (varz.clone(), name.clone());
        async move {
            info_name(port).await.is_some_and(|n| n == name) && server_name(&varz).await.is_some_and(|n| n == name)
        }
    };
    launch(cmd, &log, ready).await.with_context(|| format!("nats-server on port {port}"))
}

/// Spawns `redis-server` on `port` with `extra` arguments and waits until it answers.
async fn launch_redis(dir: &Path, port: u16, extra: &[String]) -> anyhow::Result<Child> {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .arg("--dir")
        .arg(dir)
        .args(extra);
    launch(cmd, &redis_log(dir), |pid| redis_pid(port, pid))
        .await
        .with_context(|| format!("redis-server on port {port}"))
}

/// Spawns `cmd` and waits (≤ [`READY_TIMEOUT`]) until `ready(pid)`; on failure the child
/// is killed and the error carries the log's tail.
pub(crate) async fn launch<F, Fut>(cmd: Command, log: &Path, ready: F) -> anyhow::Result<Child>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut child = spawn(cmd, log)?;
    match wait_ready(&mut child, READY_TIMEOUT, ready).await {
        Ok(()) => Ok(child),
        Err(e) => {
            kill(&mut Some(child)).await;
            Err(e.context(format!("log:\n{}", log_tail(log))))
        }
    }
}

/// The `server_name` a NATS monitor reports.
async fn server_name(varz: &str) -> Option<String> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().ok()?;
    let body: serde_json::Value = http.get(varz).send().await.ok()?.json().await.ok()?;
    body.get("server_name")?.as_str().map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nats_restarts_on_its_ports() -> anyhow::Result<()> {
        let mut s = NatsServer::start().await?;
        let port = s.port;
        assert!(s.subscriptions().await?.is_empty());
        s.stop().await;
        assert!(info_name(port).await.is_none(), "stopped server still answers");
        s.restart().await?;
        assert_eq!(s.port, port);
        assert!(info_name(port).await.is_some());
        Ok(())
    }

    #[tokio::test]
    async fn redis_restarts_on_its_port() -> anyhow::Result<()> {
        let mut s = RedisServer::start().await?;
        let pid = s.child.as_ref().and_then(Child::id).unwrap_or_default();
        assert!(redis_pid(s.port, pid).await);
        s.restart().await?;
        let new_pid = s.child.as_ref().and_then(Child::id).unwrap_or_default();
        assert_ne!(pid, new_pid);
        assert!(redis_pid(s.port, new_pid).await);
        s.stop().await;
        assert!(!redis_pid(s.port, new_pid).await);
        Ok(())
    }
}
