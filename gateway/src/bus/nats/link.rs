//! The NATS link as seen through async-nats connection events: up or down for health,
//! readiness and fail-fast publishes, outage metrics, and a reconnect counter the history
//! pumps watch to catch up what an outage missed.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU8, Ordering},
    },
    time::Instant,
};

use async_nats::Event;
use tokio::sync::watch;

use crate::telemetry;

/// `metrics` label of this component.
const COMPONENT: &str = "nats";

/// Link state before any connection event was seen.
const UNKNOWN: u8 = 0;
/// Link state: connected.
const UP: u8 = 1;
/// Link state: disconnected, reconnecting.
const DOWN: u8 = 2;

/// The NATS link as seen through async-nats connection events.
#[derive(Default)]
pub(super) struct Link {
    /// [`UNKNOWN`], [`UP`] or [`DOWN`]; read by `health()` and the fail-fast checks.
    state: AtomicU8,
    /// When the current outage began, to record its length when the link comes back.
    down_since: Mutex<Option<Instant>>,
    /// Bumped on every reconnect, so history pumps catch up what the outage missed.
    pub(super) reconnects: watch::Sender<u64>,
}

impl Link {
    /// Whether the link is believed up (unknown counts as up: connect just succeeded).
    pub(super) fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) != DOWN
    }

    /// Marks the link up after the initial connect, unless an event already said otherwise.
    pub(super) fn connected_at_start(&self) {
        if self.state.compare_exchange(UNKNOWN, UP, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            metrics::gauge!(telemetry::FABRIC_UP, "component" => COMPONENT).set(1.0);
        }
    }

    /// Applies one async-nats event to the state and the metrics.
    pub(super) fn on_event(&self, ev: &Event) {
        match ev {
            Event::Connected => {
                metrics::gauge!(telemetry::FABRIC_UP, "component" => COMPONENT).set(1.0);
                if self.state.swap(UP, Ordering::AcqRel) == DOWN {
                    self.reconnects.send_modify(|n| *n += 1);
                    let since = self.down_since.lock().ok().and_then(|mut d| d.take());
                    let gap = since.map(|s| s.elapsed()).unwrap_or_default();
                    metrics::histogram!(telemetry::FABRIC_GAP_SECONDS, "component" => COMPONENT)
                        .record(gap.as_secs_f64());
                    tracing::info!(gap_ms = gap.as_millis() as u64, "nats reconnected");
                }
            }
            // Closed is our own shutdown (the client was dropped or drained): down, but
            // not an outage.
            Event::Closed => {
                metrics::gauge!(telemetry::FABRIC_UP, "component" => COMPONENT).set(0.0);
                self.state.store(DOWN, Ordering::Release);
            }
            Event::Disconnected => {
                metrics::gauge!(telemetry::FABRIC_UP, "component" => COMPONENT).set(0.0);
                if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
                    metrics::counter!(telemetry::FABRIC_OUTAGES, "component" => COMPONENT).increment(1);
                    if let Ok(mut d) = self.down_since.lock() {
                        *d = Some(Instant::now());
                    }
                    tracing::warn!(event = %ev, "nats link down; reconnecting");
                }
            }
            Event::SlowConsumer(sid) => {
                metrics::counter!(telemetry::DROPS, "reason" => "slow_consumer").increment(1);
                tracing::warn!(sid, "nats subscription buffer full; events dropped");
            }
            Event::ServerError(_) | Event::ClientError(_) => tracing::warn!(event = %ev, "nats error"),
            other => tracing::info!(event = %other, "nats event"),
        }
    }
}
