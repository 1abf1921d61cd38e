//! A TCP relay to put between one node and a server (NATS, Redis) so a test can break
//! that node's link alone, the way networks break:
//! - [`Relay::cut`]: every relayed connection is closed and new ones are refused (a
//!   crashed peer, a reset firewall rule);
//! - [`Relay::stall`]: connections are accepted and kept open, but nothing is forwarded
//!   in either direction and nothing is answered (a partition that drops packets
//!   silently, a frozen server). Bytes that arrive meanwhile are held and delivered on
//!   [`Relay::heal`], as TCP retransmission would, unless their connection closed in
//!   the meantime (then they are dropped, as a kernel that gave up on them would);
//! - [`Relay::delay`]: every chunk is delivered that much later (latency, not
//!   throughput).
//!
//! [`Relay::heal`] returns to plain forwarding. Every task it spawns ends when the relay
//! is dropped.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{mpsc, watch},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

/// How a relay treats the bytes of its open connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward at once.
    Forward,
    /// Hold everything; forward nothing.
    Stall,
    /// Forward each chunk this long after it arrived.
    Delay(Duration),
}

/// Chunks queued per direction before the relay stops reading (back-pressure).
const QUEUED_CHUNKS: usize = 256;
/// Largest chunk read at once.
const CHUNK: usize = 16 * 1024;

/// A running relay.
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Whether the link is cut.
    cut: Arc<AtomicBool>,
    /// Bumped on every cut, so open connections close.
    cuts: watch::Sender<u64>,
    /// What open connections do with their bytes.
    mode: watch::Sender<Mode>,
    /// Stops everything on drop.
    stop: CancellationToken,
}

impl Relay {
    /// Relays a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let (cuts, _) = watch::channel(0u64);
        let (mode, _) = watch::channel(Mode::Forward);
        let stop = CancellationToken::new();
        let (c, tx, m, s) = (cut.clone(), cuts.clone(), mode.clone(), stop.clone());
        tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => break,
                    a = listener.accept() => a,
                    // Reap finished connections so a long test does not accumulate them.
                    Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                };
                let Ok((client, _)) = accepted else { continue };
                if c.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let (on_cut, s, mode) = (tx.subscribe(), s.clone(), m.subscribe());
                conns.spawn(relay_one(client, target, mode, on_cut, s));
            }
            conns.shutdown().await;
        });
        Ok(Relay { addr, cut, cuts, mode, stop })
    }

    /// `nats://addr` (or any scheme) for clients of the relay.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Keeps every connection (and accepts new ones) but forwards nothing.
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stall);
    }

    /// Forwards every chunk `by` after it arrived.
    pub fn delay(&self, by: Duration) {
        self.mode.send_replace(Mode::Delay(by));
    }

    /// Back to normal: accepts connections and forwards at once (held bytes first).
    pub fn heal(&self) {
        self.cut.store(false, Ordering::Release);
        self.mode.send_replace(Mode::Forward);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One relayed connection, until either side closes, the link is cut or the relay stops.
async fn relay_one(
    client: TcpStream,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    mut on_cut: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    // Even while stalled the connection to the server is made: the server sees a client
    // that never speaks, as in a real partition after the handshake.
    let connect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target));
    let server = match stop.run_until_cancelled(connect).await {
        Some(Ok(Ok(s))) => s,
        _ => return,
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let gone = CancellationToken::new();
    let both = async {
        tokio::join!(pipe(cr, sw, mode.clone(), gone.clone()), pipe(sr, cw, mode, gone.clone()));
    };
    tokio::select! {
        () = both => {}
        () = gone.cancelled() => {}
        _ = on_cut.changed() => {}
        () = stop.cancelled() => {}
    }
}

/// One direction: reads `from` and writes `to` as the mode says. Ends when `from` is
/// done and what was read is delivered; cancels `gone` when held bytes must be dropped
/// (the reading side closed while stalled) or the writing side failed.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mode: watch::Receiver<Mode>, gone: CancellationToken) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUED_CHUNKS);
    let (reader_mode, writer_gone) = (mode.clone(), gone.clone());
    let read = async move {
        loop {
            let mut buf = vec![0u8; CHUNK];
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    if *reader_mode.borrow() == Mode::Stall {
                        gone.cancel();
                    }
                    return;
                }
                Ok(n) => {
                    buf.truncate(n);
                    let delay = match *reader_mode.borrow() {
                        Mode::Delay(d) => d,
                        Mode::Forward | Mode::Stall => Duration::ZERO,
                    };
                    if tx.send((Instant::now() + delay, buf)).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let write = async move {
        let mut mode = mode;
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if mode.wait_for(|m| *m != Mode::Stall).await.is_err() {
                return;
            }
            if to.write_all(&chunk).await.is_err() {
                writer_gone.cancel();
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port, stopped (with its connections) when the guard drops.
    async fn echo() -> anyhow::Result<(SocketAddr, tokio_util::sync::DropGuard)> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Some(Ok((mut sock, _))) = s.run_until_cancelled(l.accept()).await {
                conns.spawn(async move {
                    let (mut r, mut w) = sock.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Ok((addr, stop.drop_guard()))
    }

    /// Sends `msg` and reads its echo, bounded by `limit`; returns how long it took.
    async fn round_trip(s: &mut TcpStream, msg: &[u8], limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        s.write_all(msg).await?;
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(limit, s.read_exact(&mut buf)).await??;
        anyhow::ensure!(buf == msg, "echo differs");
        Ok(start.elapsed())
    }

    #[tokio::test]
    async fn stall_holds_bytes_until_heal_delay_adds_latency_cut_refuses() -> anyhow::Result<()> {
        let (server, _stop) = echo().await?;
        let relay = Relay::start(server).await?;
        let mut s = TcpStream::connect(relay.addr).await?;
        round_trip(&mut s, b"plain", Duration::from_secs(2)).await?;
        // Stalled: the connection stays, a new one is accepted, nothing comes back.
        relay.stall();
        s.write_all(b"held").await?;
        let mut late = TcpStream::connect(relay.addr).await?;
        late.write_all(b"held too").await?;
        let mut buf = [0u8; 8];
        let quiet = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
        assert!(quiet.is_err(), "a stalled relay answered: {quiet:?}");
        // Healed: what was held arrives, on both connections.
        relay.heal();
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf[..4])).await??;
        assert_eq!(&buf[..4], b"held");
        tokio::time::timeout(Duration::from_secs(2), late.read_exact(&mut buf)).await??;
        assert_eq!(&buf, b"held too");
        // Delayed: each direction adds the delay.
        relay.delay(Duration::from_millis(100));
        let took = round_trip(&mut s, b"slow", Duration::from_secs(2)).await?;
        assert!(took >= Duration::from_millis(200), "round trip {took:?} under twice the delay");
        relay.heal();
        // Cut: open connections close, new ones are refused (closed at once).
        relay.cut();
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await??;
        assert_eq!(n, 0, "the cut connection is closed");
        let mut refused = TcpStream::connect(relay.addr).await?;
        let n = tokio::time::timeout(Duration::from_secs(2), refused.read(&mut buf)).await?.unwrap_or(0);
        assert_eq!(n, 0, "a new connection is refused");
        Ok(())
    }
}
