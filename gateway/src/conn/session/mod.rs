//! The session state machine of an authenticated connection: it interprets client frames
//! (subscribe, publish, send, request, refresh, ping), enforces limits, and answers
//! through the connection's outbound queue. It touches no socket, so it is tested with
//! the in-process fabric alone.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::AtomicUsize},
    time::Duration,
};

use axum::extract::ws::Message;
use gateway_protocol::{
    Channel, ClientFrame, CloseCode, DisconnectReason, ErrorBody, ErrorCode, EventName, Namespace, PrincipalKind,
    ServerFrame, StreamPosition, now_ms,
};
use serde_json::{Value, json};

use super::{
    admission::Admission,
    handle::{Close, ConnHandle},
    ratelimit::{FrameLimiter, Verdict},
};
use crate::{auth::Identity, config::ms, hub::to_message, node::Node, presence::ConnRef, telemetry};

mod requests;
mod sends;

/// Longest accepted method name.
pub const MAX_NAME_LEN: usize = 128;

/// A channel a subscribe or unsubscribe could not act on, as the response lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    /// The name as the client sent it.
    pub channel: String,
    /// Why.
    pub code: ErrorCode,
    /// Why, for people.
    pub message: String,
}

impl Rejected {
    fn new(channel: &str, e: ErrorBody) -> Self {
        Rejected { channel: channel.to_owned(), code: e.code, message: e.message }
    }
}

/// What the driver does after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Close the connection.
    Close(Close),
}

/// One authenticated connection's state.
pub struct Session {
    /// The node's services.
    node: Arc<Node>,
    /// The connection as the hub sees it; replies go through its queue.
    handle: Arc<ConnHandle>,
    /// Who, and what it may do; replaced by `refresh`.
    identity: Identity,
    /// Joined channels (a short list: at most `limits.max_channels`).
    channels: Vec<Channel>,
    /// Where each joined channel with history stood when it was joined: answered in
    /// `subscribe` responses so a client can recover from there.
    positions: Vec<(Channel, StreamPosition)>,
    /// Frame rate limits.
    limiter: FrameLimiter,
    /// Malformed frames so far.
    protocol_errors: u32,
    /// Backend requests in flight.
    inflight: Arc<AtomicUsize>,
    /// Upstream sends waiting for a backend that answers each (HTTP), worked in order
    /// by one task; started with the first such send.
    sends: Option<sends::SendQueue>,
    /// The connection's place in the cluster-wide count, released at the end.
    admission: Admission,
    /// Set by [`Session::finish`]; a session dropped without it cleans up in `Drop`.
    finished: bool,
}

impl Session {
    /// A session for a registered connection.
    pub fn new(node: Arc<Node>, handle: Arc<ConnHandle>, identity: Identity, admission: Admission) -> Self {
        let limiter = FrameLimiter::new(&node.cfg.rate);
        Session {
            node,
            handle,
            identity,
            channels: Vec::new(),
            positions: Vec::new(),
            limiter,
            protocol_errors: 0,
            inflight: Arc::default(),
            sends: None,
            admission,
            finished: false,
        }
    }

    /// When the credential expires (ms since epoch), if it does.
    pub fn expires_at_ms(&self) -> Option<u64> {
        self.identity.expires_at_ms
    }

    /// The joined channels.
    pub fn channels(&self) -> &[Channel] {
        &self.channels
    }

    /// Queues a frame to the client.
    pub fn reply(&self, frame: &ServerFrame) {
        metrics::counter!(telemetry::FRAMES_OUT, "type" => frame.kind()).increment(1);
        self.handle.push(to_message(self.handle.encoding, frame));
    }

    fn fail(&self, id: Option<String>, error: ErrorBody) {
        match id {
            Some(id) => self.reply(&ServerFrame::err(id, error)),
            None => self.reply(&ServerFrame::Error { error }),
        }
    }

    fn conn_ref(&self) -> ConnRef<'_> {
        ConnRef { node: self.node.id(), conn: &self.handle.connection_id, principal: &self.identity.principal }
    }

    /// Interprets one data message (text or binary).
    pub async fn on_message(&mut self, payload: &[u8], binary: bool) -> Flow {
        metrics::counter!(telemetry::BYTES_IN).increment(payload.len() as u64);
        if payload.len() > self.node.cfg.limits.max_frame_bytes {
            return Flow::Close(Close::bare(CloseCode::TooBig));
        }
        let frame = match self.handle.encoding.decode(payload, binary) {
            Ok(f) => f,
            Err(e) => {
                metrics::counter!(telemetry::FRAMES_IN, "type" => "invalid").increment(1);
                self.protocol_errors += 1;
                if self.protocol_errors >= self.node.cfg.limits.max_protocol_errors {
                    return Flow::Close(Close::with_notice(
                        CloseCode::ProtocolErrors,
                        DisconnectReason::ProtocolErrors,
                        false,
                    ));
                }
                self.fail(e.id.clone(), (&e).into());
                return Flow::Continue;
            }
        };
        metrics::counter!(telemetry::FRAMES_IN, "type" => frame.kind()).increment(1);
        match self.limiter.check() {
            Verdict::Allowed => self.handle_frame(frame).await,
            Verdict::Limited { retry_after_ms } => {
                metrics::counter!(telemetry::RATE_LIMITED).increment(1);
                let error = ErrorBody {
                    code: ErrorCode::RateLimited,
                    message: "too many frames".into(),
                    retry_after_ms: Some(retry_after_ms),
                };
                self.fail(frame_id(&frame), error);
                Flow::Continue
            }
            Verdict::Close => {
                Flow::Close(Close::with_notice(CloseCode::RateLimited, DisconnectReason::RateLimited, false))
            }
        }
    }

    /// Interprets one decoded frame.
    pub async fn handle_frame(&mut self, frame: ClientFrame) -> Flow {
        match frame {
            ClientFrame::Authenticate { .. } => {
                self.fail(None, ErrorBody::new(ErrorCode::BadRequest, "already authenticated"));
            }
            ClientFrame::Subscribe { id, channels, .. } | ClientFrame::Unsubscribe { id, channels }
                if channels.len() > self.node.cfg.limits.max_channels =>
            {
                // Refused whole, before any per-name work: the answer stays one error
                // however many names the frame carries.
                let max = self.node.cfg.limits.max_channels;
                let e = ErrorBody::new(ErrorCode::LimitExceeded, format!("a frame may name at most {max} channels"));
                self.fail(id, e);
            }
            ClientFrame::Subscribe { id, recover, .. } if recover.len() > self.node.cfg.limits.max_channels => {
                let max = self.node.cfg.limits.max_channels;
                let e = ErrorBody::new(ErrorCode::LimitExceeded, format!("recover may name at most {max} channels"));
                self.fail(id, e);
            }
            ClientFrame::Subscribe { id, channels, token, recover } => {
                let (done, rejected, recovered) = self.subscribe(&channels, token.as_deref(), &recover).await;
                let Some(id) = id else {
                    self.report_rejections(rejected);
                    return Flow::Continue;
                };
                let positions: BTreeMap<&str, &StreamPosition> =
                    self.positions.iter().filter(|(ch, _)| done.contains(ch)).map(|(ch, p)| (ch.as_str(), p)).collect();
                let mut result = json!({ "subscribed": done, "rejected": rejected });
                if !recover.is_empty() {
                    result["recovered"] = json!(recovered);
                }
                if !positions.is_empty() {
                    result["positions"] = json!(positions);
                }
                self.reply(&ServerFrame::ok(id, result));
            }
            ClientFrame::Unsubscribe { id, channels } => {
                let (done, rejected) = self.unsubscribe(&channels).await;
                match id {
                    Some(id) => self.reply(&ServerFrame::ok(id, json!({ "unsubscribed": done, "rejected": rejected }))),
                    None => self.report_rejections(rejected),
                }
            }
            ClientFrame::Request { id, method, params } => self.request(id, method, params).await,
            ClientFrame::Publish { id, channel, event, data } => self.publish(id, &channel, event, data).await,
            ClientFrame::Send { id, event, data, correlation_id, timestamp } => {
                self.send(id, event, data, correlation_id, timestamp).await
            }
            ClientFrame::Refresh { id, token } => self.refresh(id, &token).await,
            ClientFrame::Ping => self.reply(&ServerFrame::Pong { ts: now_ms() }),
        }
        Flow::Continue
    }

    /// Sends each rejection as an `error` frame (no id to answer on).
    pub fn report_rejections(&self, rejected: Vec<Rejected>) {
        for r in rejected {
            let error = ErrorBody::new(r.code, format!("{}: {}", r.channel, r.message));
            self.reply(&ServerFrame::Error { error });
        }
    }

    /// Joins channels one by one, recovering those named in `recover` (contract §9);
    /// returns what joined, what was rejected, and each recovery's outcome.
    pub async fn subscribe(
        &mut self,
        names: &[String],
        token: Option<&str>,
        recover: &BTreeMap<String, StreamPosition>,
    ) -> (Vec<Channel>, Vec<Rejected>, BTreeMap<String, bool>) {
        let mut done = Vec::new();
        let mut rejected = Vec::new();
        let mut recovered = BTreeMap::new();
        let reject = Rejected::new;
        // Permission checks per frame are bounded by what a connection may hold: each can
        // cost a backend round trip (proxy policy), and refused names hold no slot.
        let mut checks = 0;
        let timeout = ms(self.node.cfg.fabric.request_timeout_ms);
        for name in names {
            let ch = match Channel::parse(name) {
                Ok(ch) => ch,
                Err(e) => {
                    rejected.push(reject(name, (&e).into()));
                    continue;
                }
            };
            let pos = recover.get(name);
            if self.channels.contains(&ch) {
                if let Some(pos) = pos {
                    let ok = self.node.membership.recover(&self.handle, &ch, pos).await;
                    recovered.insert(name.clone(), ok);
                }
                done.push(ch);
                continue;
            }
            if self.channels.len() >= self.node.cfg.limits.max_channels || checks >= self.node.cfg.limits.max_channels {
                rejected.push(reject(name, ErrorBody::new(ErrorCode::LimitExceeded, "too many channels")));
                continue;
            }
            checks += 1;
            let n = &self.node;
            if let Err(e) = n.access.may_subscribe(&self.identity, &ch, token, &n.auth, &*n.bus, timeout).await {
                rejected.push(reject(name, (&e).into()));
                continue;
            }
            match self.node.membership.join(&self.handle, &ch, pos).await {
                Ok(joined) => {
                    if let Some(ok) = joined.recovered {
                        recovered.insert(name.clone(), ok);
                    }
                    if let Some(p) = joined.position {
                        self.positions.push((ch.clone(), p));
                    }
                    self.channels.push(ch.clone());
                    done.push(ch);
                }
                Err(e) => rejected.push(reject(name, e)),
            }
        }
        (done, rejected, recovered)
    }

    /// Leaves channels; unknown or unjoined names are reported as rejected.
    pub async fn unsubscribe(&mut self, names: &[String]) -> (Vec<Channel>, Vec<Rejected>) {
        let mut done = Vec::new();
        let mut rejected = Vec::new();
        for name in names {
            match Channel::parse(name) {
                Ok(ch) if self.channels.contains(&ch) => {
                    self.leave(&ch).await;
                    done.push(ch);
                }
                Ok(_) => rejected.push(Rejected::new(name, ErrorBody::new(ErrorCode::NotFound, "not subscribed"))),
                Err(e) => rejected.push(Rejected::new(name, (&e).into())),
            }
        }
        (done, rejected)
    }

    async fn leave(&mut self, ch: &Channel) {
        self.channels.retain(|c| c != ch);
        self.positions.retain(|(c, _)| c != ch);
        self.node.membership.leave(&self.handle, ch).await;
    }

    async fn publish(&mut self, id: Option<String>, channel: &str, event: EventName, data: Value) {
        let ch = match Channel::parse(channel) {
            Ok(ch) => ch,
            Err(e) => return self.fail(id, (&e).into()),
        };
        if let Err(e) = self.node.access.may_publish(&self.identity, &ch, self.channels.contains(&ch)) {
            return self.fail(id, (&e).into());
        }
        let mut ev = self.node.new_event(ch, event, data);
        ev.from = Some(self.identity.principal.clone());
        if let Err(e) = self.node.events.check(&ev) {
            metrics::counter!(telemetry::EVENTS_REFUSED, "source" => "client", "reason" => e.label()).increment(1);
            return self.fail(id, (&e).into());
        }
        metrics::counter!(telemetry::PUBLISHED, "source" => "client").increment(1);
        match self.node.bus.publish(&ev).await {
            Ok(()) => self.ack(id),
            Err(e) => self.fail(id, (&e).into()),
        }
    }

    fn ack(&self, id: Option<String>) {
        if let Some(id) = id {
            self.reply(&ServerFrame::Ack { id });
        }
    }

    async fn refresh(&mut self, id: Option<String>, token: &str) {
        let outcome = self.node.auth.verify_jwt(token).map_err(|e| ErrorBody::from(&e)).and_then(|fresh| {
            if fresh.principal != self.identity.principal {
                return Err(ErrorBody::new(ErrorCode::Forbidden, "token is for another principal"));
            }
            Ok(fresh)
        });
        match outcome {
            Ok(fresh) => {
                let expires = fresh.expires_at_ms;
                self.identity = fresh;
                let left = self.recheck_channels().await;
                if let Some(id) = id {
                    self.reply(&ServerFrame::ok(id, json!({ "expiresAt": expires, "left": left })));
                }
            }
            Err(e) => self.fail(id, e),
        }
    }

    /// After a refresh, leaves the channels the new claims no longer allow. Session
    /// channels are kept: they were granted by a channel token or a backend, not by the
    /// claims.
    async fn recheck_channels(&mut self) -> Vec<Channel> {
        let timeout = ms(self.node.cfg.fabric.request_timeout_ms);
        let mut left = Vec::new();
        for ch in self.channels.clone() {
            if ch.namespace() == Namespace::Session {
                continue;
            }
            let n = &self.node;
            if n.access.may_subscribe(&self.identity, &ch, None, &n.auth, &*n.bus, timeout).await.is_err() {
                self.leave(&ch).await;
                left.push(ch);
            }
        }
        left
    }

    /// The connection opened (`connected` is queued): announces it (contract §10).
    pub async fn opened(&mut self) {
        self.admission.open().await;
    }

    /// Leaves every channel, releases the connection's counts and announces the close
    /// (`reason`: the close code's reason). Called once, at the end.
    pub async fn finish(mut self, reason: &str) {
        let channels = std::mem::take(&mut self.channels);
        self.node.membership.close(&self.handle, &channels).await;
        self.admission.release(reason).await;
        self.finished = true;
    }

    /// A frame announcing the close, when the close has one.
    pub fn notice(close: &Close) -> Option<ServerFrame> {
        close.notice.map(|(reason, reconnect)| ServerFrame::Disconnecting { reason, reconnect })
    }

    /// The principal kind, for metrics.
    pub fn kind(&self) -> PrincipalKind {
        self.identity.principal.kind
    }

    /// The connection handle.
    pub fn handle(&self) -> &Arc<ConnHandle> {
        &self.handle
    }

    /// Queues a raw message (pings).
    pub fn push_raw(&self, msg: Message) {
        self.handle.push(msg);
    }

    /// Time until the credential expires, if it does. The clock-skew leeway that let the
    /// token in at the handshake applies here too: a token accepted within the leeway
    /// must not be dropped the moment the connection starts.
    pub fn time_to_expiry(&self) -> Option<Duration> {
        let leeway_ms = self.node.cfg.auth.leeway_secs.saturating_mul(1000);
        self.identity
            .expires_at_ms
            .map(|at| Duration::from_millis(at.saturating_add(leeway_ms).saturating_sub(now_ms())))
    }
}

fn frame_id(f: &ClientFrame) -> Option<String> {
    match f {
        ClientFrame::Subscribe { id, .. }
        | ClientFrame::Unsubscribe { id, .. }
        | ClientFrame::Publish { id, .. }
        | ClientFrame::Send { id, .. }
        | ClientFrame::Refresh { id, .. } => id.clone(),
        ClientFrame::Request { id, .. } => Some(id.clone()),
        ClientFrame::Authenticate { .. } | ClientFrame::Ping => None,
    }
}

impl Drop for Session {
    /// A connection task that ended without [`Session::finish`] (a panic, or its future
    /// dropped) still leaves no ghost: membership cleans the hub now and the fabric on a
    /// tracked task. The admission releases itself on drop.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let channels = std::mem::take(&mut self.channels);
        self.node.membership.abandon(&self.handle, channels);
    }
}
