//! The three encodings and the bytes ↔ frame conversions. The server encodes each event
//! once per encoding in use and shares the bytes between subscribers, so encoding works on
//! a borrowed frame and returns reference-counted [`Bytes`].

use bytes::Bytes;
use serde::Deserialize;

use crate::{
    error::ErrorCode,
    event::{MAX_DATA_DEPTH, depth_within},
    flat,
    frame::{ClientFrame, EventFrame, ServerFrame},
};

/// How frames are encoded on one connection; chosen at the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// Canonical frames as JSON text (`gateway.v1.json`, the default).
    #[default]
    Json,
    /// Canonical frames as MessagePack maps in binary frames (`gateway.v1.msgpack`).
    MsgPack,
    /// The Mission Control compatibility shape as JSON text (`gateway.v1.flat`).
    Flat,
}

/// An encoded server frame, ready to become one WebSocket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The payload; cloning shares it.
    pub bytes: Bytes,
    /// True for a binary WebSocket message (MessagePack), false for text (always UTF-8).
    pub binary: bool,
}

/// A client frame that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DecodeError {
    /// `bad_request` for malformed input.
    pub code: ErrorCode,
    /// What was wrong, for people.
    pub message: String,
    /// The frame's `id`, when one could still be read, so the error can be a `response`.
    pub id: Option<String>,
}

impl DecodeError {
    /// A `bad_request` decode error.
    pub fn bad_request(message: impl Into<String>, id: Option<String>) -> Self {
        DecodeError { code: ErrorCode::BadRequest, message: message.into(), id }
    }
}

impl Encoding {
    /// Every encoding, in a fixed order (index with [`Encoding::index`]).
    pub const ALL: [Encoding; 3] = [Encoding::Json, Encoding::MsgPack, Encoding::Flat];

    /// Position in [`Encoding::ALL`], for per-encoding caches.
    pub fn index(self) -> usize {
        match self {
            Encoding::Json => 0,
            Encoding::MsgPack => 1,
            Encoding::Flat => 2,
        }
    }

    /// The `Sec-WebSocket-Protocol` name.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => "gateway.v1.json",
            Encoding::MsgPack => "gateway.v1.msgpack",
            Encoding::Flat => "gateway.v1.flat",
        }
    }

    /// The `?format=` name and metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::MsgPack => "msgpack",
            Encoding::Flat => "flat",
        }
    }

    /// The encoding a subprotocol names.
    pub fn from_subprotocol(s: &str) -> Option<Self> {
        Encoding::ALL.into_iter().find(|e| e.subprotocol() == s.trim())
    }

    /// The encoding a `?format=` value names.
    pub fn from_format(s: &str) -> Option<Self> {
        Encoding::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// Whether frames travel as binary WebSocket messages.
    pub fn is_binary(self) -> bool {
        matches!(self, Encoding::MsgPack)
    }

    /// Encodes a server frame.
    pub fn encode(self, frame: &ServerFrame) -> Encoded {
        let bytes = match self {
            // Serialising our own frame types into memory cannot fail: every map key is a
            // string and no Serialize impl errors.
            Encoding::Json => serde_json::to_vec(frame).unwrap_or_default(),
            Encoding::MsgPack => rmp_serde::to_vec_named(frame).unwrap_or_default(),
            Encoding::Flat => flat::encode(frame),
        };
        Encoded { bytes: Bytes::from(bytes), binary: self.is_binary() }
    }

    /// Decodes a client frame. `binary` says which kind of WebSocket message carried it.
    /// Payloads (`data`, `params`) nesting deeper than [`MAX_DATA_DEPTH`] are refused.
    pub fn decode(self, payload: &[u8], binary: bool) -> Result<ClientFrame, DecodeError> {
        if binary != self.is_binary() {
            let want = if self.is_binary() { "binary" } else { "text" };
            return Err(DecodeError::bad_request(format!("{} frames travel as {want} messages", self.as_str()), None));
        }
        let frame = match self {
            Encoding::Json => serde_json::from_slice(payload).map_err(|e| {
                let id = serde_json::from_slice::<IdOnly>(payload).ok().and_then(|i| i.id);
                DecodeError::bad_request(format!("invalid frame: {e}"), id)
            }),
            Encoding::MsgPack => msgpack_bounded::<ClientFrame>(payload).map_err(|e| {
                let id = msgpack_bounded::<IdOnly>(payload).ok().and_then(|i| i.id);
                DecodeError::bad_request(format!("invalid frame: {e}"), id)
            }),
            Encoding::Flat => flat::decode(payload),
        }?;
        let (id, value) = match &frame {
            ClientFrame::Publish { id, data, .. } | ClientFrame::Send { id, data, .. } => (id.clone(), data),
            ClientFrame::Request { id, params, .. } => (Some(id.clone()), params),
            _ => return Ok(frame),
        };
        if !depth_within(value, MAX_DATA_DEPTH) {
            return Err(DecodeError::bad_request(format!("payload nests deeper than {MAX_DATA_DEPTH} levels"), id));
        }
        Ok(frame)
    }
}

/// The size of an event frame in the largest of the three encodings: what one copy of
/// it weighs in a subscriber's queue at worst. A payload can grow several times over when
/// re-encoded (a MessagePack string of control bytes becomes `\u0001…` in JSON), so
/// bounds are checked on this, never on the size the publisher sent.
pub fn max_encoded_len(ev: &EventFrame) -> usize {
    /// Counts bytes instead of storing them.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let frame = ServerFrame::Event(ev.clone());
    let mut json = Count(0);
    let _ = serde_json::to_writer(&mut json, &frame);
    let mut msgpack = Count(0);
    let _ = rmp_serde::encode::write_named(&mut msgpack, &frame);
    let mut flat = Count(0);
    flat::write(&mut flat, &frame);
    json.0.max(msgpack.0).max(flat.0)
}

/// Decodes MessagePack nesting at most as deep as a frame around a payload of
/// [`MAX_DATA_DEPTH`] may: deeper input fails before it can exhaust the stack (the
/// decoder recurses once per level, also for the fields it skips).
fn msgpack_bounded<'de, T: Deserialize<'de>>(payload: &'de [u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(payload);
    // The frame's own map and its payload field sit above the payload.
    de.set_max_depth(MAX_DATA_DEPTH + 2);
    T::deserialize(&mut de)
}

/// Reads just the `id` of a frame that failed to decode, to answer it as a `response`.
#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{channel::Channel, frame::ServerFrame};

    /// Found by the `msgpack` fuzz target: without serde_json's `float_roundtrip`, a
    /// JSON payload float could be parsed one ULP off, so subscribers got another number
    /// than the publisher sent.
    #[test]
    fn payload_floats_cross_the_gateway_exactly() {
        for text in ["-5.432046065895415e-109", "2.2250738585072014e-308", "0.1", "1.7976931348623157e+308"] {
            let frame = format!(r#"{{"type":"publish","channel":"session:a","event":"e","data":{text}}}"#);
            let Ok(ClientFrame::Publish { event, data, .. }) = Encoding::Json.decode(frame.as_bytes(), false) else {
                panic!("{frame} decodes");
            };
            assert_eq!(data.to_string(), text);
            let exact: f64 = text.parse().expect("a float");
            assert_eq!(data.as_f64().map(f64::to_bits), Some(exact.to_bits()), "{text}");
            let ev = EventFrame {
                channel: Channel::parse("session:a").expect("valid"),
                event,
                data,
                id: "m".into(),
                ts: 1,
                from: None,
                offset: None,
                epoch: None,
            };
            let out = Encoding::Json.encode(&ServerFrame::Event(ev));
            let back: ServerFrame = serde_json::from_slice(&out.bytes).expect("decodes");
            let ServerFrame::Event(back) = back else { panic!("an event") };
            assert_eq!(back.data.as_f64().map(f64::to_bits), Some(exact.to_bits()), "{text}");
        }
    }
}
