//! A backend reached over HTTP (contract §12, `backend_http`), for deployments without
//! NATS: a client `request` becomes `POST <url>/rpc` with body `{"method","params"}`
//! whose JSON reply is the result (or `{"error":{"code","message"}}`), an upstream send
//! becomes `POST <url>/up` with body `{"event","data"}`, acknowledged once the backend
//! answered 2xx. Both carry the gateway-set `Gw-*` headers of §5 and the client's
//! correlation headers of §10, and `Authorization: Bearer <backend_http.token>`.
//!
//! One pooled client per node reuses connections; at most `backend_http.max_concurrency`
//! calls are in flight, and each call — waiting for a slot included — ends within
//! `fabric.request_timeout_ms`. A non-2xx answer (redirects are not followed) is
//! `unavailable`, no answer in time `timeout`.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use gateway_protocol::ErrorBody;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::{
    bus::{
        Correlation, Origin,
        nats::{HDR_CONNECTION, HDR_NODE, HDR_PRINCIPAL_ID, HDR_PRINCIPAL_KIND},
    },
    config::{Config, ms},
    telemetry,
    upstream::{Upstream, UpstreamError},
};

/// How long an idle pooled connection to the backend is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Why a call to the HTTP backend failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendHttpError {
    /// No answer (or no free slot) within the request timeout.
    #[error("backend gave no answer within {0:?}")]
    Timeout(Duration),
    /// The backend answered with a status other than 2xx.
    #[error("backend answered HTTP {0}")]
    Status(u16),
    /// The backend could not be reached.
    #[error("backend unreachable: {0}")]
    Unreachable(String),
    /// The backend answered `{"error":{…}}`.
    #[error("backend error: {}", .0.message)]
    Backend(ErrorBody),
    /// The backend's answer could not be used (not JSON, too large, malformed error).
    #[error("bad backend reply: {0}")]
    BadReply(String),
    /// The call could not be built (a value that cannot be a header, a client that
    /// could not start).
    #[error("backend call not sent: {0}")]
    Setup(String),
}

/// Body of `POST <url>/rpc`.
#[derive(Serialize)]
struct RpcBody<'a> {
    method: &'a str,
    params: &'a Value,
}

/// Body of `POST <url>/up`.
#[derive(Serialize)]
struct UpBody<'a> {
    event: &'a str,
    data: &'a Value,
}

/// The HTTP backend of one node.
pub struct HttpBackend {
    /// Pooled, keep-alive connections; no redirects.
    client: reqwest::Client,
    /// `<url>/rpc`.
    rpc_url: String,
    /// `<url>/up`.
    up_url: String,
    /// `Bearer <token>`, when a token is configured.
    authorization: Option<HeaderValue>,
    /// Calls in flight at once.
    slots: Semaphore,
    /// Bound of an upstream send (requests bring their own).
    timeout: Duration,
    /// Largest reply body read.
    max_reply: usize,
}

impl HttpBackend {
    /// The backend of a configuration, `None` when `backend_http.url` is unset.
    pub fn new(cfg: &Config) -> Result<Option<Self>, BackendHttpError> {
        let b = &cfg.backend_http;
        if !b.enabled() {
            return Ok(None);
        }
        let timeout = ms(cfg.fabric.request_timeout_ms);
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(b.max_concurrency)
            .pool_idle_timeout(POOL_IDLE)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| BackendHttpError::Setup(e.to_string()))?;
        let authorization = match b.token.as_str() {
            "" => None,
            t => {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| BackendHttpError::Setup("backend_http.token cannot be a header value".into()))?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let base = b.url.trim_end_matches('/');
        Ok(Some(HttpBackend {
            client,
            rpc_url: format!("{base}/rpc"),
            up_url: format!("{base}/up"),
            authorization,
            slots: Semaphore::new(b.max_concurrency),
            timeout,
            max_reply: cfg.limits.outbound_queue_bytes,
        }))
    }

    /// The headers of a call: who (set by the gateway), what the client said, the key.
    fn headers(&self, origin: &Origin<'_>, correlation: &Correlation<'_>) -> Result<HeaderMap, BackendHttpError> {
        let mut h = HeaderMap::new();
        let pairs = [
            (HDR_PRINCIPAL_KIND, origin.principal.kind.as_str()),
            (HDR_PRINCIPAL_ID, origin.principal.id.as_str()),
            (HDR_CONNECTION, origin.conn),
            (HDR_NODE, origin.node),
        ];
        for (name, value) in pairs.into_iter().chain(correlation.headers()) {
            let v = HeaderValue::from_str(value)
                .map_err(|_| BackendHttpError::Setup(format!("{name} cannot be a header value")))?;
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| BackendHttpError::Setup(format!("{name} cannot be a header name")))?;
            h.insert(name, v);
        }
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(auth) = &self.authorization {
            h.insert(AUTHORIZATION, auth.clone());
        }
        Ok(h)
    }

    /// One call: a slot, the POST, a 2xx status and the (bounded) body, all within
    /// `timeout`.
    async fn call(
        &self,
        op: &'static str,
        url: &str,
        headers: HeaderMap,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, BackendHttpError> {
        let started = Instant::now();
        let exchange = async {
            let _slot = self.slots.acquire().await.map_err(|_| BackendHttpError::Unreachable("closed".into()))?;
            let resp = self.client.post(url).headers(headers).body(body).send().await.map_err(|e| {
                if e.is_timeout() {
                    BackendHttpError::Timeout(timeout)
                } else {
                    BackendHttpError::Unreachable(e.to_string())
                }
            })?;
            if !resp.status().is_success() {
                return Err(BackendHttpError::Status(resp.status().as_u16()));
            }
            read_bounded(resp, self.max_reply).await
        };
        let outcome = tokio::time::timeout(timeout, exchange).await.unwrap_or(Err(BackendHttpError::Timeout(timeout)));
        let label = match &outcome {
            Ok(_) => "ok",
            Err(BackendHttpError::Timeout(_)) => "timeout",
            Err(BackendHttpError::Status(_)) => "status",
            Err(BackendHttpError::Unreachable(_)) => "unreachable",
            Err(_) => "bad_reply",
        };
        metrics::counter!(telemetry::BACKEND_HTTP_CALLS, "op" => op, "outcome" => label).increment(1);
        metrics::histogram!(telemetry::BACKEND_HTTP_SECONDS, "op" => op).record(started.elapsed().as_secs_f64());
        if let Err(e) = &outcome {
            tracing::debug!(op, error = %e, "backend_http call failed");
        }
        outcome
    }
}

/// Reads a response body of at most `max` bytes.
async fn read_bounded(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, BackendHttpError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| BackendHttpError::Unreachable(e.to_string()))? {
        if body.len() + chunk.len() > max {
            return Err(BackendHttpError::BadReply(format!("reply larger than {max} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A `/rpc` reply: the result (an empty body is `null`), or `{"error":{"code","message"}}`.
fn parse_reply(body: &[u8]) -> Result<Value, BackendHttpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| BackendHttpError::BadReply(format!("reply is not JSON: {e}")))?;
    match v.as_object().and_then(|o| o.get("error")).filter(|e| !e.is_null()) {
        Some(err) => Err(serde_json::from_value::<ErrorBody>(err.clone()).map_or_else(
            |e| BackendHttpError::BadReply(format!("malformed error body: {e}")),
            BackendHttpError::Backend,
        )),
        None => Ok(v),
    }
}

fn encode(body: &impl Serialize) -> Result<Vec<u8>, BackendHttpError> {
    serde_json::to_vec(body).map_err(|e| BackendHttpError::Setup(e.to_string()))
}

#[async_trait]
impl Upstream for HttpBackend {
    async fn send(
        &self,
        origin: &Origin<'_>,
        event: &str,
        data: &Value,
        correlation: &Correlation<'_>,
    ) -> Result<(), UpstreamError> {
        let headers = self.headers(origin, correlation)?;
        let body = encode(&UpBody { event, data })?;
        self.call("up", &self.up_url, headers, body, self.timeout).await?;
        Ok(())
    }

    async fn request(
        &self,
        origin: &Origin<'_>,
        method: &str,
        params: &Value,
        correlation: &Correlation<'_>,
        timeout: Duration,
    ) -> Result<Value, UpstreamError> {
        let headers = self.headers(origin, correlation)?;
        let body = encode(&RpcBody { method, params })?;
        let reply = self.call("rpc", &self.rpc_url, headers, body, timeout).await?;
        Ok(parse_reply(&reply)?)
    }

    fn sends_wait_for_backend(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_protocol::ErrorCode;
    use serde_json::json;

    #[test]
    fn replies() {
        assert_eq!(parse_reply(br#"{"id":"s1"}"#), Ok(json!({"id":"s1"})));
        assert_eq!(parse_reply(b""), Ok(Value::Null));
        assert_eq!(parse_reply(b"[1]"), Ok(json!([1])));
        let e = parse_reply(br#"{"error":{"code":"not_found","message":"no such session"}}"#);
        assert!(matches!(e, Err(BackendHttpError::Backend(b)) if b.code == ErrorCode::NotFound));
        assert!(matches!(parse_reply(b"<html>"), Err(BackendHttpError::BadReply(_))));
        assert!(matches!(parse_reply(br#"{"error":{"code":"weird"}}"#), Err(BackendHttpError::BadReply(_))));
    }

    #[test]
    fn headers_are_the_gateways_and_the_clients_clean_values() {
        let mut cfg = Config::default();
        cfg.backend_http.url = "http://127.0.0.1:9/base/".into();
        cfg.backend_http.token = "tok".into();
        let Ok(Some(b)) = HttpBackend::new(&cfg) else { panic!("backend not built") };
        assert_eq!(
            (b.rpc_url.as_str(), b.up_url.as_str()),
            ("http://127.0.0.1:9/base/rpc", "http://127.0.0.1:9/base/up")
        );
        let principal = gateway_protocol::Principal { kind: gateway_protocol::PrincipalKind::Agent, id: "a1".into() };
        let origin = Origin { node: "n1", conn: "c1", principal: &principal };
        let c =
            Correlation { message_id: Some("m1"), correlation_id: Some("x\r\nEvil: 1"), client_ts: Some("5".into()) };
        let h = b.headers(&origin, &c).unwrap();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        assert_eq!(get("gw-principal-kind"), "agent");
        assert_eq!(get("gw-principal-id"), "a1");
        assert_eq!(get("gw-connection"), "c1");
        assert_eq!(get("gw-node"), "n1");
        assert_eq!(get("gw-message-id"), "m1");
        assert_eq!(get("gw-client-ts"), "5");
        assert_eq!(get("gw-correlation-id"), "-");
        assert_eq!(get("authorization"), "Bearer tok");
        assert!(h.get("evil").is_none());
    }
}
