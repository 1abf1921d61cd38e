//! Error codes carried in frames and close codes carried by WebSocket close frames.

use serde::{Deserialize, Serialize};

/// The machine-readable error codes of the contract (§2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be decoded or is missing a field.
    BadRequest,
    /// No or invalid credentials.
    Unauthorized,
    /// The credentials were valid once and have expired.
    TokenExpired,
    /// Authenticated, but not allowed to do this.
    Forbidden,
    /// Not a valid `<namespace>:<id>`.
    BadChannel,
    /// The thing asked for does not exist.
    NotFound,
    /// Too many frames; `retryAfterMs` says when to try again.
    RateLimited,
    /// The frame or payload is larger than allowed.
    TooLarge,
    /// A count limit (channels, connections) is reached.
    LimitExceeded,
    /// A backend did not answer in time.
    Timeout,
    /// No backend is there to answer, or the fabric is down.
    Unavailable,
    /// A fault of the gateway's own.
    Internal,
}

impl ErrorCode {
    /// The wire name, e.g. `bad_channel`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"code","message"}` with an optional `retryAfterMs`: the body of every error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    /// For `rate_limited`: how long until a frame would be accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorBody {
    /// An error without a retry hint.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody { code, message: message.into(), retry_after_ms: None }
    }
}

impl From<&crate::channel::ChannelError> for ErrorBody {
    fn from(e: &crate::channel::ChannelError) -> Self {
        ErrorBody::new(ErrorCode::BadChannel, e.to_string())
    }
}

impl From<&crate::codec::DecodeError> for ErrorBody {
    fn from(e: &crate::codec::DecodeError) -> Self {
        ErrorBody::new(e.code, e.message.clone())
    }
}

/// WebSocket close codes of the contract (§6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the client or server is done.
    Normal,
    /// 1001: the node is shutting down or draining; reconnect elsewhere.
    GoingAway,
    /// 1002: the peer broke the WebSocket protocol (reserved bits, an unmasked or
    /// malformed frame).
    ProtocolViolation,
    /// 1007: a text message that is not valid UTF-8.
    InvalidPayload,
    /// 1008: a policy (e.g. origin) forbids the connection.
    Policy,
    /// 1009: a frame exceeded the size limit.
    TooBig,
    /// 1011: an internal fault.
    Internal,
    /// 4000: too many protocol errors.
    ProtocolErrors,
    /// 4001: unauthorized, or no `authenticate` within the auth timeout.
    Unauthorized,
    /// 4002: the token expired and was not refreshed.
    TokenExpired,
    /// 4003: forbidden.
    Forbidden,
    /// 4004: a connection limit was reached.
    ConnectionLimit,
    /// 4008: the rate limit was exceeded persistently.
    RateLimited,
    /// 4009: the client did not read fast enough and its queue overflowed.
    SlowConsumer,
    /// 4010: disconnected by an operator or backend (kick, key revoked).
    Disconnected,
}

impl CloseCode {
    /// Every close code, for tables and metrics.
    pub const ALL: [CloseCode; 15] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolViolation,
        CloseCode::InvalidPayload,
        CloseCode::Policy,
        CloseCode::TooBig,
        CloseCode::Internal,
        CloseCode::ProtocolErrors,
        CloseCode::Unauthorized,
        CloseCode::TokenExpired,
        CloseCode::Forbidden,
        CloseCode::ConnectionLimit,
        CloseCode::RateLimited,
        CloseCode::SlowConsumer,
        CloseCode::Disconnected,
    ];

    /// The numeric code sent in the close frame.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolViolation => 1002,
            CloseCode::InvalidPayload => 1007,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::ProtocolErrors => 4000,
            CloseCode::Unauthorized => 4001,
            CloseCode::TokenExpired => 4002,
            CloseCode::Forbidden => 4003,
            CloseCode::ConnectionLimit => 4004,
            CloseCode::RateLimited => 4008,
            CloseCode::SlowConsumer => 4009,
            CloseCode::Disconnected => 4010,
        }
    }

    /// A short reason, sent as the close frame's text and used as a metrics label.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "going_away",
            CloseCode::ProtocolViolation => "protocol_violation",
            CloseCode::InvalidPayload => "invalid_payload",
            CloseCode::Policy => "policy",
            CloseCode::TooBig => "too_big",
            CloseCode::Internal => "internal",
            CloseCode::ProtocolErrors => "protocol_errors",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::Forbidden => "forbidden",
            CloseCode::ConnectionLimit => "connection_limit",
            CloseCode::RateLimited => "rate_limited",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::Disconnected => "disconnected",
        }
    }

    /// The close code for a numeric value, if it is one of ours.
    pub fn from_code(code: u16) -> Option<Self> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
        }
        assert_eq!(CloseCode::from_code(4999), None);
        // The codes a WebSocket library answers violations with are ours too.
        assert_eq!(CloseCode::from_code(1002), Some(CloseCode::ProtocolViolation));
        assert_eq!(CloseCode::from_code(1007), Some(CloseCode::InvalidPayload));
        assert_eq!(CloseCode::InvalidPayload.reason(), "invalid_payload");
    }

    #[test]
    fn error_code_wire_names_match_serde() {
        for (code, name) in [(ErrorCode::BadChannel, "bad_channel"), (ErrorCode::RateLimited, "rate_limited")] {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{name}\""));
            assert_eq!(code.as_str(), name);
        }
    }
}
