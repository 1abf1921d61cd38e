//! The parent ⇄ worker protocol: one JSON object per line, commands on the worker's
//! stdin, events on its stdout. Histograms travel as `(value, count)` pairs.

use std::{collections::BTreeMap, net::Ipv4Addr};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Whose clients a worker runs and where they connect; shared by [`ConnectSpec`] and
/// [`ChurnSpec`]. Connection (or cycle) `i` is the worker's `i`-th from `first`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Clients {
    /// `ws://host:port/ws` of every target node; connection `i` goes to `targets[i % len]`.
    pub targets: Vec<String>,
    /// HS256 secret to mint user tokens with.
    pub secret: String,
    /// User ids are `<user_prefix><global index>` (churn: `<user_prefix><first>-<slot>`, one
    /// user per concurrency slot).
    pub user_prefix: String,
    /// Global index of this worker's first connection (or cycle).
    pub first: u64,
    /// How many connections this worker opens (or cycles it runs).
    pub count: u64,
    /// Source addresses, connection `i` binds `src_ips[i % len]`.
    pub src_ips: Vec<Ipv4Addr>,
}

impl Clients {
    /// The same clients with another share: from `first`, `count` of them.
    pub fn share(&self, first: u64, count: u64) -> Self {
        Clients { first, count, ..self.clone() }
    }
}

/// Which connections a worker opens and what they join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectSpec {
    /// Who connects, where, and this worker's share.
    #[serde(flatten)]
    pub clients: Clients,
    /// Shared channels; connection `i` joins `channels[i % len]` (besides its user channel).
    pub channels: Vec<String>,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// Bound of one handshake (TCP + upgrade + `connected` + subscribe).
    pub timeout_ms: u64,
    /// Connect as Socket.IO clients (Engine.IO over WebSocket, one namespace each;
    /// the channels are then `project:` channels).
    #[serde(default)]
    pub socketio: bool,
}

/// A churn run: cycles of connect → subscribe → close.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnSpec {
    /// Who connects, where, and this worker's share of the cycles.
    #[serde(flatten)]
    pub clients: Clients,
    /// The channel each cycle joins.
    pub channel: String,
    /// Cycles in flight at once.
    pub concurrency: usize,
    /// Bound of one cycle.
    pub timeout_ms: u64,
    /// Bound of the whole run.
    pub deadline_ms: u64,
}

/// The `resume` scenario's subscribers: each tracks the per-channel sequence numbers it
/// received and its last history position, and after losing its connection reconnects
/// (after a random delay) to another node and resumes with `recover`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeSpec {
    /// Who connects, where, and this worker's share.
    #[serde(flatten)]
    pub clients: Clients,
    /// Channels with history; connection `i` joins `history[i % len]`.
    pub history: Vec<String>,
    /// Channels without history; connection `i` joins `plain[i % len]` too.
    pub plain: Vec<String>,
    /// Handshakes in flight at once during the first connect.
    pub concurrency: usize,
    /// Bound of one handshake (TCP + upgrade + `connected` + subscribe).
    pub timeout_ms: u64,
    /// A lost connection reconnects after a uniform random delay in `0..=jitter_ms`.
    pub jitter_ms: u64,
}

/// What a worker's `resume` clients saw so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrackReport {
    /// Clients started (open or not).
    pub clients: u64,
    /// Connections open now.
    pub open: u64,
    /// Bench events received on history channels (duplicates included).
    pub history_received: u64,
    /// Bench events received on channels without history.
    pub plain_received: u64,
    /// Published sequence numbers a client never received, summed over clients.
    pub lost: u64,
    /// Sequence numbers a client received more than once (each extra copy counts).
    pub duplicated: u64,
    /// Events that arrived with a lower sequence number than one received before.
    pub out_of_order: u64,
    /// Clients that miss at least one event.
    pub clients_with_loss: u64,
    /// Clients that got at least one event twice.
    pub clients_with_dup: u64,
    /// Most events one client lost.
    pub max_lost: u64,
    /// Most duplicates of one client.
    pub max_dup: u64,
    /// Connections lost, by close code (or `eof`/`error`).
    pub close_codes: BTreeMap<String, u64>,
    /// Reconnects that reached `subscribed`.
    pub reconnected: u64,
    /// Clients that gave up reconnecting, by the last failure.
    pub gave_up: BTreeMap<String, u64>,
    /// Failed reconnect attempts (retried), by reason.
    pub retries: BTreeMap<String, u64>,
    /// Resubscribe answers with `recovered: true` / `false` / no entry for the channel.
    pub recovered_true: u64,
    /// `recovered: false`.
    pub recovered_false: u64,
    /// No `recovered` entry for the channel (or no position to recover from).
    pub recovered_missing: u64,
    /// Events that arrived between the resubscribe and its answer (the replay).
    pub replayed: u64,
    /// Per resume: (µs since the epoch of the answer, of the first live event after it; 0 = none yet).
    pub resumes: Vec<(u64, u64)>,
}

/// Parent → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Cmd {
    /// Open and hold connections.
    Connect(ConnectSpec),
    /// Start counting events of `phase` (snapshot of open connections per channel).
    Measure {
        /// Phase number carried in every event's data.
        phase: u64,
    },
    /// Report the current phase; `events[c]` = events published to channel `c` so far.
    Report {
        /// Events published per shared channel in this phase.
        events: Vec<u64>,
    },
    /// Run churn cycles.
    Churn(ChurnSpec),
    /// Open and hold `resume` clients.
    Resume(ResumeSpec),
    /// Report the `resume` clients; `published[c]` = events published on history channel `c`.
    Track {
        /// Events published per history channel (sequence numbers `1..=n`).
        published: Vec<u64>,
    },
    /// Close every connection and exit.
    Close,
}

/// What a worker's connect phase or churn run did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tally {
    /// Handshakes (or cycles) that succeeded.
    pub ok: u64,
    /// Handshakes (or cycles) that failed or were not run, by reason in `errors`.
    pub failed: u64,
    /// Failure reason → count.
    pub errors: BTreeMap<String, u64>,
    /// TCP connect start → `connected` frame, µs.
    pub handshake: Vec<(u64, u64)>,
    /// Wall time.
    pub elapsed_ms: u64,
}

/// Worker → parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Ev {
    /// Handshakes (or cycles) done so far.
    Progress {
        /// Succeeded.
        done: u64,
        /// Failed.
        failed: u64,
    },
    /// The connect phase ended: `ok` counts connections open and subscribed.
    Connected {
        /// Handshakes done, failed and their latency.
        #[serde(flatten)]
        tally: Tally,
        /// TCP connect start → subscribe response, µs.
        ready: Vec<(u64, u64)>,
    },
    /// A command was applied.
    Ack,
    /// Counts of the current phase.
    Report {
        /// Phase reported.
        phase: u64,
        /// Events of this phase received.
        received: u64,
        /// Events of this phase expected (connections open at phase start × events on their channel).
        expected: u64,
        /// Events of other phases received during this one.
        stale: u64,
        /// Connections open now.
        open: u64,
        /// Connections lost since the connect phase (closed by the server or failed).
        lost: u64,
        /// Close code (or `eof`/`error`) → count, since the connect phase.
        close_codes: BTreeMap<String, u64>,
        /// Publish → receive latency of this phase, µs.
        latency: Vec<(u64, u64)>,
        /// When the phase's first event arrived (µs since the epoch; 0 = none).
        first_us: u64,
        /// When the phase's last event arrived (µs since the epoch; 0 = none).
        last_us: u64,
    },
    /// The `resume` clients' counts.
    Tracked(TrackReport),
    /// A churn run ended: `ok` counts cycles that completed.
    ChurnDone(Tally),
    /// Connections closed; the worker exits.
    Closed {
        /// How many were closed.
        closed: u64,
    },
    /// A command failed.
    Error {
        /// Why.
        message: String,
    },
}

/// A latency histogram in µs, 1 µs .. 120 s, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// A histogram as `(value, count)` pairs.
pub fn hist_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

/// Adds `(value, count)` pairs into `h`.
pub fn hist_add(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(v, c) in pairs {
        let _ = h.record_n(v.max(1), c);
    }
}

/// Adds `b` into `a` (reason → count maps).
pub fn merge_counts(a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>) {
    for (k, v) in b {
        *a.entry(k.clone()).or_default() += v;
    }
}
