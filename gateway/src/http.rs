//! The HTTP surface: the WebSocket handshake (`GET /ws` and any other `ws_paths`), health
//! and readiness, metrics, the admin API (`POST /api/publish`, `POST /api/disconnect`),
//! the console (`GET /console`, see [`crate::console`]) and Socket.IO (`/socket.io/`,
//! see [`crate::sio`]).
//!
//! A handshake is checked completely before the upgrade — per-IP handshake rate,
//! draining, origin, encoding, node capacity, per-IP limit, credentials, cluster-wide
//! admission — so a refusal is an HTTP status with a JSON `{"code","message"}` body,
//! never a socket that opens and dies. "IP" is the client's address: the TCP peer, or
//! behind a trusted proxy the address it forwarded ([`crate::client_ip`]).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    Json, Router,
    extract::{
        ConnectInfo, Extension, Query, State, WebSocketUpgrade, rejection::QueryRejection,
        ws::rejection::WebSocketUpgradeRejection,
    },
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures_util::StreamExt;
use gateway_protocol::{Channel, Encoding, ErrorBody, ErrorCode, EventName, PrincipalKind, handshake, iso8601, now_ms};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument;

use crate::{
    bus::DisconnectCommand,
    conn::{
        admission::Admission,
        driver::{self, Start},
    },
    error::ApiError,
    listener::SocketCtl,
    node::{HEALTH_TIMEOUT, Node},
    telemetry,
};

/// The router of one node. Building it installs the Prometheus recorder: metrics
/// recorded before that would be lost (and gauges decremented later would go negative),
/// so it cannot wait for the first scrape of `/metrics`.
pub fn router(node: Arc<Node>) -> Router {
    telemetry::prometheus();
    // Every `ws_paths` entry upgrades (validated: absolute, no route syntax, no
    // duplicates, none of the paths below).
    let mut router = Router::new();
    for path in &node.cfg.ws_paths {
        router = router.route(path, get(upgrade));
    }
    router
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/publish", post(publish))
        .route("/api/disconnect", post(disconnect))
        .merge(crate::console::routes())
        .merge(crate::sio::routes(&node))
        .with_state(node)
}

/// A handshake refusal, counted by reason.
pub(crate) fn refuse(code: ErrorCode, reason: &'static str, message: impl Into<String>) -> ApiError {
    metrics::counter!(telemetry::REFUSALS, "reason" => reason).increment(1);
    ApiError::new(code, message)
}

/// A socket's place in the node-wide and per-IP counts, released when the connection
/// (or a handshake refused after claiming) ends.
pub(crate) struct Claim {
    node: Arc<Node>,
    ip: std::net::IpAddr,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.node.release_ip(self.ip);
        self.node.release_slot();
    }
}

/// The client's address of a handshake (the TCP peer, or behind a trusted proxy the
/// client it forwarded), charged one handshake of its rate: 429 with `Retry-After` when
/// over it. The first check of every handshake, native or Socket.IO.
pub(crate) fn client_address(node: &Node, peer: SocketAddr, headers: &HeaderMap) -> Result<IpAddr, ApiError> {
    let ip = node.proxies.client_ip(peer.ip(), headers);
    if let Err(wait) = node.handshake_rate.check(ip) {
        tracing::debug!(client = %ip, %peer, "handshake refused: rate per address");
        let mut e = refuse(ErrorCode::RateLimited, "handshake_rate", "too many handshakes from this address");
        e.0.retry_after_ms = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1));
        return Err(e);
    }
    Ok(ip)
}

/// Takes a node-wide slot and one of `ip`'s, counted from the handshake (not from
/// registration) so concurrent handshakes cannot overshoot the limits.
pub(crate) fn claim(node: &Arc<Node>, ip: std::net::IpAddr) -> Result<Claim, ApiError> {
    if !node.claim_slot() {
        return Err(refuse(ErrorCode::Unavailable, "node_full", "node is full"));
    }
    if !node.claim_ip(ip) {
        tracing::debug!(client = %ip, "handshake refused: connections per address");
        node.release_slot();
        return Err(refuse(ErrorCode::RateLimited, "per_ip", "too many connections from this address"));
    }
    Ok(Claim { node: node.clone(), ip })
}

/// Picks the credential: `Authorization: Bearer`, `?token=`, `X-API-Key`, `?apiKey=` (first wins).
pub(crate) fn credential(headers: &HeaderMap, q: &HashMap<String, String>) -> Option<(String, &'static str)> {
    let value = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let carriers = handshake::Carriers {
        authorization: value(header::AUTHORIZATION.as_str()),
        query_token: q.get("token").map(String::as_str),
        x_api_key: value("x-api-key"),
        query_api_key: q.get("apiKey").map(String::as_str),
    };
    carriers.credential().map(|(credential, carrier)| (credential, carrier.as_str()))
}

/// The encoding: the first supported offered subprotocol, else `?format=`, else the
/// path's default (`ws_default_format`, JSON unless configured).
fn negotiate(
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    default: Encoding,
) -> Result<(Encoding, bool), ApiError> {
    let offered = handshake::offered_subprotocols(
        headers.get_all(header::SEC_WEBSOCKET_PROTOCOL).iter().filter_map(|v| v.to_str().ok()),
    );
    handshake::negotiate(&offered, q.get("format").map(String::as_str), default).map_err(|e| match e {
        handshake::NegotiateError::BadFormat => refuse(ErrorCode::BadRequest, "bad_format", e.to_string()),
        handshake::NegotiateError::BadSubprotocol => refuse(ErrorCode::BadRequest, "bad_subprotocol", e.to_string()),
    })
}

async fn upgrade(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    socket: Option<Extension<Arc<SocketCtl>>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // First, before any other work: a flood from one address costs only this.
    let ip = client_address(&node, peer, &headers)?;
    // Malformed requests get the same JSON error shape as every other refusal.
    let Query(q) = query.map_err(|e| refuse(ErrorCode::BadRequest, "bad_request", e.body_text()))?;
    let ws = ws.map_err(|e| refuse(ErrorCode::BadRequest, "not_websocket", e.body_text()))?;
    if node.shutdown.is_draining() {
        return Err(refuse(ErrorCode::Unavailable, "draining", "node is draining; reconnect"));
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && !node.cfg.allowed_origins.is_empty()
        && !node.cfg.allowed_origins.iter().any(|o| o == origin)
    {
        return Err(refuse(ErrorCode::Forbidden, "origin", format!("origin {origin} is not allowed")));
    }
    let (encoding, by_subprotocol) = negotiate(&headers, &q, node.cfg.default_encoding(uri.path()))?;
    let credential = credential(&headers, &q);
    if credential.is_none() && node.cfg.auth.require_credentials {
        metrics::counter!(telemetry::AUTH_FAILURES, "reason" => "missing", "carrier" => "none").increment(1);
        return Err(refuse(
            ErrorCode::Unauthorized,
            "auth",
            "credentials required: Authorization, ?token=, X-API-Key or ?apiKey=",
        ));
    }
    let subscribe = q.get("subscribe").map(|s| handshake::subscribe_list(s)).unwrap_or_default();
    if subscribe.len() > node.cfg.limits.max_channels {
        let max = node.cfg.limits.max_channels;
        return Err(refuse(
            ErrorCode::BadRequest,
            "bad_request",
            format!("?subscribe= may name at most {max} channels"),
        ));
    }
    let claim = claim(&node, ip)?;
    let connection_id: Arc<str> = uuid::Uuid::now_v7().simple().to_string().into();
    let authenticated = match credential {
        None => None,
        Some((cred, carrier)) => {
            let identity = node.auth.authenticate(&cred).await.map_err(|e| {
                metrics::counter!(telemetry::AUTH_FAILURES, "reason" => reason_label(&e), "carrier" => carrier)
                    .increment(1);
                metrics::counter!(telemetry::REFUSALS, "reason" => "auth").increment(1);
                tracing::debug!(client = %ip, %peer, carrier, error = %e, "handshake refused: credentials");
                ApiError::from(&e)
            })?;
            let admission = Admission::take(&node, connection_id.clone(), &identity.principal).await.map_err(|e| {
                let reason = if e.code == ErrorCode::LimitExceeded { "limit" } else { "fabric" };
                metrics::counter!(telemetry::REFUSALS, "reason" => reason).increment(1);
                ApiError(e)
            })?;
            Some((identity, admission))
        }
    };
    let limits = &node.cfg.limits;
    let mut ws = ws
        .read_buffer_size(limits.read_buffer_bytes)
        .write_buffer_size(0)
        .max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes);
    if by_subprotocol {
        ws = ws.protocols([encoding.subprotocol()]);
    }
    let socket = socket.map(|Extension(s)| s);
    let start = Start { connection_id, encoding, authenticated, subscribe, socket };
    let tasks = node.tasks.clone();
    // Every log line of the connection names its client address and id.
    let span = tracing::info_span!("ws", client = %ip, conn = %start.connection_id);
    Ok(ws.on_upgrade(move |socket| {
        let (sink, stream) = socket.split();
        tasks.track_future(
            async move {
                let _claim = claim;
                driver::serve(sink, stream, node, start).await;
            }
            .instrument(span),
        )
    }))
}

fn reason_label(e: &crate::auth::AuthError) -> &'static str {
    use crate::auth::AuthError as A;
    match e {
        A::Missing => "missing",
        A::Invalid(_) => "invalid",
        A::Expired => "expired",
        A::Revoked => "revoked",
        A::Unavailable => "unavailable",
        A::NotConfigured(_) => "not_configured",
        A::KeysUnavailable => "keys_unavailable",
    }
}

async fn health(State(node): State<Arc<Node>>) -> Response {
    let s = node.hub.stats();
    let (bus, presence) = (node.bus.health(), node.presence.health());
    let cluster = match tokio::time::timeout(HEALTH_TIMEOUT, node.presence.nodes()).await {
        Ok(Ok(nodes)) => json!({
            "nodes": nodes.len(),
            "connections": nodes.iter().map(|n| n.connections).sum::<u64>(),
            "members": nodes,
        }),
        _ => json!({ "status": "unknown" }),
    };
    let status = if bus.is_up() && presence.is_up() { "ok" } else { "degraded" };
    // With `auth.jwks_url`: whether the key set was ever fetched, and how old it is.
    let jwks = node.auth.jwks().map(|j| match j.status() {
        Some((keys, age_secs)) => json!({ "status": "ok", "keys": keys, "ageSecs": age_secs }),
        None => json!({ "status": "never_fetched" }),
    });
    let (sio_ws, sio_polling) = node.socketio.counts();
    Json(json!({
        "status": status,
        "timestamp": iso8601(now_ms()),
        "node": node.id(),
        "websocket": {
            "status": if node.shutdown.is_draining() { "draining" } else { "running" },
            "connections": s.connections,
            "connectedUsers": s.connected_users,
            "connectedAgents": s.connected_agents,
            "channels": s.channels,
            "subscriptions": s.subscriptions,
            "trackedIps": node.tracked_ips(),
        },
        "socketio": { "websocket": sio_ws, "polling": sio_polling },
        "nats": bus,
        "redis": presence,
        "cluster": cluster,
        "jwks": jwks,
    }))
    .into_response()
}

async fn ready(State(node): State<Arc<Node>>) -> Response {
    let (ready, reason) = if node.shutdown.is_draining() {
        (false, "draining")
    } else if !node.fabric_up() {
        (false, "fabric_down")
    } else {
        (true, "ok")
    };
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ready, "reason": reason, "node": node.id() }))).into_response()
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    telemetry::sample_tasks(&node.tasks);
    let body = telemetry::prometheus().render();
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], body).into_response()
}

fn check_admin(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    if node.cfg.admin_key.is_empty() {
        return Err(ApiError::new(ErrorCode::Forbidden, "admin API disabled: no admin key configured"));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare hashes so the comparison time does not depend on the key's prefix.
    if crate::auth::hash_key(given) != crate::auth::hash_key(&node.cfg.admin_key) {
        return Err(ApiError::new(ErrorCode::Unauthorized, "admin key required"));
    }
    Ok(())
}

/// Body of `POST /api/publish`.
#[derive(Deserialize)]
struct PublishBody {
    channel: String,
    event: EventName,
    #[serde(default)]
    data: Value,
}

/// Room in a publish body beyond the event's own bound, for the channel name and the
/// JSON around the event.
const PUBLISH_BODY_SLACK: usize = 4 * 1024;

async fn publish(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    // The key first: an unauthenticated caller gets no body read at all.
    check_admin(&node, &headers)?;
    let limit = node.cfg.limits.max_event_bytes + PUBLISH_BODY_SLACK;
    let body = axum::body::to_bytes(body, limit).await.map_err(|_| {
        refused_event("too_large");
        ApiError::new(ErrorCode::TooLarge, format!("body is larger than {limit} bytes"))
    })?;
    let b: PublishBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("body must be {{channel, event, data}}: {e}")))?;
    let ch = Channel::parse(&b.channel).map_err(|e| ApiError::from(&e))?;
    let ev = node.new_event(ch, b.event, b.data);
    node.events.check(&ev).map_err(|e| {
        refused_event(e.label());
        ApiError::from(&e)
    })?;
    node.bus.publish(&ev).await.map_err(|e| ApiError::from(&e))?;
    metrics::counter!(telemetry::PUBLISHED, "source" => "http").increment(1);
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": ev.id }))).into_response())
}

fn refused_event(reason: &'static str) {
    metrics::counter!(telemetry::EVENTS_REFUSED, "source" => "http", "reason" => reason).increment(1);
}

/// Body of `POST /api/disconnect`.
#[derive(Deserialize)]
struct DisconnectBody {
    kind: PrincipalKind,
    id: String,
    #[serde(default)]
    reason: String,
}

async fn disconnect(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    check_admin(&node, &headers)?;
    let b: DisconnectBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("body must be {{kind, id, reason}}: {e}")))?;
    let cmd = DisconnectCommand { kind: b.kind, id: b.id, reason: b.reason };
    node.bus.disconnect(&cmd).await.map_err(|e| ApiError::from(&e))?;
    Ok((StatusCode::ACCEPTED, Json(json!({}))).into_response())
}

/// Answers requests to unknown paths.
pub async fn not_found() -> ApiError {
    ApiError(ErrorBody::new(ErrorCode::NotFound, "no such endpoint"))
}
