//! Assembles a node and runs it: `run(listener, config, shutdown)` is what `main` and the
//! tests call. On the shutdown signal the node drains: not ready at once, new upgrades
//! refused, then after a delay its connections are closed (1001, `disconnecting`
//! first) in batches spread over the drain period, its registry entry is removed, and
//! every task is awaited up to the hard deadline.

use std::{future::Future, sync::Arc, time::Duration};

use gateway_protocol::{CloseCode, DisconnectReason};
use tokio::{net::TcpListener, time::Instant};
use tokio_util::task::TaskTracker;

use crate::{
    auth::{Authenticator, KeyStore},
    backend_http::BackendHttpError,
    bus::{Bus, BusError, Inbound, memory::MemoryBus, nats::NatsBus},
    config::{Config, ms},
    conn::handle::Close,
    history::{History, Keeping, memory::MemoryHistory},
    http,
    hub::Hub,
    keys::RedisKeyStore,
    node::{Node, NodeInbound},
    presence::{Presence, PresenceError, memory::MemoryPresence, redis::RedisPresence},
    shutdown::Shutdown,
    telemetry, upstream,
};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// NATS was not reachable at startup.
    #[error("nats: {0}")]
    Bus(#[from] BusError),
    /// Redis was not reachable at startup.
    #[error("redis: {0}")]
    Presence(#[from] PresenceError),
    /// A credential key could not be loaded.
    #[error("auth: {0}")]
    Auth(String),
    /// The HTTP backend's client could not be built.
    #[error("backend_http: {0}")]
    Backend(#[from] BackendHttpError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// How often the drain closes a batch of connections.
const DRAIN_STEP: Duration = Duration::from_millis(100);

/// Builds the node's services: the embedded twins, or NATS and Redis when configured.
pub async fn build(cfg: Arc<Config>, tasks: &TaskTracker, shutdown: &Shutdown) -> Result<Arc<Node>, ServerError> {
    let hub = Arc::new(Hub::default());
    if !cfg.clustered() {
        let auth = Arc::new(Authenticator::new(&cfg, None).map_err(ServerError::Auth)?);
        start_key_refresh(&auth, tasks, shutdown).await;
        let inbound: Arc<dyn Inbound> = Arc::new(NodeInbound { hub: hub.clone(), auth: auth.clone() });
        let history = Arc::new(MemoryHistory::new(Keeping::new(&cfg.history)));
        tasks.spawn(maintain_history(history.clone(), shutdown.stop_token()));
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(inbound, history.clone()));
        let presence: Arc<dyn Presence> = Arc::new(MemoryPresence::new(ms(cfg.presence.lease_ms)));
        let upstream = upstream::build(&cfg, bus.clone())?;
        return Ok(Arc::new(Node::new(
            cfg,
            hub,
            bus,
            upstream,
            presence,
            history,
            auth,
            shutdown.clone(),
            tasks.clone(),
        )));
    }
    if !crate::events::SystemSigner::new(&cfg).1 {
        tracing::warn!(
            "no cluster_secret, jwt_secret or admin_key: the signature of the gateway's own events rests on no \
             secret, so a NATS publisher could forge presence events; set cluster_secret"
        );
    }
    let redis = Arc::new(RedisPresence::connect(&cfg).await?);
    redis.spawn_monitor(tasks, shutdown.stop_token());
    // One Redis connection serves presence, counts and API keys.
    let keys: Arc<dyn KeyStore> = Arc::new(RedisKeyStore::new(redis.client().clone(), cfg.redis_prefix.clone()));
    let auth = Arc::new(Authenticator::new(&cfg, Some(keys)).map_err(ServerError::Auth)?);
    start_key_refresh(&auth, tasks, shutdown).await;
    let inbound: Arc<dyn Inbound> = Arc::new(NodeInbound { hub: hub.clone(), auth: auth.clone() });
    let presence: Arc<dyn Presence> = redis;
    let nats = NatsBus::connect(&cfg, inbound, tasks, shutdown.stop_token()).await?;
    // With no namespace keeping history an empty twin answers "not kept".
    let history: Arc<dyn History> = match nats.history() {
        Some(h) => h,
        None => Arc::new(MemoryHistory::new(Keeping::new(&cfg.history))),
    };
    tasks.spawn(maintain_history(history.clone(), shutdown.stop_token()));
    let bus: Arc<dyn Bus> = Arc::new(nats);
    let upstream = upstream::build(&cfg, bus.clone())?;
    Ok(Arc::new(Node::new(cfg, hub, bus, upstream, presence, history, auth, shutdown.clone(), tasks.clone())))
}

/// With `auth.jwks_url`: fetches the key set once (bounded; a failure is logged and the
/// node starts anyway), then keeps it fresh on the node's tasks until stopped.
async fn start_key_refresh(auth: &Authenticator, tasks: &TaskTracker, shutdown: &Shutdown) {
    if let Some(jwks) = auth.jwks() {
        let primed = jwks.prime().await;
        tasks.spawn(jwks.clone().refresh_loop(primed, shutdown.stop_token()));
    }
}

/// History upkeep every few seconds (expiry, epoch checks), until stopped.
async fn maintain_history(history: Arc<dyn History>, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while stop.run_until_cancelled(tick.tick()).await.is_some() {
        history.maintain().await;
    }
}

/// Runs a node on `listener` until `signal` resolves, then drains and returns.
pub async fn run(
    listener: TcpListener,
    cfg: Config,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let cfg = Arc::new(cfg);
    let tasks = TaskTracker::new();
    let shutdown = Shutdown::new();
    let node = build(cfg.clone(), &tasks, &shutdown).await?;
    tasks.spawn(node.clone().maintain_presence());
    tasks.spawn(telemetry::upkeep(shutdown.stop_token()));
    tasks.spawn(node.handshake_rate.clone().prune_loop(shutdown.stop_token()));
    let app = http::router(node.clone()).fallback(http::not_found);
    let server = tokio::spawn(crate::listener::serve(listener, app, node.clone()));
    tracing::info!(node = node.id(), clustered = cfg.clustered(), "gateway running");
    signal.await;
    drain(&node).await;
    let _ = server.await;
    Ok(())
}

/// The graceful drain (see the module docs).
pub async fn drain(node: &Arc<Node>) {
    let d = &node.cfg.drain;
    let began = Instant::now();
    let deadline = began + ms(d.deadline_ms);
    node.shutdown.drain();
    metrics::gauge!(telemetry::DRAINING).set(1.0);
    let open = node.hub.stats().connections;
    tracing::info!(connections = open, delay_ms = d.delay_ms, period_ms = d.period_ms, "drain: not ready");
    if open > 0 {
        tokio::time::sleep(ms(d.delay_ms)).await;
    }
    let conns = node.hub.connections();
    let steps = (ms(d.period_ms).as_millis() / DRAIN_STEP.as_millis()).max(1) as usize;
    let per_step = conns.len().div_ceil(steps).max(1);
    let notice = Close::with_notice(CloseCode::GoingAway, DisconnectReason::Shutdown, true);
    for (i, batch) in conns.chunks(per_step).enumerate() {
        if i > 0 {
            tokio::time::sleep(DRAIN_STEP).await;
        }
        for c in batch {
            c.close(notice);
        }
        metrics::counter!(telemetry::DRAIN_CLOSES).increment(batch.len() as u64);
    }
    tracing::info!(closed = conns.len(), elapsed_ms = began.elapsed().as_millis() as u64, "drain: closes sent");
    while node.hub.stats().connections > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Err(e) = node.presence.deregister(node.id()).await {
        tracing::warn!(error = %e, "drain: registry entry not removed; it will expire");
    }
    node.shutdown.stop();
    node.tasks.close();
    if tokio::time::timeout_at(deadline.max(Instant::now() + Duration::from_millis(100)), node.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain: deadline reached with tasks still running");
    }
    tracing::info!(elapsed_ms = began.elapsed().as_millis() as u64, "drain: done");
}
