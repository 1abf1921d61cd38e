//! The shared half of a connection: what the hub and the control plane hold to reach it.
//!
//! The outbound queue is bounded twice, in frames and in bytes; a push that would
//! overflow either closes the connection as a slow consumer (4009) instead of blocking
//! the publisher or growing memory. Other subscribers are unaffected.

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicUsize, Ordering},
};

use axum::extract::ws::Message;
use gateway_protocol::{CloseCode, DisconnectReason, Encoding, Principal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::telemetry;

/// Node-local connection number (cheap key for tables).
pub type ConnId = u64;

/// How and why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// The WebSocket close code.
    pub code: CloseCode,
    /// When set, a `disconnecting` frame precedes the close: (reason, reconnect).
    pub notice: Option<(DisconnectReason, bool)>,
}

impl Close {
    /// A close with a `disconnecting` notice first.
    pub fn with_notice(code: CloseCode, reason: DisconnectReason, reconnect: bool) -> Self {
        Close { code, notice: Some((reason, reconnect)) }
    }

    /// A close without notice.
    pub fn bare(code: CloseCode) -> Self {
        Close { code, notice: None }
    }
}

/// The reachable half of a connection.
#[derive(Debug)]
pub struct ConnHandle {
    /// Node-local number.
    pub id: ConnId,
    /// Public connection id (in `connected`, upstream headers and logs).
    pub connection_id: Arc<str>,
    /// Who is connected; fixed for the connection's life.
    pub principal: Principal,
    /// Its encoding, so the hub picks the right shared bytes.
    pub encoding: Encoding,
    /// Outbound frames, bounded in count.
    tx: mpsc::Sender<Message>,
    /// Bytes currently queued, bounded by `max_bytes`.
    queued: AtomicUsize,
    /// Byte bound of the queue.
    max_bytes: usize,
    /// Cancelled to make the connection's task close the socket.
    closer: CancellationToken,
    /// The first close asked for wins.
    close: OnceLock<Close>,
}

/// The receiving half of an outbound queue, owned by the connection's task.
pub struct Outbox {
    /// Frames to write.
    pub rx: mpsc::Receiver<Message>,
}

impl ConnHandle {
    /// A handle and its outbox.
    pub fn new(
        id: ConnId,
        connection_id: Arc<str>,
        principal: Principal,
        encoding: Encoding,
        max_frames: usize,
        max_bytes: usize,
    ) -> (Arc<Self>, Outbox) {
        let (tx, rx) = mpsc::channel(max_frames);
        let h = ConnHandle {
            id,
            connection_id,
            principal,
            encoding,
            tx,
            queued: AtomicUsize::new(0),
            max_bytes,
            closer: CancellationToken::new(),
            close: OnceLock::new(),
        };
        (Arc::new(h), Outbox { rx })
    }

    /// Queues a frame without waiting. On overflow the connection is closed as a slow
    /// consumer and `false` returned; the frame is dropped.
    pub fn push(&self, msg: Message) -> bool {
        if self.closer.is_cancelled() {
            metrics::counter!(telemetry::DROPS, "reason" => "closing").increment(1);
            return false;
        }
        let len = message_len(&msg);
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        if before + len > self.max_bytes || self.tx.try_send(msg).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            metrics::counter!(telemetry::DROPS, "reason" => "slow_consumer").increment(1);
            if self.close(Close::bare(CloseCode::SlowConsumer)) {
                metrics::counter!(telemetry::SLOW_CONSUMER_CLOSES).increment(1);
                tracing::info!(conn = %self.connection_id, "slow consumer: outbound queue full");
            }
            return false;
        }
        metrics::gauge!(telemetry::QUEUE_BYTES).increment(len as f64);
        true
    }

    /// Marks `msg` as written (leaves the byte budget).
    pub fn sent(&self, msg: &Message) {
        let len = message_len(msg);
        self.queued.fetch_sub(len, Ordering::Relaxed);
        metrics::gauge!(telemetry::QUEUE_BYTES).decrement(len as f64);
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Asks the connection to close. Returns true if this was the first request.
    pub fn close(&self, close: Close) -> bool {
        let first = self.close.set(close).is_ok();
        self.closer.cancel();
        first
    }

    /// The close asked for, if any.
    pub fn close_requested(&self) -> Option<Close> {
        self.close.get().copied()
    }

    /// Resolves when a close is asked for.
    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.closer.cancelled()
    }
}

/// Payload length of a message, for the byte budget.
pub fn message_len(msg: &Message) -> usize {
    match msg {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 2,
    }
}
