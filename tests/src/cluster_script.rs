//! `deploy/local-cluster.sh` driven from Rust: NATS, Redis, N `gateway serve` nodes and
//! nginx on free ports, started from the binaries this workspace built.
//!
//! The script runs in its own process group with `--workdir` in a fresh temp dir; its
//! `KEY=value` lines are read from `<workdir>/env` once it holds `READY=1`. Dropping the
//! handle SIGKILLs the whole group (script, nodes, nginx, NATS, Redis) and removes the temp
//! dir, so a failing test leaves nothing behind; a test process killed outright is noticed
//! by the script itself (`--watch-pid`). `KEEP_CLUSTER_LOGS=1` keeps the temp dir (node,
//! nginx, NATS and Redis logs) for a look after a failure. Every wait is bounded.

use std::{
    collections::BTreeMap,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::time::{Instant, sleep};

use crate::node::{ADMIN_KEY, SECRET, gateway_bin};

/// How long the script may take to report `READY=1` (it waits for every node and nginx).
const READY_LIMIT: Duration = Duration::from_secs(60);
/// Start attempts: the script picks free ports and binds them a moment later, so a port
/// taken in between by a parallel test fails one attempt, not the test.
const START_ATTEMPTS: usize = 3;

/// `deploy/local-cluster.sh` of this repository.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy").join("local-cluster.sh")
}

/// A running `deploy/local-cluster.sh` topology; killed (process group) on drop.
pub struct LocalCluster {
    env: BTreeMap<String, String>,
    script: Child,
    dir: Option<tempfile::TempDir>,
}

impl LocalCluster {
    /// Starts `nodes` gateway nodes behind nginx, with the test secrets ([`SECRET`],
    /// [`ADMIN_KEY`]), `GATEWAY_BIN` = [`gateway_bin`], and `node_env` (`GATEWAY_*`
    /// variables every node inherits) on top. `GATEWAY_*` variables of the test process
    /// itself are not passed on. Waits (bounded) for `READY=1`; a start that fails is
    /// retried on new ports.
    pub async fn start(nodes: usize, node_env: &[(&str, String)]) -> anyhow::Result<LocalCluster> {
        let mut last = None;
        for attempt in 1..=START_ATTEMPTS {
            match Self::start_once(nodes, node_env).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(attempt, error = %format!("{e:#}"), "local-cluster.sh did not start");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no start attempt")))
            .context(format!("local-cluster.sh failed {START_ATTEMPTS} times"))
    }

    async fn start_once(nodes: usize, node_env: &[(&str, String)]) -> anyhow::Result<LocalCluster> {
        let dir = tempfile::Builder::new().prefix("gateway-local-cluster-").tempdir()?;
        let workdir = dir.path().join("cluster");
        let log = dir.path().join("script.log");
        let out = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut cmd = Command::new("bash");
        cmd.arg(script_path())
            .arg("--workdir")
            .arg(&workdir)
            .arg("--nodes")
            .arg(nodes.to_string())
            // Its own process group is out of reach of a Ctrl-C on the test run: the
            // script stops by itself once this process is gone, even without Drop.
            .arg("--watch-pid")
            .arg(std::process::id().to_string());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("GATEWAY_") {
                cmd.env_remove(&k);
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.env("GATEWAY_BIN", gateway_bin()?)
            .env("GATEWAY_JWT_SECRET", SECRET)
            .env("GATEWAY_ADMIN_KEY", ADMIN_KEY)
            .env("READY_TIMEOUT", (READY_LIMIT.as_secs() - 10).to_string())
            .env("STOP_TIMEOUT", "3");
        for (k, v) in node_env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).process_group(0);
        let script = cmd.spawn().context("spawn bash deploy/local-cluster.sh")?;
        // From here on Drop kills the group, whatever happens below.
        let mut cluster = LocalCluster { env: BTreeMap::new(), script, dir: Some(dir) };
        let env_file = workdir.join("env");
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if let Some(status) = cluster.script.try_wait()? {
                bail!("local-cluster.sh exited with {status} before READY:\n{}", tail(&log, 30));
            }
            if let Ok(text) = std::fs::read_to_string(&env_file) {
                let env = parse_env(&text);
                if env.get("READY").map(String::as_str) == Some("1") {
                    cluster.env = env;
                    return Ok(cluster);
                }
            }
            if Instant::now() > deadline {
                bail!("local-cluster.sh not READY within {READY_LIMIT:?}:\n{}", tail(&log, 30));
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every `KEY=value` of the env file.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// One value of the env file.
    pub fn var(&self, key: &str) -> anyhow::Result<&str> {
        self.env.get(key).map(String::as_str).with_context(|| format!("{key} missing from the env file"))
    }

    /// `ws://…/ws` of the load balancer.
    pub fn lb_ws_url(&self) -> anyhow::Result<&str> {
        self.var("LB_WS_URL")
    }

    /// `http://…` of the load balancer.
    pub fn lb_url(&self) -> anyhow::Result<&str> {
        self.var("LB_URL")
    }

    /// `http://…` of node `i` (1-based), bypassing nginx.
    pub fn node_url(&self, i: usize) -> anyhow::Result<&str> {
        self.var(&format!("GW{i}_URL"))
    }

    /// The node id of node `i` (1-based), as in its `connected` frames.
    pub fn node_id(&self, i: usize) -> anyhow::Result<&str> {
        self.var(&format!("GW{i}_NODE_ID"))
    }

    /// The process id of node `i` (1-based).
    pub fn node_pid(&self, i: usize) -> anyhow::Result<u32> {
        let pid = self.var(&format!("GW{i}_PID"))?;
        pid.parse().with_context(|| format!("GW{i}_PID={pid}"))
    }

    /// The last `lines` of node `i`'s log (empty when unreadable).
    pub fn node_log_tail(&self, i: usize, lines: usize) -> String {
        self.var(&format!("GW{i}_LOG")).map(|p| tail(Path::new(p), lines)).unwrap_or_default()
    }

    /// Sends SIGTERM to node `i` (1-based): it drains while the rest keep serving.
    pub fn sigterm_node(&self, i: usize) -> anyhow::Result<()> {
        signal(&self.node_pid(i)?.to_string(), "TERM")
    }

    /// Keeps the temp dir (logs, env file) after the cluster is killed; returns its path.
    pub fn keep_dir(&mut self) -> Option<PathBuf> {
        self.dir.take().map(|d| d.keep())
    }

    /// SIGKILLs the script's process group and reaps the script (bounded).
    pub fn kill(&mut self) {
        let _ = signal(&format!("-{}", self.script.id()), "KILL");
        for _ in 0..200 {
            if !matches!(self.script.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill();
        let keep = std::env::var_os("KEEP_CLUSTER_LOGS").is_some();
        if let Some(dir) = keep.then(|| self.keep_dir()).flatten() {
            eprintln!("local-cluster logs kept in {}", dir.display());
        }
    }
}

/// `kill -<sig> -- <target>` (a negative target is a process group).
fn signal(target: &str, sig: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(target)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("run kill")?;
    if !status.success() {
        bail!("kill -{sig} -- {target} failed: {status}");
    }
    Ok(())
}

/// `KEY=value` lines; anything else is ignored.
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Whether process `pid` is still running (not gone, not a zombie waiting to be reaped).
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S …`: the state follows the last `)` (comm may hold anything).
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X' | 'x'))
}

/// Makes sure this process (and so every child it starts afterwards) may open at least
/// `min` files, raising the soft limit towards the hard one with `prlimit` when needed.
/// Returns the soft limit in effect.
pub fn ensure_open_files(min: u64) -> anyhow::Result<u64> {
    let (soft, hard) = open_files_limit()?;
    if soft >= min {
        return Ok(soft);
    }
    let want = hard.min(min.max(65_536));
    let hard_arg = if hard == u64::MAX { "unlimited".to_owned() } else { hard.to_string() };
    let _ = Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={want}:{hard_arg}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let (soft, hard) = open_files_limit()?;
    if soft < min {
        bail!("open files limit {soft} (hard {hard}) is below {min}: raise it (ulimit -n {min})");
    }
    Ok(soft)
}

/// (soft, hard) `Max open files` of this process; `unlimited` is `u64::MAX`.
fn open_files_limit() -> anyhow::Result<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").context("read /proc/self/limits")?;
    let line = limits.lines().find(|l| l.starts_with("Max open files")).context("no `Max open files` line")?;
    let nums: Vec<u64> = line["Max open files".len()..]
        .split_whitespace()
        .take(2)
        .map(|v| if v == "unlimited" { Ok(u64::MAX) } else { v.parse::<u64>() })
        .collect::<Result<_, _>>()
        .with_context(|| format!("parse {line:?}"))?;
    match nums[..] {
        [soft, hard] => Ok((soft, hard)),
        _ => bail!("parse {line:?}"),
    }
}

/// The last `lines` lines of a file (empty when unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
