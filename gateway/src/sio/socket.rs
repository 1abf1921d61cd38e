//! One Socket.IO namespace socket. Authenticated, it is a connection of the node like a
//! native one: admitted against the same cluster-wide limits, registered in the hub,
//! joined to its channels through [`crate::membership`], rate limited, announced to
//! backends, and released the same way. Before it authenticates (no credential came
//! with the connect) it is only a name on its Engine.IO connection, waiting for
//! `authenticate` until the auth timeout.

use std::{collections::VecDeque, sync::Arc};

use gateway_protocol::{Channel, CloseCode, DisconnectReason, Encoding, ErrorBody, ErrorCode, now_ms};
use serde_json::{Value, json};
use tokio::time::Instant;

mod events;

use super::{
    names::{ClientEvent, Nsp, ServerEvent},
    packet::encode,
    wire::SioTarget,
};
use crate::{
    auth::{Identity, Projects},
    config::ms,
    conn::{
        admission::Admission,
        handle::{Close, ConnHandle, Outbox},
        ratelimit::FrameLimiter,
    },
    node::Node,
    telemetry,
};

/// What the engine does with a socket after one of its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// It stays.
    Stay,
    /// The server leaves the namespace (a `disconnecting` notice first when it has one).
    Leave(Close),
}

/// A socket in one namespace of an Engine.IO connection.
pub(super) struct NsSocket {
    /// Its namespace.
    pub(super) nsp: Nsp,
    /// The namespace path as the client wrote it (the wire prefix of its packets).
    pub(super) path: Arc<str>,
    /// The socket id: Socket.IO's `sid`, the connection id in presence, upstream
    /// headers and logs.
    pub(super) sid: Arc<str>,
    /// Waiting for credentials, or a connection of the node.
    pub(super) state: State,
}

/// Where a socket stands.
pub(super) enum State {
    /// Connected without credentials: `authenticate` is due by `deadline`.
    Pending {
        /// The auth timeout.
        deadline: Instant,
    },
    /// Authenticated: a connection of the node.
    Live(Box<Live>),
}

/// An authenticated socket.
pub(super) struct Live {
    /// The node.
    node: Arc<Node>,
    /// The namespace path (the prefix of what it emits).
    path: Arc<str>,
    /// The hub's handle; what the socket emits goes through its bounded queue.
    pub(super) handle: Arc<ConnHandle>,
    /// The queue's reading end, drained by the engine.
    pub(super) outbox: Outbox,
    /// Who, and what it may join.
    identity: Identity,
    /// Its place in the principal's cluster-wide count.
    admission: Admission,
    /// Joined channels.
    channels: Vec<Channel>,
    /// Event rate limits (the same buckets as a native connection's frames).
    limiter: FrameLimiter,
    /// When the credential expires, leeway included.
    expires: Option<Instant>,
    /// Set by [`Live::finish`]; otherwise `Drop` cleans up.
    finished: bool,
}

/// The credential in a CONNECT packet's auth data: `{token}` or `{apiKey}`.
fn auth_credential(auth: Option<&str>) -> Option<String> {
    let v: Value = serde_json::from_str(auth?).ok()?;
    ["token", "apiKey"].iter().find_map(|k| v.get(*k).and_then(Value::as_str)).map(str::to_owned)
}

impl NsSocket {
    /// A socket joining `path`: live at once when a credential came with the connect
    /// (or with the Engine.IO handshake), else pending until `authenticate`.
    /// `Err`: the `connect_error` to answer.
    pub(super) async fn connect(
        node: &Arc<Node>,
        path: &str,
        auth: Option<&str>,
        handshake_credential: Option<&str>,
    ) -> Result<NsSocket, ErrorBody> {
        let nsp = Nsp::parse(path)
            .ok_or_else(|| ErrorBody::new(ErrorCode::BadRequest, format!("invalid namespace {path}")))?;
        if node.shutdown.is_draining() {
            return Err(ErrorBody::new(ErrorCode::Unavailable, "node is draining; reconnect"));
        }
        let sid: Arc<str> = uuid::Uuid::now_v7().simple().to_string().into();
        let path: Arc<str> = path.into();
        let Some(credential) = auth_credential(auth).or_else(|| handshake_credential.map(str::to_owned)) else {
            if node.cfg.auth.require_credentials {
                return Err(ErrorBody::new(ErrorCode::Unauthorized, "credentials required: auth {token}"));
            }
            let deadline = Instant::now() + ms(node.cfg.auth.auth_timeout_ms);
            return Ok(NsSocket { nsp, path, sid, state: State::Pending { deadline } });
        };
        let identity = node.auth.authenticate(&credential).await.map_err(|e| {
            metrics::counter!(telemetry::AUTH_FAILURES, "reason" => "invalid", "carrier" => "socketio").increment(1);
            ErrorBody::from(&e)
        })?;
        let live = Live::start(node, &nsp, &path, &sid, identity).await?;
        Ok(NsSocket { nsp, path, sid, state: State::Live(Box::new(live)) })
    }

    /// When the engine must look at this socket again (auth timeout, token expiry).
    pub(super) fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Pending { deadline } => Some(*deadline),
            State::Live(live) => live.expires,
        }
    }

    /// The deadline passed: a pending socket failed to authenticate in time, a live
    /// one's credential expired.
    pub(super) fn on_deadline(&self, direct: &mut VecDeque<String>) -> Outcome {
        match &self.state {
            State::Pending { .. } => {
                metrics::counter!(telemetry::AUTH_FAILURES, "reason" => "timeout", "carrier" => "socketio")
                    .increment(1);
                let data = json!({ "message": "authentication timed out", "code": ErrorCode::Unauthorized });
                direct.push_back(encode::event(&self.path, ServerEvent::AuthenticationFailed.as_str(), &data));
                Outcome::Leave(Close::bare(CloseCode::Unauthorized))
            }
            State::Live(_) => {
                Outcome::Leave(Close::with_notice(CloseCode::TokenExpired, DisconnectReason::TokenExpired, true))
            }
        }
    }

    /// One event from the client (`data`: its first argument; `ack`: its ack id).
    pub(super) async fn on_event(
        &mut self,
        node: &Arc<Node>,
        direct: &mut VecDeque<String>,
        name: &str,
        data: Value,
        ack: Option<u64>,
    ) -> Outcome {
        match &mut self.state {
            State::Live(live) => live.on_event(&self.nsp, name, data, ack).await,
            State::Pending { .. } => {
                if ClientEvent::from_name(name) != Some(ClientEvent::Authenticate) {
                    let e = json!({ "code": ErrorCode::Unauthorized, "message": "authenticate first" });
                    match ack {
                        Some(id) => direct.push_back(encode::ack(&self.path, id, &json!({ "error": e }))),
                        None => direct.push_back(encode::event(&self.path, ServerEvent::Error.as_str(), &e)),
                    }
                    return Outcome::Stay;
                }
                let outcome = self.authenticate(node, &data).await;
                let reply = match &outcome {
                    Ok(live) => {
                        let data = json!({
                            "user_id": live.identity.principal.id,
                            "permissions": permissions(&live.identity),
                        });
                        encode::event(&self.path, ServerEvent::Authenticated.as_str(), &data)
                    }
                    Err(e) => {
                        let data = json!({ "message": e.message, "code": e.code });
                        encode::event(&self.path, ServerEvent::AuthenticationFailed.as_str(), &data)
                    }
                };
                direct.push_back(reply);
                if let Some(id) = ack {
                    let answer = match &outcome {
                        Ok(_) => json!({ "ok": true }),
                        Err(e) => json!({ "error": e }),
                    };
                    direct.push_back(encode::ack(&self.path, id, &answer));
                }
                match outcome {
                    Ok(live) => {
                        self.state = State::Live(live);
                        Outcome::Stay
                    }
                    Err(_) => Outcome::Leave(Close::bare(CloseCode::Unauthorized)),
                }
            }
        }
    }

    async fn authenticate(&self, node: &Arc<Node>, data: &Value) -> Result<Box<Live>, ErrorBody> {
        let Some(token) = data.get("token").or_else(|| data.get("apiKey")).and_then(Value::as_str) else {
            return Err(ErrorBody::new(ErrorCode::Unauthorized, "authenticate needs {token}"));
        };
        let identity = node.auth.authenticate(token).await.map_err(|e| {
            metrics::counter!(telemetry::AUTH_FAILURES, "reason" => "invalid", "carrier" => "socketio_in_band")
                .increment(1);
            ErrorBody::from(&e)
        })?;
        Live::start(node, &self.nsp, &self.path, &self.sid, identity).await.map(Box::new)
    }

    /// The live part, if authenticated.
    pub(super) fn live(&self) -> Option<&Live> {
        match &self.state {
            State::Live(live) => Some(live),
            State::Pending { .. } => None,
        }
    }

    /// Releases everything the socket holds (`reason`: why it ended). Once, at the end.
    pub(super) async fn finish(self, reason: &str) {
        if let State::Live(live) = self.state {
            (*live).finish(reason).await;
        }
    }
}

/// What the principal may do, as `authenticated` lists it.
fn permissions(identity: &Identity) -> Vec<String> {
    let mut p: Vec<String> = match &identity.projects {
        Projects::All => vec!["project:*".into()],
        Projects::Some(list) => list.iter().map(|id| format!("project:{id}")).collect(),
    };
    if identity.admin {
        p.push("admin".into());
    }
    p
}

impl Live {
    /// Makes `identity` a connection of the node in namespace `nsp`: permission,
    /// admission, the hub, the namespace's channels.
    async fn start(
        node: &Arc<Node>,
        nsp: &Nsp,
        path: &Arc<str>,
        sid: &Arc<str>,
        identity: Identity,
    ) -> Result<Live, ErrorBody> {
        if *nsp == Nsp::Admin && !identity.admin {
            return Err(ErrorBody::new(ErrorCode::Forbidden, "the admin namespace needs role admin"));
        }
        let channels = nsp.channels(&identity.principal);
        let timeout = ms(node.cfg.fabric.request_timeout_ms);
        for ch in &channels {
            node.access
                .may_subscribe(&identity, ch, None, &node.auth, &*node.bus, timeout)
                .await
                .map_err(|e| ErrorBody::from(&e))?;
        }
        let admission = Admission::take(node, sid.clone(), &identity.principal).await?;
        let limits = &node.cfg.limits;
        let target = SioTarget::new(path.clone(), nsp.kind());
        let (handle, outbox) = ConnHandle::with_target(
            node.next_conn_id(),
            sid.clone(),
            identity.principal.clone(),
            Encoding::Json,
            Some(Box::new(target)),
            limits.outbound_queue_frames,
            limits.outbound_queue_bytes,
        );
        node.membership.register(&handle);
        let leeway_ms = node.cfg.auth.leeway_secs.saturating_mul(1000);
        let expires = identity.expires_at_ms.map(|at| {
            Instant::now() + std::time::Duration::from_millis(at.saturating_add(leeway_ms).saturating_sub(now_ms()))
        });
        let mut live = Live {
            node: node.clone(),
            path: path.clone(),
            handle,
            outbox,
            identity,
            admission,
            channels: Vec::new(),
            limiter: FrameLimiter::new(&node.cfg.rate),
            expires,
            finished: false,
        };
        live.admission.open().await;
        for ch in channels {
            if let Err(e) = node.membership.join(&live.handle, &ch, None).await {
                live.finish("refused").await;
                return Err(e);
            }
            live.channels.push(ch);
        }
        Ok(live)
    }

    async fn finish(mut self, reason: &str) {
        let channels = std::mem::take(&mut self.channels);
        self.node.membership.close(&self.handle, &channels).await;
        self.admission.release(reason).await;
        self.outbox.discard();
        self.finished = true;
    }
}

impl Drop for Live {
    /// An engine task that ended without finishing its sockets (a panic, a dropped
    /// future) leaves no ghost: membership cleans the hub now and the fabric on a
    /// tracked task; the admission releases itself.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let channels = std::mem::take(&mut self.channels);
        self.node.membership.abandon(&self.handle, channels);
    }
}
