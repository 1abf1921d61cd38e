//! An HTTP backend stub for `backend_http` (contract §12): records every call to
//! `POST /rpc` and `POST /up` (path, headers, JSON body) and answers by name, so tests
//! can see what reached the backend, with which headers, in which order, how many at
//! once.
//!
//! `/rpc` methods: `echo` → the params; `missing` → `{"error":{"code":"not_found"}}`;
//! `fail` → HTTP 500; `stall` → no answer for a minute; `slow` → `{}` after 200 ms;
//! anything else → `{"method": <name>}`. `/up` events: `fail:me` → HTTP 500;
//! `slow:event` → 204 after 500 ms; anything else → 204.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};

/// One call the backend received.
#[derive(Debug, Clone)]
pub struct Call {
    /// `/rpc` or `/up`.
    pub path: &'static str,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its JSON body.
    pub body: Value,
}

impl Call {
    /// A header's value, `""` when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

#[derive(Default)]
struct Seen {
    calls: Mutex<Vec<Call>>,
    inflight: AtomicUsize,
    max_inflight: AtomicUsize,
}

impl Seen {
    fn enter(&self, path: &'static str, headers: HeaderMap, body: Value) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(Call { path, headers, body });
        }
        let now = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_inflight.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running stub; stopped when dropped.
pub struct Backend {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl Backend {
    /// Starts the stub on a free port.
    pub async fn start() -> anyhow::Result<Backend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let seen = Arc::new(Seen::default());
        let app = Router::new().route("/rpc", post(rpc)).route("/up", post(up)).with_state(seen.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Backend { url, seen, task })
    }

    /// Every call so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.seen.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The most calls that were in progress at once.
    pub fn max_inflight(&self) -> usize {
        self.seen.max_inflight.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn rpc(State(seen): State<Arc<Seen>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    seen.enter("/rpc", headers, body.clone());
    let method = body["method"].as_str().unwrap_or_default().to_owned();
    let answer = match method.as_str() {
        "echo" => Json(body["params"].clone()).into_response(),
        "missing" => Json(json!({"error": {"code": "not_found", "message": "no such thing"}})).into_response(),
        "fail" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "stall" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Json(json!({})).into_response()
        }
        "slow" => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Json(json!({})).into_response()
        }
        _ => Json(json!({ "method": method })).into_response(),
    };
    seen.leave();
    answer
}

async fn up(State(seen): State<Arc<Seen>>, headers: HeaderMap, Json(body): Json<Value>) -> StatusCode {
    seen.enter("/up", headers, body.clone());
    let status = match body["event"].as_str() {
        Some("fail:me") => StatusCode::INTERNAL_SERVER_ERROR,
        Some("slow:event") => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            StatusCode::NO_CONTENT
        }
        _ => StatusCode::NO_CONTENT,
    };
    seen.leave();
    status
}
