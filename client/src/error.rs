//! What a call on a [`crate::Gateway`] can fail with, and why a gateway stopped for good.

use std::time::Duration;

use gateway_protocol::{DisconnectReason, ErrorBody, EventNameError};
use serde_json::Value;

use crate::{config::ConfigError, credentials::CredentialsError, queue::QueueError};

/// Why the gateway stopped and will not reconnect.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StopReason {
    /// [`crate::Gateway::close`] was called (or every handle dropped).
    #[error("closed by the application")]
    Closed,
    /// The handshake was refused with a status retrying cannot fix (400, 401, 403, 404).
    #[error("handshake refused with HTTP {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The `{"code","message"}` body.
        body: Value,
    },
    /// The server closed with a terminal code (4001, 4003, 4010).
    #[error("closed by the server with {code} {reason}")]
    CloseCode {
        /// The close code.
        code: u16,
        /// The close reason, often empty.
        reason: String,
    },
    /// The server announced `disconnecting{reconnect:false}` (kicked, revoked, rate
    /// limited, protocol errors).
    #[error("the server disconnected us ({reason:?}) and asked us not to reconnect")]
    Notice {
        /// The announced reason.
        reason: DisconnectReason,
        /// The close code that followed, if any.
        code: Option<u16>,
    },
    /// The retry limit was used up.
    #[error("gave up after {attempts} reconnect attempts; last: {last}")]
    RetriesExhausted {
        /// Attempts made in a row.
        attempts: u32,
        /// What the last attempt failed with.
        last: String,
    },
    /// The credentials can never work again (an expired static JWT).
    #[error("credentials: {0}")]
    Credentials(CredentialsError),
    /// The URL or a header is unusable.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The connection was lost and reconnecting is turned off.
    #[error("connection lost and reconnect is off: {0}")]
    Lost(String),
}

impl StopReason {
    /// The close code the server ended with, if that is why.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            StopReason::CloseCode { code, .. } => Some(*code),
            StopReason::Notice { code, .. } => *code,
            _ => None,
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GatewayError {
    /// The connection dropped after the frame was written and before its answer; it is
    /// not resent (the server may or may not have acted on it).
    #[error("disconnected before the answer arrived")]
    Disconnected,
    /// No answer in time (for a request: including time spent waiting for a connection).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server answered with an error.
    #[error("server error {}: {}", .0.code, .0.message)]
    Server(ErrorBody),
    /// The gateway stopped (closed, or a terminal refusal or close code).
    #[error("gateway stopped: {0}")]
    Stopped(StopReason),
    /// The offline queue refused or evicted the message.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Not connected and the offline queue is off.
    #[error("not connected (the offline queue is off)")]
    NotConnected,
    /// The event name breaks the grammar; nothing was sent.
    #[error("bad event name: {0}")]
    EventName(#[from] EventNameError),
    /// The answer did not have the expected shape.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl GatewayError {
    /// The server's error body, when the server refused.
    pub fn server_error(&self) -> Option<&ErrorBody> {
        match self {
            GatewayError::Server(b) => Some(b),
            _ => None,
        }
    }
}
