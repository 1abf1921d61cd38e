//! Socket.IO clients (contract §11): `socket.io-client` 4.x, unmodified, on the same port
//! at `/socket.io/`, over WebSocket and HTTP long-polling (with the upgrade between
//! them), on the same fabric as native clients.
//!
//! Layers, each in its module: [`packet`] decodes and encodes the Engine.IO v4 and
//! Socket.IO v5 packets; `engine` runs one Engine.IO connection (transports, heartbeat,
//! upgrade) with its namespaces multiplexed over it; `socket` makes each authenticated
//! namespace socket a connection of the node — the same admission, hub, membership,
//! presence, rate limits, drain and metrics as a native one; [`wire`] gives the hub's
//! fan-out one encoding per namespace, shared by its sockets; [`names`] types every
//! namespace and event name. This module is the HTTP surface and the registry of
//! engines that long-polling requests find by session id.
//!
//! Not socketioxide: it would own each socket's queue, heartbeat and serialization,
//! so every socket would need a second queue and a bridge task into our hub, and it
//! can neither close the Engine.IO connection the way a drain needs (after a namespace
//! disconnect `socket.io-client` does not reconnect) nor send `connect_error` data.

mod chat;
mod engine;
pub mod names;
pub mod packet;
mod socket;
pub mod wire;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Query, State, WebSocketUpgrade, ws::rejection::WebSocketUpgradeRejection},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use engine::{Engine, Input, PollAnswer};
use gateway_protocol::ErrorCode;
use tokio::sync::{mpsc, oneshot};

use crate::{
    error::ApiError,
    http::{claim, credential, refuse},
    node::Node,
    telemetry,
};

/// Gauge: Engine.IO connections by `transport` (websocket|polling).
pub const SOCKETIO_CONNECTIONS: &str = "gateway_socketio_connections";

/// Inputs a long-polling engine buffers (POSTs wait when it is full).
const INPUT_QUEUE: usize = 16;
/// How long a request waits to hand its input to a busy engine.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);

/// Engine.IO connections by transport, for `/health`.
#[derive(Debug, Default)]
pub struct Counts {
    /// Over WebSocket (from the start or upgraded).
    websocket: AtomicUsize,
    /// Over long-polling.
    polling: AtomicUsize,
}

/// One engine's transport, counted while it lives.
pub(crate) struct Transport {
    /// Where it is counted.
    counts: Arc<Counts>,
    /// Over WebSocket now.
    websocket: AtomicBool,
}

impl Transport {
    fn new(counts: Arc<Counts>, websocket: bool) -> Self {
        Self::count(&counts, websocket, 1);
        Transport { counts, websocket: AtomicBool::new(websocket) }
    }

    fn count(counts: &Counts, websocket: bool, delta: isize) {
        let (n, label) = if websocket { (&counts.websocket, "websocket") } else { (&counts.polling, "polling") };
        if delta > 0 {
            n.fetch_add(1, Ordering::AcqRel);
            metrics::gauge!(SOCKETIO_CONNECTIONS, "transport" => label).increment(1.0);
        } else {
            n.fetch_sub(1, Ordering::AcqRel);
            metrics::gauge!(SOCKETIO_CONNECTIONS, "transport" => label).decrement(1.0);
        }
    }

    /// The engine moved from long-polling to WebSocket.
    pub(crate) fn upgraded(&self) {
        if !self.websocket.swap(true, Ordering::AcqRel) {
            Self::count(&self.counts, false, -1);
            Self::count(&self.counts, true, 1);
        }
    }

    fn is_websocket(&self) -> bool {
        self.websocket.load(Ordering::Acquire)
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        Self::count(&self.counts, self.is_websocket(), -1);
    }
}

/// A live engine as requests find it.
struct Entry {
    /// Its inputs.
    tx: mpsc::Sender<Input>,
    /// Its transport (polling requests are refused once it upgraded).
    transport: Arc<Transport>,
}

/// The node's Engine.IO connections.
#[derive(Default)]
pub struct Engines {
    /// By session id (only engines that started over long-polling need finding).
    sessions: Mutex<HashMap<Arc<str>, Entry>>,
    /// Counts by transport.
    counts: Arc<Counts>,
}

impl Engines {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn find(&self, sid: &str) -> Option<(mpsc::Sender<Input>, Arc<Transport>)> {
        self.lock().get(sid).map(|e| (e.tx.clone(), e.transport.clone()))
    }

    /// `(websocket, polling)` connections now.
    pub fn counts(&self) -> (usize, usize) {
        (self.counts.websocket.load(Ordering::Acquire), self.counts.polling.load(Ordering::Acquire))
    }
}

/// The `/socket.io/` routes (none when `socketio.enabled` is off).
pub fn routes(node: &Arc<Node>) -> Router<Arc<Node>> {
    if !node.cfg.socketio.enabled {
        return Router::new();
    }
    let route = get(serve).post(serve).options(preflight);
    Router::new().route("/socket.io/", route.clone()).route("/socket.io", route)
}

/// An Engine.IO protocol refusal: HTTP 400 with the reference server's `{code, message}`.
fn eio_error(code: u8, message: &'static str) -> Response {
    metrics::counter!(telemetry::REFUSALS, "reason" => "socketio_protocol").increment(1);
    (StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({ "code": code, "message": message }))).into_response()
}

/// The CORS headers of a polling answer: the origin is echoed when it is allowed.
fn cors(node: &Node, headers: &HeaderMap, mut resp: Response) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN)
        && let Ok(o) = origin.to_str()
        && (node.cfg.allowed_origins.is_empty() || node.cfg.allowed_origins.iter().any(|a| a == o))
    {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    resp
}

async fn preflight(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST"));
    if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    cors(&node, &headers, resp)
}

fn text(body: impl Into<String>) -> Response {
    let body: String = body.into();
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=UTF-8"))], body).into_response()
}

async fn serve(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    body: Body,
) -> Response {
    if q.get("EIO").map(String::as_str) != Some("4") {
        return eio_error(5, "Unsupported protocol version");
    }
    let websocket = match q.get("transport").map(String::as_str) {
        Some("polling") => false,
        Some("websocket") => true,
        _ => return eio_error(0, "Transport unknown"),
    };
    let resp = match q.get("sid") {
        None => handshake(node.clone(), peer, method, &q, &headers, websocket, ws).await,
        Some(sid) => match node.socketio.find(sid) {
            // Behind a balancer with affinity, a draining node's 503 sends the request
            // on to the node that took the client's new handshake.
            None if node.shutdown.is_draining() => {
                refuse(ErrorCode::Unavailable, "draining", "node is draining; reconnect").into_response()
            }
            None => eio_error(1, "Session ID unknown"),
            Some((tx, transport)) if websocket => match ws {
                Ok(ws) if !transport.is_websocket() => upgrade_to(&node, ws, tx),
                _ => eio_error(3, "Bad request"),
            },
            Some((_, transport)) if transport.is_websocket() => eio_error(3, "Bad request"),
            Some((tx, _)) if method == Method::GET => poll(tx).await,
            Some((tx, _)) if method == Method::POST => post(&node, tx, body).await,
            Some(_) => eio_error(2, "Bad handshake method"),
        },
    };
    cors(&node, &headers, resp)
}

/// A new Engine.IO connection: checked as a native handshake is (drain, origin, node
/// and per-IP capacity), then its engine starts.
async fn handshake(
    node: Arc<Node>,
    peer: SocketAddr,
    method: Method,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    websocket: bool,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if method != Method::GET {
        return eio_error(2, "Bad handshake method");
    }
    if node.shutdown.is_draining() {
        return refuse(ErrorCode::Unavailable, "draining", "node is draining; reconnect").into_response();
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && !node.cfg.allowed_origins.is_empty()
        && !node.cfg.allowed_origins.iter().any(|o| o == origin)
    {
        return refuse(ErrorCode::Forbidden, "origin", format!("origin {origin} is not allowed")).into_response();
    }
    let ws = match (websocket, ws) {
        (true, Ok(ws)) => Some(ws),
        (true, Err(e)) => return ApiError::new(ErrorCode::BadRequest, e.body_text()).into_response(),
        (false, _) => None,
    };
    let claim = match claim(&node, peer.ip()) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let sid: Arc<str> = uuid::Uuid::now_v7().simple().to_string().into();
    let cred = credential(headers, q).map(|(c, _)| c);
    let engine = Engine::new(node.clone(), sid.clone(), cred);
    let tasks = node.tasks.clone();
    match ws {
        Some(ws) => {
            let transport = Transport::new(node.socketio.counts.clone(), true);
            let limits = &node.cfg.limits;
            let ws = ws.max_message_size(limits.max_frame_bytes).max_frame_size(limits.max_frame_bytes);
            ws.on_upgrade(move |socket| {
                tasks.track_future(async move {
                    let _held = (claim, transport);
                    engine.run_websocket(socket).await;
                })
            })
        }
        None => {
            let open = engine.open_packet();
            let (tx, rx) = mpsc::channel(INPUT_QUEUE);
            let transport = Arc::new(Transport::new(node.socketio.counts.clone(), false));
            node.socketio.lock().insert(sid.clone(), Entry { tx, transport: transport.clone() });
            let n = node.clone();
            tasks.spawn(async move {
                let _claim = claim;
                engine.run_polling(rx, &transport).await;
                n.socketio.lock().remove(&sid);
            });
            text(open)
        }
    }
}

/// A long-polling GET: waits for the engine's packets.
async fn poll(tx: mpsc::Sender<Input>) -> Response {
    let (answer, rx) = oneshot::channel();
    if tokio::time::timeout(HANDOFF_TIMEOUT, tx.send(Input::Poll(answer))).await.map_or(true, |r| r.is_err()) {
        return eio_error(1, "Session ID unknown");
    }
    match rx.await {
        Ok(PollAnswer::Body(body)) => text(body),
        Ok(PollAnswer::Overlap) => eio_error(3, "Bad request"),
        Err(_) => eio_error(1, "Session ID unknown"),
    }
}

/// A long-polling POST: hands its packets to the engine.
async fn post(node: &Node, tx: mpsc::Sender<Input>, body: Body) -> Response {
    let limit = node.cfg.limits.max_frame_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            axum::Json(serde_json::json!({ "code": 3, "message": "payload too large" })),
        )
            .into_response();
    };
    let Ok(body) = String::from_utf8(bytes.to_vec()) else {
        return eio_error(3, "Bad request");
    };
    if tokio::time::timeout(HANDOFF_TIMEOUT, tx.send(Input::Packets(body))).await.map_or(true, |r| r.is_err()) {
        return eio_error(1, "Session ID unknown");
    }
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/html"))], "ok").into_response()
}

/// A WebSocket offered to a long-polling engine for the upgrade.
fn upgrade_to(node: &Node, ws: WebSocketUpgrade, tx: mpsc::Sender<Input>) -> Response {
    let limits = &node.cfg.limits;
    let ws = ws.max_message_size(limits.max_frame_bytes).max_frame_size(limits.max_frame_bytes);
    let tasks = node.tasks.clone();
    ws.on_upgrade(move |socket| {
        tasks.track_future(async move {
            let _ = tokio::time::timeout(HANDOFF_TIMEOUT, tx.send(Input::Upgrade(Box::new(socket)))).await;
        })
    })
}
