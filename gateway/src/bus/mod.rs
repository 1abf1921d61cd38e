//! The event bus: how nodes, backends and the control plane reach each other.
//!
//! [`Bus`] is the seam between the connection logic and the fabric. [`memory::MemoryBus`]
//! is the in-process twin used by an embedded single node; [`nats::NatsBus`] maps the
//! same operations onto NATS subjects (contract §5). Inbound traffic (events, control
//! commands) reaches the node through [`Inbound`], so no bus knows about connections.

pub mod memory;
pub mod nats;

use std::time::Duration;

use async_trait::async_trait;
use gateway_protocol::{Channel, ErrorBody, EventFrame, EventName, Principal, PrincipalKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[cfg(doc)]
use crate::lifecycle::HookBody;
use crate::lifecycle::HookKind;

/// Why a bus operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BusError {
    /// No backend answered within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Nobody listens on the subject.
    #[error("no backend is listening")]
    NoResponders,
    /// The fabric is unreachable.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with an error body.
    #[error("backend error: {}", .0.message)]
    Backend(ErrorBody),
    /// The backend's answer could not be decoded.
    #[error("bad backend reply: {0}")]
    BadReply(String),
}

/// Header carrying the client's id of an upstream `send` (its `id`, flat `messageId`).
pub const HDR_MESSAGE_ID: &str = "Gw-Message-Id";
/// Header carrying the client's `correlationId` of an upstream `send`.
pub const HDR_CORRELATION_ID: &str = "Gw-Correlation-Id";
/// Header carrying the client's `timestamp` of an upstream `send`, as it came.
pub const HDR_CLIENT_TS: &str = "Gw-Client-Ts";
/// Longest client value passed on as a correlation header; longer ones are left out.
pub const MAX_CORRELATION_LEN: usize = 256;

/// What a client said about an upstream `send`, passed to backends as headers
/// (contract §10). Carried, never trusted: a value that could not be a header value
/// (control characters, over [`MAX_CORRELATION_LEN`]) is left out, so client data can
/// neither forge another header nor bloat the message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Correlation<'a> {
    /// The frame's id (`Gw-Message-Id`).
    pub message_id: Option<&'a str>,
    /// The client's correlation id (`Gw-Correlation-Id`).
    pub correlation_id: Option<&'a str>,
    /// The client's timestamp, as text (`Gw-Client-Ts`).
    pub client_ts: Option<String>,
}

impl Correlation<'_> {
    /// The headers to set: (name, value) for each value present and acceptable.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (HDR_MESSAGE_ID, self.message_id),
            (HDR_CORRELATION_ID, self.correlation_id),
            (HDR_CLIENT_TS, self.client_ts.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, v)| Some((name, v.filter(|v| header_safe(v))?)))
    }
}

/// Whether a client value may travel as a header value: 1–[`MAX_CORRELATION_LEN`]
/// bytes, no control characters (so no CR/LF to start another header).
fn header_safe(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_CORRELATION_LEN && !v.chars().any(char::is_control)
}

/// Who originates an upstream message: the authenticated connection (the same
/// reference presence uses), set by the gateway, never from client data.
pub type Origin<'a> = crate::presence::ConnRef<'a>;

/// Body of `gw.ctl.disconnect`: close a principal's connections on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisconnectCommand {
    /// User or agent.
    pub kind: PrincipalKind,
    /// Its id.
    pub id: String,
    /// Free text for logs; `revoked` makes the notice say the key was revoked.
    #[serde(default)]
    pub reason: String,
}

/// Event body on `gw.ev.…` subjects (JSON, or MessagePack with `Content-Type:
/// application/msgpack`). `id` and `ts` are set by gateways; a backend may omit them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireEvent {
    /// Event name (the protocol's grammar; a body with another name is dropped).
    pub event: EventName,
    /// Payload.
    #[serde(default)]
    pub data: Value,
    /// Message id; assigned by the receiving node when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Publish time in ms; the receiving node's clock when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// The publishing client, when a client published it through a gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Principal>,
}

/// Health of one fabric component for `/health`, `/ready` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentHealth {
    /// `embedded`, `connected` or `disconnected`.
    pub status: &'static str,
    /// Server address or last error, for operators.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl ComponentHealth {
    /// The in-process twin: always up.
    pub fn embedded() -> Self {
        ComponentHealth { status: "embedded", detail: String::new() }
    }

    /// Whether the component works (embedded or connected).
    pub fn is_up(&self) -> bool {
        self.status != "disconnected"
    }
}

/// What a bus delivers into the node.
pub trait Inbound: Send + Sync + 'static {
    /// An event for a channel (fan it out locally).
    fn event(&self, ev: EventFrame);
    /// A disconnect command.
    fn control(&self, cmd: DisconnectCommand);
    /// Whether the node has a local subscriber for `ch` (the truth interest follows).
    fn has_subscribers(&self, ch: &Channel) -> bool;
}

/// The operations a node needs from the fabric.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Makes the node's subscription for `ch` match [`Inbound::has_subscribers`]; called
    /// after a channel's first local subscriber joins or its last leaves. Idempotent, so
    /// concurrent calls in any order converge on the truth.
    async fn sync_interest(&self, ch: &Channel) -> Result<(), BusError>;
    /// Publishes an event to every node with a subscriber.
    async fn publish(&self, ev: &EventFrame) -> Result<(), BusError>;
    /// Sends a client's upstream event to backends, with what the client said about it.
    async fn send_upstream(
        &self,
        origin: &Origin<'_>,
        event: &str,
        data: &Value,
        correlation: &Correlation<'_>,
    ) -> Result<(), BusError>;
    /// Asks a backend method and waits for its result.
    async fn request(
        &self,
        origin: &Origin<'_>,
        method: &str,
        params: &Value,
        timeout: Duration,
    ) -> Result<Value, BusError>;
    /// Asks backends whether `principal` may join `ch` (the `proxy` policy).
    async fn authorize_subscribe(
        &self,
        principal: &Principal,
        ch: &Channel,
        timeout: Duration,
    ) -> Result<bool, BusError>;
    /// Closes a principal's connections on every node.
    async fn disconnect(&self, cmd: &DisconnectCommand) -> Result<(), BusError>;
    /// Tells backends that `origin` opened or closed (`<prefix>.lc.<kind>`, body
    /// [`HookBody`]). Without a fabric there is no backend to tell.
    async fn hook(&self, _kind: HookKind, _origin: &Origin<'_>, _reason: Option<&str>) -> Result<(), BusError> {
        Ok(())
    }
    /// Reachability, for health and readiness.
    fn health(&self) -> ComponentHealth;
}

/// The upstream subject for an event name: `status:update` → `<prefix>.up.status.update`.
/// Returns `None` when the name cannot be a subject (empty tokens, wildcards, spaces).
pub fn upstream_subject(prefix: &str, event: &str) -> Option<String> {
    let tokens: Vec<&str> = event.split([':', '.']).collect();
    let ok = tokens.iter().all(|t| {
        !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    (ok && tokens.len() <= 8).then(|| format!("{prefix}.up.{}", tokens.join(".")))
}

/// The RPC subject for a method: `sessions.create` → `<prefix>.rpc.sessions.create`.
pub fn rpc_subject(prefix: &str, method: &str) -> Option<String> {
    upstream_subject(prefix, method).map(|s| s.replacen(".up.", ".rpc.", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_headers_carry_only_clean_values() {
        let c = Correlation {
            message_id: Some("m1"),
            correlation_id: Some("c\r\nGw-Principal-Id: admin"),
            client_ts: Some("1707163200000".into()),
        };
        let got: Vec<_> = c.headers().collect();
        assert_eq!(got, vec![(HDR_MESSAGE_ID, "m1"), (HDR_CLIENT_TS, "1707163200000")]);
        let long = "x".repeat(MAX_CORRELATION_LEN + 1);
        let c = Correlation { message_id: Some(&long), correlation_id: Some(""), client_ts: None };
        assert_eq!(c.headers().count(), 0);
        assert_eq!(Correlation::default().headers().count(), 0);
    }

    #[test]
    fn subjects() {
        assert_eq!(upstream_subject("gw", "status:update").as_deref(), Some("gw.up.status.update"));
        assert_eq!(upstream_subject("gw", "task.completed").as_deref(), Some("gw.up.task.completed"));
        assert_eq!(upstream_subject("gw", "a:>"), None);
        assert_eq!(upstream_subject("gw", "a b"), None);
        assert_eq!(upstream_subject("gw", "a::b"), None);
        assert_eq!(rpc_subject("gw", "sessions.create").as_deref(), Some("gw.rpc.sessions.create"));
    }
}
