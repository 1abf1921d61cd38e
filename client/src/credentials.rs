//! Credentials: a static token (a JWT or an agent key sent as `Authorization: Bearer`),
//! an agent API key (sent as `X-API-Key`, as seed 000's agents do), or an async callback
//! that returns a fresh token. The callback is asked before every (re)connect and shortly
//! before a JWT's `exp` to `refresh` the live connection. A JWT's `exp` is read without
//! verifying the signature: the client only needs to know when to refresh.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use base64::Engine;

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// The callback failed; the connection attempt counts as failed and is retried.
    #[error("token callback failed: {0}")]
    Callback(String),
    /// The callback returned an empty token.
    #[error("token callback returned an empty token")]
    Empty,
    /// A static JWT has expired; without a callback nothing can renew it.
    #[error("the static token expired; use a token callback to renew it")]
    Expired,
}

/// The future a token callback returns.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, CredentialsError>> + Send>>;

/// Something that hands out fresh tokens (e.g. from an auth service).
pub trait TokenSource: Send + Sync {
    /// A token to connect or refresh with.
    fn token(&self) -> TokenFuture;
}

/// Any `Fn() -> impl Future<Output = Result<String, E>>` is a token source.
impl<F, Fut, E> TokenSource for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<String, E>> + Send + 'static,
    E: fmt::Display,
{
    fn token(&self) -> TokenFuture {
        let fut = self();
        Box::pin(async move { fut.await.map_err(|e| CredentialsError::Callback(e.to_string())) })
    }
}

/// How the client authenticates.
#[derive(Clone)]
pub enum Credentials {
    /// A fixed JWT or key, sent as `Authorization: Bearer`.
    Token(String),
    /// An agent API key, sent as `X-API-Key`.
    ApiKey(String),
    /// Asked for a token before every connect and before `exp` (sent as a bearer).
    Callback(Arc<dyn TokenSource>),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a secret.
        f.write_str(match self {
            Credentials::Token(_) => "Token(…)",
            Credentials::ApiKey(_) => "ApiKey(…)",
            Credentials::Callback(_) => "Callback(…)",
        })
    }
}

/// The credential of one connection attempt.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credential {
    /// The header that carries it.
    pub header: &'static str,
    /// The header value.
    pub value: String,
    /// The raw token, to compare with a refreshed one and read `exp` from.
    pub token: String,
}

impl Credentials {
    /// The credential for the next connection attempt (asks the callback).
    pub(crate) async fn current(&self) -> Result<Credential, CredentialsError> {
        let bearer = |t: String| Credential { header: "Authorization", value: format!("Bearer {t}"), token: t };
        match self {
            Credentials::Token(t) => {
                if jwt_expiry_ms(t).is_some_and(|exp| exp <= gateway_protocol::now_ms()) {
                    return Err(CredentialsError::Expired);
                }
                Ok(bearer(t.clone()))
            }
            Credentials::ApiKey(k) => Ok(Credential { header: "X-API-Key", value: k.clone(), token: k.clone() }),
            Credentials::Callback(source) => {
                let t = source.token().await?;
                if t.is_empty() {
                    return Err(CredentialsError::Empty);
                }
                Ok(bearer(t))
            }
        }
    }

    /// The callback, when tokens can be renewed.
    pub(crate) fn source(&self) -> Option<Arc<dyn TokenSource>> {
        match self {
            Credentials::Callback(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// Whether `token` has a JWT's shape: three base64url segments.
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// A JWT's `exp` in ms since the epoch, read without verifying; `None` for an API key,
/// a malformed token or one without `exp`.
pub fn jwt_expiry_ms(token: &str) -> Option<u64> {
    if !looks_like_jwt(token) {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?;
    let secs = exp.as_u64().or_else(|| exp.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))?;
    secs.checked_mul(1000)
}

/// When to refresh a token that expires at `exp_ms`, seen at `now_ms`: `before` ahead of
/// `exp`, or half-way through its remaining life when that comes sooner.
pub fn refresh_delay(exp_ms: u64, now_ms: u64, before: Duration) -> Duration {
    let left = exp_ms.saturating_sub(now_ms);
    let ahead = (before.as_millis() as u64).min(left / 2);
    Duration::from_millis(left - ahead)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", e(r#"{"alg":"HS256"}"#), e(claims))
    }

    #[test]
    fn exp_is_read_without_verifying() {
        assert_eq!(jwt_expiry_ms(&jwt(r#"{"sub":"u","exp":1700000000}"#)), Some(1_700_000_000_000));
        assert_eq!(jwt_expiry_ms(&jwt(r#"{"sub":"u"}"#)), None);
        assert_eq!(jwt_expiry_ms("key-agent-1"), None);
        assert_eq!(jwt_expiry_ms("a.b.c"), None);
        assert!(!looks_like_jwt("a..c"));
    }

    #[test]
    fn refresh_ahead_of_exp() {
        let min = 60_000;
        assert_eq!(refresh_delay(10 * min, 0, Duration::from_secs(60)), Duration::from_millis(9 * min));
        // A 30 s token refreshes half-way.
        assert_eq!(refresh_delay(30_000, 0, Duration::from_secs(60)), Duration::from_millis(15_000));
        assert_eq!(refresh_delay(5, 10, Duration::from_secs(60)), Duration::ZERO);
    }

    #[tokio::test]
    async fn carriers() {
        let key = Credentials::ApiKey("k".into()).current().await;
        assert_eq!(key.map(|c| (c.header, c.value)), Ok(("X-API-Key", "k".to_string())));
        let expired = Credentials::Token(jwt(r#"{"exp":1}"#)).current().await;
        assert_eq!(expired.err(), Some(CredentialsError::Expired));
        let cb = Credentials::Callback(Arc::new(|| async { Ok::<_, String>("t".to_string()) }));
        assert_eq!(cb.current().await.map(|c| c.value), Ok("Bearer t".to_string()));
        let failing = Credentials::Callback(Arc::new(|| async { Err::<String, _>("down") }));
        assert!(matches!(failing.current().await, Err(CredentialsError::Callback(m)) if m == "down"));
        assert!(format!("{cb:?}").contains('…'));
    }
}
