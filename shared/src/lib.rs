//! The gateway's wire protocol: what a client, an agent or a backend can rely on.
//!
//! This crate is pure data: channel names and their NATS subjects, the typed frames of
//! both directions, the error and close codes, and the three encodings (canonical JSON,
//! MessagePack, and the flat compatibility shape). It does no I/O so the server, the
//! client SDK and the tests share one definition of every byte on the wire.

pub mod channel;
pub mod codec;
pub mod error;
pub mod event;
pub mod flat;
pub mod frame;
pub mod history;

pub use channel::{Channel, ChannelError, Namespace};
pub use codec::{DecodeError, Encoded, Encoding, max_encoded_len};
pub use error::{CloseCode, ErrorBody, ErrorCode};
pub use event::{EventName, EventNameError, MAX_DATA_DEPTH, SystemEvent};
pub use frame::{ClientFrame, DisconnectReason, EventFrame, Principal, PrincipalKind, ServerFrame, StreamPosition};
pub use history::{HISTORY_GET, HistoryPage, HistoryQuery};

/// Milliseconds since the Unix epoch, the unit of every `ts` on the wire.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
