//! What an authenticated socket does with each event: the ones the gateway answers
//! itself (`join_project`, `leave_project`, `subscribe_to_events`, chat), upstream
//! sends for the rest, and how it answers (an event, an ack, `validation_error`).

use axum::extract::ws::{Message, Utf8Bytes};
use gateway_protocol::{
    Channel, CloseCode, DisconnectReason, ErrorBody, ErrorCode, EventName, Namespace, PrincipalKind, iso8601, now_ms,
};
use serde_json::{Value, json};

use super::{Live, Outcome};
use crate::{
    bus::{Correlation, Origin},
    config::ms,
    conn::{handle::Close, ratelimit::Verdict},
    history::ReadFrom,
    sio::{
        chat::{self, ChatMessage, Invalid, MessageType},
        names::{ClientEvent, Nsp, STATE_CHANGE, ServerEvent},
        packet::encode,
    },
    telemetry,
};

impl Live {
    fn emit(&self, event: ServerEvent, data: &Value) {
        self.handle.push(Message::Text(Utf8Bytes::from(encode::event(&self.path, event.as_str(), data))));
    }

    fn ack(&self, ack: Option<u64>, data: &Value) {
        if let Some(id) = ack {
            self.handle.push(Message::Text(Utf8Bytes::from(encode::ack(&self.path, id, data))));
        }
    }

    /// A refusal: the ack's error when the client asked for one, else an `error` event.
    fn fail(&self, ack: Option<u64>, e: &ErrorBody) {
        let body = json!({ "code": e.code, "message": e.message });
        match ack {
            Some(_) => self.ack(ack, &json!({ "error": body })),
            None => self.emit(ServerEvent::Error, &body),
        }
    }

    fn invalid(&self, ack: Option<u64>, e: &Invalid) {
        metrics::counter!(telemetry::FRAMES_IN, "type" => "invalid").increment(1);
        self.emit(ServerEvent::ValidationError, &json!(e));
        self.ack(ack, &json!({ "error": { "code": ErrorCode::BadRequest, "message": e.message } }));
    }

    pub(super) async fn on_event(&mut self, nsp: &Nsp, name: &str, data: Value, ack: Option<u64>) -> Outcome {
        metrics::counter!(telemetry::FRAMES_IN, "type" => "socketio_event").increment(1);
        match self.limiter.check() {
            Verdict::Allowed => {}
            Verdict::Limited { retry_after_ms } => {
                metrics::counter!(telemetry::RATE_LIMITED).increment(1);
                let body = json!({ "message": "rate limit exceeded", "retry_after": retry_after_ms });
                self.emit(ServerEvent::RateLimited, &body);
                self.ack(ack, &json!({ "error": { "code": ErrorCode::RateLimited, "message": "rate limit exceeded", "retryAfterMs": retry_after_ms } }));
                return Outcome::Stay;
            }
            Verdict::Close => {
                return Outcome::Leave(Close::with_notice(
                    CloseCode::RateLimited,
                    DisconnectReason::RateLimited,
                    false,
                ));
            }
        }
        match (ClientEvent::from_name(name), nsp) {
            (Some(ClientEvent::Authenticate), _) => {
                self.fail(ack, &ErrorBody::new(ErrorCode::BadRequest, "already authenticated"));
            }
            (Some(ClientEvent::JoinProject), Nsp::Portal) => self.join_project(&data, ack).await,
            (Some(ClientEvent::LeaveProject), Nsp::Portal) => self.leave_project(&data, ack).await,
            (Some(ClientEvent::SubscribeToEvents), _) => self.subscribe_to_events(&data, ack),
            (Some(ClientEvent::SendMessage), Nsp::Chat(project)) => self.send_message(project, &data, ack).await,
            (Some(e @ (ClientEvent::TypingStart | ClientEvent::TypingStop)), Nsp::Chat(project)) => {
                let out =
                    if e == ClientEvent::TypingStart { ServerEvent::TypingStart } else { ServerEvent::TypingStop };
                let data = json!({
                    "user_id": self.identity.principal.id, "project_name": project, "timestamp": iso8601(now_ms()),
                });
                match self.publish(project, out, data).await {
                    Ok(_) => self.ack(ack, &json!({ "ok": true })),
                    Err(e) => self.fail(ack, &e),
                }
            }
            (Some(e), _) => {
                let msg = format!("{} is answered in another namespace", e.as_str());
                self.fail(ack, &ErrorBody::new(ErrorCode::BadRequest, msg));
            }
            (None, _) => self.upstream(name, &data, ack).await,
        }
        Outcome::Stay
    }

    async fn join_project(&mut self, data: &Value, ack: Option<u64>) {
        let ch = match chat::project_of(data) {
            Ok(ch) => ch,
            Err(e) => return self.invalid(ack, &e),
        };
        if !self.channels.contains(&ch) {
            if self.channels.len() >= self.node.cfg.limits.max_channels {
                return self.fail(ack, &ErrorBody::new(ErrorCode::LimitExceeded, "too many channels"));
            }
            let n = &self.node;
            let timeout = ms(n.cfg.fabric.request_timeout_ms);
            if let Err(e) = n.access.may_subscribe(&self.identity, &ch, None, &n.auth, &*n.bus, timeout).await {
                return self.fail(ack, &ErrorBody::from(&e));
            }
            if let Err(e) = self.node.membership.join(&self.handle, &ch, None).await {
                return self.fail(ack, &e);
            }
            self.channels.push(ch.clone());
        }
        let joined = self.joined(&ch).await;
        self.emit(ServerEvent::JoinedProject, &joined);
        self.ack(ack, &joined);
    }

    /// `joined_project`: who is there, when it last moved, and its state if the channel
    /// keeps history with a `state_change` in it.
    async fn joined(&self, ch: &Channel) -> Value {
        let n = &self.node;
        let active_users = n.presence.members(ch).await.map_or(0, |m| {
            let mut users: Vec<&str> =
                m.iter().filter(|p| p.kind == PrincipalKind::User).map(|p| p.id.as_str()).collect();
            users.sort_unstable();
            users.dedup();
            users.len()
        });
        let mut out =
            json!({ "project_name": ch.id(), "active_users": active_users, "last_activity": iso8601(now_ms()) });
        if n.keeping.keeps(ch)
            && let Ok(page) = n.history.read(ch, ReadFrom::Latest, n.keeping.size(ch)).await
        {
            if let Some(last) = page.events.last() {
                out["last_activity"] = json!(iso8601(last.ts));
            }
            if let Some(state) = page.events.iter().rev().find(|e| e.event.as_str() == STATE_CHANGE) {
                out["current_state"] = state.data.get("new_state").cloned().unwrap_or_else(|| state.data.clone());
            }
        }
        out
    }

    async fn leave_project(&mut self, data: &Value, ack: Option<u64>) {
        let ch = match chat::project_of(data) {
            Ok(ch) => ch,
            Err(e) => return self.invalid(ack, &e),
        };
        if !self.channels.contains(&ch) {
            return self.fail(ack, &ErrorBody::new(ErrorCode::NotFound, "not in that project"));
        }
        self.channels.retain(|c| *c != ch);
        self.node.membership.leave(&self.handle, &ch).await;
        self.ack(ack, &json!({ "ok": true }));
    }

    fn subscribe_to_events(&self, data: &Value, ack: Option<u64>) {
        let (project, events) = match chat::event_filter(data) {
            Ok(f) => f,
            Err(e) => return self.invalid(ack, &e),
        };
        let Some(target) = &self.handle.sio else {
            return;
        };
        if target.set_filter(project, events.clone()) {
            self.ack(ack, &json!({ "ok": true, "events": events }));
        } else {
            self.fail(ack, &ErrorBody::new(ErrorCode::LimitExceeded, "too many event filters"));
        }
    }

    async fn send_message(&self, project: &str, data: &Value, ack: Option<u64>) {
        let msg = match ChatMessage::parse(data) {
            Ok(m) => m,
            Err(e) => return self.invalid(ack, &e),
        };
        let message_id = uuid::Uuid::now_v7().to_string();
        let received = msg.received(&message_id, project, &self.identity.principal.id, now_ms());
        if let Err(e) = self.publish(project, ServerEvent::MessageReceived, received.clone()).await {
            return self.fail(ack, &e);
        }
        if msg.kind == MessageType::Command
            && let Err(e) = self.send_upstream(ClientEvent::SendMessage.as_str(), &received, ack).await
        {
            return self.fail(ack, &e);
        }
        self.ack(ack, &json!({ "message_id": message_id }));
    }

    /// Publishes a chat event of this socket on its project's channel, every node.
    async fn publish(&self, project: &str, event: ServerEvent, data: Value) -> Result<(), ErrorBody> {
        let ch = Channel::new(Namespace::Project, project).map_err(|e| ErrorBody::from(&e))?;
        let mut ev = self.node.new_event(ch, EventName::from(event.as_str()), data);
        ev.from = Some(self.identity.principal.clone());
        if let Err(e) = self.node.events.check(&ev) {
            metrics::counter!(telemetry::EVENTS_REFUSED, "source" => "socketio", "reason" => e.label()).increment(1);
            return Err(ErrorBody::from(&e));
        }
        metrics::counter!(telemetry::PUBLISHED, "source" => "socketio").increment(1);
        self.node.bus.publish(&ev).await.map_err(|e| ErrorBody::from(&e))
    }

    /// Any other event: an upstream send (contract §5).
    async fn upstream(&self, name: &str, data: &Value, ack: Option<u64>) {
        match self.send_upstream(name, data, ack).await {
            Ok(()) => self.ack(ack, &json!({ "ok": true })),
            Err(e) => self.fail(ack, &e),
        }
    }

    async fn send_upstream(&self, name: &str, data: &Value, ack: Option<u64>) -> Result<(), ErrorBody> {
        if crate::bus::upstream_subject(&self.node.cfg.subject_prefix, name).is_none() {
            let e = Invalid {
                message: "invalid event name".into(),
                details: vec![chat::FieldError {
                    field: "event".into(),
                    message: "must be [A-Za-z0-9_-] tokens separated by ':' or '.'".into(),
                }],
            };
            self.emit(ServerEvent::ValidationError, &json!(e));
            return Err(ErrorBody::new(ErrorCode::BadRequest, e.message));
        }
        let origin =
            Origin { node: self.node.id(), conn: &self.handle.connection_id, principal: &self.identity.principal };
        let message_id = ack.map(|a| a.to_string());
        let correlation = Correlation { message_id: message_id.as_deref(), correlation_id: None, client_ts: None };
        self.node.upstream.send(&origin, name, data, &correlation).await.map_err(|e| ErrorBody::from(&e))
    }
}
