//! Typed frames of both directions (contract §2). The canonical JSON and MessagePack
//! encodings are these types' serde form; the flat shape is in [`crate::flat`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{channel::Channel, error::ErrorBody, event::EventName};

/// A frame a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", rename_all_fields = "camelCase")]
pub enum ClientFrame {
    /// In-band credentials, for clients that could not authenticate at the handshake.
    Authenticate {
        /// A JWT or an agent API key.
        token: String,
    },
    /// Join channels; each is accepted or rejected on its own.
    Subscribe {
        /// Correlates the response.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// Channel names; validated one by one so one bad name rejects only itself.
        channels: Vec<String>,
        /// A channel JWT for `session:` channels under the `token` policy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Channel → the last position the client saw: the events after it are replayed
        /// before live ones (contract §9). The response says which could be.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        recover: BTreeMap<String, StreamPosition>,
    },
    /// Leave channels.
    Unsubscribe {
        /// Correlates the response.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// Channel names.
        channels: Vec<String>,
    },
    /// Ask a built-in method or a backend for a result.
    Request {
        /// Correlates the response; required because the response is useless without it.
        id: String,
        /// `presence.get`, `presence.stats`, `channels.list`, or a backend method.
        method: String,
        /// Method arguments.
        #[serde(default)]
        params: Value,
    },
    /// Publish an event on a channel (where the namespace allows client publishes).
    Publish {
        /// Correlates the ack.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The channel name.
        channel: String,
        /// The event name, e.g. `typing`.
        event: EventName,
        /// The payload.
        #[serde(default)]
        data: Value,
    },
    /// Send an event upstream to backends (agents' `status:update` and friends).
    Send {
        /// Correlates the ack; passed to backends as `Gw-Message-Id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The event name, e.g. `status:update`.
        event: EventName,
        /// The payload.
        #[serde(default)]
        data: Value,
        /// The client's own correlation id; passed to backends as `Gw-Correlation-Id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        correlation_id: Option<String>,
        /// The client's clock when it sent the frame; passed to backends as `Gw-Client-Ts`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timestamp: Option<ClientTimestamp>,
    },
    /// Replace the connection's token before it expires.
    Refresh {
        /// When set, the outcome is answered as a `response` with this id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The new JWT.
        token: String,
    },
    /// Application-level keep-alive; answered with `pong`.
    Ping,
}

impl ClientFrame {
    /// The frame's `type`, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Authenticate { .. } => "authenticate",
            ClientFrame::Subscribe { .. } => "subscribe",
            ClientFrame::Unsubscribe { .. } => "unsubscribe",
            ClientFrame::Request { .. } => "request",
            ClientFrame::Publish { .. } => "publish",
            ClientFrame::Send { .. } => "send",
            ClientFrame::Refresh { .. } => "refresh",
            ClientFrame::Ping => "ping",
        }
    }
}

/// A client's own timestamp on an upstream `send`: ms since the epoch (`Date.now()`) or
/// text (an ISO 8601 string, say). The gateway passes it on as it came; it never trusts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClientTimestamp {
    /// Milliseconds since the Unix epoch.
    Millis(u64),
    /// Any other text the client uses.
    Text(String),
}

impl ClientTimestamp {
    /// From a flat frame's loosely typed `timestamp`: an integer or a string; a
    /// fractional number is kept as its text; anything else is ignored.
    pub fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Number(n) => Some(n.as_u64().map_or_else(|| ClientTimestamp::Text(n.to_string()), Self::Millis)),
            Value::String(s) => Some(ClientTimestamp::Text(s.clone())),
            _ => None,
        }
    }

    /// The text passed to backends.
    pub fn to_text(&self) -> String {
        match self {
            ClientTimestamp::Millis(ms) => ms.to_string(),
            ClientTimestamp::Text(s) => s.clone(),
        }
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    /// A person, authenticated by JWT.
    User,
    /// An AI agent, authenticated by API key (or a JWT naming an agent).
    Agent,
}

impl PrincipalKind {
    /// `user` or `agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Agent => "agent",
        }
    }
}

/// The identity a connection acts as.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Principal {
    /// User or agent.
    pub kind: PrincipalKind,
    /// The user id (`sub`) or agent id.
    pub id: String,
}

/// Why the server is about to close a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// The node is shutting down or draining; reconnect (to another node).
    Shutdown,
    /// The token expired without a `refresh`.
    TokenExpired,
    /// An operator or backend disconnected this principal.
    Kicked,
    /// The agent's API key was revoked.
    Revoked,
    /// The client kept exceeding its rate limit.
    RateLimited,
    /// The client sent too many malformed frames.
    ProtocolErrors,
}

/// A place in a channel's history: an event's offset and the epoch of the store that
/// issued it. Offsets grow along a channel; a new epoch means the store was reset and
/// older offsets mean nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The event's offset.
    pub offset: u64,
    /// The store incarnation.
    pub epoch: String,
}

/// A channel event as delivered to subscribers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFrame {
    /// The channel it was published on.
    pub channel: Channel,
    /// The event name, e.g. `message.created` or `agent:status`.
    pub event: EventName,
    /// The payload, as the publisher sent it.
    pub data: Value,
    /// A unique message id, for de-duplication by clients.
    pub id: String,
    /// When the gateway accepted it, ms since epoch.
    pub ts: u64,
    /// Who published it, set by the gateway for events a client published (never by
    /// the client); absent for events from backends and the gateway itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Principal>,
    /// Its offset in the channel's history; set on channels that keep history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The epoch of the store that issued `offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

impl EventFrame {
    /// Its history position, when the channel keeps history.
    pub fn position(&self) -> Option<StreamPosition> {
        Some(StreamPosition { offset: self.offset?, epoch: self.epoch.clone()? })
    }
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", rename_all_fields = "camelCase")]
pub enum ServerFrame {
    /// First frame after authentication.
    Connected {
        /// Unique id of this connection (also in upstream headers and logs).
        connection_id: String,
        /// Who the connection acts as.
        principal: Principal,
        /// The node holding the connection.
        node: String,
        /// How often the server pings.
        heartbeat_ms: u64,
    },
    /// The answer to a `subscribe`, `unsubscribe` or `request`.
    Response {
        /// The request's id.
        id: String,
        /// Present on success.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Value>,
        /// Present on failure.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorBody>,
    },
    /// A channel event.
    Event(EventFrame),
    /// A `publish` or `send` was accepted.
    Ack {
        /// The frame's id.
        id: String,
    },
    /// The answer to `ping`.
    Pong {
        /// Server time, ms since epoch.
        ts: u64,
    },
    /// A frame failed and had no usable id to answer on.
    Error {
        /// What went wrong.
        error: ErrorBody,
    },
    /// The server will close the connection next.
    Disconnecting {
        /// Why.
        reason: DisconnectReason,
        /// Whether reconnecting makes sense (true for shutdown).
        reconnect: bool,
    },
    /// Periodic liveness frame; sent only in the flat shape, whose clients expect it.
    Heartbeat {
        /// Server time, ms since epoch.
        ts: u64,
    },
}

impl ServerFrame {
    /// The frame's `type`, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Connected { .. } => "connected",
            ServerFrame::Response { .. } => "response",
            ServerFrame::Event(_) => "event",
            ServerFrame::Ack { .. } => "ack",
            ServerFrame::Pong { .. } => "pong",
            ServerFrame::Error { .. } => "error",
            ServerFrame::Disconnecting { .. } => "disconnecting",
            ServerFrame::Heartbeat { .. } => "heartbeat",
        }
    }

    /// A successful response.
    pub fn ok(id: impl Into<String>, result: Value) -> Self {
        ServerFrame::Response { id: id.into(), result: Some(result), error: None }
    }

    /// A failed response.
    pub fn err(id: impl Into<String>, error: ErrorBody) -> Self {
        ServerFrame::Response { id: id.into(), result: None, error: Some(error) }
    }
}
