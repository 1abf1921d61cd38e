//! The bus on NATS (contract §5): channel events on `<prefix>.ev.<ns>.<id>`, upstream
//! sends on `<prefix>.up.…`, backend requests on `<prefix>.rpc.…`, the subscribe proxy on
//! `<prefix>.auth.subscribe` and cluster-wide disconnects on `<prefix>.ctl.disconnect`.
//!
//! A node holds one NATS subscription per channel with a local subscriber, and none
//! otherwise: [`Bus::sync_interest`] reconciles the subscription with
//! [`Inbound::has_subscribers`] under a per-channel lock, so concurrent calls in any order
//! converge on the hub's truth. Each subscription is drained by its own tracked task,
//! which decodes events and hands them to [`Inbound::event`]; the task owns the
//! [`Subscriber`], so unsubscribing means stopping the task and waiting until it has sent
//! `UNSUB`. async-nats replays every live subscription after a reconnect.
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
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::{
    Client, ConnectOptions, Event, HeaderMap, HeaderValue, Message, Request, Subscriber,
    client::{PublishError, PublishErrorKind, RequestError, RequestErrorKind},
};
use async_trait::async_trait;
use futures_util::StreamExt;
use gateway_protocol::{Channel, ErrorBody, ErrorCode, EventFrame, Principal, channel::valid_id, now_ms};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::{sync::Mutex as AsyncMutex, task::JoinHandle};
use tokio_util::{
    sync::{CancellationToken, DropGuard},
    task::TaskTracker,
};

use super::{
    Bus, BusError, ComponentHealth, DisconnectCommand, Inbound, Origin, WireEvent, rpc_subject, upstream_subject,
};
use crate::{config::Config, telemetry};

/// Header naming the kind (`user`|`agent`) of the principal behind an upstream message.
pub const HDR_PRINCIPAL_KIND: &str = "Gw-Principal-Kind";
/// Header naming the id of the principal behind an upstream message.
pub const HDR_PRINCIPAL_ID: &str = "Gw-Principal-Id";
/// Header naming the connection an upstream message came from.
pub const HDR_CONNECTION: &str = "Gw-Connection";
/// Header naming the node holding that connection.
pub const HDR_NODE: &str = "Gw-Node";
/// Content type that makes an event body MessagePack instead of JSON.
pub const MSGPACK: &str = "application/msgpack";

/// Upper bound of the reconnect backoff; a restarted server is found within this.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// `metrics` label of this component.
const COMPONENT: &str = "nats";

/// Link state before any connection event was seen.
const UNKNOWN: u8 = 0;
/// Link state: connected.
const UP: u8 = 1;
/// Link state: disconnected, reconnecting.
const DOWN: u8 = 2;

/// The NATS link as seen through async-nats connection events.
#[derive(Default)]
struct Link {
    /// [`UNKNOWN`], [`UP`] or [`DOWN`]; read by `health()` and the fail-fast checks.
    state: AtomicU8,
    /// When the current outage began, to record its length when the link comes back.
    down_since: Mutex<Option<Instant>>,
}

impl Link {
    /// Whether the link is believed up (unknown counts as up: connect just succeeded).
    fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) != DOWN
    }

    /// Marks the link up after the initial connect, unless an event already said otherwise.
    fn connected_at_start(&self) {
        if self.state.compare_exchange(UNKNOWN, UP, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            metrics::gauge!(telemetry::FABRIC_UP, "component" => COMPONENT).set(1.0);
        }
    }

    /// Applies one async-nats event to the state and the metrics.
    fn on_event(&self, ev: &Event) {
        match ev {
            Event::Connected => {
                metrics::gauge!(telemetry::FABRIC_UP, "component" => COMPONENT).set(1.0);
                if self.state.swap(UP, Ordering::AcqRel) == DOWN {
                    let since = self.down_since.lock().ok().and_then(|mut d| d.take());
                    let gap = since.map(|s| s.elapsed()).unwrap_or_default();
                    metrics::histogram!(telemetry::FABRIC_GAP_SECONDS, "component" => COMPONENT)
                        .record(gap.as_secs_f64());
                    tracing::info!(gap_ms = gap.as_millis() as u64, "nats reconnected");
                }
            }
            Event::Disconnected | Event::Closed => {
                metrics::gauge!(telemetry::FABRIC_UP, "component" => COMPONENT).set(0.0);
                if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
                    metrics::counter!(telemetry::FABRIC_OUTAGES, "component" => COMPONENT).increment(1);
                    if let Ok(mut d) = self.down_since.lock() {
                        *d = Some(Instant::now());
                    }
                    tracing::warn!(event = %ev, "nats link down; reconnecting");
                }
            }
            Event::SlowConsumer(sid) => {
                metrics::counter!(telemetry::DROPS, "reason" => "slow_consumer").increment(1);
                tracing::warn!(sid, "nats subscription buffer full; events dropped");
            }
            other => tracing::info!(event = %other, "nats event"),
        }
    }
}

/// A live subscription: the task draining it and the token that stops it.
struct Live {
    /// Cancelled to make the task send `UNSUB` and exit.
    stop: CancellationToken,
    /// The task; awaited so `UNSUB` is queued before the flush that confirms it.
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
    /// Bound of every publish, subscribe and flush (`fabric.request_timeout_ms`).
    op_timeout: Duration,
}

/// Reconnect backoff: immediately, then 100 ms doubling up to [`MAX_RECONNECT_DELAY`],
/// plus up to 25 % jitter so a fleet of nodes does not reconnect in lockstep.
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(10);
    let base = Duration::from_millis(100u64 << exp).min(MAX_RECONNECT_DELAY);
    let jitter = rand::random_range(0..=base.as_millis() as u64 / 4);
    base + Duration::from_millis(jitter)
}

/// Server addresses with any `user:password@` removed, for logs and `/health`.
fn redact(urls: &str) -> String {
    let strip = |u: &str| match (u.find("://"), u.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &u[..s + 3], &u[at + 1..]),
        (None, Some(at)) => u[at + 1..].to_owned(),
        _ => u.to_owned(),
    };
    urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(strip).collect::<Vec<_>>().join(",")
}

/// `bad_request` as a bus error (the caller asked for something unsendable).
fn bad_request(message: String) -> BusError {
    BusError::Backend(ErrorBody::new(ErrorCode::BadRequest, message))
}

/// Maps a publish failure: too large is the caller's fault, the rest is the fabric's.
fn publish_error(e: PublishError) -> BusError {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => BusError::Backend(ErrorBody::new(ErrorCode::TooLarge, e.to_string())),
        _ => BusError::Unavailable(format!("nats publish: {e}")),
    }
}

/// Maps a request failure onto the contract's outcomes.
fn request_error(e: RequestError, timeout: Duration) -> BusError {
    match e.kind() {
        RequestErrorKind::NoResponders => BusError::NoResponders,
        RequestErrorKind::TimedOut => BusError::Timeout(timeout),
        RequestErrorKind::MaxPayloadExceeded => BusError::Backend(ErrorBody::new(ErrorCode::TooLarge, e.to_string())),
        _ => BusError::Unavailable(format!("nats request: {e}")),
    }
}

/// The gateway-set identity headers of an upstream message or request. Values come from
/// the authenticated connection only; one that cannot be a header (CR/LF) is refused
/// rather than letting it forge another header.
fn origin_headers(origin: &Origin<'_>) -> Result<HeaderMap, BusError> {
    let mut h = HeaderMap::new();
    let pairs = [
        (HDR_PRINCIPAL_KIND, origin.principal.kind.as_str()),
        (HDR_PRINCIPAL_ID, origin.principal.id.as_str()),
        (HDR_CONNECTION, origin.connection_id),
        (HDR_NODE, origin.node),
        ("Content-Type", "application/json"),
    ];
    for (name, value) in pairs {
        let v: HeaderValue = value.parse().map_err(|_| bad_request(format!("{name} cannot be a header value")))?;
        h.insert(name, v);
    }
    Ok(h)
}

/// Whether a message's `Content-Type` (any case, parameters ignored) is MessagePack.
fn is_msgpack(msg: &Message) -> bool {
    msg.headers.as_ref().is_some_and(|h| {
        h.iter().any(|(name, values)| {
            AsRef::<str>::as_ref(name).eq_ignore_ascii_case("content-type")
                && values.iter().any(|v| {
                    let ct = v.as_str().split(';').next().unwrap_or_default().trim();
                    ct.eq_ignore_ascii_case(MSGPACK) || ct.eq_ignore_ascii_case("application/x-msgpack")
                })
        })
    })
}

/// Decodes an event body (JSON, or MessagePack per header) into a frame for `channel`,
/// filling a missing id (uuid v7) and timestamp (now).
fn decode_event(channel: &Channel, msg: &Message) -> Result<EventFrame, String> {
    let wire: WireEvent = if is_msgpack(msg) {
        rmp_serde::from_slice(&msg.payload).map_err(|e| format!("msgpack: {e}"))?
    } else {
        serde_json::from_slice(&msg.payload).map_err(|e| format!("json: {e}"))?
    };
    if wire.event.is_empty() {
        return Err("empty event name".into());
    }
    Ok(EventFrame {
        channel: channel.clone(),
        event: wire.event,
        data: wire.data,
        id: wire.id.filter(|id| !id.is_empty()).unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        ts: wire.ts.unwrap_or_else(now_ms),
    })
}

/// A reply body: the result, or `{"error":{"code","message"}}` as [`BusError::Backend`].
fn parse_reply(payload: &[u8]) -> Result<Value, BusError> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| BusError::BadReply(format!("reply is not JSON: {e}")))?;
    match v.as_object().and_then(|o| o.get("error")).filter(|e| !e.is_null()) {
        Some(err) => Err(serde_json::from_value::<ErrorBody>(err.clone())
            .map_or_else(|e| BusError::BadReply(format!("malformed error body: {e}")), BusError::Backend)),
        None => Ok(v),
    }
}

/// The event body this node publishes (borrowing, so publishing clones nothing).
#[derive(Serialize)]
struct WireEventRef<'a> {
    /// Event name.
    event: &'a str,
    /// Payload.
    data: &'a Value,
    /// Message id, so every node delivers the same one.
    id: &'a str,
    /// Acceptance time in ms.
    ts: u64,
}

/// Drains one channel subscription into `inbound` until stopped.
async fn pump(
    mut sub: Subscriber,
    channel: Channel,
    inbound: Arc<dyn Inbound>,
    stop: CancellationToken,
    bus: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            msg = sub.next() => match msg {
                Some(msg) => match decode_event(&channel, &msg) {
                    Ok(ev) => inbound.event(ev),
                    Err(e) => {
                        metrics::counter!(telemetry::DROPS, "reason" => "bad_event").increment(1);
                        tracing::debug!(channel = %channel, error = %e, "undecodable event dropped");
                    }
                },
                None => {
                    tracing::warn!(channel = %channel, "nats subscription ended");
                    return;
                }
            },
        }
    }
    // Unsubscribed by `sync_interest` (not a bus shutdown): send UNSUB now, so the server
    // stops routing before the caller's flush. On shutdown, dropping `sub` is enough.
    if !bus.is_cancelled() {
        let _ = sub.unsubscribe().await;
    }
}

/// Delivers `<prefix>.ctl.disconnect` commands into `inbound` until the bus stops.
async fn control(mut sub: Subscriber, inbound: Arc<dyn Inbound>, stop: CancellationToken) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            msg = sub.next() => msg,
        };
        let Some(msg) = msg else { return };
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
    /// Connects to `cfg.nats_url` (comma-separated list allowed) as `cfg.node_id`, and
    /// subscribes to disconnect commands. Fails at once when no server is reachable;
    /// after that the connection is re-established forever.
    pub async fn connect(
        cfg: &Config,
        inbound: Arc<dyn Inbound>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<NatsBus, BusError> {
        let detail = redact(&cfg.nats_url);
        let servers: Vec<&str> = cfg.nats_url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
        let op_timeout = crate::config::ms(cfg.fabric.request_timeout_ms.max(1));
        let link = Arc::new(Link::default());
        let events = link.clone();
        let client = ConnectOptions::new()
            .name(&cfg.node_id)
            .max_reconnects(None)
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

        let stop = shutdown.child_token();
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
        };
        let ctl = bus.bounded("subscribe", bus.client.subscribe(format!("{}.ctl.disconnect", bus.prefix))).await?;
        bus.bounded("flush", bus.client.flush()).await?;
        tasks.spawn(control(ctl, bus.inbound.clone(), bus.stop.clone()));
        // On shutdown, push out what is still buffered (bounded) before the process exits.
        let (client, stop, limit) = (bus.client.clone(), bus.stop.clone(), op_timeout.min(Duration::from_secs(2)));
        tasks.spawn(async move {
            stop.cancelled().await;
            let _ = tokio::time::timeout(limit, client.flush()).await;
        });
        tracing::info!(server = %bus.detail, node = %cfg.node_id, "connected to nats");
        Ok(bus)
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
    /// present and unwanted. Returns whether the server must be asked to confirm (flush).
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
                let sub = self.bounded("subscribe", self.client.subscribe(ch.subject(&self.prefix))).await?;
                let stop = self.stop.child_token();
                let task =
                    self.tasks.spawn(pump(sub, ch.clone(), self.inbound.clone(), stop.clone(), self.stop.clone()));
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
        let result = self.reconcile(ch, &mut live).await;
        // Confirm with the server (PING/PONG) so a client told "subscribed" gets the next
        // event. While disconnected, the change is queued and replayed on reconnect.
        let result = match result {
            Ok(true) => match self.ensure_up() {
                Ok(()) => self.bounded("flush", self.client.flush()).await,
                Err(e) => Err(e),
            },
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        self.prune(ch, &slot, live.is_none());
        drop(live);
        result
    }

    async fn publish(&self, ev: &EventFrame) -> Result<(), BusError> {
        self.ensure_up()?;
        let body = serde_json::to_vec(&WireEventRef { event: &ev.event, data: &ev.data, id: &ev.id, ts: ev.ts })
            .map_err(|e| bad_request(format!("event body: {e}")))?;
        let subject = ev.channel.subject(&self.prefix);
        match tokio::time::timeout(self.op_timeout, self.client.publish(subject, body.into())).await {
            Ok(r) => r.map_err(publish_error),
            Err(_) => Err(BusError::Unavailable(format!("nats publish: no progress within {:?}", self.op_timeout))),
        }
    }

    async fn send_upstream(&self, origin: &Origin<'_>, event: &str, data: &Value) -> Result<(), BusError> {
        let subject = upstream_subject(&self.prefix, event)
            .ok_or_else(|| bad_request(format!("event name {event:?} cannot be sent upstream")))?;
        let headers = origin_headers(origin)?;
        let body = serde_json::to_vec(data).map_err(|e| bad_request(format!("data: {e}")))?;
        self.ensure_up()?;
        match tokio::time::timeout(self.op_timeout, self.client.publish_with_headers(subject, headers, body.into()))
            .await
        {
            Ok(r) => r.map_err(publish_error),
            Err(_) => Err(BusError::Unavailable(format!("nats publish: no progress within {:?}", self.op_timeout))),
        }
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
        self.ensure_up()?;
        let body = serde_json::to_vec(cmd).map_err(|e| bad_request(format!("command: {e}")))?;
        let subject = format!("{}.ctl.disconnect", self.prefix);
        match tokio::time::timeout(self.op_timeout, self.client.publish(subject, body.into())).await {
            Ok(r) => r.map_err(publish_error),
            Err(_) => Err(BusError::Unavailable(format!("nats publish: no progress within {:?}", self.op_timeout))),
        }
    }

    fn health(&self) -> ComponentHealth {
        let status = if self.link.is_up() { "connected" } else { "disconnected" };
        ComponentHealth { status, detail: self.detail.clone() }
    }
}

impl NatsBus {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(redact("nats://u:p@h:4222, nats://h2:4222"), "nats://h:4222,nats://h2:4222");
        assert_eq!(redact("tok@h:4222"), "h:4222");
    }

    #[test]
    fn backoff_is_bounded() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert!(reconnect_delay(2) >= Duration::from_millis(100));
        assert!(reconnect_delay(200) <= MAX_RECONNECT_DELAY + MAX_RECONNECT_DELAY / 4);
    }

    #[test]
    fn replies() {
        assert_eq!(parse_reply(br#"{"ok":1}"#), Ok(json!({"ok":1})));
        assert!(
            matches!(parse_reply(br#"{"error":{"code":"not_found","message":"x"}}"#), Err(BusError::Backend(b)) if b.code == ErrorCode::NotFound)
        );
        assert!(matches!(parse_reply(b"nope"), Err(BusError::BadReply(_))));
        assert!(matches!(parse_reply(br#"{"error":{"code":"weird"}}"#), Err(BusError::BadReply(_))));
    }
}
