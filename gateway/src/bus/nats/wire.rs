//! Wire helpers of the NATS bus: event and reply bodies, gateway-set headers, error
//! mapping, reconnect backoff and credential redaction. Pure functions, unit-tested in
//! the parent module.

use std::time::Duration;

use async_nats::{
    HeaderMap, HeaderValue, Message,
    client::{PublishError, PublishErrorKind, RequestError, RequestErrorKind},
};
use gateway_protocol::{Channel, ErrorBody, ErrorCode, EventFrame, now_ms};
use serde::Serialize;
use serde_json::Value;

use super::{HDR_CONNECTION, HDR_NODE, HDR_PRINCIPAL_ID, HDR_PRINCIPAL_KIND, HDR_SIG, MAX_RECONNECT_DELAY, MSGPACK};
use crate::bus::{BusError, Correlation, Origin, WireEvent};

/// Reconnect backoff: immediately, then 100 ms doubling up to [`MAX_RECONNECT_DELAY`],
/// plus up to 25 % jitter so a fleet of nodes does not reconnect in lockstep.
pub(super) fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(10);
    let base = Duration::from_millis(100u64 << exp).min(MAX_RECONNECT_DELAY);
    let jitter = rand::random_range(0..=base.as_millis() as u64 / 4);
    base + Duration::from_millis(jitter)
}

/// Server addresses with any `user:password@` removed, for logs and `/health`.
pub(super) fn redact(urls: &str) -> String {
    let strip = |u: &str| match (u.find("://"), u.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &u[..s + 3], &u[at + 1..]),
        (None, Some(at)) => u[at + 1..].to_owned(),
        _ => u.to_owned(),
    };
    urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(strip).collect::<Vec<_>>().join(",")
}

/// `bad_request` as a bus error (the caller asked for something unsendable).
pub(super) fn bad_request(message: String) -> BusError {
    BusError::Backend(ErrorBody::new(ErrorCode::BadRequest, message))
}

/// Maps a publish failure: too large is the caller's fault, the rest is the fabric's.
pub(super) fn publish_error(e: PublishError) -> BusError {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => BusError::Backend(ErrorBody::new(ErrorCode::TooLarge, e.to_string())),
        _ => BusError::Unavailable(format!("nats publish: {e}")),
    }
}

/// Maps a request failure onto the contract's outcomes.
pub(super) fn request_error(e: RequestError, timeout: Duration) -> BusError {
    match e.kind() {
        RequestErrorKind::NoResponders => BusError::NoResponders,
        RequestErrorKind::TimedOut => BusError::Timeout(timeout),
        RequestErrorKind::MaxPayloadExceeded => BusError::Backend(ErrorBody::new(ErrorCode::TooLarge, e.to_string())),
        _ => BusError::Unavailable(format!("nats request: {e}")),
    }
}

/// The gateway-set identity headers of an upstream message or request. Values come from
/// the authenticated connection only; one that cannot be a header (CR/LF) is refused
/// rather than letting it forge another header.
pub(super) fn origin_headers(origin: &Origin<'_>) -> Result<HeaderMap, BusError> {
    let mut h = HeaderMap::new();
    let pairs = [
        (HDR_PRINCIPAL_KIND, origin.principal.kind.as_str()),
        (HDR_PRINCIPAL_ID, origin.principal.id.as_str()),
        (HDR_CONNECTION, origin.conn),
        (HDR_NODE, origin.node),
        ("Content-Type", "application/json"),
    ];
    for (name, value) in pairs {
        let v: HeaderValue = value.parse().map_err(|_| bad_request(format!("{name} cannot be a header value")))?;
        h.insert(name, v);
    }
    Ok(h)
}

/// Adds what the client said about an upstream message (contract §10). Only the
/// client's own frame fields reach here, and only values that are clean header values
/// (see [`Correlation::headers`]), so neither `data` nor a crafted id can set any other
/// header; a value the header type still refuses is left out.
pub(super) fn correlation_headers(h: &mut HeaderMap, c: &Correlation<'_>) {
    for (name, value) in c.headers() {
        if let Ok(v) = value.parse::<HeaderValue>() {
            h.insert(name, v);
        }
    }
}

/// Whether headers' `Content-Type` (any case, parameters ignored) is MessagePack.
pub(super) fn is_msgpack(headers: Option<&HeaderMap>) -> bool {
    headers.is_some_and(|h| {
        h.iter().any(|(name, values)| {
            AsRef::<str>::as_ref(name).eq_ignore_ascii_case("content-type")
                && values.iter().any(|v| {
                    let ct = v.as_str().split(';').next().unwrap_or_default().trim();
                    ct.eq_ignore_ascii_case(MSGPACK) || ct.eq_ignore_ascii_case("application/x-msgpack")
                })
        })
    })
}

/// Decodes an event body (JSON, or MessagePack per header) into a frame for `channel`.
/// A missing id stays empty (the caller names it: from its history position, or a fresh
/// uuid); a missing timestamp is now.
pub(crate) fn decode_body(
    channel: &Channel,
    payload: &[u8],
    headers: Option<&HeaderMap>,
) -> Result<EventFrame, String> {
    let wire: WireEvent = if is_msgpack(headers) {
        rmp_serde::from_slice(payload).map_err(|e| format!("msgpack: {e}"))?
    } else {
        serde_json::from_slice(payload).map_err(|e| format!("json: {e}"))?
    };
    Ok(EventFrame {
        channel: channel.clone(),
        event: wire.event,
        data: wire.data,
        id: wire.id.unwrap_or_default(),
        ts: wire.ts.unwrap_or_else(now_ms),
        from: wire.from,
        offset: None,
        epoch: None,
    })
}

/// A numeric header (`Nats-Sequence`, `Nats-Last-Sequence`).
pub(super) fn number(msg: &Message, name: &str) -> Option<u64> {
    msg.headers.as_ref()?.get(name)?.as_str().trim().parse().ok()
}

/// A reply body: the result, or `{"error":{"code","message"}}` as [`BusError::Backend`].
pub(super) fn parse_reply(payload: &[u8]) -> Result<Value, BusError> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| BusError::BadReply(format!("reply is not JSON: {e}")))?;
    match v.as_object().and_then(|o| o.get("error")).filter(|e| !e.is_null()) {
        Some(err) => Err(serde_json::from_value::<ErrorBody>(err.clone())
            .map_or_else(|e| BusError::BadReply(format!("malformed error body: {e}")), BusError::Backend)),
        None => Ok(v),
    }
}

/// The signature header of a message (the gateway's own events carry one).
pub(super) fn signature(msg: &Message) -> Option<&str> {
    msg.headers.as_ref()?.get(HDR_SIG).map(|v| v.as_str())
}

/// The event body this node publishes (borrowing, so publishing clones nothing).
#[derive(Serialize)]
pub(super) struct WireEventRef<'a> {
    /// Event name.
    pub(super) event: &'a str,
    /// Payload.
    pub(super) data: &'a Value,
    /// Message id, so every node delivers the same one.
    pub(super) id: &'a str,
    /// Acceptance time in ms.
    pub(super) ts: u64,
    /// The publishing client, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) from: Option<&'a gateway_protocol::Principal>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redacts_credentials() {
        assert_eq!(redact("nats://u:p@h:4222, nats://h2:4222"), "nats://h:4222,nats://h2:4222");
        assert_eq!(redact("tok@h:4222"), "h:4222");
    }

    #[test]
    fn backoff_is_bounded() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert!(reconnect_delay(2) >= Duration::from_millis(100));
        assert!(reconnect_delay(200) <= MAX_RECONNECT_DELAY + MAX_RECONNECT_DELAY / 4);
    }

    #[test]
    fn replies() {
        assert_eq!(parse_reply(br#"{"ok":1}"#), Ok(json!({"ok":1})));
        assert!(
            matches!(parse_reply(br#"{"error":{"code":"not_found","message":"x"}}"#), Err(BusError::Backend(b)) if b.code == ErrorCode::NotFound)
        );
        assert!(matches!(parse_reply(b"nope"), Err(BusError::BadReply(_))));
        assert!(matches!(parse_reply(br#"{"error":{"code":"weird"}}"#), Err(BusError::BadReply(_))));
    }
}
