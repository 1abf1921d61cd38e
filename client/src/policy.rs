//! What an ended connection means: reconnect or stop. Contract §6 and the TypeScript
//! client agree: a refused handshake stops on 400/401/403/404 (credentials, origin, URL:
//! retrying cannot help) and retries otherwise (429, 503); a `disconnecting` notice with
//! `reconnect:false` or a terminal close code (4001 unauthorized, 4003 forbidden, 4010
//! disconnected by the server) stops; everything else (1001 going away, 1006 abnormal,
//! 1011, 4002 token expired, 4004, 4009 slow consumer, network errors) reconnects.

use std::fmt;

use gateway_protocol::DisconnectReason;
use serde_json::Value;

use crate::error::StopReason;

/// Close codes after which reconnecting cannot help.
pub const TERMINAL_CLOSE_CODES: [u16; 3] = [4001, 4003, 4010];

/// HTTP statuses of a refused handshake after which reconnecting cannot help.
pub const TERMINAL_STATUSES: [u16; 4] = [400, 401, 403, 404];

/// How a connection (or an attempt) ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// The handshake was refused before the upgrade.
    Refused {
        /// HTTP status.
        status: u16,
        /// The JSON body.
        body: Value,
    },
    /// The socket closed; `code` is `None` without a close frame (1006).
    Closed {
        /// The close code.
        code: Option<u16>,
        /// The close reason.
        reason: String,
        /// The `disconnecting` notice that came before, if any.
        notice: Option<(DisconnectReason, bool)>,
    },
    /// Could not connect, or the socket failed, or the connection went quiet.
    Failed(String),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Refused { status, body } => write!(f, "handshake refused with {status}: {body}"),
            Ended::Closed { code, reason, notice } => {
                write!(f, "closed with {}", code.map_or("no close frame (1006)".to_string(), |c| c.to_string()))?;
                if !reason.is_empty() {
                    write!(f, " ({reason})")?;
                }
                if let Some((r, _)) = notice {
                    write!(f, " after disconnecting: {r:?}")?;
                }
                Ok(())
            }
            Ended::Failed(why) => f.write_str(why),
        }
    }
}

/// `Some(reason)` when the client must stop; `None` to reconnect.
pub fn verdict(ended: &Ended) -> Option<StopReason> {
    match ended {
        Ended::Refused { status, body } if TERMINAL_STATUSES.contains(status) => {
            Some(StopReason::Refused { status: *status, body: body.clone() })
        }
        Ended::Closed { code, notice: Some((reason, false)), .. } => {
            Some(StopReason::Notice { reason: *reason, code: *code })
        }
        Ended::Closed { code: Some(code), reason, .. } if TERMINAL_CLOSE_CODES.contains(code) => {
            Some(StopReason::CloseCode { code: *code, reason: reason.clone() })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(code: u16) -> Ended {
        Ended::Closed { code: Some(code), reason: String::new(), notice: None }
    }

    #[test]
    fn terminal_and_transient() {
        for code in [4001, 4003, 4010] {
            assert_eq!(verdict(&closed(code)).and_then(|s| s.close_code()), Some(code));
        }
        for code in [1000, 1001, 1011, 4000, 4002, 4004, 4008, 4009] {
            assert_eq!(verdict(&closed(code)), None, "{code}");
        }
        assert_eq!(verdict(&Ended::Closed { code: None, reason: String::new(), notice: None }), None);
        assert_eq!(verdict(&Ended::Failed("connection refused".into())), None);
        for status in [400, 401, 403, 404] {
            assert!(verdict(&Ended::Refused { status, body: Value::Null }).is_some(), "{status}");
        }
        for status in [429, 500, 502, 503] {
            assert!(verdict(&Ended::Refused { status, body: Value::Null }).is_none(), "{status}");
        }
    }

    #[test]
    fn notices_decide_over_codes() {
        let kicked = Ended::Closed {
            code: Some(4008),
            reason: String::new(),
            notice: Some((DisconnectReason::RateLimited, false)),
        };
        assert!(matches!(verdict(&kicked), Some(StopReason::Notice { reason: DisconnectReason::RateLimited, .. })));
        let drain =
            Ended::Closed { code: Some(1001), reason: String::new(), notice: Some((DisconnectReason::Shutdown, true)) };
        assert_eq!(verdict(&drain), None);
    }
}
