//! The one place where module errors become wire errors: an [`ErrorBody`] with its code,
//! the HTTP status a refused handshake or API call answers with, and the close code a
//! fatal connection error ends with.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use gateway_protocol::{CloseCode, ErrorBody, ErrorCode};

use crate::{
    auth::{AuthError, jwks::JwksError},
    backend_http::BackendHttpError,
    bus::BusError,
    events::EventRefused,
    history::HistoryError,
    presence::PresenceError,
    upstream::UpstreamError,
};

/// The HTTP status for an error code (handshake refusals and the HTTP API).
pub fn http_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest | ErrorCode::BadChannel => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized | ErrorCode::TokenExpired => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::RateLimited | ErrorCode::LimitExceeded => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The close code for an error that ends a connection.
pub fn close_code(code: ErrorCode) -> CloseCode {
    match code {
        ErrorCode::Unauthorized => CloseCode::Unauthorized,
        ErrorCode::TokenExpired => CloseCode::TokenExpired,
        ErrorCode::Forbidden => CloseCode::Forbidden,
        ErrorCode::LimitExceeded => CloseCode::ConnectionLimit,
        ErrorCode::RateLimited => CloseCode::RateLimited,
        ErrorCode::TooLarge => CloseCode::TooBig,
        ErrorCode::BadRequest | ErrorCode::BadChannel | ErrorCode::NotFound => CloseCode::ProtocolErrors,
        ErrorCode::Unavailable | ErrorCode::Timeout => CloseCode::GoingAway,
        ErrorCode::Internal => CloseCode::Internal,
    }
}

/// The close code for a WebSocket read error that is the peer's fault: a message over
/// the size limit (1009), a text message that is not UTF-8 (1007), another breach of
/// the WebSocket protocol (1002). `None` when the peer is just gone (I/O error, EOF).
pub fn violation<E: std::error::Error + 'static>(e: &E) -> Option<CloseCode> {
    use tokio_tungstenite::tungstenite::error::{Error as Ws, ProtocolError};
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        match err.downcast_ref::<Ws>() {
            Some(Ws::Capacity(_)) => return Some(CloseCode::TooBig),
            Some(Ws::Utf8(_)) => return Some(CloseCode::InvalidPayload),
            Some(Ws::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => return None,
            Some(Ws::Protocol(_)) => return Some(CloseCode::ProtocolViolation),
            Some(_) => return None,
            None => cur = err.source(),
        }
    }
    None
}

impl From<&AuthError> for ErrorBody {
    fn from(e: &AuthError) -> Self {
        let code = match e {
            AuthError::Expired => ErrorCode::TokenExpired,
            AuthError::Unavailable | AuthError::KeysUnavailable => ErrorCode::Unavailable,
            AuthError::Missing | AuthError::Invalid(_) | AuthError::Revoked | AuthError::NotConfigured(_) => {
                ErrorCode::Unauthorized
            }
        };
        ErrorBody::new(code, e.to_string())
    }
}

impl From<&JwksError> for ErrorBody {
    fn from(e: &JwksError) -> Self {
        ErrorBody::new(ErrorCode::Unavailable, format!("identity provider keys: {e}"))
    }
}

impl From<&BusError> for ErrorBody {
    fn from(e: &BusError) -> Self {
        match e {
            BusError::Timeout(_) => ErrorBody::new(ErrorCode::Timeout, e.to_string()),
            BusError::NoResponders | BusError::Unavailable(_) => ErrorBody::new(ErrorCode::Unavailable, e.to_string()),
            BusError::Backend(body) => body.clone(),
            BusError::BadReply(_) => ErrorBody::new(ErrorCode::Internal, e.to_string()),
        }
    }
}

impl From<&BackendHttpError> for ErrorBody {
    fn from(e: &BackendHttpError) -> Self {
        let code = match e {
            BackendHttpError::Timeout(_) => ErrorCode::Timeout,
            BackendHttpError::Status(_) | BackendHttpError::Unreachable(_) => ErrorCode::Unavailable,
            BackendHttpError::Backend(body) => return body.clone(),
            BackendHttpError::BadReply(_) | BackendHttpError::Setup(_) => ErrorCode::Internal,
        };
        ErrorBody::new(code, e.to_string())
    }
}

impl From<&UpstreamError> for ErrorBody {
    fn from(e: &UpstreamError) -> Self {
        match e {
            UpstreamError::Bus(e) => e.into(),
            UpstreamError::Http(e) => e.into(),
        }
    }
}

impl From<&EventRefused> for ErrorBody {
    fn from(e: &EventRefused) -> Self {
        let code = match e {
            EventRefused::Reserved(_) => ErrorCode::Forbidden,
            EventRefused::TooDeep => ErrorCode::BadRequest,
            EventRefused::TooLarge { .. } => ErrorCode::TooLarge,
        };
        ErrorBody::new(code, e.to_string())
    }
}

impl From<&HistoryError> for ErrorBody {
    fn from(e: &HistoryError) -> Self {
        let code = match e {
            HistoryError::NotKept(_) => ErrorCode::NotFound,
            HistoryError::Unavailable(_) => ErrorCode::Unavailable,
        };
        ErrorBody::new(code, e.to_string())
    }
}

impl From<&PresenceError> for ErrorBody {
    fn from(e: &PresenceError) -> Self {
        ErrorBody::new(ErrorCode::Unavailable, e.to_string())
    }
}

/// An HTTP error answer: status from the code, body `{"code","message"}`.
#[derive(Debug)]
pub struct ApiError(pub ErrorBody);

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError(ErrorBody::new(code, message))
    }
}

impl<T> From<&T> for ApiError
where
    for<'a> &'a T: Into<ErrorBody>,
{
    fn from(e: &T) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    /// A body with `retryAfterMs` also sets `Retry-After` (whole seconds, rounded up).
    fn into_response(self) -> Response {
        let retry_after = self.0.retry_after_ms.map(|ms| ms.div_ceil(1000).max(1));
        let mut res = (http_status(self.0.code), Json(self.0)).into_response();
        if let Some(secs) = retry_after {
            res.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_errors_map_to_401_and_4001() {
        let b: ErrorBody = (&AuthError::Expired).into();
        assert_eq!(b.code, ErrorCode::TokenExpired);
        assert_eq!(http_status(b.code), StatusCode::UNAUTHORIZED);
        assert_eq!(close_code(b.code), CloseCode::TokenExpired);
        let b: ErrorBody = (&AuthError::Invalid("x")).into();
        assert_eq!(close_code(b.code), CloseCode::Unauthorized);
        assert_eq!(http_status(ErrorCode::LimitExceeded), StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn retry_after_header_rounds_up_to_seconds() {
        let mut body = ErrorBody::new(ErrorCode::RateLimited, "slow down");
        body.retry_after_ms = Some(1_001);
        let res = ApiError(body).into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[axum::http::header::RETRY_AFTER], "2");
        let res = ApiError::new(ErrorCode::Unavailable, "x").into_response();
        assert!(!res.headers().contains_key(axum::http::header::RETRY_AFTER));
        assert_eq!(ErrorBody::from(&AuthError::KeysUnavailable).code, ErrorCode::Unavailable);
    }

    #[test]
    fn backend_http_errors_map_to_the_contracts_codes() {
        use std::time::Duration;
        let code = |e: BackendHttpError| ErrorBody::from(&UpstreamError::Http(e)).code;
        assert_eq!(code(BackendHttpError::Timeout(Duration::from_secs(1))), ErrorCode::Timeout);
        assert_eq!(code(BackendHttpError::Status(502)), ErrorCode::Unavailable);
        assert_eq!(code(BackendHttpError::Unreachable("refused".into())), ErrorCode::Unavailable);
        assert_eq!(code(BackendHttpError::BadReply("x".into())), ErrorCode::Internal);
        let body = ErrorBody::new(ErrorCode::NotFound, "no such session");
        assert_eq!(ErrorBody::from(&BackendHttpError::Backend(body.clone())), body);
        assert_eq!(ErrorBody::from(&UpstreamError::Bus(BusError::NoResponders)).code, ErrorCode::Unavailable);
    }

    #[test]
    fn websocket_violations_map_to_their_close_codes() {
        use tokio_tungstenite::tungstenite::error::{CapacityError, Error as Ws, ProtocolError};
        let wrapped = |e: Ws| axum::Error::new(e);
        let too_long = Ws::Capacity(CapacityError::MessageTooLong { size: 2, max_size: 1 });
        assert_eq!(violation(&wrapped(too_long)), Some(CloseCode::TooBig));
        let utf8 = Ws::Utf8("bad".into());
        assert_eq!(violation(&wrapped(utf8)), Some(CloseCode::InvalidPayload));
        let rsv = Ws::Protocol(ProtocolError::NonZeroReservedBits);
        assert_eq!(violation(&wrapped(rsv)), Some(CloseCode::ProtocolViolation));
        let gone = Ws::Protocol(ProtocolError::ResetWithoutClosingHandshake);
        assert_eq!(violation(&wrapped(gone)), None);
        assert_eq!(violation(&wrapped(Ws::ConnectionClosed)), None);
    }
}
