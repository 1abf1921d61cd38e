//! Where a client's `request` and upstream `send` go (contract §5, §12): to the bus
//! (NATS subjects, or the embedded twin, which answers requests `unavailable`), or to a
//! backend over HTTP ([`crate::backend_http`]) when `backend_http.url` is set. Only
//! these two operations move: events, control, hooks and the subscribe proxy still
//! flow through the bus.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use serde_json::Value;

use crate::{
    backend_http::{BackendHttpError, HttpBackend},
    bus::{Bus, BusError, Correlation, Origin},
    config::Config,
};

/// Why a request or send did not reach a backend or was refused by it.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Through the bus.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Through the HTTP backend.
    #[error(transparent)]
    Http(#[from] BackendHttpError),
}

impl UpstreamError {
    /// The `outcome` label of the request metrics.
    pub fn label(&self) -> &'static str {
        match self {
            UpstreamError::Bus(BusError::Timeout(_)) | UpstreamError::Http(BackendHttpError::Timeout(_)) => "timeout",
            UpstreamError::Bus(BusError::NoResponders) => "no_responders",
            UpstreamError::Http(BackendHttpError::Status(_) | BackendHttpError::Unreachable(_)) => "unavailable",
            _ => "error",
        }
    }
}

/// The backends' side of client requests and upstream sends.
#[async_trait]
pub trait Upstream: Send + Sync + 'static {
    /// Hands a client's upstream event to backends, with what the client said about it.
    async fn send(
        &self,
        origin: &Origin<'_>,
        event: &str,
        data: &Value,
        correlation: &Correlation<'_>,
    ) -> Result<(), UpstreamError>;

    /// Asks a backend method and waits (at most `timeout`) for its result.
    async fn request(
        &self,
        origin: &Origin<'_>,
        method: &str,
        params: &Value,
        correlation: &Correlation<'_>,
        timeout: Duration,
    ) -> Result<Value, UpstreamError>;

    /// Whether a send waits for a backend's answer (a round trip) rather than a local
    /// hand-off: the session then runs sends off the connection's read loop, in order.
    fn sends_wait_for_backend(&self) -> bool;
}

/// Requests and sends over the bus: `<prefix>.rpc.<method>` and `<prefix>.up.<event>`.
pub struct BusUpstream(pub Arc<dyn Bus>);

#[async_trait]
impl Upstream for BusUpstream {
    async fn send(
        &self,
        origin: &Origin<'_>,
        event: &str,
        data: &Value,
        correlation: &Correlation<'_>,
    ) -> Result<(), UpstreamError> {
        Ok(self.0.send_upstream(origin, event, data, correlation).await?)
    }

    async fn request(
        &self,
        origin: &Origin<'_>,
        method: &str,
        params: &Value,
        _: &Correlation<'_>,
        timeout: Duration,
    ) -> Result<Value, UpstreamError> {
        Ok(self.0.request(origin, method, params, timeout).await?)
    }

    fn sends_wait_for_backend(&self) -> bool {
        // A NATS publish (or the twin's drop) returns once handed off.
        false
    }
}

/// The upstream a node uses: the HTTP backend when configured, else the bus.
pub fn build(cfg: &Config, bus: Arc<dyn Bus>) -> Result<Arc<dyn Upstream>, BackendHttpError> {
    Ok(match HttpBackend::new(cfg)? {
        Some(http) => Arc::new(http),
        None => Arc::new(BusUpstream(bus)),
    })
}
