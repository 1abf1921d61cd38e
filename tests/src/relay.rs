//! A TCP relay to put between a node and a server (NATS, Redis) so a test can cut the
//! link: [`Relay::cut`] closes every relayed connection and refuses new ones until
//! [`Relay::heal`]. Every task it spawns ends when the relay is dropped.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

/// A running relay.
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Whether the link is cut.
    cut: Arc<AtomicBool>,
    /// Bumped on every cut, so open connections close.
    cuts: watch::Sender<u64>,
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
        let stop = CancellationToken::new();
        let (c, tx, s) = (cut.clone(), cuts.clone(), stop.clone());
        tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => break,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                if c.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let (mut on_cut, s) = (tx.subscribe(), s.clone());
                conns.spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = on_cut.changed() => {}
                        _ = s.cancelled() => {}
                    }
                });
            }
            conns.shutdown().await;
        });
        Ok(Relay { addr, cut, cuts, stop })
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

    /// Accepts connections again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::Release);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
