//! The bus on NATS (contract §5): channel events on `<prefix>.ev.<ns>.<id>`, upstream
//! sends on `<prefix>.up.…`, backend requests on `<prefix>.rpc.…`, the subscribe proxy on
//! `<prefix>.auth.subscribe` and cluster-wide disconnects on `<prefix>.ctl.disconnect`.
//!
//! A node holds one NATS subscription per channel with a local subscriber, and none
//! otherwise: [`Bus::sync_interest`] reconciles the subscription with
//! [`Inbound::has_subscribers`] under a per-channel lock, so concurrent calls in any order
//! converge on the hub's truth, and returns only once the server has applied the change
//! (a round trip through the server, see `NatsBus::barrier`). Each subscription is
//! drained by its own tracked task, which decodes events and hands them to
//! [`Inbound::event`]; the task owns the [`Subscriber`], so unsubscribing means stopping
//! the task and waiting until it has sent `UNSUB`. async-nats replays every live
//! subscription after a reconnect.
//!
//! The initial connect fails fast with a clear error; afterwards the client reconnects
//! forever. Connection events drive [`health`](Bus::health) and the `gateway_fabric_*`
//! metrics (outages and how long each lasted). Every operation is bounded by
//! `fabric.request_timeout_ms`, and fails at once while the link is known to be down.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_nats::{Client, ConnectOptions, HeaderMap, Request, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use gateway_protocol::{Channel, EventFrame, Namespace, Principal, channel::valid_id};
use serde_json::{Value, json};
use tokio::{sync::Mutex as AsyncMutex, task::JoinHandle};
use tokio_util::{
    sync::{CancellationToken, DropGuard},
    task::TaskTracker,
};

use super::{
    Bus, BusError, ComponentHealth, Correlation, DisconnectCommand, Inbound, Origin, rpc_subject, upstream_subject,
};
use crate::{
    config::Config,
    events::BusScreen,
    history::{HistoryError, Keeping, jetstream::JetStreamHistory},
    lifecycle::HookKind,
    telemetry,
};

mod hooks;
mod link;
mod pump;
mod wire;

use link::Link;

use wire::{
    WireEventRef, bad_request, correlation_headers, decode_body, origin_headers, parse_reply, publish_error,
    reconnect_delay, redact, request_error,
};

/// Header naming the kind (`user`|`agent`) of the principal behind an upstream message.
pub const HDR_PRINCIPAL_KIND: &str = "Gw-Principal-Kind";
/// Header naming the id of the principal behind an upstream message.
pub const HDR_PRINCIPAL_ID: &str = "Gw-Principal-Id";
/// Header naming the connection an upstream message came from.
pub const HDR_CONNECTION: &str = "Gw-Connection";
/// Header naming the node holding that connection.
pub const HDR_NODE: &str = "Gw-Node";
/// Header carrying the cluster's signature of one of the gateway's own events.
pub const HDR_SIG: &str = "Gw-Sig";
/// Content type that makes an event body MessagePack instead of JSON.
pub const MSGPACK: &str = "application/msgpack";

/// Upper bound of the reconnect backoff; a restarted server is found within this.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// A live subscription: the task draining it and the token that stops it.
struct Live {
    /// Cancelled to make the task send `UNSUB` and exit.
    stop: CancellationToken,
    /// The task; awaited so `UNSUB` is queued before the barrier that confirms it.
    task: JoinHandle<()>,
}

/// One channel's subscription, behind the lock that serialises its reconciliation.
type Slot = Arc<AsyncMutex<Option<Live>>>;

/// The event bus on a NATS connection.
pub struct NatsBus {
    /// The connection (cheap to clone; reconnects by itself).
    client: Client,
    /// Where events and control commands go.
    inbound: Arc<dyn Inbound>,
    /// First token of every subject.
    prefix: String,
    /// Server address(es) without credentials, for `health()`.
    detail: String,
    /// Connection state fed by async-nats events.
    link: Arc<Link>,
    /// Channel → its subscription slot; entries with no subscription are pruned.
    slots: Mutex<HashMap<Channel, Slot>>,
    /// Live channel subscriptions (for tests and debugging).
    live: AtomicUsize,
    /// Where subscription tasks are tracked.
    tasks: TaskTracker,
    /// Stops this bus's tasks: child of the node's shutdown, cancelled on drop too.
    stop: CancellationToken,
    /// Cancels `stop` when the bus is dropped, so no task outlives it.
    _guard: DropGuard,
    /// Bound of every publish, subscribe and barrier (`fabric.request_timeout_ms`).
    op_timeout: Duration,
    /// Private inbox answered by this bus itself; a request to it is the barrier.
    barrier_subject: String,
    /// What events read from NATS must pass, and the signer of this node's own.
    screen: Arc<BusScreen>,
    /// The history streams, when a namespace keeps history.
    history: Option<Arc<JetStreamHistory>>,
    /// Which channels keep how much history (their fill bound).
    keeping: Keeping,
}

/// Answers barrier requests (empty reply) until the bus stops.
async fn answer_barriers(client: Client, mut sub: Subscriber, stop: CancellationToken) {
    while let Some(Some(msg)) = stop.run_until_cancelled(sub.next()).await {
        if let Some(reply) = msg.reply {
            let _ = client.publish(reply, Bytes::new()).await;
        }
    }
}

/// Delivers `<prefix>.ctl.disconnect` commands into `inbound` until the bus stops.
async fn control(mut sub: Subscriber, inbound: Arc<dyn Inbound>, stop: CancellationToken) {
    while let Some(Some(msg)) = stop.run_until_cancelled(sub.next()).await {
        match serde_json::from_slice::<DisconnectCommand>(&msg.payload) {
            Ok(cmd) if valid_id(&cmd.id) => inbound.control(cmd),
            Ok(_) | Err(_) => {
                metrics::counter!(telemetry::DROPS, "reason" => "bad_control").increment(1);
                tracing::debug!(subject = %msg.subject, "invalid disconnect command dropped");
            }
        }
    }
}

impl NatsBus {
    /// Connects to `cfg.nats_url` (a list of a NATS cluster's servers allowed) as `cfg.node_id`, and
    /// subscribes to disconnect commands. Fails at once when no server is reachable;
    /// after that the connection is re-established forever.
    pub async fn connect(
        cfg: &Config,
        inbound: Arc<dyn Inbound>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<NatsBus, BusError> {
        let detail = redact(&cfg.nats_url);
        let servers = cfg.nats_servers();
        let op_timeout = crate::config::ms(cfg.fabric.request_timeout_ms.max(1));
        let link = Arc::new(Link::default());
        let events = link.clone();
        let client = ConnectOptions::new()
            .name(&cfg.node_id)
            .max_reconnects(None)
            .ping_interval(crate::config::ms(cfg.fabric.nats_ping_interval_ms))
            .reconnect_delay_callback(reconnect_delay)
            .request_timeout(Some(op_timeout))
            .event_callback(move |ev| {
                events.on_event(&ev);
                std::future::ready(())
            })
            .connect(servers)
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot connect to NATS at {detail}: {e}")))?;
        link.connected_at_start();

        let screen = Arc::new(BusScreen::new(cfg));
        let history = if Namespace::ALL.into_iter().any(|ns| cfg.history.keeps(ns)) {
            let h = JetStreamHistory::connect(client.clone(), cfg, decode_body, screen.clone())
                .await
                .map_err(|e: HistoryError| BusError::Unavailable(e.to_string()))?;
            Some(Arc::new(h))
        } else {
            None
        };
        let stop = shutdown.child_token();
        let barrier_subject = client.new_inbox();
        let bus = NatsBus {
            client,
            inbound,
            prefix: cfg.subject_prefix.clone(),
            detail,
            link,
            slots: Mutex::default(),
            live: AtomicUsize::new(0),
            tasks: tasks.clone(),
            _guard: stop.clone().drop_guard(),
            stop,
            op_timeout,
            barrier_subject,
            screen,
            history,
            keeping: Keeping::new(&cfg.history),
        };
        let barriers = bus.bounded("subscribe", bus.client.subscribe(bus.barrier_subject.clone())).await?;
        tasks.spawn(answer_barriers(bus.client.clone(), barriers, bus.stop.clone()));
        let ctl = bus.bounded("subscribe", bus.client.subscribe(format!("{}.ctl.disconnect", bus.prefix))).await?;
        tasks.spawn(control(ctl, bus.inbound.clone(), bus.stop.clone()));
        bus.barrier().await?;
        // On shutdown, push out what is still buffered (bounded) before the process exits.
        let (client, stop, limit) = (bus.client.clone(), bus.stop.clone(), op_timeout.min(Duration::from_secs(2)));
        tasks.spawn(async move {
            stop.cancelled().await;
            let _ = tokio::time::timeout(limit, client.flush()).await;
        });
        tracing::info!(server = %bus.detail, node = %cfg.node_id, "connected to nats");
        Ok(bus)
    }

    /// The history store, when some namespace keeps history.
    pub fn history(&self) -> Option<Arc<JetStreamHistory>> {
        self.history.clone()
    }

    /// Channels this node currently holds a NATS subscription for.
    pub async fn subscribed_channels(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Runs a fabric operation bounded by the operation timeout; every failure is
    /// `Unavailable`.
    async fn bounded<T, E: std::fmt::Display>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, BusError> {
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(BusError::Unavailable(format!("nats {what}: {e}"))),
            Err(_) => Err(BusError::Unavailable(format!("nats {what}: no progress within {:?}", self.op_timeout))),
        }
    }

    /// Returns once the server has processed everything this client sent before it.
    ///
    /// `Client::flush` only drains the socket buffer; a request to our own private inbox
    /// (answered by [`answer_barriers`]) is processed by the server after every earlier
    /// SUB/UNSUB of this connection, so its reply proves they are in effect.
    async fn barrier(&self) -> Result<(), BusError> {
        self.bounded("barrier", self.client.request(self.barrier_subject.clone(), Bytes::new())).await.map(drop)
    }

    /// Fails fast while the link is known to be down, instead of queueing behind it.
    fn ensure_up(&self) -> Result<(), BusError> {
        if self.link.is_up() {
            Ok(())
        } else {
            Err(BusError::Unavailable(format!("nats disconnected ({})", self.detail)))
        }
    }

    /// The slot for `ch`, created when absent.
    fn slot(&self, ch: &Channel) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(ch.clone()).or_default().clone()
    }

    /// Drops `ch`'s slot if it holds no subscription and nobody else is using it. Called
    /// with the slot's lock held; new users need the map lock to get the slot, so a
    /// reference count of two (map + caller) proves nobody waits on it.
    fn prune(&self, ch: &Channel, slot: &Slot, empty: bool) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if empty && Arc::strong_count(slot) == 2 {
            slots.remove(ch);
        }
    }

    /// Makes `live` match the hub: subscribe when wanted and absent, unsubscribe when
    /// present and unwanted. Returns whether the server must confirm a change (barrier).
    async fn reconcile(&self, ch: &Channel, live: &mut Option<Live>) -> Result<bool, BusError> {
        if live.as_ref().is_some_and(|l| l.task.is_finished()) {
            // The stream ended under us (client closed); treat as absent.
            *live = None;
            self.live.fetch_sub(1, Ordering::AcqRel);
        }
        let wanted = self.inbound.has_subscribers(ch);
        match (wanted, live.take()) {
            (true, None) => {
                if self.stop.is_cancelled() {
                    return Err(BusError::Unavailable("nats bus is shutting down".into()));
                }
                let history = self.history.clone().filter(|h| h.keeps(ch));
                let subject = match history {
                    Some(_) => ch.subject(&self.prefix).replacen(".ev.", ".live.", 1),
                    None => ch.subject(&self.prefix),
                };
                let sub = self.bounded("subscribe", self.client.subscribe(subject)).await?;
                let stop = self.stop.child_token();
                let ctx = pump::PumpCtx {
                    ch: ch.clone(),
                    inbound: self.inbound.clone(),
                    screen: self.screen.clone(),
                    history,
                    reconnects: self.link.reconnects.subscribe(),
                    max_fill: self.keeping.size(ch),
                };
                let task = self.tasks.spawn(pump::pump(sub, ctx, stop.clone(), self.stop.clone()));
                *live = Some(Live { stop, task });
                self.live.fetch_add(1, Ordering::AcqRel);
                Ok(true)
            }
            (false, Some(mut old)) => {
                old.stop.cancel();
                self.live.fetch_sub(1, Ordering::AcqRel);
                // UNSUB goes by subscription id, so even if this wait gives up, a later
                // SUB for the same channel is unaffected by the stale UNSUB.
                let _ = tokio::time::timeout(self.op_timeout, &mut old.task).await;
                Ok(true)
            }
            (_, current) => {
                *live = current;
                Ok(false)
            }
        }
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn sync_interest(&self, ch: &Channel) -> Result<(), BusError> {
        let slot = self.slot(ch);
        let mut live = slot.lock().await;
        // Confirm a change with the server so a client told "subscribed" gets the next
        // event. While disconnected, the change is queued and replayed on reconnect.
        let result = match self.reconcile(ch, &mut live).await {
            Ok(true) => match self.ensure_up() {
                Ok(()) => self.barrier().await,
                down => down,
            },
            other => other.map(drop),
        };
        self.prune(ch, &slot, live.is_none());
        drop(live);
        result
    }

    async fn publish(&self, ev: &EventFrame) -> Result<(), BusError> {
        let body = serde_json::to_vec(&WireEventRef {
            event: ev.event.as_str(),
            data: &ev.data,
            id: &ev.id,
            ts: ev.ts,
            from: ev.from.as_ref(),
        })
        .map_err(|e| bad_request(format!("event body: {e}")))?;
        // Only the gateway's own events get past the checks with a reserved name: sign
        // them so other nodes can tell them from a backend's.
        let mut headers = HeaderMap::new();
        if ev.event.is_reserved() {
            headers.insert(HDR_SIG, self.screen.signer.sign(ev).as_str());
        }
        let subject = ev.channel.subject(&self.prefix);
        match self.history.as_ref().filter(|h| h.keeps(&ev.channel)) {
            // Stored before it is acknowledged: a publish that returns Ok is in history.
            Some(h) => {
                self.ensure_up()?;
                let js = h.context();
                let acked = async { js.publish_with_headers(subject, headers, body.into()).await?.await };
                self.bounded("history publish", acked).await.map(drop)
            }
            None => self.send(subject, (!headers.is_empty()).then_some(headers), body).await,
        }
    }

    async fn send_upstream(
        &self,
        origin: &Origin<'_>,
        event: &str,
        data: &Value,
        correlation: &Correlation<'_>,
    ) -> Result<(), BusError> {
        let subject = upstream_subject(&self.prefix, event)
            .ok_or_else(|| bad_request(format!("event name {event:?} cannot be sent upstream")))?;
        let mut headers = origin_headers(origin)?;
        correlation_headers(&mut headers, correlation);
        let body = serde_json::to_vec(data).map_err(|e| bad_request(format!("data: {e}")))?;
        self.send(subject, Some(headers), body).await
    }

    async fn request(
        &self,
        origin: &Origin<'_>,
        method: &str,
        params: &Value,
        timeout: Duration,
    ) -> Result<Value, BusError> {
        let subject = rpc_subject(&self.prefix, method)
            .ok_or_else(|| bad_request(format!("method name {method:?} is not valid")))?;
        let headers = origin_headers(origin)?;
        let body = serde_json::to_vec(params).map_err(|e| bad_request(format!("params: {e}")))?;
        self.round_trip(subject, Some(headers), body, timeout).await
    }

    async fn authorize_subscribe(
        &self,
        principal: &Principal,
        ch: &Channel,
        timeout: Duration,
    ) -> Result<bool, BusError> {
        let body = json!({ "channel": ch.as_str(), "principal": principal }).to_string().into_bytes();
        let reply = self.round_trip(format!("{}.auth.subscribe", self.prefix), None, body, timeout).await?;
        reply
            .get("allow")
            .and_then(Value::as_bool)
            .ok_or_else(|| BusError::BadReply("subscribe proxy reply lacks a boolean `allow`".into()))
    }

    async fn disconnect(&self, cmd: &DisconnectCommand) -> Result<(), BusError> {
        let body = serde_json::to_vec(cmd).map_err(|e| bad_request(format!("command: {e}")))?;
        self.send(format!("{}.ctl.disconnect", self.prefix), None, body).await
    }

    async fn hook(&self, kind: HookKind, origin: &Origin<'_>, reason: Option<&str>) -> Result<(), BusError> {
        self.publish_hook(kind, origin, reason).await
    }

    fn health(&self) -> ComponentHealth {
        let status = if self.link.is_up() { "connected" } else { "disconnected" };
        ComponentHealth { status, detail: self.detail.clone() }
    }
}

impl NatsBus {
    /// One bounded publish; fails fast while the link is down.
    async fn send(&self, subject: String, headers: Option<HeaderMap>, body: Vec<u8>) -> Result<(), BusError> {
        self.ensure_up()?;
        let sent = match headers {
            Some(h) => {
                tokio::time::timeout(self.op_timeout, self.client.publish_with_headers(subject, h, body.into())).await
            }
            None => tokio::time::timeout(self.op_timeout, self.client.publish(subject, body.into())).await,
        };
        match sent {
            Ok(r) => r.map_err(publish_error),
            Err(_) => Err(BusError::Unavailable(format!("nats publish: no progress within {:?}", self.op_timeout))),
        }
    }

    /// One request/reply exchange bounded by `timeout`, with the reply parsed per §5.
    async fn round_trip(
        &self,
        subject: String,
        headers: Option<HeaderMap>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Value, BusError> {
        self.ensure_up()?;
        let mut req = Request::new().payload(body.into()).timeout(Some(timeout));
        if let Some(h) = headers {
            req = req.headers(h);
        }
        let msg = match tokio::time::timeout(timeout, self.client.send_request(subject, req)).await {
            Ok(Ok(msg)) => msg,
            Ok(Err(e)) => return Err(request_error(e, timeout)),
            Err(_) => return Err(BusError::Timeout(timeout)),
        };
        parse_reply(&msg.payload)
    }
}
