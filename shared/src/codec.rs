//! The three encodings and the bytes ↔ frame conversions. The server encodes each event
//! once per encoding in use and shares the bytes between subscribers, so encoding works on
//! a borrowed frame and returns reference-counted [`Bytes`].

use bytes::Bytes;
use serde::Deserialize;

use crate::{
    error::ErrorCode,
    flat,
    frame::{ClientFrame, ServerFrame},
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
    pub fn decode(self, payload: &[u8], binary: bool) -> Result<ClientFrame, DecodeError> {
        if binary != self.is_binary() {
            let want = if self.is_binary() { "binary" } else { "text" };
            return Err(DecodeError::bad_request(format!("{} frames travel as {want} messages", self.as_str()), None));
        }
        match self {
            Encoding::Json => serde_json::from_slice(payload).map_err(|e| {
                let id = serde_json::from_slice::<IdOnly>(payload).ok().and_then(|i| i.id);
                DecodeError::bad_request(format!("invalid frame: {e}"), id)
            }),
            Encoding::MsgPack => rmp_serde::from_slice(payload).map_err(|e| {
                let id = rmp_serde::from_slice::<IdOnly>(payload).ok().and_then(|i| i.id);
                DecodeError::bad_request(format!("invalid frame: {e}"), id)
            }),
            Encoding::Flat => flat::decode(payload),
        }
    }
}

/// Reads just the `id` of a frame that failed to decode, to answer it as a `response`.
#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<String>,
}
