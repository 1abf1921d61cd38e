//! Gateway nodes for tests: in-process (`gateway::run` on a port-0 listener, stopped by
//! a signal the test owns) or as a child process of the real binary (for `kill -9` and
//! SIGTERM drains). Every wait is bounded.

use std::{net::SocketAddr, path::PathBuf, process::Stdio, sync::atomic::AtomicU32, time::Duration};

use anyhow::{Context, bail};
use gateway::{
    Config,
    auth::{TokenSpec, mint_channel_token, mint_user_token},
};
use gateway_client::{Client, ClientError, Connect};
use serde_json::Value;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// The HS256 secret every test node uses.
pub const SECRET: &str = "test-secret-0123456789abcdef";
/// The admin key every test node uses.
pub const ADMIN_KEY: &str = "test-admin-key";
/// Static agent keys: agent `a1` … `a3`.
pub const AGENT_KEYS: [(&str, &str); 3] = [("a1", "key-agent-1"), ("a2", "key-agent-2"), ("a3", "key-agent-3")];

static NEXT: AtomicU32 = AtomicU32::new(1);

/// A configuration for tests: known secrets, loopback, short drain, fresh node id.
pub fn test_config() -> Config {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut cfg = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        node_id: format!("t{}-{n}", std::process::id()),
        jwt_secret: SECRET.into(),
        admin_key: ADMIN_KEY.into(),
        api_keys: AGENT_KEYS.iter().map(|(a, k)| format!("{a}:{k}")).collect(),
        ..Config::default()
    };
    cfg.drain.delay_ms = 0;
    cfg.drain.period_ms = 200;
    cfg.drain.deadline_ms = 5_000;
    cfg.limits.per_ip = 100_000;
    // Every test client comes from 127.0.0.1; the pending caps have their own tests.
    cfg.limits.pending_per_ip = 100_000;
    // Likewise the handshake rate per address (tests/it/proxies.rs tests it).
    cfg.limits.handshakes_per_ip_per_sec = 0;
    cfg
}

/// A user token signed with [`SECRET`].
pub fn user_token(sub: &str, projects: &[&str], roles: &[&str], ttl: Duration) -> String {
    let spec = TokenSpec {
        sub: sub.into(),
        projects: projects.iter().map(|s| s.to_string()).collect(),
        roles: roles.iter().map(|s| s.to_string()).collect(),
        ttl,
        ..TokenSpec::default()
    };
    mint_user_token(SECRET, &spec).unwrap_or_default()
}

/// A channel token for `channel`, for user `sub`.
pub fn channel_token(channel: &str, sub: &str) -> String {
    mint_channel_token(SECRET, channel, Some(sub), Duration::from_secs(300)).unwrap_or_default()
}

/// A running in-process node.
pub struct TestNode {
    /// Its listen address.
    pub addr: SocketAddr,
    /// Its configuration (node id, limits).
    pub cfg: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), gateway::server::ServerError>>>,
}

impl TestNode {
    /// Starts a node with `cfg` on a free port and waits until `/health` answers.
    pub async fn start(mut cfg: Config) -> anyhow::Result<TestNode> {
        let listener = TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        cfg.listen = addr;
        let (tx, rx) = oneshot::channel::<()>();
        let run_cfg = cfg.clone();
        let task = tokio::spawn(gateway::run(listener, run_cfg, async move {
            let _ = rx.await;
        }));
        let node = TestNode { addr, cfg, stop: Some(tx), task: Some(task) };
        wait_http(&node.http("/health"), Duration::from_secs(10)).await?;
        Ok(node)
    }

    /// An embedded (NATS-less, Redis-less) node with the test configuration.
    pub async fn embedded() -> anyhow::Result<TestNode> {
        Self::start(test_config()).await
    }

    /// `http://addr{path}`.
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://addr/ws{query}`.
    pub fn ws(&self, query: &str) -> String {
        format!("ws://{}/ws{query}", self.addr)
    }

    /// Connects a user with a bearer JWT.
    pub async fn user(&self, sub: &str, projects: &[&str]) -> Result<Client, ClientError> {
        let t = user_token(sub, projects, &[], Duration::from_secs(300));
        Client::connect(Connect::new(self.ws("")).bearer(&t)).await
    }

    /// `GET /health` as JSON.
    pub async fn health(&self) -> anyhow::Result<Value> {
        Ok(reqwest::get(self.http("/health")).await?.json().await?)
    }

    /// `POST /api/publish` with the admin key; returns (status, body).
    pub async fn publish(&self, channel: &str, event: &str, data: Value) -> anyhow::Result<(u16, Value)> {
        post(&self.http("/api/publish"), serde_json::json!({"channel": channel, "event": event, "data": data})).await
    }

    /// Signals shutdown and waits (bounded) for the drain to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task).await.context("node did not stop")???;
        }
        Ok(())
    }

    /// Signals shutdown without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// POSTs JSON with the admin key; returns (status, JSON body or null).
pub async fn post(url: &str, body: Value) -> anyhow::Result<(u16, Value)> {
    let r = reqwest::Client::new().post(url).bearer_auth(ADMIN_KEY).json(&body).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

/// Polls `url` until it answers (any status), bounded.
pub async fn wait_http(url: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if reqwest::get(url).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{url} did not answer within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `check` every 25 ms until it returns `Some`, bounded.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(t) = check().await {
            return Ok(t);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("condition not met within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The `gateway` binary next to the test executable (`target/<profile>/gateway`).
pub fn gateway_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(|d| d.parent()).context("no target dir")?;
    let bin = dir.join("gateway");
    if !bin.exists() {
        bail!("{} not built (cargo build -p gateway)", bin.display());
    }
    Ok(bin)
}

/// A node running as a child process of the real binary.
pub struct ProcessNode {
    /// Its listen address.
    pub addr: SocketAddr,
    /// Its node id.
    pub node_id: String,
    child: tokio::process::Child,
}

impl ProcessNode {
    /// Starts `gateway serve` with the test secrets, `env` on top, and waits for `/health`.
    pub async fn start(env: &[(&str, String)]) -> anyhow::Result<ProcessNode> {
        let port = crate::servers::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let node_id = format!("p{}-{n}", std::process::id());
        let mut cmd = tokio::process::Command::new(gateway_bin()?);
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("GATEWAY_LISTEN", addr.to_string())
            .env("GATEWAY_NODE_ID", &node_id)
            .env("GATEWAY_JWT_SECRET", SECRET)
            .env("GATEWAY_ADMIN_KEY", ADMIN_KEY)
            .env("GATEWAY_API_KEYS", AGENT_KEYS.iter().map(|(a, k)| format!("{a}:{k}")).collect::<Vec<_>>().join(","))
            .env("GATEWAY_LIMITS__PER_IP", "100000")
            .env("GATEWAY_LIMITS__PENDING_PER_IP", "100000")
            .env("GATEWAY_LIMITS__HANDSHAKES_PER_IP_PER_SEC", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("spawn gateway")?;
        let node = ProcessNode { addr, node_id, child };
        wait_http(&format!("http://{addr}/health"), Duration::from_secs(15)).await?;
        Ok(node)
    }

    /// `http://addr{path}`.
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://addr/ws{query}`.
    pub fn ws(&self, query: &str) -> String {
        format!("ws://{}/ws{query}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL: the node dies without cleaning up.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// SIGTERM: the node drains.
    pub fn sigterm(&self) -> anyhow::Result<()> {
        let pid = self.child.id().context("already exited")?;
        let status = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        Ok(())
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    pub async fn wait(&mut self, limit: Duration) -> anyhow::Result<Option<i32>> {
        let status = tokio::time::timeout(limit, self.child.wait()).await.context("node did not exit")??;
        Ok(status.code())
    }
}

/// The default bound of a single wait in tests.
pub const WAIT: Duration = Duration::from_secs(5);

/// Waits for the `connected` frame; returns (connection id, principal id).
pub async fn connected(c: &mut Client) -> anyhow::Result<(String, String)> {
    let got = c
        .recv_until(WAIT, |r| match r {
            gateway_client::Received::Frame(gateway_protocol::ServerFrame::Connected {
                connection_id,
                principal,
                ..
            }) => Some((connection_id.clone(), principal.id.clone())),
            _ => None,
        })
        .await?;
    Ok(got)
}

/// Waits for the `response` with `id`; returns `Ok(result)` or `Err(error body)`.
pub async fn response(c: &mut Client, id: &str) -> anyhow::Result<Result<Value, gateway_protocol::ErrorBody>> {
    let got = c
        .recv_until(WAIT, |r| match r {
            gateway_client::Received::Frame(gateway_protocol::ServerFrame::Response { id: rid, result, error })
                if rid == id =>
            {
                Some(match (result, error) {
                    (_, Some(e)) => Err(e.clone()),
                    (r, None) => Ok(r.clone().unwrap_or(Value::Null)),
                })
            }
            _ => None,
        })
        .await?;
    Ok(got)
}

/// Sends `subscribe` (with an optional channel token) and returns the response's result.
pub async fn subscribe(c: &mut Client, id: &str, channels: &[&str], token: Option<&str>) -> anyhow::Result<Value> {
    c.send(&gateway_protocol::ClientFrame::Subscribe {
        id: Some(id.into()),
        channels: channels.iter().map(|s| s.to_string()).collect(),
        token: token.map(String::from),
        recover: Default::default(),
    })
    .await?;
    response(c, id).await?.map_err(|e| anyhow::anyhow!("subscribe {id} failed: {e:?}"))
}

/// Waits for the next channel event (skipping other frames).
pub async fn next_event(c: &mut Client) -> anyhow::Result<gateway_protocol::EventFrame> {
    let got = c
        .recv_until(WAIT, |r| match r {
            gateway_client::Received::Frame(gateway_protocol::ServerFrame::Event(e)) => Some(e.clone()),
            _ => None,
        })
        .await?;
    Ok(got)
}

/// Waits for the next channel event other than `presence.join`/`presence.leave`.
pub async fn next_app_event(c: &mut Client) -> anyhow::Result<gateway_protocol::EventFrame> {
    let got = c
        .recv_until(WAIT, |r| match r {
            gateway_client::Received::Frame(gateway_protocol::ServerFrame::Event(e))
                if !e.event.starts_with("presence.") =>
            {
                Some(e.clone())
            }
            _ => None,
        })
        .await?;
    Ok(got)
}

/// Asserts that no channel event other than presence arrives for `d`.
pub async fn assert_no_app_event(c: &mut Client, d: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_timeout(left).await {
            Err(ClientError::Timeout(_)) => return Ok(()),
            Ok(gateway_client::Received::Frame(gateway_protocol::ServerFrame::Event(e)))
                if e.event.starts_with("presence.") => {}
            Ok(r) => bail!("expected no event, got {r:?}"),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits for the next `error` frame (skipping other frames).
pub async fn next_error(c: &mut Client) -> anyhow::Result<gateway_protocol::ErrorBody> {
    let got = c
        .recv_until(WAIT, |r| match r {
            gateway_client::Received::Frame(gateway_protocol::ServerFrame::Error { error }) => Some(error.clone()),
            _ => None,
        })
        .await?;
    Ok(got)
}

/// Asserts that nothing but pings arrives for `d` (an event that must not be delivered).
pub async fn assert_quiet(c: &mut Client, d: Duration) -> anyhow::Result<()> {
    match c.recv_timeout(d).await {
        Err(ClientError::Timeout(_)) => Ok(()),
        Ok(r) => bail!("expected nothing, got {r:?}"),
        Err(e) => Err(e.into()),
    }
}

/// The `(status, body)` of a refused handshake; fails if the handshake succeeded.
pub fn refusal(r: Result<Client, ClientError>) -> anyhow::Result<(u16, Value)> {
    match r {
        Err(ClientError::Refused { status, body }) => Ok((status, body)),
        Err(e) => bail!("expected an HTTP refusal, got {e}"),
        Ok(_) => bail!("expected an HTTP refusal, the handshake succeeded"),
    }
}

/// Subscribes `ch`, recovering from `pos` when given; returns the response's result.
/// Events named `e` on `ch` that arrive before the answer (a replay is queued before
/// it) go to `into`. Bounded by `limit`.
pub async fn join_recovering(
    c: &mut Client,
    ch: &str,
    pos: Option<&gateway_protocol::StreamPosition>,
    into: &mut Vec<gateway_protocol::EventFrame>,
    limit: Duration,
) -> anyhow::Result<Value> {
    use gateway_protocol::{ClientFrame, ServerFrame};
    let recover: std::collections::BTreeMap<String, gateway_protocol::StreamPosition> =
        pos.map(|p| (ch.to_owned(), p.clone())).into_iter().collect();
    c.send(&ClientFrame::Subscribe { id: Some("j".into()), channels: vec![ch.into()], token: None, recover }).await?;
    c.recv_until(limit, |r| match r {
        gateway_client::Received::Frame(ServerFrame::Event(e)) if e.channel.as_str() == ch && e.event == "e" => {
            into.push(e.clone());
            None
        }
        gateway_client::Received::Frame(ServerFrame::Response { id, result, error }) if id == "j" => {
            Some(result.clone().ok_or_else(|| anyhow::anyhow!("subscribe: {error:?}")))
        }
        _ => None,
    })
    .await?
}
