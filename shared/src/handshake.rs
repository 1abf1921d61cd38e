//! The untrusted parts of a WebSocket handshake as pure functions over text: which
//! credential carrier wins, the bearer value of `Authorization`, the encoding offered by
//! `Sec-WebSocket-Protocol` or `?format=`, the `?subscribe=` list, and whether a
//! credential has a JWT's shape. The server adapts its headers and query to these, so
//! the fuzz targets exercise the same code the handshake runs.

use crate::codec::Encoding;

/// Where a handshake's credential came from (the `carrier` label of auth metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Carrier {
    /// `Authorization: Bearer <credential>` (or the bare credential).
    Authorization,
    /// `?token=`.
    QueryToken,
    /// `X-API-Key`.
    XApiKey,
    /// `?apiKey=`.
    QueryApiKey,
}

impl Carrier {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Carrier::Authorization => "authorization",
            Carrier::QueryToken => "query_token",
            Carrier::XApiKey => "x_api_key",
            Carrier::QueryApiKey => "query_api_key",
        }
    }
}

/// The credential carriers of one handshake as received: a header whose value is not
/// visible ASCII counts as absent; query values are already percent-decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carriers<'a> {
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// `?token=`.
    pub query_token: Option<&'a str>,
    /// The `X-API-Key` header.
    pub x_api_key: Option<&'a str>,
    /// `?apiKey=`.
    pub query_api_key: Option<&'a str>,
}

impl Carriers<'_> {
    /// The credential, from the first carrier present in the order `Authorization`,
    /// `?token=`, `X-API-Key`, `?apiKey=`. Header values are trimmed; query values are
    /// taken as they are. An empty credential is still returned (and then refused as
    /// missing), so a present carrier never falls through to the next.
    pub fn credential(&self) -> Option<(String, Carrier)> {
        if let Some(v) = self.authorization {
            return Some((bearer(v).to_owned(), Carrier::Authorization));
        }
        if let Some(t) = self.query_token {
            return Some((t.to_owned(), Carrier::QueryToken));
        }
        if let Some(k) = self.x_api_key {
            return Some((k.trim().to_owned(), Carrier::XApiKey));
        }
        self.query_api_key.map(|k| (k.to_owned(), Carrier::QueryApiKey))
    }
}

/// The credential in an `Authorization` value: after `Bearer ` (or `bearer `), else
/// the whole value; trimmed either way.
pub fn bearer(authorization: &str) -> &str {
    let v = authorization.trim();
    v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).unwrap_or(v).trim()
}

/// The subprotocols offered by every `Sec-WebSocket-Protocol` value, comma-separated
/// and trimmed, in order.
pub fn offered_subprotocols<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    values.into_iter().flat_map(|v| v.split(',')).map(str::trim).collect()
}

/// Why no encoding could be agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NegotiateError {
    /// `?format=` names no encoding.
    #[error("format must be json, msgpack or flat")]
    BadFormat,
    /// Subprotocols were offered, none supported, and no `?format=` was given.
    #[error("supported subprotocols: gateway.v1.json, gateway.v1.msgpack, gateway.v1.flat")]
    BadSubprotocol,
}

/// The encoding: the first supported `offered` subprotocol (then `true`: the response
/// must name it), else `?format=`, else `default`.
pub fn negotiate(
    offered: &[&str],
    format: Option<&str>,
    default: Encoding,
) -> Result<(Encoding, bool), NegotiateError> {
    if let Some(e) = offered.iter().find_map(|p| Encoding::from_subprotocol(p)) {
        return Ok((e, true));
    }
    if let Some(f) = format {
        return Encoding::from_format(f).map(|e| (e, false)).ok_or(NegotiateError::BadFormat);
    }
    if !offered.is_empty() {
        return Err(NegotiateError::BadSubprotocol);
    }
    Ok((default, false))
}

/// The channel names of `?subscribe=`: comma-separated, trimmed, empty ones dropped.
/// They are validated later, one by one, like a `subscribe` frame's.
pub fn subscribe_list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// Three non-empty base64url segments: a JWT, not an API key.
pub fn looks_like_jwt(s: &str) -> bool {
    let mut parts = s.split('.');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    };
    ok(parts.next()) && ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_carrier_wins() {
        let all = Carriers {
            authorization: Some(" Bearer  a "),
            query_token: Some("b"),
            x_api_key: Some(" c "),
            query_api_key: Some(" d "),
        };
        assert_eq!(all.credential(), Some(("a".into(), Carrier::Authorization)));
        let c = Carriers { authorization: None, ..all };
        assert_eq!(c.credential(), Some(("b".into(), Carrier::QueryToken)));
        let c = Carriers { query_token: None, ..c };
        assert_eq!(c.credential(), Some(("c".into(), Carrier::XApiKey)));
        let c = Carriers { x_api_key: None, ..c };
        assert_eq!(c.credential(), Some((" d ".into(), Carrier::QueryApiKey)));
        assert_eq!(Carriers::default().credential(), None);
        assert_eq!(bearer("bearer k"), "k");
        assert_eq!(bearer("k"), "k");
        assert_eq!(bearer("Bearer "), "Bearer");
    }

    #[test]
    fn negotiation() {
        let offered = offered_subprotocols(["x, gateway.v1.msgpack", "gateway.v1.json"]);
        assert_eq!(offered, ["x", "gateway.v1.msgpack", "gateway.v1.json"]);
        assert_eq!(negotiate(&offered, Some("flat"), Encoding::Json), Ok((Encoding::MsgPack, true)));
        assert_eq!(negotiate(&["x"], Some("flat"), Encoding::Json), Ok((Encoding::Flat, false)));
        assert_eq!(negotiate(&["x"], None, Encoding::Json), Err(NegotiateError::BadSubprotocol));
        assert_eq!(negotiate(&[], Some("xml"), Encoding::Json), Err(NegotiateError::BadFormat));
        assert_eq!(negotiate(&[], None, Encoding::Flat), Ok((Encoding::Flat, false)));
    }

    #[test]
    fn subscribe_and_jwt_shape() {
        assert_eq!(subscribe_list(" session:a,, user:u ,"), ["session:a", "user:u"]);
        assert!(looks_like_jwt("a.b-_.C9"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a..c"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a.b.c="));
    }
}
