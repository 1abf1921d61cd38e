//! Serving one connection: re-subscribe (one frame with `recover` positions), flush the
//! offline queue in order under the pacer, then read frames and write calls until the
//! socket ends. Also the connection's timers: ack deadlines, the client-side heartbeat,
//! the token refresh before `exp`, and the backoff reset once the connection is stable.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gateway_protocol::{ClientFrame, DisconnectReason, Encoding, ErrorBody, ErrorCode, ServerFrame};
use serde_json::Value;
use tokio::{
    sync::mpsc,
    time::{Instant, sleep_until},
};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::{
    channels::{SubscribeBatch, SubscribeResult, TRANSIENT_CODES},
    credentials::{TokenFuture, jwt_expiry_ms, refresh_delay},
    driver::{Call, Command, Driver, Opened, Outcome, Pending, Reply},
    error::{GatewayError, StopReason},
    events::{Notice, State},
    policy::Ended,
    raw::{Socket, encode},
};

/// How long a polite close may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// One connection's own state.
struct Conn {
    /// The socket.
    ws: Socket,
    /// Its encoding.
    encoding: Encoding,
    /// The token it runs on (refreshes replace it).
    token: String,
    /// The `disconnecting` notice, if one came: it decides over the close code.
    notice: Option<(DisconnectReason, bool)>,
    /// When anything last arrived.
    last_seen: Instant,
    /// When a ping we sent must have been answered by.
    ping_deadline: Option<Instant>,
    /// Quiet time after which we ping.
    interval: Duration,
    /// When to ask the token source for a fresh token.
    refresh_at: Option<Instant>,
    /// The token source's answer, while it is being asked.
    refresh: Option<TokenFuture>,
    /// When this connection counts as stable (the backoff resets).
    stable_at: Option<Instant>,
}

impl Driver {
    /// Serves one connection until it ends.
    pub(crate) async fn session(&mut self, cmds: &mut mpsc::Receiver<Command>, opened: Opened) -> Outcome {
        let Opened { socket, credential, connected } = opened;
        let ServerFrame::Connected { connection_id, principal, node, heartbeat_ms } = connected else {
            return Outcome::Ended(Ended::Failed("no connected frame".into()));
        };
        // Positions of another principal's channels mean nothing to this one.
        if self.principal.as_ref().is_some_and(|p| *p != principal) {
            self.channels.clear_positions();
        }
        self.principal = Some(principal.clone());
        let reconnect = std::mem::replace(&mut self.ever_connected, true);
        let now = Instant::now();
        let server_beat = Duration::from_millis(if heartbeat_ms > 0 { heartbeat_ms } else { 30_000 });
        let mut conn = Conn {
            ws: socket,
            encoding: self.cfg.encoding,
            token: credential.token,
            notice: None,
            last_seen: now,
            ping_deadline: None,
            interval: self.cfg.heartbeat_interval.unwrap_or(server_beat),
            refresh_at: None,
            refresh: None,
            stable_at: Some(now + self.backoff.stable_after()),
        };
        self.schedule_refresh(&mut conn);
        if let Some(p) = self.pacer.as_mut() {
            p.reset();
        }
        self.state.send_replace(State::Connected { node, connection_id, principal });
        // Re-subscribe first, then flush the queue: queued publishes to a channel come
        // after its subscribe.
        for batch in self.channels.resubscribe() {
            if let Err(e) = self.write_subscribe(&mut conn, &batch, reconnect, Vec::new()).await {
                return Outcome::Ended(e);
            }
        }
        let cancel = self.cancel.clone();
        loop {
            if let Err(e) = self.flush(&mut conn).await {
                return Outcome::Ended(e);
            }
            let far = Instant::now() + Duration::from_secs(86_400);
            let pace = self.next_flush();
            let ack = self.next_ack_deadline();
            let beat = conn.ping_deadline.unwrap_or(conn.last_seen + conn.interval);
            let refresh_due = conn.refresh.is_none() && conn.refresh_at.is_some();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return close(conn, StopReason::Closed).await,
                msg = conn.ws.next() => {
                    if let Some(ended) = self.on_message(&mut conn, msg).await {
                        return Outcome::Ended(ended);
                    }
                }
                cmd = cmds.recv() => match cmd {
                    None => return close(conn, StopReason::Closed).await,
                    Some(cmd) => {
                        if let Err(e) = self.online_command(&mut conn, cmd).await {
                            return Outcome::Ended(e);
                        }
                    }
                },
                _ = sleep_until(pace.unwrap_or(far)), if pace.is_some() => {}
                _ = sleep_until(ack.unwrap_or(far)), if ack.is_some() => self.expire_acks(),
                _ = sleep_until(beat) => {
                    if let Err(e) = self.beat(&mut conn).await {
                        return Outcome::Ended(e);
                    }
                }
                _ = sleep_until(conn.refresh_at.unwrap_or(far)), if refresh_due => {
                    conn.refresh_at = None;
                    conn.refresh = self.cfg.credentials.source().map(|s| s.token());
                }
                token = poll_opt(&mut conn.refresh) => {
                    conn.refresh = None;
                    if let Err(e) = self.on_fresh_token(&mut conn, token).await {
                        return Outcome::Ended(e);
                    }
                }
                _ = sleep_until(conn.stable_at.unwrap_or(far)), if conn.stable_at.is_some() => {
                    conn.stable_at = None;
                    self.backoff.reset();
                }
            }
        }
    }

    async fn online_command(&mut self, conn: &mut Conn, cmd: Command) -> Result<(), Ended> {
        match cmd {
            Command::Subscribe { channel, token, reply } => {
                if !self.channels.add(&channel, token) {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                let batch = self.channels.batches_for(std::slice::from_ref(&channel)).into_iter().next();
                match batch {
                    Some(b) => self.write_subscribe(conn, &b, false, vec![(channel, reply)]).await,
                    None => {
                        let _ = reply.send(Ok(()));
                        Ok(())
                    }
                }
            }
            Command::Unsubscribe { channel, reply } => {
                if self.channels.forget(&channel) {
                    let id = self.next_id("u");
                    self.pending.insert(id.clone(), Pending::Unsubscribe);
                    self.write(conn, &ClientFrame::Unsubscribe { id: Some(id), channels: vec![channel] }).await?;
                }
                let _ = reply.send(Ok(()));
                Ok(())
            }
            Command::Call(call) => {
                let busy = self.queue.as_ref().is_some_and(|q| !q.is_empty());
                let paced = self.queue.is_some() && self.pacer.as_mut().is_some_and(|p| !p.wait().is_zero());
                if busy || paced {
                    self.enqueue(call);
                    return Ok(());
                }
                self.write_call(conn, call).await
            }
        }
    }

    /// Writes queued calls, oldest first, while the pacer allows.
    async fn flush(&mut self, conn: &mut Conn) -> Result<(), Ended> {
        loop {
            if self.pacer.as_mut().is_some_and(|p| !p.wait().is_zero()) {
                return Ok(());
            }
            let Some(call) = self.queue.as_mut().and_then(|q| q.pop()) else { return Ok(()) };
            if call.abandoned() {
                continue;
            }
            self.write_call(conn, call).await?;
        }
    }

    /// When the pacer lets the next queued call out, if any waits.
    fn next_flush(&mut self) -> Option<Instant> {
        if self.queue.as_ref().is_none_or(|q| q.is_empty()) {
            return None;
        }
        let wait = self.pacer.as_mut().map_or(Duration::ZERO, |p| p.wait());
        Some(Instant::now() + wait)
    }

    async fn write_call(&mut self, conn: &mut Conn, call: Call) -> Result<(), Ended> {
        let acked = call.acked();
        let Call { mut frame, reply } = call;
        let id = self.next_id(match frame {
            ClientFrame::Send { .. } => "m",
            ClientFrame::Publish { .. } => "p",
            _ => "r",
        });
        match &mut frame {
            ClientFrame::Request { id: slot, .. } => *slot = id.clone(),
            ClientFrame::Send { id: slot, .. } | ClientFrame::Publish { id: slot, .. } => *slot = Some(id.clone()),
            _ => {}
        }
        // Requests whose callers gave up are not worth remembering.
        self.pending.retain(|_, p| !matches!(p, Pending::Call { reply, .. } if reply.is_closed()));
        let deadline = acked.then(|| Instant::now() + self.cfg.ack_timeout);
        self.pending.insert(id, Pending::Call { reply, deadline });
        self.write(conn, &frame).await
    }

    async fn write_subscribe(
        &mut self,
        conn: &mut Conn,
        batch: &SubscribeBatch,
        reconnect: bool,
        replies: Vec<(String, Reply<()>)>,
    ) -> Result<(), Ended> {
        let id = self.next_id("s");
        let frame = batch.frame(id.clone());
        self.pending.insert(id, Pending::Subscribe { channels: batch.channels.clone(), reconnect, replies });
        self.write(conn, &frame).await
    }

    async fn write(&mut self, conn: &mut Conn, frame: &ClientFrame) -> Result<(), Ended> {
        let msg = encode(conn.encoding, frame).map_err(|e| Ended::Failed(e.to_string()))?;
        if let Some(p) = self.pacer.as_mut() {
            p.record();
        }
        conn.ws.send(msg).await.map_err(|e| Ended::Failed(format!("write failed: {e}")))
    }

    fn next_ack_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .filter_map(|p| if let Pending::Call { deadline, .. } = p { *deadline } else { None })
            .min()
    }

    fn expire_acks(&mut self) {
        let now = Instant::now();
        let expired: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| matches!(p, Pending::Call { deadline: Some(d), .. } if *d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(Pending::Call { reply, .. }) = self.pending.remove(&id) {
                let _ = reply.send(Err(GatewayError::Timeout(self.cfg.ack_timeout)));
            }
        }
    }

    /// Pings a quiet connection; a ping unanswered in time ends it.
    async fn beat(&mut self, conn: &mut Conn) -> Result<(), Ended> {
        let now = Instant::now();
        if conn.ping_deadline.is_some_and(|d| d <= now) {
            return Err(Ended::Failed(format!("no answer to ping within {:?}", self.cfg.heartbeat_timeout)));
        }
        if now >= conn.last_seen + conn.interval && conn.ping_deadline.is_none() {
            conn.ping_deadline = Some(now + self.cfg.heartbeat_timeout);
            self.write(conn, &ClientFrame::Ping).await?;
        }
        Ok(())
    }

    async fn on_message(&mut self, conn: &mut Conn, msg: Option<Result<Message, tungstenite::Error>>) -> Option<Ended> {
        conn.last_seen = Instant::now();
        conn.ping_deadline = None;
        let decoded = match msg {
            None => return Some(Ended::Closed { code: None, reason: String::new(), notice: conn.notice }),
            Some(Err(e)) => return Some(Ended::Closed { code: None, reason: e.to_string(), notice: conn.notice }),
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) =
                    frame.map_or((None, String::new()), |f| (Some(u16::from(f.code)), f.reason.to_string()));
                return Some(Ended::Closed { code, reason, notice: conn.notice });
            }
            Some(Ok(Message::Text(t))) => serde_json::from_str::<ServerFrame>(&t).map_err(|e| e.to_string()),
            Some(Ok(Message::Binary(b))) => rmp_serde::from_slice::<ServerFrame>(&b).map_err(|e| e.to_string()),
            Some(Ok(_)) => return None,
        };
        match decoded {
            Ok(frame) => self.on_frame(conn, frame),
            Err(e) => tracing::debug!(error = %e, "undecodable frame skipped"),
        }
        None
    }

    fn on_frame(&mut self, conn: &mut Conn, frame: ServerFrame) {
        match frame {
            ServerFrame::Event(ev) => {
                if self.channels.accept(&ev) {
                    let _ = self.events.send(ev);
                }
            }
            ServerFrame::Ack { id } => {
                if let Some(Pending::Call { reply, .. }) = self.pending.remove(&id) {
                    let _ = reply.send(Ok(Value::Null));
                }
            }
            ServerFrame::Response { id, result, error } => {
                let outcome = match error {
                    Some(e) => Err(e),
                    None => Ok(result.unwrap_or(Value::Null)),
                };
                match self.pending.remove(&id) {
                    Some(Pending::Call { reply, .. }) => {
                        let _ = reply.send(outcome.map_err(GatewayError::Server));
                    }
                    Some(Pending::Subscribe { channels, reconnect, replies }) => {
                        self.on_subscribed(channels, reconnect, replies, outcome);
                    }
                    Some(Pending::Refresh { token }) => self.on_refreshed(conn, token, outcome),
                    Some(Pending::Unsubscribe) => {
                        if let Err(e) = outcome {
                            self.notify(Notice::Error(e));
                        }
                    }
                    None => {}
                }
            }
            ServerFrame::Error { error } => self.notify(Notice::Error(error)),
            ServerFrame::Disconnecting { reason, reconnect } => conn.notice = Some((reason, reconnect)),
            ServerFrame::Connected { .. } | ServerFrame::Pong { .. } | ServerFrame::Heartbeat { .. } => {}
        }
    }

    fn on_subscribed(
        &mut self,
        channels: Vec<String>,
        reconnect: bool,
        replies: Vec<(String, Reply<()>)>,
        outcome: Result<Value, ErrorBody>,
    ) {
        let (result, whole) = match outcome {
            Ok(v) => (serde_json::from_value::<SubscribeResult>(v).unwrap_or_default(), None),
            Err(e) => (SubscribeResult::default(), Some(e)),
        };
        let mut verdicts = Vec::with_capacity(channels.len());
        for ch in channels {
            let refused =
                whole.clone().or_else(|| result.rejected.iter().find(|r| r.channel == ch).map(|r| r.error.clone()));
            match refused {
                Some(error) => {
                    // A first refusal, or one a reconnect cannot fix, drops the channel.
                    if !reconnect || !TRANSIENT_CODES.contains(&error.code.as_str()) {
                        self.channels.forget(&ch);
                    }
                    self.notify(Notice::Rejected { channel: ch.clone(), error: error.clone() });
                    verdicts.push((ch, Err(GatewayError::Server(error))));
                }
                None => {
                    if let Some(pos) = result.positions.get(&ch) {
                        self.channels.start_at(&ch, pos);
                    }
                    if reconnect {
                        let recovered = result.recovered.get(&ch).copied().unwrap_or(false);
                        self.notify(Notice::Recovered { channel: ch.clone(), recovered });
                    }
                    verdicts.push((ch, Ok(())));
                }
            }
        }
        for (ch, reply) in replies {
            let v = verdicts.iter().find(|(c, _)| *c == ch).map_or(Ok(()), |(_, v)| v.clone());
            let _ = reply.send(v);
        }
    }

    fn schedule_refresh(&mut self, conn: &mut Conn) {
        conn.refresh_at = None;
        if self.cfg.credentials.source().is_none() {
            return;
        }
        if let Some(exp) = jwt_expiry_ms(&conn.token) {
            let delay = refresh_delay(exp, gateway_protocol::now_ms(), self.cfg.refresh_before);
            conn.refresh_at = Some(Instant::now() + delay);
        }
    }

    async fn on_fresh_token(
        &mut self,
        conn: &mut Conn,
        token: Result<String, crate::credentials::CredentialsError>,
    ) -> Result<(), Ended> {
        let old_exp = jwt_expiry_ms(&conn.token).unwrap_or(0);
        let newer = token.as_ref().map_err(|e| e.to_string()).and_then(|t| {
            let fresh = *t != conn.token && jwt_expiry_ms(t).is_none_or(|e| e > old_exp);
            if fresh { Ok(t.clone()) } else { Err("the token source returned no newer token".into()) }
        });
        match newer {
            Ok(token) => {
                let id = self.next_id("f");
                self.pending.insert(id.clone(), Pending::Refresh { token: token.clone() });
                self.write(conn, &ClientFrame::Refresh { id: Some(id), token }).await
            }
            Err(why) => {
                self.notify(Notice::Error(ErrorBody::new(ErrorCode::Unauthorized, format!("token refresh: {why}"))));
                // Ask again later, until the old token runs out (then 4002 and a reconnect).
                let left = old_exp.saturating_sub(gateway_protocol::now_ms());
                if left > 1_000 {
                    conn.refresh_at = Some(Instant::now() + Duration::from_millis((left / 2).max(1_000)));
                }
                Ok(())
            }
        }
    }

    fn on_refreshed(&mut self, conn: &mut Conn, token: String, outcome: Result<Value, ErrorBody>) {
        match outcome {
            Ok(result) => {
                conn.token = token;
                self.schedule_refresh(conn);
                let left = result.get("left").and_then(Value::as_array).cloned().unwrap_or_default();
                for ch in left.iter().filter_map(Value::as_str) {
                    self.channels.forget(ch);
                    self.notify(Notice::Left { channel: ch.to_owned() });
                }
            }
            Err(e) => self.notify(Notice::Error(e)),
        }
    }

    fn notify(&self, n: Notice) {
        let _ = self.notices.send(n);
    }
}

/// Closes politely (bounded) and stops.
async fn close(mut conn: Conn, stop: StopReason) -> Outcome {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.ws.close(None)).await;
    Outcome::Stop(stop)
}

/// Awaits the future when there is one; pends forever otherwise.
async fn poll_opt(fut: &mut Option<TokenFuture>) -> Result<String, crate::credentials::CredentialsError> {
    match fut {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}
