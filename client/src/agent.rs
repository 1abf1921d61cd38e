//! Seed 000's agent conveniences: handlers by event name (`on("task:assigned", …)`),
//! whatever channel the event arrives on, and `send_status_update`. Handlers run one at
//! a time, in arrival order, on one tracked task (cancelled with the gateway), so a
//! handler may itself call the gateway (e.g. to report status) without blocking the
//! connection.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
};

use gateway_protocol::EventFrame;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::{error::GatewayError, gateway::Gateway};

/// A registered handler.
pub(crate) type Handler = Arc<dyn Fn(EventFrame) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The event name of seed 000's status updates.
pub const STATUS_UPDATE: &str = "status:update";

impl Gateway {
    /// Runs `handler` for every event named `event` (e.g. `task:assigned`) on any
    /// channel, including the auto-joined `agent:<id>`. A handler that captures this
    /// gateway keeps it alive: end it with [`Gateway::close`].
    pub fn on<F, Fut>(&self, event: &str, handler: F)
    where
        F: Fn(EventFrame) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let h: Handler = Arc::new(move |ev| Box::pin(handler(ev)));
        let mut map = self.inner.handlers.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(event.to_owned()).or_default().push(h);
        drop(map);
        if !self.inner.dispatching.swap(true, Ordering::AcqRel) {
            // Subscribed before returning, so no event after `on` is missed.
            let rx = self.inner.events.resubscribe();
            let handlers = self.inner.handlers.clone();
            let cancel = self.inner.cancel.clone();
            self.inner.tracker.spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = dispatch(rx, handlers) => {}
                }
            });
        }
    }

    /// Seed 000's `sendStatusUpdate`: sends `status:update` with data
    /// `{status, …extra, timestamp}`; `extra` must be an object (or null). Resolves on ack.
    pub async fn send_status_update(&self, status: &str, extra: Value) -> Result<(), GatewayError> {
        self.send(STATUS_UPDATE, status_body(status, extra, gateway_protocol::now_ms())).await
    }
}

/// `{status, …extra, timestamp}`; a non-object `extra` goes under `"extra"`.
pub(crate) fn status_body(status: &str, extra: Value, now_ms: u64) -> Value {
    let mut body = Map::new();
    body.insert("status".into(), json!(status));
    match extra {
        Value::Object(m) => body.extend(m),
        Value::Null => {}
        other => {
            body.insert("extra".into(), other);
        }
    }
    body.entry("timestamp").or_insert(json!(now_ms));
    Value::Object(body)
}

async fn dispatch(
    mut rx: broadcast::Receiver<EventFrame>,
    handlers: Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<Handler>>>>,
) {
    loop {
        match rx.recv().await {
            Ok(ev) => {
                let hs: Vec<Handler> = handlers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(ev.event.as_str())
                    .cloned()
                    .unwrap_or_default();
                for h in hs {
                    h(ev.clone()).await;
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(skipped = n, "event handlers fell behind; events skipped");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bodies() {
        assert_eq!(status_body("idle", Value::Null, 5), json!({"status": "idle", "timestamp": 5}));
        assert_eq!(
            status_body("busy", json!({"progress": 50, "currentTask": "t1"}), 5),
            json!({"status": "busy", "progress": 50, "currentTask": "t1", "timestamp": 5})
        );
        assert_eq!(status_body("x", json!(3), 1), json!({"status": "x", "extra": 3, "timestamp": 1}));
        assert_eq!(status_body("x", json!({"timestamp": 9}), 1)["timestamp"], 9);
    }
}
