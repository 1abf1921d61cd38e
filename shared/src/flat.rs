//! The flat compatibility shape (`gateway.v1.flat`, contract §4): frames as
//! `{"type","payload",…}` for dashboards and agents written against the Mission Control
//! API. Any client `type` other than `ping` and `authenticate` is an upstream `send`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    codec::DecodeError,
    event::EventName,
    frame::{ClientFrame, ClientTimestamp, Principal, PrincipalKind, ServerFrame},
};

/// A flat client frame as it arrives.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FlatIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    message_id: Option<String>,
    /// The client's correlation id (a string or a number), passed to backends.
    #[serde(default)]
    correlation_id: Option<Value>,
    /// The client's clock (ms or text), passed to backends.
    #[serde(default)]
    timestamp: Option<Value>,
    /// In-band authentication may carry the token beside `type` or inside `payload`.
    #[serde(default)]
    token: Option<String>,
}

/// Decodes a flat client frame.
pub fn decode(payload: &[u8]) -> Result<ClientFrame, DecodeError> {
    let f: FlatIn =
        serde_json::from_slice(payload).map_err(|e| DecodeError::bad_request(format!("invalid frame: {e}"), None))?;
    match f.kind.as_str() {
        "ping" => Ok(ClientFrame::Ping),
        "authenticate" => {
            let token = f
                .token
                .or_else(|| f.payload.get("token").and_then(Value::as_str).map(str::to_owned))
                .ok_or_else(|| DecodeError::bad_request("authenticate needs a token", f.message_id))?;
            Ok(ClientFrame::Authenticate { token })
        }
        "" => Err(DecodeError::bad_request("type must not be empty", f.message_id)),
        _ => match EventName::parse(f.kind) {
            Ok(event) => Ok(ClientFrame::Send {
                id: f.message_id,
                event,
                data: f.payload,
                correlation_id: f.correlation_id.as_ref().and_then(scalar_text),
                timestamp: f.timestamp.as_ref().and_then(ClientTimestamp::from_value),
            }),
            Err(e) => Err(DecodeError::bad_request(format!("type: {e}"), f.message_id)),
        },
    }
}

/// A string, or a number as its text; anything else is ignored (flat clients are loose).
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A flat server frame: the event name as `type`, the rest as `payload`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FlatOut<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    payload: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    /// Who published an event a client published, so a flat subscriber can tell it from
    /// a backend's or the gateway's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a Principal>,
    /// History offset of an event on a channel that keeps history.
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    /// Epoch of that offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
}

impl<'a> FlatOut<'a> {
    fn plain(kind: &'a str, payload: Value) -> Self {
        FlatOut {
            kind,
            payload,
            channel: None,
            timestamp: None,
            message_id: None,
            from: None,
            offset: None,
            epoch: None,
        }
    }
}

/// Encodes a server frame in the flat shape.
pub fn encode(frame: &ServerFrame) -> Vec<u8> {
    serde_json::to_vec(&shape(frame)).unwrap_or_default()
}

/// What [`encode`] would produce, serialised into `w` (sizes are counted this way).
pub(crate) fn write(w: impl std::io::Write, frame: &ServerFrame) {
    let _ = serde_json::to_writer(w, &shape(frame));
}

/// A server frame in the flat shape.
fn shape(frame: &ServerFrame) -> FlatOut<'_> {
    match frame {
        ServerFrame::Event(e) => FlatOut {
            kind: &e.event,
            payload: e.data.clone(),
            channel: Some(e.channel.as_str()),
            timestamp: Some(e.ts),
            message_id: Some(&e.id),
            from: e.from.as_ref(),
            offset: e.offset,
            epoch: e.epoch.as_deref(),
        },
        ServerFrame::Connected { connection_id, principal, .. } => {
            let who = match principal.kind {
                PrincipalKind::User => "userId",
                PrincipalKind::Agent => "agentId",
            };
            FlatOut::plain("connected", json!({ "connectionId": connection_id, who: principal.id }))
        }
        ServerFrame::Heartbeat { ts } => FlatOut::plain("heartbeat", json!({ "timestamp": ts })),
        ServerFrame::Pong { ts } => FlatOut::plain("pong", json!({ "timestamp": ts })),
        ServerFrame::Ack { id } => FlatOut::plain("ack", json!({ "messageId": id })),
        ServerFrame::Error { error } => FlatOut::plain("error", json!(error)),
        // A failure answering a frame with an id (a `send` with `messageId`) is the
        // flat `error`, naming that id.
        ServerFrame::Response { id, error: Some(e), .. } => {
            let mut p = json!(e);
            p["messageId"] = json!(id);
            FlatOut::plain("error", p)
        }
        ServerFrame::Response { id, result, error: None } => {
            FlatOut::plain("response", json!({ "id": id, "result": result }))
        }
        ServerFrame::Disconnecting { reason, reconnect } => {
            FlatOut::plain("disconnecting", json!({ "reason": reason, "reconnect": reconnect }))
        }
    }
}
