//! One Engine.IO connection and the namespace sockets multiplexed over it, run by one
//! tracked task from the handshake to the end. The task owns everything: requests of
//! the long-polling transport reach it as [`Input`]s on a bounded channel (a POST's
//! packets, a GET waiting for packets, a WebSocket offered for the upgrade), and the
//! WebSocket transport is read and written by the task itself.
//!
//! Outbound, each live socket's bounded hub queue is drained straight onto the
//! transport (a WebSocket frame per packet, or one poll body of packets separated by
//! `\x1e`), after the engine's own packets (handshake answers, pongs, acks of sockets
//! not yet authenticated). The heartbeat is Engine.IO's: the server pings every
//! `ping_interval_ms` and expects the pong within `ping_timeout_ms`.

use std::{collections::VecDeque, sync::Arc};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt, future::select_all};
use gateway_protocol::{CloseCode, ErrorBody, ErrorCode};
use serde_json::{Value, json};
use tokio::{
    sync::{mpsc, oneshot},
    time::{Instant, sleep_until},
};

mod polling;

use super::{
    Transport,
    names::ServerEvent,
    packet::{EnginePacket, PacketError, RECORD_SEPARATOR, SioPacket, SioType, encode},
    socket::{NsSocket, Outcome, State},
};
use crate::{config::ms, conn::handle::Close, node::Node, telemetry};

/// What a long-polling request brings to its engine.
pub(crate) enum Input {
    /// A POST body: packets separated by `\x1e`.
    Packets(String),
    /// A GET waiting for packets.
    Poll(oneshot::Sender<PollAnswer>),
    /// A WebSocket offered to upgrade to (`?sid=` on a WebSocket handshake). Boxed:
    /// the rare input should not size every slot of the queue.
    Upgrade(Box<WebSocket>),
}

/// The answer to a waiting GET.
pub(crate) enum PollAnswer {
    /// The packets, `\x1e`-separated.
    Body(String),
    /// A second GET while one was waiting: both fail and the session ends (as the
    /// reference server does).
    Overlap,
}

/// Why an engine ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The peer closed or went away; nothing more can be sent.
    Gone,
    /// The server closes: sockets get their notice, then the Engine.IO close packet
    /// (`socket.io-client` reconnects after it).
    Server(Close),
}

/// An Engine.IO connection.
pub(crate) struct Engine {
    /// The node.
    node: Arc<Node>,
    /// The session id (`sid` of the handshake).
    pub(crate) sid: Arc<str>,
    /// A credential of the handshake request (query or header), for namespaces that
    /// connect without auth data.
    credential: Option<String>,
    /// The namespace sockets.
    sockets: Vec<NsSocket>,
    /// The engine's own packets, written before the sockets' queues.
    direct: VecDeque<String>,
    /// Malformed packets so far.
    protocol_errors: u32,
    /// When the next ping is due.
    next_ping: Instant,
    /// When the pong of the last ping is due, if one is awaited.
    pong_due: Option<Instant>,
}

impl Engine {
    /// A new connection (its handshake packet is [`Engine::open_packet`]).
    pub(crate) fn new(node: Arc<Node>, sid: Arc<str>, credential: Option<String>) -> Self {
        let next_ping = Instant::now() + ms(node.cfg.socketio.ping_interval_ms);
        Engine {
            node,
            sid,
            credential,
            sockets: Vec::new(),
            direct: VecDeque::new(),
            protocol_errors: 0,
            next_ping,
            pong_due: None,
        }
    }

    /// The Engine.IO handshake: `0{"sid",...}`.
    pub(crate) fn open_packet(&self) -> String {
        let c = &self.node.cfg.socketio;
        let open = json!({
            "sid": &*self.sid,
            "upgrades": ["websocket"],
            "pingInterval": c.ping_interval_ms,
            "pingTimeout": c.ping_timeout_ms,
            "maxPayload": self.node.cfg.limits.max_frame_bytes,
        });
        format!("0{open}")
    }

    /// Runs over long-polling (until it ends, or upgrades and runs over WebSocket).
    pub(crate) async fn run_polling(mut self, mut rx: mpsc::Receiver<Input>, transport: &Transport) {
        let end = match self.poll_loop(&mut rx).await {
            Ok(ws) => {
                transport.upgraded();
                self.ws_loop(ws, Some(&mut rx)).await
            }
            Err(end) => end,
        };
        self.finish(end).await;
    }

    /// Runs over a WebSocket from the start.
    pub(crate) async fn run_websocket(mut self, ws: WebSocket) {
        self.direct.push_back(self.open_packet());
        let end = self.ws_loop(ws, None).await;
        self.finish(end).await;
    }

    /// The earliest deadline: the ping, the pong, a socket's auth timeout or expiry.
    fn deadline(&self) -> Instant {
        let mut d = self.pong_due.map_or(self.next_ping, |p| p.min(self.next_ping));
        for s in &self.sockets {
            if let Some(t) = s.deadline() {
                d = d.min(t);
            }
        }
        d
    }

    /// Acts on the deadlines that passed.
    async fn on_timer(&mut self) -> Option<End> {
        let now = Instant::now();
        if self.pong_due.is_some_and(|t| now >= t) {
            metrics::counter!(telemetry::CLOSES, "reason" => "heartbeat_timeout").increment(1);
            return Some(End::Gone);
        }
        if now >= self.next_ping {
            self.direct.push_back("2".into());
            self.next_ping = now + ms(self.node.cfg.socketio.ping_interval_ms);
            if self.pong_due.is_none() {
                self.pong_due = Some(now + ms(self.node.cfg.socketio.ping_timeout_ms));
            }
        }
        let mut i = 0;
        while i < self.sockets.len() {
            if self.sockets[i].deadline().is_some_and(|t| now >= t) {
                let Outcome::Leave(close) = self.sockets[i].on_deadline(&mut self.direct) else {
                    i += 1;
                    continue;
                };
                self.leave(i, close).await;
            } else {
                i += 1;
            }
        }
        None
    }

    /// Resolves when any live socket's queue may have something (or a close).
    async fn any_ready(sockets: &[NsSocket]) {
        let mut live = sockets.iter().filter_map(NsSocket::live);
        match (live.next(), live.next()) {
            (None, _) => std::future::pending::<()>().await,
            // The common case (one namespace), without allocating per wake-up.
            (Some(one), None) => one.outbox.ready().await,
            _ => {
                let waits = sockets.iter().filter_map(NsSocket::live).map(|l| Box::pin(l.outbox.ready()));
                select_all(waits).await;
            }
        }
    }

    /// Leaves namespaces whose connection was closed from outside (a kick, a revoked
    /// key, the rate limit); a close that calls for reconnecting elsewhere (the drain,
    /// a slow consumer) ends the whole engine instead.
    async fn reap(&mut self) -> Option<End> {
        let mut i = 0;
        while i < self.sockets.len() {
            let close = self.sockets[i].live().and_then(|l| l.handle.close_requested());
            match close {
                Some(c) if matches!(c.code, CloseCode::GoingAway | CloseCode::SlowConsumer) => {
                    return Some(End::Server(c));
                }
                Some(c) => self.leave(i, c).await,
                None => i += 1,
            }
        }
        None
    }

    /// The server leaves socket `i`'s namespace.
    async fn leave(&mut self, i: usize, close: Close) {
        let s = self.sockets.remove(i);
        if let Some(l) = s.live() {
            l.handle.close(close);
        }
        self.notice(&s, close);
        self.direct.push_back(encode::disconnect(&s.path));
        s.finish(close.code.reason()).await;
    }

    /// The `disconnecting` event of a close that has one.
    fn notice(&mut self, s: &NsSocket, close: Close) {
        if let Some((reason, reconnect)) = close.notice {
            let data = json!({ "reason": reason, "reconnect": reconnect });
            self.direct.push_back(encode::event(&s.path, ServerEvent::ServerDisconnecting.as_str(), &data));
        }
    }

    /// Moves what is ready to write into `out`, the engine's own packets first, up to
    /// `budget` bytes (at least one packet).
    fn take_output(&mut self, budget: usize, out: &mut Vec<Message>) {
        let mut bytes = 0;
        while let Some(p) = self.direct.pop_front() {
            bytes += p.len();
            out.push(Message::Text(Utf8Bytes::from(p)));
            if bytes >= budget {
                return;
            }
        }
        let mut queued = 0;
        'sockets: for s in &mut self.sockets {
            let State::Live(live) = &mut s.state else {
                continue;
            };
            while let Some(m) = live.outbox.pop() {
                let len = crate::conn::handle::message_len(&m);
                queued += len;
                out.push(m);
                if bytes + queued >= budget {
                    break 'sockets;
                }
            }
        }
        // The gauges once per batch, as the native writer does.
        let hot = telemetry::hot();
        hot.queue_bytes.decrement(queued as f64);
        hot.bytes_out.increment(queued as u64);
    }

    /// Whether anything waits to be written.
    fn has_output(&self) -> bool {
        !self.direct.is_empty() || self.sockets.iter().filter_map(NsSocket::live).any(|l| l.handle.queued_frames() > 0)
    }

    /// One Engine.IO packet from the client.
    async fn on_text(&mut self, text: &str) -> Option<End> {
        match EnginePacket::decode(text) {
            Ok(EnginePacket::Pong(_)) => self.pong_due = None,
            Ok(EnginePacket::Ping(data)) => self.direct.push_back(format!("3{data}")),
            Ok(EnginePacket::Message(m)) => return self.on_message(m).await,
            Ok(EnginePacket::Close) => return Some(End::Gone),
            Ok(EnginePacket::Open | EnginePacket::Upgrade | EnginePacket::Noop) => {}
            // The attachments of a binary event, refused when the event came.
            Err(PacketError::Binary) => {}
            Err(e) => return self.protocol_error(&e),
        }
        None
    }

    fn protocol_error(&mut self, e: &PacketError) -> Option<End> {
        metrics::counter!(telemetry::FRAMES_IN, "type" => "invalid").increment(1);
        tracing::debug!(sid = %self.sid, error = %e, "malformed Socket.IO packet");
        self.protocol_errors += 1;
        (self.protocol_errors >= self.node.cfg.limits.max_protocol_errors)
            .then_some(End::Server(Close::bare(CloseCode::ProtocolErrors)))
    }

    fn find(&self, nsp: &str) -> Option<usize> {
        self.sockets.iter().position(|s| &*s.path == nsp)
    }

    /// One Socket.IO packet.
    async fn on_message(&mut self, text: &str) -> Option<End> {
        let p = match SioPacket::decode(text) {
            Ok(p) => p,
            Err(e) => return self.protocol_error(&e),
        };
        match p.kind {
            SioType::Connect => self.connect(p.nsp, p.data).await,
            SioType::Disconnect => {
                if let Some(i) = self.find(p.nsp) {
                    let s = self.sockets.remove(i);
                    s.finish("client_disconnect").await;
                }
            }
            SioType::Event => {
                let Some(i) = self.find(p.nsp) else {
                    // Events of a namespace not joined are dropped, as Socket.IO does.
                    return None;
                };
                let (name, args) = match p.event() {
                    Ok(e) => e,
                    Err(e) => return self.protocol_error(&e),
                };
                let data = args.first().and_then(|a| serde_json::from_str(a.get()).ok()).unwrap_or(Value::Null);
                let node = self.node.clone();
                let outcome = self.sockets[i].on_event(&node, &mut self.direct, &name, data, p.id).await;
                if let Outcome::Leave(close) = outcome {
                    self.leave(i, close).await;
                }
            }
            SioType::BinaryEvent | SioType::BinaryAck => {
                if let Some(i) = self.find(p.nsp) {
                    let path = self.sockets[i].path.clone();
                    let e = json!({ "message": "binary payloads are not supported", "details": [] });
                    self.direct.push_back(encode::event(&path, ServerEvent::ValidationError.as_str(), &e));
                }
            }
            // The gateway asks for no acks; a client cannot refuse a connect.
            SioType::Ack => {}
            SioType::ConnectError => return self.protocol_error(&PacketError::UnknownType('4')),
        }
        None
    }

    /// A namespace CONNECT.
    async fn connect(&mut self, nsp: &str, auth: Option<&str>) {
        let refused = if self.find(nsp).is_some() {
            Some(ErrorBody::new(ErrorCode::BadRequest, format!("already connected to {nsp}")))
        } else if self.sockets.len() >= self.node.cfg.socketio.max_namespaces {
            Some(ErrorBody::new(ErrorCode::LimitExceeded, "too many namespaces on one connection"))
        } else {
            match NsSocket::connect(&self.node, nsp, auth, self.credential.as_deref()).await {
                Ok(s) => {
                    self.direct.push_back(encode::connected(nsp, &s.sid));
                    self.sockets.push(s);
                    None
                }
                Err(e) => Some(e),
            }
        };
        if let Some(e) = refused {
            metrics::counter!(telemetry::REFUSALS, "reason" => "socketio_connect").increment(1);
            self.direct.push_back(encode::connect_error(nsp, e.code.as_str(), &e.message));
        }
    }

    /// Over WebSocket until the end. `rx`: the polling inputs still queued from before
    /// an upgrade (their packets are handled first, later GETs are refused).
    async fn ws_loop(&mut self, ws: WebSocket, rx: Option<&mut mpsc::Receiver<Input>>) -> End {
        let (mut sink, mut stream) = ws.split();
        if let Some(rx) = rx {
            while let Ok(input) = rx.try_recv() {
                if let Input::Packets(body) = input {
                    for p in body.split(RECORD_SEPARATOR) {
                        if let Some(end) = self.on_text(p).await {
                            return self.close_ws(&mut sink, end).await;
                        }
                    }
                }
            }
        }
        // One timer for the connection's deadlines, moved only when the earliest changes,
        // and one registration on the stop signal for the connection's life (not one per
        // outbound event: every connection of the node shares that signal's lock).
        let timer = sleep_until(self.deadline());
        tokio::pin!(timer);
        let node = self.node.clone();
        let stopped = node.shutdown.stopped();
        tokio::pin!(stopped);
        // One buffer for the connection's life: the fan-out wakes this loop per event.
        let mut out: Vec<Message> = Vec::new();
        loop {
            if let Some(end) = self.reap().await {
                return self.close_ws(&mut sink, end).await;
            }
            self.take_output(usize::MAX, &mut out);
            if !out.is_empty() {
                let write = async {
                    for m in out.drain(..) {
                        sink.feed(m).await?;
                    }
                    sink.flush().await
                };
                // A client that stops reading would park the task in this write: it
                // gets as long as a pong may take, then counts as gone.
                let limit = ms(self.node.cfg.socketio.ping_timeout_ms);
                if !matches!(tokio::time::timeout(limit, write).await, Ok(Ok(()))) {
                    return End::Gone;
                }
            }
            let due = self.deadline();
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            let ended = tokio::select! {
                biased;
                () = &mut stopped => Some(End::Server(Close::bare(CloseCode::GoingAway))),
                m = stream.next() => match m {
                    Some(Ok(Message::Text(t))) => self.on_text(t.as_str()).await,
                    // Attachments of refused binary events; WebSocket pings are answered below us.
                    Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => None,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => Some(End::Gone),
                },
                () = Self::any_ready(&self.sockets) => None,
                () = &mut timer => self.on_timer().await,
            };
            if let Some(end) = ended {
                return self.close_ws(&mut sink, end).await;
            }
        }
    }

    /// Writes the closing packets (bounded in time) when the server ends the engine.
    async fn close_ws<W>(&mut self, sink: &mut W, end: End) -> End
    where
        W: futures_util::Sink<Message> + Unpin,
    {
        if let End::Server(_) = end {
            let body = self.closing_body(end);
            let write = async {
                for p in body.split(RECORD_SEPARATOR) {
                    sink.feed(Message::Text(Utf8Bytes::from(p.to_owned()))).await.ok()?;
                }
                sink.close().await.ok()
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
        }
        end
    }

    /// Releases every socket.
    async fn finish(mut self, end: End) {
        let reason = match end {
            End::Gone => "client_gone",
            End::Server(c) => c.code.reason(),
        };
        for s in std::mem::take(&mut self.sockets) {
            s.finish(reason).await;
        }
        metrics::counter!(telemetry::CLOSES, "reason" => reason).increment(1);
    }
}
