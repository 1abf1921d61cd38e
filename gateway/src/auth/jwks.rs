//! User-token keys from an identity provider's JSON Web Key Set (`auth.jwks_url`).
//!
//! - **Keys by `kid`.** RSA, EC (P-256, P-384) and Ed25519 public keys; each key is bound
//!   to exactly one algorithm, from its `alg` when the set names one, else from its type
//!   (RSA → RS256, P-256 → ES256, P-384 → ES384, Ed25519 → EdDSA). A token whose `alg`
//!   differs is refused: no algorithm confusion, and symmetric (`oct`) keys, encryption
//!   keys and `alg: none` are never accepted. A token without `kid` is verified only
//!   when the set holds exactly one usable key; with several it is refused (`unauthorized`,
//!   "token has no kid …") rather than tried against each.
//! - **Refresh.** The set is fetched when the node starts, then every
//!   `auth.jwks_refresh_secs`. A key that left the set is refused from the next refresh
//!   on; until then (the rotation's overlap) it is still accepted. A token naming an
//!   unknown `kid` fetches the set at once, but fetches start at most once per
//!   `auth.jwks_min_refetch_secs` (single flight: concurrent callers wait for the fetch
//!   under way), so made-up key ids cannot flood the provider.
//! - **Failures.** A failed fetch (unreachable, non-2xx, not a key set, no usable key)
//!   keeps the last good set, is logged and counted (`gateway_jwks_fetches_total`
//!   `result=error`), and is retried with backoff up to the refresh interval. A node that
//!   has never fetched the set refuses JWTs with `unavailable` (HTTP 503, close 1001):
//!   the client should retry, and API keys keep working.

use std::{collections::HashMap, sync::Arc, time::Duration};

use arc_swap::ArcSwapOption;
use axum::http::{Request, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation, jwk::Jwk};
use serde_json::Value;
use tokio::{sync::Mutex, time::Instant};
use tokio_util::sync::CancellationToken;

use super::AuthError;
use crate::{config::AuthConfig, telemetry};

/// How long one fetch of the set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set accepted (a real one is a few KiB).
const MAX_BODY: usize = 256 * 1024;
/// Most keys kept from one set.
const MAX_KEYS: usize = 64;

/// Why a fetch of the key set failed; the last good set stays in use.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The request failed (connection, timeout, TLS).
    #[error("request failed: {0}")]
    Request(String),
    /// The provider answered with a non-2xx status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The body is not a key set.
    #[error("not a JWK set: {0}")]
    Malformed(String),
    /// The set holds no key the gateway can verify with.
    #[error("no usable signing key in the set")]
    NoUsableKey,
}

/// The HTTP(S) client of the fetches.
type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// One verification key and the only algorithm it verifies.
pub struct VerifyKey {
    /// The public key.
    pub key: DecodingKey,
    /// The claim checks, restricted to the key's algorithm.
    pub validation: Validation,
}

/// A fetched set: keys by `kid`, and the key a token without `kid` may use.
struct KeySet {
    /// Usable keys that carry a `kid`.
    by_kid: HashMap<String, Arc<VerifyKey>>,
    /// The set's key when it holds exactly one usable key (with or without `kid`).
    only: Option<Arc<VerifyKey>>,
    /// Usable keys in the set.
    len: usize,
    /// When it was fetched.
    fetched: Instant,
}

/// The key set of `auth.jwks_url`, shared by every credential check of a node.
pub struct Jwks {
    /// Where the set is fetched from.
    url: Uri,
    /// The HTTP client (rustls on ring, the system's CA roots, for https).
    client: HttpsClient,
    /// The last good set; `None` until the first fetch succeeded.
    set: ArcSwapOption<KeySet>,
    /// `auth.jwks_refresh_secs`.
    refresh: Duration,
    /// `auth.jwks_min_refetch_secs`.
    min_refetch: Duration,
    /// Claim checks shared by every key (audience, issuer, leeway, required claims).
    base: Validation,
    /// Held while a fetch runs (single flight); when the last fetch started.
    fetching: Mutex<Option<Instant>>,
}

/// What set off a fetch (the metric's `trigger`).
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// Startup or the refresh interval.
    Refresh,
    /// A token named a `kid` the set does not hold (or no set is loaded yet).
    UnknownKid,
}

impl Jwks {
    /// A key set for `cfg.jwks_url`, empty until [`Jwks::prime`] or the first refetch.
    pub fn new(cfg: &AuthConfig, base: Validation) -> Result<Self, String> {
        let url: Uri = cfg.jwks_url.parse().map_err(|e| format!("auth.jwks_url: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let connector = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
        {
            Ok(builder) => builder.https_or_http().enable_http1().build(),
            Err(e) if url.scheme_str() == Some("https") => {
                return Err(format!("auth.jwks_url: no CA certificates for https: {e}"));
            }
            // Plain http needs no roots.
            Err(_) => {
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("auth.jwks_url: TLS: {e}"))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build()
            }
        };
        Ok(Jwks {
            url,
            client: Client::builder(TokioExecutor::new()).build(connector),
            set: ArcSwapOption::empty(),
            refresh: Duration::from_secs(cfg.jwks_refresh_secs),
            min_refetch: Duration::from_secs(cfg.jwks_min_refetch_secs),
            base,
            fetching: Mutex::new(None),
        })
    }

    /// The key that verifies a token with this header, fetching the set again (rate
    /// limited) when it names an unknown `kid` or no set is loaded yet.
    pub async fn key_for(&self, header: &Header) -> Result<Arc<VerifyKey>, AuthError> {
        if let Some(key) = self.find(header)? {
            return Ok(key);
        }
        self.refetch().await;
        match self.find(header)? {
            Some(key) => Ok(key),
            None if self.set.load().is_none() => Err(AuthError::KeysUnavailable),
            None => Err(AuthError::Invalid("unknown key id (kid)")),
        }
    }

    /// The key for `header` in the current set; `Ok(None)` when a refetch may help.
    fn find(&self, header: &Header) -> Result<Option<Arc<VerifyKey>>, AuthError> {
        let set = self.set.load();
        let Some(set) = set.as_ref() else { return Ok(None) };
        match &header.kid {
            Some(kid) => Ok(set.by_kid.get(kid).cloned()),
            None if set.len > 1 => Err(AuthError::Invalid("token has no kid and the key set holds several keys")),
            None => Ok(set.only.clone()),
        }
    }

    /// Fetches the set unless a fetch started less than `min_refetch` ago; waits for a
    /// fetch under way instead of starting another.
    async fn refetch(&self) {
        let mut last = self.fetching.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_refetch) {
            return;
        }
        *last = Some(Instant::now());
        self.fetch(Trigger::UnknownKid).await;
    }

    /// The first fetch, awaited at startup so the node knows its keys before it takes
    /// connections. A failure is logged; the node starts anyway (module docs).
    pub async fn prime(&self) -> bool {
        let mut last = self.fetching.lock().await;
        *last = Some(Instant::now());
        self.fetch(Trigger::Refresh).await
    }

    /// Refreshes the set every `refresh` (after a failure sooner, with backoff) until
    /// `stop`. Runs on the node's task tracker.
    pub async fn refresh_loop(self: Arc<Self>, primed: bool, stop: CancellationToken) {
        let mut failures: u32 = u32::from(!primed);
        loop {
            let wait = match failures {
                0 => self.refresh,
                n => self.min_refetch.saturating_mul(1 << n.min(10)).min(self.refresh),
            };
            if stop.run_until_cancelled(tokio::time::sleep(wait)).await.is_none() {
                return;
            }
            let ok = {
                let mut last = self.fetching.lock().await;
                *last = Some(Instant::now());
                self.fetch(Trigger::Refresh).await
            };
            failures = if ok { 0 } else { failures.saturating_add(1) };
        }
    }

    /// Fetches and installs the set; on failure keeps the last good one. Called with
    /// `fetching` held.
    async fn fetch(&self, trigger: Trigger) -> bool {
        telemetry::prometheus();
        let trigger_label = match trigger {
            Trigger::Refresh => "refresh",
            Trigger::UnknownKid => "unknown_kid",
        };
        match self.download().await.and_then(|body| self.parse(&body)) {
            Ok(set) => {
                metrics::counter!(telemetry::JWKS_FETCHES, "result" => "ok", "trigger" => trigger_label).increment(1);
                metrics::gauge!(telemetry::JWKS_KEYS).set(set.len as f64);
                tracing::debug!(url = %self.url, keys = set.len, trigger = trigger_label, "JWKS fetched");
                self.set.store(Some(Arc::new(set)));
                true
            }
            Err(e) => {
                metrics::counter!(telemetry::JWKS_FETCHES, "result" => "error", "trigger" => trigger_label)
                    .increment(1);
                let age = self.set.load().as_ref().map(|s| s.fetched.elapsed().as_secs());
                tracing::warn!(url = %self.url, error = %e, trigger = trigger_label, kept_set_age_secs = ?age,
                    "JWKS fetch failed; keeping the last good key set");
                false
            }
        }
    }

    /// The body of the key set, bounded in size and time.
    async fn download(&self) -> Result<Bytes, JwksError> {
        let req = Request::get(self.url.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, concat!("gateway/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|e| JwksError::Request(e.to_string()))?;
        let fetch = async {
            let res = self.client.request(req).await.map_err(|e| JwksError::Request(e.to_string()))?;
            if !res.status().is_success() {
                return Err(JwksError::Status(res.status().as_u16()));
            }
            let body = Limited::new(res.into_body(), MAX_BODY).collect().await;
            body.map(|b| b.to_bytes()).map_err(|e| JwksError::Malformed(format!("body: {e}")))
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| JwksError::Request(format!("no answer within {FETCH_TIMEOUT:?}")))?
    }

    /// The usable keys of a set; keys the gateway cannot or must not use are skipped.
    fn parse(&self, body: &[u8]) -> Result<KeySet, JwksError> {
        #[derive(serde::Deserialize)]
        struct Raw {
            keys: Vec<Value>,
        }
        let raw: Raw = serde_json::from_slice(body).map_err(|e| JwksError::Malformed(e.to_string()))?;
        let mut by_kid = HashMap::new();
        let mut usable = Vec::new();
        for value in raw.keys.into_iter().take(MAX_KEYS) {
            let kid = value.get("kid").and_then(Value::as_str).map(String::from);
            let key = match verify_key(value, &self.base) {
                Ok(key) => Arc::new(key),
                Err(why) => {
                    tracing::debug!(kid = ?kid, why, "JWKS key skipped");
                    continue;
                }
            };
            if let Some(kid) = kid {
                if by_kid.contains_key(&kid) {
                    tracing::warn!(kid, "JWKS holds the kid twice; keeping the first");
                    continue;
                }
                by_kid.insert(kid, key.clone());
            }
            usable.push(key);
        }
        if usable.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        let only = (usable.len() == 1).then(|| usable[0].clone());
        Ok(KeySet { by_kid, only, len: usable.len(), fetched: Instant::now() })
    }

    /// Keys in the current set and seconds since it was fetched; `None` before the
    /// first successful fetch (for `/health`).
    pub fn status(&self) -> Option<(usize, u64)> {
        self.set.load().as_ref().map(|s| (s.len, s.fetched.elapsed().as_secs()))
    }
}

/// A JWK as a verification key bound to one algorithm, or why it is not usable.
fn verify_key(mut value: Value, base: &Validation) -> Result<VerifyKey, &'static str> {
    let obj = value.as_object_mut().ok_or("not an object")?;
    if obj.get("use").and_then(Value::as_str).is_some_and(|u| u != "sig") {
        return Err("not a signing key (use)");
    }
    // The `alg` is read here rather than by jsonwebtoken, so a name it does not know
    // (such as RFC 9864's `Ed25519`) skips nothing else.
    let named = obj.remove("alg").and_then(|a| a.as_str().map(String::from));
    let kty = obj.get("kty").and_then(Value::as_str).unwrap_or_default().to_owned();
    let crv = obj.get("crv").and_then(Value::as_str).unwrap_or_default().to_owned();
    let alg = match (kty.as_str(), crv.as_str()) {
        ("RSA", _) => match named.as_deref() {
            None | Some("RS256") => Algorithm::RS256,
            Some("RS384") => Algorithm::RS384,
            Some("RS512") => Algorithm::RS512,
            Some("PS256") => Algorithm::PS256,
            Some("PS384") => Algorithm::PS384,
            Some("PS512") => Algorithm::PS512,
            Some(_) => return Err("RSA key for another algorithm"),
        },
        ("EC", "P-256") if matches!(named.as_deref(), None | Some("ES256")) => Algorithm::ES256,
        ("EC", "P-384") if matches!(named.as_deref(), None | Some("ES384")) => Algorithm::ES384,
        ("OKP", "Ed25519") if matches!(named.as_deref(), None | Some("EdDSA" | "Ed25519")) => Algorithm::EdDSA,
        ("oct", _) => return Err("symmetric keys are never taken from a JWKS"),
        _ => return Err("unsupported key type, curve or algorithm"),
    };
    let jwk: Jwk = serde_json::from_value(value).map_err(|_| "malformed key")?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "malformed key")?;
    let mut validation = base.clone();
    validation.algorithms = vec![alg];
    Ok(VerifyKey { key, validation })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Validation {
        Validation::new(Algorithm::RS256)
    }

    #[test]
    fn keys_are_bound_to_their_type() {
        let ed = serde_json::json!({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        assert_eq!(verify_key(ed.clone(), &base()).map(|k| k.validation.algorithms).ok(), Some(vec![Algorithm::EdDSA]));
        let mut named = ed.clone();
        named["alg"] = "Ed25519".into();
        assert!(verify_key(named, &base()).is_ok());
        let mut confused = ed;
        confused["alg"] = "HS256".into();
        assert!(verify_key(confused, &base()).is_err());
        let oct = serde_json::json!({"kty":"oct","k":"c2VjcmV0"});
        assert!(verify_key(oct, &base()).is_err());
        let enc = serde_json::json!({"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"});
        assert!(verify_key(enc, &base()).is_err());
        let x25519 = serde_json::json!({"kty":"OKP","crv":"X25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        assert!(verify_key(x25519, &base()).is_err());
    }
}
