//! The shared half of a connection: what the hub and the control plane hold to reach it.
//!
//! The outbound queue is bounded twice, in frames and in bytes; a push that would
//! overflow either closes the connection as a slow consumer (4009) instead of blocking
//! the publisher or growing memory. Other subscribers are unaffected.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::extract::ws::Message;
use gateway_protocol::{CloseCode, DisconnectReason, Encoding, Principal};
use tokio::sync::Notify;

use crate::{sio::wire::SioTarget, telemetry};

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
    /// Set for a Socket.IO socket: the hub sends it its namespace's encoding instead
    /// (`encoding` is then unused). Boxed: 8 bytes on every native connection.
    pub sio: Option<Box<SioTarget>>,
    /// Outbound frames and their bytes. Allocates nothing until the first push, and
    /// gives its storage back whenever the writer empties it.
    queue: Mutex<Queue>,
    /// Wakes the writer: a frame arrived in an empty queue, or a close was asked for.
    ready: Notify,
    /// Wakes everything waiting in [`ConnHandle::closed`].
    closed: Notify,
    /// Set once a close is asked for; pushes are refused from then on.
    closing: AtomicBool,
    /// Frame bound of the queue.
    max_frames: usize,
    /// Byte bound of the queue.
    max_bytes: usize,
    /// The first close asked for wins.
    close: OnceLock<Close>,
}

/// The outbound queue proper.
#[derive(Debug, Default)]
struct Queue {
    /// Frames to write, oldest first.
    msgs: VecDeque<Message>,
    /// Payload bytes of `msgs`.
    bytes: usize,
}

/// The connection task's end of the outbound queue (the frames themselves live in the
/// handle; this is what the writer drains them through).
pub struct Outbox {
    /// The queue's owner.
    handle: Arc<ConnHandle>,
}

impl Outbox {
    /// The oldest queued frame, if any; its bytes leave the byte budget now (the caller
    /// accounts the queue-bytes gauge). Does not wait.
    pub fn pop(&mut self) -> Option<Message> {
        self.handle.pop()
    }

    /// The next frame, waiting for one; `None` once a close is asked for and nothing is
    /// queued. For tests and simple consumers; the writer takes batches with `pop`.
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some(m) = self.pop() {
                telemetry::hot().queue_bytes.decrement(message_len(&m) as f64);
                return Some(m);
            }
            if self.handle.is_closing() {
                return None;
            }
            self.ready().await;
        }
    }

    /// Resolves when a frame may be waiting or a close was asked for. It may wake
    /// spuriously: pop, and wait again if nothing came. Frames pushed between an empty
    /// `pop` and this wait are not missed (the wake-up is kept until taken).
    pub async fn ready(&self) {
        self.handle.ready.notified().await;
    }

    /// Drops every queued frame (the connection is gone) and gives back their bytes.
    pub fn discard(&mut self) -> usize {
        let mut q = self.handle.lock();
        let bytes = std::mem::take(&mut q.bytes);
        let msgs = std::mem::take(&mut q.msgs);
        drop(q);
        drop(msgs);
        telemetry::hot().queue_bytes.decrement(bytes as f64);
        bytes
    }
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
        Self::with_target(id, connection_id, principal, encoding, None, max_frames, max_bytes)
    }

    /// A handle and its outbox, for a Socket.IO socket when `sio` is set.
    pub fn with_target(
        id: ConnId,
        connection_id: Arc<str>,
        principal: Principal,
        encoding: Encoding,
        sio: Option<Box<SioTarget>>,
        max_frames: usize,
        max_bytes: usize,
    ) -> (Arc<Self>, Outbox) {
        let h = Arc::new(ConnHandle {
            id,
            connection_id,
            principal,
            encoding,
            sio,
            queue: Mutex::default(),
            ready: Notify::new(),
            closed: Notify::new(),
            closing: AtomicBool::new(false),
            max_frames,
            max_bytes,
            close: OnceLock::new(),
        });
        (h.clone(), Outbox { handle: h })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame without waiting. On overflow the connection is closed as a slow
    /// consumer and `false` returned; the frame is dropped.
    pub fn push(&self, msg: Message) -> bool {
        let len = message_len(&msg);
        let ok = self.enqueue(msg, len);
        if ok {
            telemetry::hot().queue_bytes.increment(len as f64);
        }
        ok
    }

    /// [`ConnHandle::push`] without the queue-bytes gauge, for a caller that accounts
    /// many pushes at once (the hub, once per event). `len` is `message_len(&msg)`.
    pub(crate) fn enqueue(&self, msg: Message, len: usize) -> bool {
        if self.is_closing() {
            telemetry::hot().drops_closing.increment(1);
            return false;
        }
        let mut q = self.lock();
        if q.msgs.len() >= self.max_frames || q.bytes + len > self.max_bytes {
            drop(q);
            telemetry::hot().drops_slow_consumer.increment(1);
            if self.close(Close::bare(CloseCode::SlowConsumer)) {
                metrics::counter!(telemetry::SLOW_CONSUMER_CLOSES).increment(1);
                tracing::info!(conn = %self.connection_id, "slow consumer: outbound queue full");
            }
            return false;
        }
        let was_empty = q.msgs.is_empty();
        if q.msgs.capacity() == 0 {
            // Most queues hold one frame at a time: start small.
            q.msgs.reserve_exact(INITIAL_FRAMES);
        }
        q.msgs.push_back(msg);
        q.bytes += len;
        drop(q);
        // The writer only sleeps on an empty queue, so only the first frame wakes it.
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    fn pop(&self) -> Option<Message> {
        let mut q = self.lock();
        let m = q.msgs.pop_front()?;
        q.bytes -= message_len(&m);
        if q.msgs.is_empty() && q.msgs.capacity() > KEEP_FRAMES {
            // A burst is over: do not let it pin memory for the connection's life.
            q.msgs = VecDeque::new();
        }
        Some(m)
    }

    /// Whether `frames` frames of `bytes` bytes fit the queue's bounds (for events held
    /// elsewhere on their way to this queue).
    pub fn fits(&self, frames: usize, bytes: usize) -> bool {
        frames <= self.max_frames && bytes <= self.max_bytes
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Frames queued now.
    pub fn queued_frames(&self) -> usize {
        self.lock().msgs.len()
    }

    /// Frames the queue has room for without growing.
    pub fn queue_capacity(&self) -> usize {
        self.lock().msgs.capacity()
    }

    /// Whether a close was asked for.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Asks the connection to close. Returns true if this was the first request.
    pub fn close(&self, close: Close) -> bool {
        let first = self.close.set(close).is_ok();
        if !self.closing.swap(true, Ordering::AcqRel) {
            self.closed.notify_waiters();
            self.ready.notify_one();
        }
        first
    }

    /// The close asked for, if any.
    pub fn close_requested(&self) -> Option<Close> {
        self.close.get().copied()
    }

    /// Resolves when a close is asked for.
    pub async fn closed(&self) {
        loop {
            // Registered before the check: a close between the two still wakes it.
            let notified = self.closed.notified();
            if self.is_closing() {
                return;
            }
            notified.await;
        }
    }
}

/// Frames the queue makes room for on its first push.
const INITIAL_FRAMES: usize = 2;
/// Capacity an emptied queue keeps; above it the storage is freed.
const KEEP_FRAMES: usize = 4;

/// Payload length of a message, for the byte budget.
pub fn message_len(msg: &Message) -> usize {
    match msg {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 2,
    }
}
