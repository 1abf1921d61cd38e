//! The long-polling transport of an engine: requests arrive as [`Input`]s, a waiting
//! GET is answered as soon as packets are ready (or with the ping), and a WebSocket
//! offered for the upgrade is probed (`2probe` → `3probe`, the waiting poll released
//! with a noop, then `5`) while polling requests are still served.

use axum::extract::ws::{Message, WebSocket};
use tokio::{
    sync::{mpsc, oneshot},
    time::{Instant, sleep_until},
};

use super::{End, Engine, Input, PollAnswer};
use crate::{config::ms, conn::handle::Close, sio::packet::RECORD_SEPARATOR};
use gateway_protocol::CloseCode;

/// How long a long-polling engine the server ends waits for the next poll to carry
/// its close packet.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// How an upgrade probe ended.
pub(super) enum Probe {
    /// The client switched: go on over this WebSocket.
    Upgraded(Box<WebSocket>),
    /// The probe failed or timed out: polling goes on.
    Failed,
    /// The engine ended meanwhile.
    Ended(End),
}

impl Engine {
    /// Long-polling until the end or an upgrade (`Ok`: the WebSocket to go on with).
    pub(super) async fn poll_loop(&mut self, rx: &mut mpsc::Receiver<Input>) -> Result<WebSocket, End> {
        let cfg = &self.node.cfg;
        let (interval, timeout) = (ms(cfg.socketio.ping_interval_ms), ms(cfg.socketio.ping_timeout_ms));
        let budget = cfg.limits.max_frame_bytes;
        let node = self.node.clone();
        let stopped = node.shutdown.stopped();
        tokio::pin!(stopped);
        let mut waiting: Option<oneshot::Sender<PollAnswer>> = None;
        let mut last_poll = Instant::now();
        loop {
            if let Some(end) = self.reap().await {
                return Err(self.end_polling(rx, waiting, end).await);
            }
            if waiting.as_ref().is_some_and(oneshot::Sender::is_closed) {
                waiting = None;
            }
            if waiting.is_some() && self.has_output() {
                let mut out = Vec::new();
                self.take_output(budget, &mut out);
                let body = join(out);
                answer(&mut waiting, body);
                last_poll = Instant::now();
            }
            // A client that stops polling is gone once a ping would have gone unanswered.
            let gone_at = if waiting.is_some() { None } else { Some(last_poll + interval + timeout) };
            let due = gone_at.map_or(self.deadline(), |g| g.min(self.deadline()));
            let ended = tokio::select! {
                biased;
                () = &mut stopped => Some(End::Server(Close::bare(CloseCode::GoingAway))),
                input = rx.recv() => match input {
                    None => Some(End::Gone),
                    Some(Input::Packets(body)) => {
                        let mut end = None;
                        for p in body.split(RECORD_SEPARATOR) {
                            end = self.on_text(p).await;
                            if end.is_some() {
                                break;
                            }
                        }
                        end
                    }
                    Some(Input::Poll(tx)) => {
                        last_poll = Instant::now();
                        if let Some(earlier) = waiting.take() {
                            let _ = earlier.send(PollAnswer::Overlap);
                            let _ = tx.send(PollAnswer::Overlap);
                            Some(End::Gone)
                        } else {
                            waiting = Some(tx);
                            None
                        }
                    }
                    Some(Input::Upgrade(ws)) => match self.probe(*ws, rx, &mut waiting).await {
                        Probe::Upgraded(ws) => return Ok(*ws),
                        Probe::Failed => None,
                        Probe::Ended(end) => Some(end),
                    },
                },
                () = Self::any_ready(&self.sockets) => None,
                () = sleep_until(due) => {
                    if gone_at.is_some_and(|g| Instant::now() >= g) {
                        Some(End::Gone)
                    } else {
                        self.on_timer().await
                    }
                }
            };
            if let Some(end) = ended {
                return Err(self.end_polling(rx, waiting, end).await);
            }
        }
    }

    /// Ends a long-polling engine: its last packets go to the waiting poll, or, when
    /// the server ends it and nobody polls right now, to the next poll if it comes soon.
    async fn end_polling(
        &mut self,
        rx: &mut mpsc::Receiver<Input>,
        mut waiting: Option<oneshot::Sender<PollAnswer>>,
        end: End,
    ) -> End {
        let body = self.closing_body(end);
        if waiting.is_none() && matches!(end, End::Server(_)) {
            let next = tokio::time::timeout(CLOSE_LINGER, async {
                loop {
                    match rx.recv().await {
                        Some(Input::Poll(tx)) => return Some(tx),
                        Some(_) => {}
                        None => return None,
                    }
                }
            });
            waiting = next.await.ok().flatten();
        }
        answer(&mut waiting, body);
        end
    }

    /// The last poll body of an engine that ends: notices and the close packet.
    pub(super) fn closing_body(&mut self, end: End) -> String {
        if let End::Server(close) = end {
            self.close_sockets(close);
            self.direct.push_back("1".into());
        }
        let mut out = Vec::new();
        self.take_output(usize::MAX, &mut out);
        join(out)
    }

    /// Queues every socket's notice (the engine closes with them).
    fn close_sockets(&mut self, close: Close) {
        let sockets = std::mem::take(&mut self.sockets);
        for s in &sockets {
            self.notice(s, close);
        }
        self.sockets = sockets;
    }

    /// The upgrade handshake on an offered WebSocket: `2probe` → `3probe`, the waiting
    /// poll released with a noop, then `5`. Polling requests that arrive meanwhile are
    /// served (the client finishes its poll and its writes before it sends `5`).
    async fn probe(
        &mut self,
        mut ws: WebSocket,
        rx: &mut mpsc::Receiver<Input>,
        waiting: &mut Option<oneshot::Sender<PollAnswer>>,
    ) -> Probe {
        let deadline = Instant::now() + ms(self.node.cfg.socketio.upgrade_timeout_ms);
        let mut probed = false;
        loop {
            tokio::select! {
                m = ws.recv() => match m {
                    Some(Ok(Message::Text(t))) if t.as_str() == "2probe" => {
                        if ws.send(Message::Text("3probe".into())).await.is_err() {
                            return Probe::Failed;
                        }
                        probed = true;
                        answer(waiting, "6".into());
                    }
                    Some(Ok(Message::Text(t))) if probed && t.as_str() == "5" => return Probe::Upgraded(Box::new(ws)),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    _ => return Probe::Failed,
                },
                input = rx.recv() => match input {
                    None => return Probe::Ended(End::Gone),
                    Some(Input::Poll(tx)) => {
                        answer(waiting, "6".into());
                        if probed {
                            let _ = tx.send(PollAnswer::Body("6".into()));
                        } else {
                            *waiting = Some(tx);
                        }
                    }
                    Some(Input::Packets(body)) => {
                        for p in body.split(RECORD_SEPARATOR) {
                            if let Some(end) = self.on_text(p).await {
                                return Probe::Ended(end);
                            }
                        }
                    }
                    // A second offer while probing: the first one stands.
                    Some(Input::Upgrade(_)) => {}
                },
                () = sleep_until(deadline) => return Probe::Failed,
            }
        }
    }
}

/// Answers the waiting poll, if any.
pub(super) fn answer(waiting: &mut Option<oneshot::Sender<PollAnswer>>, body: String) {
    if let Some(tx) = waiting.take() {
        let _ = tx.send(PollAnswer::Body(body));
    }
}

/// A poll body: the packets separated by `\x1e`.
fn join(out: Vec<Message>) -> String {
    let mut body = String::new();
    for m in out {
        if let Message::Text(t) = m {
            if !body.is_empty() {
                body.push(RECORD_SEPARATOR);
            }
            body.push_str(t.as_str());
        }
    }
    body
}
