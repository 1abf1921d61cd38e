//! Shutdown signals: `draining` (stop taking connections, report not ready, close
//! existing ones in batches) and `stopped` (every loop ends). Every long-lived loop in
//! the node selects on one of them.

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// The node's two shutdown phases.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled when the drain begins.
    draining: CancellationToken,
    /// Cancelled when the node stops; implies draining.
    stopped: CancellationToken,
}

impl Shutdown {
    /// Fresh, running signals.
    pub fn new() -> Self {
        let stopped = CancellationToken::new();
        Shutdown { draining: stopped.child_token(), stopped }
    }

    /// Begins the drain.
    pub fn drain(&self) {
        self.draining.cancel();
    }

    /// Stops everything.
    pub fn stop(&self) {
        self.stopped.cancel();
    }

    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Resolves when the drain begins.
    pub fn draining(&self) -> WaitForCancellationFuture<'_> {
        self.draining.cancelled()
    }

    /// Resolves when the node stops.
    pub fn stopped(&self) -> WaitForCancellationFuture<'_> {
        self.stopped.cancelled()
    }

    /// A token cancelled when the node stops (for components that take one).
    pub fn stop_token(&self) -> CancellationToken {
        self.stopped.clone()
    }
}
