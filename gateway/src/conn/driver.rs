//! Moves messages between a socket and a session. Generic over any `Sink`/`Stream` of
//! WebSocket messages, so the whole lifecycle runs in unit tests over in-memory channels.
//!
//! Phases: optional in-band `authenticate` (bounded by the auth timeout) → admission →
//! `connected` and auto-subscriptions → a reader (frames, heartbeat, token expiry) and a
//! writer (the outbound queue, in batches) running side by side until either ends or a
//! close is asked for → a final `disconnecting` + close frame (bounded) → cleanup.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use gateway_protocol::{
    Channel, ClientFrame, CloseCode, DisconnectReason, Encoding, ErrorBody, ErrorCode, Namespace, PrincipalKind,
    ServerFrame, now_ms,
};
use tokio::time::{Instant, sleep_until};

use super::{
    admission::Admission,
    handle::{Close, ConnHandle, Outbox, message_len},
    session::{Flow, Session},
};
use crate::{auth::Identity, config::ms, error, hub::to_message, node::Node, telemetry};

/// Messages written per flush when the queue has a backlog.
const WRITE_BATCH: usize = 64;
/// How long a final close may take to write.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a slow consumer gets to take its close frame once it reads again.
const SLOW_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the handshake established.
pub struct Start {
    /// Public connection id.
    pub connection_id: Arc<str>,
    /// Frame encoding.
    pub encoding: Encoding,
    /// Set when the handshake carried credentials (and the connection was counted).
    pub authenticated: Option<(Identity, Admission)>,
    /// `?subscribe=` channel names.
    pub subscribe: Vec<String>,
}

/// Runs one connection to its end.
pub async fn serve<W, R, E>(mut sink: W, mut stream: R, node: Arc<Node>, start: Start)
where
    W: Sink<Message> + Unpin + Send,
    R: Stream<Item = Result<Message, E>> + Unpin + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    let began = std::time::Instant::now();
    let (identity, admission) = match start.authenticated {
        Some(pair) => pair,
        None => match authenticate_in_band(&mut sink, &mut stream, &node, start.encoding, &start.connection_id).await {
            Ok(pair) => pair,
            Err(close) => {
                if let Some(close) = close {
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, send_close(&mut sink, start.encoding, close)).await;
                    metrics::counter!(telemetry::CLOSES, "reason" => close.code.reason()).increment(1);
                }
                return;
            }
        },
    };
    let limits = &node.cfg.limits;
    let (handle, outbox) = ConnHandle::new(
        node.next_conn_id(),
        start.connection_id.clone(),
        identity.principal.clone(),
        start.encoding,
        limits.outbound_queue_frames,
        limits.outbound_queue_bytes,
    );
    node.hub.register(handle.clone());
    let kind = identity.principal.kind;
    metrics::gauge!(telemetry::CONNECTIONS, "kind" => kind.as_str()).increment(1.0);
    metrics::counter!(telemetry::HANDSHAKES, "kind" => kind.as_str()).increment(1);
    let mut session = Session::new(node.clone(), handle.clone(), identity.clone(), admission);
    session.reply(&ServerFrame::Connected {
        connection_id: start.connection_id.to_string(),
        principal: identity.principal.clone(),
        node: node.id().to_owned(),
        heartbeat_ms: node.cfg.heartbeat.interval_ms,
    });
    let own = match kind {
        PrincipalKind::User => Namespace::User,
        PrincipalKind::Agent => Namespace::Agent,
    };
    let mut names: Vec<String> = Channel::new(own, &identity.principal.id).map(|c| c.to_string()).into_iter().collect();
    names.extend(start.subscribe);
    let (_, rejected) = session.subscribe(&names, None).await;
    for r in rejected {
        let code = serde_json::from_value(r["code"].clone()).unwrap_or(ErrorCode::BadRequest);
        let msg = format!("{}: {}", r["channel"].as_str().unwrap_or(""), r["message"].as_str().unwrap_or(""));
        session.reply(&ServerFrame::Error { error: ErrorBody::new(code, msg) });
    }
    metrics::histogram!(telemetry::HANDSHAKE_SECONDS).record(began.elapsed().as_secs_f64());

    let mut outbox = outbox;
    let ended =
        tokio::join!(write_loop(&mut sink, &mut outbox, &handle), read_loop(&mut stream, &mut session, &node)).1;

    let close = handle.close_requested().unwrap_or(Close::bare(CloseCode::Normal));
    match ended {
        ReadEnd::Server => {
            let wait = if close.code == CloseCode::SlowConsumer { SLOW_CLOSE_TIMEOUT } else { CLOSE_TIMEOUT };
            let _ = tokio::time::timeout(wait, send_close(&mut sink, start.encoding, close)).await;
        }
        ReadEnd::PeerClosed => answer_close(&mut sink).await,
        ReadEnd::PeerGone => {}
    }
    metrics::counter!(telemetry::CLOSES, "reason" => close.code.reason()).increment(1);
    // Frames still queued are dropped with the connection; give back their bytes.
    while let Ok(m) = outbox.rx.try_recv() {
        handle.sent(&m);
    }
    session.finish().await;
}

/// How the reader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    /// The server asked for the close: send the notice and the close frame.
    Server,
    /// The peer sent a close frame: answer it to complete the closing handshake.
    PeerClosed,
    /// The peer is gone (EOF, socket error, no pong): nothing can be sent.
    PeerGone,
}

/// Completes a closing handshake the peer started. The WebSocket layer queues the echo
/// of the peer's close frame when it reads it; closing the sink writes it out. Without
/// this the socket would just drop, and browsers report 1006 instead of a clean close.
async fn answer_close<W: Sink<Message> + Unpin>(sink: &mut W) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
}

/// Sends the `disconnecting` notice (if any) and the close frame.
async fn send_close<W: Sink<Message> + Unpin>(sink: &mut W, encoding: Encoding, close: Close) {
    if let Some(frame) = Session::notice(&close) {
        metrics::counter!(telemetry::FRAMES_OUT, "type" => "disconnecting").increment(1);
        if sink.send(to_message(encoding, &frame)).await.is_err() {
            return;
        }
    }
    let frame = CloseFrame { code: close.code.code(), reason: close.code.reason().into() };
    let _ = sink.send(Message::Close(Some(frame))).await;
}

/// Writes the outbound queue until a close is asked for or the socket fails.
async fn write_loop<W: Sink<Message> + Unpin>(sink: &mut W, outbox: &mut Outbox, handle: &ConnHandle) {
    loop {
        let first = tokio::select! {
            biased;
            _ = handle.closed() => return,
            m = outbox.rx.recv() => match m { Some(m) => m, None => return },
        };
        let batch = async {
            let mut msg = first;
            for _ in 0..WRITE_BATCH {
                handle.sent(&msg);
                metrics::counter!(telemetry::BYTES_OUT).increment(message_len(&msg) as u64);
                sink.feed(msg).await.map_err(|_| ())?;
                match outbox.rx.try_recv() {
                    Ok(m) => msg = m,
                    Err(_) => break,
                }
            }
            sink.flush().await.map_err(|_| ())
        };
        let ok = tokio::select! {
            _ = handle.closed() => return,
            r = batch => r.is_ok(),
        };
        if !ok {
            handle.close(Close::bare(CloseCode::Normal));
            return;
        }
    }
}

/// Reads frames, keeps the heartbeat and the token expiry, until a close.
async fn read_loop<R, E>(stream: &mut R, session: &mut Session, node: &Node) -> ReadEnd
where
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    let handle = session.handle().clone();
    let hb = &node.cfg.heartbeat;
    let mut next_ping = Instant::now() + ms(hb.interval_ms);
    let mut pong_due: Option<Instant> = None;
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let expiry_at = |s: &Session| s.time_to_expiry().map(|d| Instant::now() + d).unwrap_or(far);
    let mut expires = expiry_at(session);
    let flat = handle.encoding == Encoding::Flat;
    loop {
        let flow = tokio::select! {
            biased;
            _ = handle.closed() => return ReadEnd::Server,
            _ = node.shutdown.stopped() => {
                Flow::Close(Close::with_notice(CloseCode::GoingAway, DisconnectReason::Shutdown, true))
            }
            m = stream.next() => match m {
                Some(Ok(Message::Text(t))) => session.on_message(t.as_bytes(), false).await,
                Some(Ok(Message::Binary(b))) => session.on_message(&b, true).await,
                Some(Ok(Message::Pong(_))) => { pong_due = None; Flow::Continue }
                // Pings are answered by the WebSocket layer itself.
                Some(Ok(Message::Ping(_))) => Flow::Continue,
                Some(Ok(Message::Close(_))) => {
                    handle.close(Close::bare(CloseCode::Normal));
                    return ReadEnd::PeerClosed;
                }
                None => {
                    handle.close(Close::bare(CloseCode::Normal));
                    return ReadEnd::PeerGone;
                }
                Some(Err(e)) if too_big(&e) => Flow::Close(Close::bare(CloseCode::TooBig)),
                Some(Err(_)) => {
                    handle.close(Close::bare(CloseCode::Normal));
                    return ReadEnd::PeerGone;
                }
            },
            _ = sleep_until(next_ping) => {
                next_ping = Instant::now() + ms(hb.interval_ms);
                if pong_due.is_none() {
                    pong_due = Some(Instant::now() + ms(hb.timeout_ms));
                }
                session.push_raw(Message::Ping(bytes::Bytes::new()));
                if flat {
                    session.reply(&ServerFrame::Heartbeat { ts: now_ms() });
                }
                Flow::Continue
            }
            _ = async { match pong_due { Some(t) => sleep_until(t).await, None => std::future::pending().await } } => {
                metrics::counter!(telemetry::CLOSES, "reason" => "heartbeat_timeout").increment(1);
                handle.close(Close::bare(CloseCode::GoingAway));
                return ReadEnd::PeerGone;
            }
            _ = sleep_until(expires) => {
                Flow::Close(Close::with_notice(CloseCode::TokenExpired, DisconnectReason::TokenExpired, true))
            }
        };
        match flow {
            Flow::Continue => expires = expiry_at(session),
            Flow::Close(close) => {
                handle.close(close);
                return ReadEnd::Server;
            }
        }
    }
}

/// Whether a read error is the size limit (tungstenite's capacity error).
fn too_big<E: std::error::Error + 'static>(e: &E) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tungstenite::Error::Capacity(_)) = err.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        cur = err.source();
    }
    false
}

use tokio_tungstenite::tungstenite;

/// The in-band authentication phase: only `authenticate` and `ping` until the timeout.
/// `Err(None)` means the peer left; `Err(Some(close))` is how to close.
async fn authenticate_in_band<W, R, E>(
    sink: &mut W,
    stream: &mut R,
    node: &Arc<Node>,
    encoding: Encoding,
    connection_id: &Arc<str>,
) -> Result<(Identity, Admission), Option<Close>>
where
    W: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    // The deadline bounds the whole phase, writes included: a client that floods pings
    // and never reads must not park this task in a blocked write past its timeout.
    let deadline = Instant::now() + ms(node.cfg.auth.auth_timeout_ms);
    let timed_out = || {
        metrics::counter!(telemetry::AUTH_FAILURES, "reason" => "timeout", "carrier" => "in_band").increment(1);
        Err(Some(Close::bare(CloseCode::Unauthorized)))
    };
    let mut errors = 0u32;
    loop {
        let msg = tokio::select! {
            _ = sleep_until(deadline) => return timed_out(),
            _ = node.shutdown.draining() => return Err(Some(Close::with_notice(CloseCode::GoingAway, DisconnectReason::Shutdown, true))),
            m = stream.next() => m,
        };
        let (payload, binary) = match msg {
            Some(Ok(Message::Text(t))) => (bytes::Bytes::from(t), false),
            Some(Ok(Message::Binary(b))) => (b, true),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Err(e)) if too_big(&e) => return Err(Some(Close::bare(CloseCode::TooBig))),
            Some(Ok(Message::Close(_))) => {
                answer_close(sink).await;
                return Err(None);
            }
            Some(Err(_)) | None => return Err(None),
        };
        let step = in_band_frame(sink, node, encoding, connection_id, &payload, binary, &mut errors);
        match tokio::time::timeout_at(deadline, step).await {
            Ok(Some(end)) => return end,
            Ok(None) => {}
            Err(_) => return timed_out(),
        }
    }
}

/// One frame of the in-band phase. `Some` ends the phase (authenticated, or how to
/// close); `None` waits for the next frame.
async fn in_band_frame<W: Sink<Message> + Unpin>(
    sink: &mut W,
    node: &Arc<Node>,
    encoding: Encoding,
    connection_id: &Arc<str>,
    payload: &[u8],
    binary: bool,
    errors: &mut u32,
) -> Option<Result<(Identity, Admission), Option<Close>>> {
    let reply = |frame: ServerFrame| to_message(encoding, &frame);
    let outcome: Result<(), ErrorBody> = match encoding.decode(payload, binary) {
        Ok(ClientFrame::Authenticate { token }) => match node.auth.authenticate(&token).await {
            Ok(identity) => match Admission::take(node, connection_id.clone(), &identity.principal).await {
                Ok(admission) => return Some(Ok((identity, admission))),
                Err(e) => Err(e),
            },
            Err(e) => {
                metrics::counter!(telemetry::AUTH_FAILURES, "reason" => "invalid", "carrier" => "in_band").increment(1);
                Err(ErrorBody::from(&e))
            }
        },
        Ok(ClientFrame::Ping) => {
            let _ = sink.send(reply(ServerFrame::Pong { ts: now_ms() })).await;
            return None;
        }
        Ok(_) => {
            *errors += 1;
            if *errors >= node.cfg.limits.max_protocol_errors {
                return Some(Err(Some(Close::bare(CloseCode::Unauthorized))));
            }
            let e = ErrorBody::new(ErrorCode::Unauthorized, "authenticate first");
            let _ = sink.send(reply(ServerFrame::Error { error: e })).await;
            return None;
        }
        Err(e) => {
            *errors += 1;
            if *errors >= node.cfg.limits.max_protocol_errors {
                return Some(Err(Some(Close::bare(CloseCode::ProtocolErrors))));
            }
            let _ = sink.send(reply(ServerFrame::Error { error: (&e).into() })).await;
            return None;
        }
    };
    let e = outcome.err()?;
    let close = Close::bare(error::close_code(e.code));
    let _ = sink.send(reply(ServerFrame::Error { error: e })).await;
    Some(Err(Some(close)))
}
