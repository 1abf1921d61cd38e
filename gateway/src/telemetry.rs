//! Logs and metrics: the tracing subscriber, the Prometheus recorder, and the name of
//! every metric in one place so dashboards and code cannot drift apart.
//!
//! Counters end in `_total`, histograms in `_seconds`; every name starts with `gateway_`.

use std::sync::{LazyLock, OnceLock};

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;

/// Open connections, by `kind` (user|agent) and `encoding`.
pub const CONNECTIONS: &str = "gateway_connections";
/// Upgrade attempts that completed, by `kind`.
pub const HANDSHAKES: &str = "gateway_handshakes_total";
/// Upgrades refused before the socket opened, by `reason` (error code).
pub const REFUSALS: &str = "gateway_handshake_refusals_total";
/// HTTP connections accepted and not (yet) upgraded to WebSockets.
pub const HTTP_CONNECTIONS: &str = "gateway_http_connections";
/// HTTP connections closed for waiting too long, by `reason` (`header`: a request head
/// started and did not finish in time; `idle`: nothing was sent in time).
pub const HTTP_TIMEOUTS: &str = "gateway_http_timeouts_total";
/// Closed WebSockets whose input was drained before the socket went (lingering
/// close), by `end` (`eof`, `timeout`, `budget`, `error`).
pub const LINGERING_CLOSES: &str = "gateway_lingering_closes_total";
/// Credential checks that failed, by `reason` and `carrier`.
pub const AUTH_FAILURES: &str = "gateway_auth_failures_total";
/// Time from upgrade request to `connected`.
pub const HANDSHAKE_SECONDS: &str = "gateway_handshake_seconds";
/// Frames received, by `type`.
pub const FRAMES_IN: &str = "gateway_frames_in_total";
/// Frames sent, by `type`.
pub const FRAMES_OUT: &str = "gateway_frames_out_total";
/// Payload bytes received.
pub const BYTES_IN: &str = "gateway_bytes_in_total";
/// Payload bytes sent.
pub const BYTES_OUT: &str = "gateway_bytes_out_total";
/// Events queued to a local subscriber.
pub const DELIVERIES: &str = "gateway_deliveries_total";
/// Events or frames not delivered, by `reason`.
pub const DROPS: &str = "gateway_drops_total";
/// Connections closed because their outbound queue overflowed.
pub const SLOW_CONSUMER_CLOSES: &str = "gateway_slow_consumer_closes_total";
/// Connections closed, by close `code` reason.
pub const CLOSES: &str = "gateway_closes_total";
/// Bytes waiting in outbound queues on this node.
pub const QUEUE_BYTES: &str = "gateway_outbound_queue_bytes";
/// Frames answered with `rate_limited`.
pub const RATE_LIMITED: &str = "gateway_rate_limited_total";
/// Channels with at least one local subscriber.
pub const CHANNELS: &str = "gateway_channels";
/// Local channel subscriptions (connection × channel).
pub const SUBSCRIPTIONS: &str = "gateway_subscriptions";
/// Events published by this node (HTTP, client publish, presence), by `source`.
pub const PUBLISHED: &str = "gateway_published_total";
/// Time from an event's `ts` to its fan-out on this node.
pub const DELIVERY_LATENCY: &str = "gateway_delivery_latency_seconds";
/// Backend requests, by `outcome`.
pub const REQUESTS: &str = "gateway_requests_total";
/// Backend request duration.
pub const REQUEST_SECONDS: &str = "gateway_request_seconds";
/// Calls to the HTTP backend (`backend_http`), by `op` (rpc|up) and `outcome`
/// (ok|timeout|status|unreachable|bad_reply).
pub const BACKEND_HTTP_CALLS: &str = "gateway_backend_http_calls_total";
/// Duration of calls to the HTTP backend, by `op`.
pub const BACKEND_HTTP_SECONDS: &str = "gateway_backend_http_seconds";
/// 1 when a fabric component is reachable, by `component` (nats|redis).
pub const FABRIC_UP: &str = "gateway_fabric_up";
/// Fabric disconnections observed, by `component`.
pub const FABRIC_OUTAGES: &str = "gateway_fabric_outages_total";
/// Seconds a fabric component was unreachable, by `component` (the delivery gap).
pub const FABRIC_GAP_SECONDS: &str = "gateway_fabric_gap_seconds";
/// 1 while the node drains.
pub const DRAINING: &str = "gateway_draining";
/// Connections closed by the drain.
pub const DRAIN_CLOSES: &str = "gateway_drain_closes_total";
/// Presence leave events emitted for expired leases.
pub const PRESENCE_EXPIRED: &str = "gateway_presence_expired_total";
/// Connections of dead nodes this node reaped and reported lost (contract §10).
pub const CONNECTIONS_LOST: &str = "gateway_connections_lost_total";
/// Counter: subscribe recoveries (label `outcome`: recovered|lost).
pub const RECOVERIES: &str = "gateway_recoveries_total";
/// Counter: events a node fetched from history to fill a hole in a channel's offsets.
pub const GAP_FILLS: &str = "gateway_history_gap_fills_total";
/// Tasks the node tracks (connections, their request and send workers, lingering
/// closes, bus and presence loops); set when `/metrics` is scraped. A count that stays
/// above its idle level after the load is gone is a leak.
pub const TASKS: &str = "gateway_tasks";
/// Tasks alive in the node's Tokio runtime, tracked or not (the NATS and Redis clients'
/// own included); set when `/metrics` is scraped.
pub const RUNTIME_TASKS: &str = "gateway_runtime_tasks";
/// Counter: events refused at their source (labels `source`: client|http|nats; `reason`:
/// reserved|too_deep|too_large).
pub const EVENTS_REFUSED: &str = "gateway_events_refused_total";

/// Counter: fetches of the identity provider's key set (labels `result`: ok|error;
/// `trigger`: refresh|unknown_kid).
pub const JWKS_FETCHES: &str = "gateway_jwks_fetches_total";
/// Gauge: usable keys in the last good key set.
pub const JWKS_KEYS: &str = "gateway_jwks_keys";

/// Counter: handshakes admitted unmetered because the per-address rate table was full.
pub const HANDSHAKE_RATE_UNTRACKED: &str = "gateway_handshake_rate_untracked_total";

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use. Several nodes in one
/// process (tests) share it.
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let buckets = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is already installed (an embedding program): render ours
            // without making it global.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

/// How often histogram samples are folded into their buckets. The recorder keeps raw
/// samples until then, so without this memory grows with every recorded value.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Folds recorded histogram samples into buckets every [`UPKEEP_INTERVAL`] until `stop`.
pub async fn upkeep(stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => prometheus().run_upkeep(),
        }
    }
}

/// Handles of the metrics touched once per message or per event, resolved once: a
/// `metrics::counter!` lookup per message costs a hash and a lock in the recorder.
pub struct Hot {
    /// [`DELIVERIES`].
    pub deliveries: Counter,
    /// [`BYTES_OUT`].
    pub bytes_out: Counter,
    /// [`QUEUE_BYTES`].
    pub queue_bytes: Gauge,
    /// [`DROPS`] `reason=closing`.
    pub drops_closing: Counter,
    /// [`DROPS`] `reason=slow_consumer`.
    pub drops_slow_consumer: Counter,
    /// [`DROPS`] `reason=no_subscribers`.
    pub drops_no_subscribers: Counter,
    /// [`DELIVERY_LATENCY`].
    pub delivery_latency: Histogram,
}

static HOT: LazyLock<Hot> = LazyLock::new(|| {
    // A handle taken before the recorder is installed would stay a no-op for good, so
    // make sure it is (the router installs it too; this is the same, idempotent call).
    prometheus();
    Hot {
        deliveries: metrics::counter!(DELIVERIES),
        bytes_out: metrics::counter!(BYTES_OUT),
        queue_bytes: metrics::gauge!(QUEUE_BYTES),
        drops_closing: metrics::counter!(DROPS, "reason" => "closing"),
        drops_slow_consumer: metrics::counter!(DROPS, "reason" => "slow_consumer"),
        drops_no_subscribers: metrics::counter!(DROPS, "reason" => "no_subscribers"),
        delivery_latency: metrics::histogram!(DELIVERY_LATENCY),
    }
});

/// The cached hot-path handles.
pub fn hot() -> &'static Hot {
    &HOT
}

/// Sets [`TASKS`] from `tracked` and [`RUNTIME_TASKS`] from the current runtime: gauges
/// read when scraped, so counting costs nothing between scrapes.
pub fn sample_tasks(tracked: &tokio_util::task::TaskTracker) {
    metrics::gauge!(TASKS).set(tracked.len() as f64);
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        metrics::gauge!(RUNTIME_TASKS).set(rt.metrics().num_alive_tasks() as f64);
    }
}

/// Installs the global tracing subscriber (`RUST_LOG` filters, default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let result = match format {
        LogFormat::Text => fmt().with_env_filter(filter).try_init(),
        LogFormat::Json => fmt().json().flatten_event(true).with_env_filter(filter).try_init(),
    };
    // A subscriber set earlier (tests) wins.
    drop(result);
}
