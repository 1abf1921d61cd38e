//! Every `type` tag of the frames of both directions, read from the frames' own serde
//! derive: the enums' `Deserialize` impls know the tags they accept, and report them to
//! an error type that asks (see [`de::Error::unknown_variant`]). A variant added to
//! [`ClientFrame`] or [`ServerFrame`] is therefore listed here without anyone editing a
//! list; `tests/asyncapi.rs` holds `docs/asyncapi.yaml` to these lists.

use std::fmt;

use serde::de::{self, Deserialize, value::MapDeserializer};

use crate::frame::{ClientFrame, ServerFrame};

/// The error of the probe: the tags serde said it expected (empty for any other error).
#[derive(Debug)]
struct Expected(Vec<&'static str>);

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected one of {:?}", self.0)
    }
}

impl std::error::Error for Expected {}

impl de::Error for Expected {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        Expected(Vec::new())
    }

    fn unknown_variant(_variant: &str, expected: &'static [&'static str]) -> Self {
        Expected(expected.to_vec())
    }
}

/// The tags of an internally tagged (`#[serde(tag = "type")]`) enum: it is fed a map
/// whose tag names no variant, and its derive answers with the list of those it knows.
fn tags_of<T: for<'de> Deserialize<'de>>() -> Vec<&'static str> {
    let probe = MapDeserializer::<_, Expected>::new([("type", "\u{0}no such type")].into_iter());
    match T::deserialize(probe) {
        Err(Expected(tags)) => tags,
        Ok(_) => Vec::new(),
    }
}

/// Every `type` a client frame can have, in declaration order.
pub fn client_frame_types() -> Vec<&'static str> {
    tags_of::<ClientFrame>()
}

/// Every `type` a server frame can have, in declaration order.
pub fn server_frame_types() -> Vec<&'static str> {
    tags_of::<ServerFrame>()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{Encoding, ErrorBody, ErrorCode, frame::DisconnectReason};

    #[test]
    fn client_tags_are_the_kinds() {
        let types = client_frame_types();
        assert_eq!(types.len(), 8, "{types:?}");
        let decoded: Vec<&str> = [
            json!({"type":"authenticate","token":"t"}),
            json!({"type":"subscribe","channels":[]}),
            json!({"type":"unsubscribe","channels":[]}),
            json!({"type":"request","id":"r","method":"m"}),
            json!({"type":"publish","channel":"session:a","event":"e"}),
            json!({"type":"send","event":"e"}),
            json!({"type":"refresh","token":"t"}),
            json!({"type":"ping"}),
        ]
        .iter()
        .map(|v| Encoding::Json.decode(v.to_string().as_bytes(), false).map(|f| f.kind()).unwrap_or("?"))
        .collect();
        assert_eq!(decoded, types);
    }

    #[test]
    fn server_tags_are_the_kinds() {
        let frames = [
            ServerFrame::ok("r", json!(null)),
            ServerFrame::Ack { id: "a".into() },
            ServerFrame::Pong { ts: 1 },
            ServerFrame::Error { error: ErrorBody::new(ErrorCode::Internal, "x") },
            ServerFrame::Disconnecting { reason: DisconnectReason::Shutdown, reconnect: true },
            ServerFrame::Heartbeat { ts: 1 },
        ];
        let types = server_frame_types();
        assert_eq!(types.len(), 8, "{types:?}");
        for f in &frames {
            assert!(types.contains(&f.kind()), "{} missing from {types:?}", f.kind());
        }
        assert!(types.contains(&"connected") && types.contains(&"event"), "{types:?}");
    }
}
