//! The HTTP listener: accepts TCP connections and serves them with hyper (HTTP/1.1 with
//! upgrades) in place of `axum::serve`, so the node controls what that loop does not:
//!
//! - **Pending caps.** Accepted sockets that have not upgraded count against
//!   `limits.max_pending` (node) and `limits.pending_per_ip` (not for peers in
//!   `http.trusted_proxies`, see [`crate::client_ip`]); over either the socket
//!   gets a minimal 503 / 429, written without blocking the loop, and is closed. The
//!   claim goes when the HTTP connection ends or upgrades (a WebSocket then counts under
//!   `max_connections` and `per_ip`).
//! - **Read deadlines.** While no request is in progress, [`Socket`]'s reads enforce:
//!   the first request head within `http.header_timeout_ms` of the accept (sockets that
//!   never send a byte, slowloris), a later head within the same time of its first
//!   byte, and at most `http.idle_timeout_ms` of keep-alive silence. A request being
//!   handled (until its response body is written) is never cut. hyper's own
//!   `header_read_timeout` runs from the moment hyper waits for a head, so it cannot
//!   tell keep-alive silence from a stalled head; it is set to the longer of the two,
//!   as a backstop.
//! - **Lingering close.** A WebSocket the server closes (1009, 1007, 1002, …) may have
//!   unread input, and closing such a socket makes the kernel send a reset that fails
//!   the client's writes or discards the close frame. When the driver asked for it
//!   ([`SocketCtl::linger`]), dropping the socket hands it to a task that shuts down the
//!   write side and reads and discards input until EOF, bounded (like nginx's
//!   `lingering_close`).
//! - `ConnectInfo<SocketAddr>` and the socket's [`SocketCtl`] in each request's
//!   extensions; TCP_NODELAY; accept errors logged and retried; on stop, no more
//!   accepts and a graceful shutdown of every HTTP connection.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    time::{Instant, Sleep},
};
use tokio_util::task::TaskTracker;

use crate::{
    config::{HttpConfig, Limits, ms},
    node::Node,
    telemetry,
};

/// How long a lingering close reads leftover input at most.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// How many leftover bytes a lingering close reads at most.
const LINGER_BYTES: usize = 1024 * 1024;
/// Pause after an accept error that is not about one connection (EMFILE, ENOMEM):
/// retrying at once would spin while the process is out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(500);

/// Accepts connections on `listener` and serves `app` on them until the node stops.
/// Connection tasks run on the node's task tracker, which the drain awaits.
pub async fn serve(listener: TcpListener, app: Router, node: Arc<Node>) {
    let pending = Arc::new(Pending::default());
    let http = Arc::new(builder(&node.cfg.http));
    loop {
        let accepted = tokio::select! {
            biased;
            () = node.shutdown.stopped() => return,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            // About that one connection only (it went before we took it).
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::error!(error = %e, "accept failed; retrying shortly");
                tokio::select! {
                    () = node.shutdown.stopped() => return,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::trace!(error = %e, "TCP_NODELAY not set");
        }
        let per_ip = !node.proxies.trusts(peer.ip());
        match pending.claim(peer.ip(), per_ip, &node.cfg.limits) {
            Ok(claim) => {
                let conn = connection(tcp, peer, app.clone(), node.clone(), http.clone(), claim);
                node.tasks.spawn(conn);
            }
            Err(over) => refuse(&tcp, over),
        }
    }
}

/// The HTTP/1.1 settings of every connection.
fn builder(cfg: &HttpConfig) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new()).keep_alive(true).header_read_timeout(ms(cfg.header_timeout_ms.max(cfg.idle_timeout_ms)));
    b
}

fn is_connection_error(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    matches!(e.kind(), K::ConnectionRefused | K::ConnectionAborted | K::ConnectionReset)
}

/// Serves one HTTP connection until it ends, upgrades or (after the node stopped)
/// finishes its requests.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    node: Arc<Node>,
    http: Arc<http1::Builder>,
    claim: PendingClaim,
) {
    let ctl = Arc::new(SocketCtl::new(&node.cfg.http));
    let socket = Socket::new(tcp, ctl.clone(), node.tasks.clone());
    let service = service::Service { app, peer, ctl };
    let conn = http.serve_connection(TokioIo::new(socket), service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        () = node.shutdown.stopped() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "http connection ended");
    }
    drop(claim);
}

/// Answers a socket over a pending cap and lets it go. Best effort: a fresh socket's
/// send buffer is empty, so `try_write` does not block and normally writes it all.
fn refuse(tcp: &TcpStream, over: Over) {
    let (status, code, message, reason) = match over {
        Over::Node => {
            ("503 Service Unavailable", "unavailable", "node has too many pending connections", "pending_node")
        }
        Over::Ip => {
            ("429 Too Many Requests", "rate_limited", "too many pending connections from this address", "pending_ip")
        }
    };
    let body = format!(r#"{{"code":"{code}","message":"{message}"}}"#);
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.try_write(answer.as_bytes());
    metrics::counter!(telemetry::REFUSALS, "reason" => reason).increment(1);
}

/// Accepted sockets that have not upgraded, per node and per client address.
#[derive(Default)]
struct Pending {
    /// All of them (`limits.max_pending`).
    total: AtomicUsize,
    /// Per client address (`limits.pending_per_ip`); an entry leaves at zero.
    per_ip: Mutex<HashMap<IpAddr, u32>>,
}

/// Which pending cap refused a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    /// `limits.max_pending`.
    Node,
    /// `limits.pending_per_ip`.
    Ip,
}

impl Pending {
    /// Counts a socket from `ip` (per address too when `per_ip`), or says which cap it
    /// is over.
    fn claim(self: &Arc<Self>, ip: IpAddr, per_ip: bool, limits: &Limits) -> Result<PendingClaim, Over> {
        if self.total.fetch_add(1, Relaxed) >= limits.max_pending {
            self.total.fetch_sub(1, Relaxed);
            return Err(Over::Node);
        }
        if !per_ip {
            metrics::gauge!(telemetry::HTTP_CONNECTIONS).increment(1.0);
            return Ok(PendingClaim { pending: self.clone(), ip: None });
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= limits.pending_per_ip {
            drop(per_ip);
            self.total.fetch_sub(1, Relaxed);
            return Err(Over::Ip);
        }
        *n += 1;
        metrics::gauge!(telemetry::HTTP_CONNECTIONS).increment(1.0);
        Ok(PendingClaim { pending: self.clone(), ip: Some(ip) })
    }
}

/// One socket's place in [`Pending`], given back on drop.
struct PendingClaim {
    /// The counts it is in.
    pending: Arc<Pending>,
    /// Its address, when counted per address (not a trusted proxy).
    ip: Option<IpAddr>,
}

impl Drop for PendingClaim {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut per_ip = self.pending.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        self.pending.total.fetch_sub(1, Relaxed);
        metrics::gauge!(telemetry::HTTP_CONNECTIONS).decrement(1.0);
    }
}

/// What the listener, the request handlers and the WebSocket driver share about one
/// accepted socket. Times are milliseconds since `born`; every update happens on the
/// connection's own task, so relaxed atomics suffice.
pub struct SocketCtl {
    /// When the socket was accepted.
    born: Instant,
    /// `http.header_timeout_ms`.
    header: Duration,
    /// `http.idle_timeout_ms`.
    idle: Duration,
    /// Requests being handled, from the call until the response body is written.
    inflight: AtomicU32,
    /// Requests received so far.
    served: AtomicU32,
    /// Bytes read from the socket.
    read: AtomicU64,
    /// `read` when the last request finished: more means the next head has begun.
    read_at_idle: AtomicU64,
    /// When the last request finished.
    idle_since: AtomicU64,
    /// When the first byte of the next head arrived.
    head_since: AtomicU64,
    /// Set once the socket answered 101: it is a WebSocket, the HTTP deadlines end.
    upgraded: AtomicBool,
    /// Set by the WebSocket driver when it closes: drain the input before the socket goes.
    linger: AtomicBool,
}

impl SocketCtl {
    /// Fresh state for a socket accepted now.
    fn new(cfg: &HttpConfig) -> Self {
        SocketCtl {
            born: Instant::now(),
            header: ms(cfg.header_timeout_ms),
            idle: ms(cfg.idle_timeout_ms),
            inflight: AtomicU32::new(0),
            served: AtomicU32::new(0),
            read: AtomicU64::new(0),
            read_at_idle: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            linger: AtomicBool::new(false),
        }
    }

    /// Asks for a lingering close when the socket is dropped (module docs).
    pub fn linger(&self) {
        self.linger.store(true, Relaxed);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms_since_born: u64) -> Instant {
        self.born + Duration::from_millis(ms_since_born)
    }

    /// By when the next read must complete a request head, and the timeout's metric
    /// label; `None` while a request is handled and after the upgrade.
    fn read_deadline(&self) -> Option<(Instant, &'static str)> {
        if self.upgraded.load(Relaxed) || self.inflight.load(Relaxed) > 0 {
            return None;
        }
        let started = self.read.load(Relaxed) > self.read_at_idle.load(Relaxed);
        let reason = if started { "header" } else { "idle" };
        let deadline = if self.served.load(Relaxed) == 0 {
            self.born + self.header
        } else if started {
            self.at(self.head_since.load(Relaxed)) + self.header
        } else {
            self.at(self.idle_since.load(Relaxed)) + self.idle
        };
        Some((deadline, reason))
    }

    fn on_read(&self, n: usize) {
        let before = self.read.fetch_add(n as u64, Relaxed);
        if before == self.read_at_idle.load(Relaxed) {
            self.head_since.store(self.now_ms(), Relaxed);
        }
    }

    fn request_started(&self) {
        self.inflight.fetch_add(1, Relaxed);
        self.served.fetch_add(1, Relaxed);
    }

    fn request_done(&self) {
        if self.inflight.fetch_sub(1, Relaxed) == 1 {
            self.read_at_idle.store(self.read.load(Relaxed), Relaxed);
            self.idle_since.store(self.now_ms(), Relaxed);
        }
    }
}

/// The accepted stream as hyper, and after an upgrade the WebSocket, sees it: reads
/// enforce the HTTP deadlines, and dropping it may linger (module docs).
struct Socket {
    /// The stream; `None` only once the drop handed it to the lingering task.
    tcp: Option<TcpStream>,
    /// This socket's shared state.
    ctl: Arc<SocketCtl>,
    /// The read deadline's timer; dropped at the upgrade, so WebSockets do not keep it.
    timer: Option<Pin<Box<Sleep>>>,
    /// Where a lingering close runs: the node's tasks, which the drain awaits.
    tasks: TaskTracker,
}

impl Socket {
    fn new(tcp: TcpStream, ctl: Arc<SocketCtl>, tasks: TaskTracker) -> Self {
        let timer = Some(Box::pin(tokio::time::sleep_until(ctl.born + ctl.header)));
        Socket { tcp: Some(tcp), ctl, timer, tasks }
    }

    fn tcp(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.tcp.as_mut().map(Pin::new).ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// Called when a read found nothing: fails it once the deadline passed.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ctl.upgraded.load(Relaxed) {
            self.timer = None;
        }
        let (Some(timer), Some((deadline, reason))) = (self.timer.as_mut(), self.ctl.read_deadline()) else {
            return Poll::Pending;
        };
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        metrics::counter!(telemetry::HTTP_TIMEOUTS, "reason" => reason).increment(1);
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, format!("http {reason} timeout"))))
    }
}

impl AsyncRead for Socket {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match self.tcp()?.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    self.ctl.on_read(n);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => self.check_deadline(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.tcp()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.tcp()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.as_ref().is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp()?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp()?.poll_shutdown(cx)
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if !self.ctl.linger.load(Relaxed) || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if let Some(tcp) = self.tcp.take() {
            self.tasks.spawn(linger(tcp));
        }
    }
}

/// The lingering close: FIN after what was written, then read and drop the peer's
/// leftover input until it closes too, bounded by [`LINGER_TIME`] and [`LINGER_BYTES`].
/// Closing with unread input would send a reset instead.
async fn linger(mut tcp: TcpStream) {
    let end = async {
        if tcp.shutdown().await.is_err() {
            return "error";
        }
        let deadline = Instant::now() + LINGER_TIME;
        let mut buf = [0u8; 2048];
        let mut left = LINGER_BYTES;
        loop {
            match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
                Err(_) => return "timeout",
                Ok(Ok(0)) => return "eof",
                Ok(Err(_)) => return "error",
                Ok(Ok(n)) if n >= left => return "budget",
                Ok(Ok(n)) => left -= n,
            }
        }
    }
    .await;
    metrics::counter!(telemetry::LINGERING_CLOSES, "end" => end).increment(1);
}

mod service;
#[cfg(test)]
mod tests;
