//! The handshake's untrusted inputs, reached as the server reaches them: header values
//! through [`http::HeaderValue`], the query through `serde_urlencoded` (what axum's
//! `Query` uses), then the pure functions of [`gateway_protocol::handshake`].
//!
//! Input layout: byte 0 says which headers are present (bit 0 `Authorization`, bit 1
//! `X-API-Key`, bit 2 `Sec-WebSocket-Protocol`); the rest is split on `\n` into the
//! `Authorization` value, the `X-API-Key` value, the `Sec-WebSocket-Protocol` values
//! (several headers separated by `\r`) and the query string.
//!
//! Properties: nothing panics; the first carrier present wins and its credential is
//! what that carrier held (trimmed for headers); negotiation picks an offered
//! subprotocol, else the named format, else the default, and refuses exactly when it
//! should; `?subscribe=` yields trimmed, non-empty names without commas; a credential
//! with a JWT's shape has three base64url segments.

use std::collections::HashMap;

use gateway_protocol::{
    Channel, Encoding,
    handshake::{
        Carrier, Carriers, NegotiateError, bearer, looks_like_jwt, negotiate, offered_subprotocols, subscribe_list,
    },
};
use http::HeaderValue;

/// Runs one handshake's inputs through the carriers and negotiation.
pub fn check(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut fields = rest.splitn(4, |&b| b == b'\n');
    let (auth, key, protocols, query) =
        (fields.next().unwrap_or(b""), fields.next().unwrap_or(b""), fields.next().unwrap_or(b""), fields.next());
    // Header values the server could read as text; others count as absent, as there.
    let header = |on: bool, v: &[u8]| on.then(|| HeaderValue::from_bytes(v).ok()).flatten();
    let auth = header(flags & 1 != 0, auth);
    let key = header(flags & 2 != 0, key);
    let protocols: Vec<HeaderValue> = if flags & 4 != 0 {
        protocols.split(|&b| b == b'\r').filter_map(|v| HeaderValue::from_bytes(v).ok()).collect()
    } else {
        Vec::new()
    };
    let Ok(q) = serde_urlencoded::from_bytes::<HashMap<String, String>>(query.unwrap_or(b"")) else {
        return; // refused as a bad request before any of this
    };
    let carriers = Carriers {
        authorization: text(auth.as_ref()),
        query_token: q.get("token").map(String::as_str),
        x_api_key: text(key.as_ref()),
        query_api_key: q.get("apiKey").map(String::as_str),
    };
    check_carriers(&carriers);

    let offered = offered_subprotocols(protocols.iter().filter_map(|v| v.to_str().ok()));
    let format = q.get("format").map(String::as_str);
    let supported = offered.iter().find_map(|p| Encoding::from_subprotocol(p));
    for default in Encoding::ALL {
        match negotiate(&offered, format, default) {
            Ok((e, true)) => assert_eq!(Some(e), supported),
            Ok((e, false)) => {
                assert!(supported.is_none());
                match format {
                    Some(f) => assert_eq!(e.as_str(), f),
                    None => assert!(offered.is_empty() && e == default),
                }
            }
            Err(NegotiateError::BadFormat) => {
                assert!(supported.is_none() && format.is_some_and(|f| Encoding::from_format(f).is_none()));
            }
            Err(NegotiateError::BadSubprotocol) => {
                assert!(supported.is_none() && format.is_none() && !offered.is_empty());
            }
        }
    }
    for p in &offered {
        assert_eq!(p.trim(), *p);
        assert!(!p.contains(','));
    }

    if let Some(list) = q.get("subscribe") {
        for name in subscribe_list(list) {
            assert!(!name.is_empty() && name.trim() == name && !name.contains(','), "{name:?}");
            let _ = Channel::parse(&name);
        }
    }
}

/// The carrier priority, and what each carrier yields.
fn check_carriers(c: &Carriers<'_>) {
    let got = c.credential();
    let expected = if let Some(a) = c.authorization {
        Some((bearer(a).to_owned(), Carrier::Authorization))
    } else if let Some(t) = c.query_token {
        Some((t.to_owned(), Carrier::QueryToken))
    } else if let Some(k) = c.x_api_key {
        Some((k.trim().to_owned(), Carrier::XApiKey))
    } else {
        c.query_api_key.map(|k| (k.to_owned(), Carrier::QueryApiKey))
    };
    assert_eq!(got, expected);
    if let (Some(a), Some((cred, _))) = (c.authorization, &got) {
        assert!(a.trim().ends_with(cred.as_str()), "{cred:?} does not end {a:?}");
        assert_eq!(cred.trim(), cred);
    }
    if let Some((cred, _)) = &got
        && looks_like_jwt(cred)
    {
        let parts: Vec<&str> = cred.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(
            parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        );
    }
}

/// A header value as text, as the server reads it (`HeaderValue::to_str`).
fn text(v: Option<&HeaderValue>) -> Option<&str> {
    v.and_then(|v| v.to_str().ok())
}
