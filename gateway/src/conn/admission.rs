//! A connection's place in its principal's cluster-wide connection count, and what its
//! opening and closing announce (contract §10). Taken before the upgrade (so a full
//! principal gets 429) and released exactly once: by the session when it ends, or on
//! drop when the upgrade never happened or the session was dropped unfinished.
//!
//! The count says whether a connection is its principal's first anywhere and whether
//! its release was the last, atomically cluster-wide. An agent's `online` is announced
//! when its first connection opens and `offline` when its last is released. A counted
//! connection that never opened owes nothing if it was also the last; if it was first
//! and another connection opened meanwhile (which saw it and so did not announce), its
//! release announces `online` for that one.

use std::sync::Arc;

use gateway_protocol::{ErrorBody, ErrorCode, Principal};

use crate::{
    lifecycle::StatusChange,
    node::Node,
    presence::{self, ConnRef},
};

/// `reason` of the disconnect hook of a connection whose session was dropped unfinished
/// (a panic, or its task cancelled).
const ABORTED: &str = "aborted";

/// A counted connection.
pub struct Admission {
    /// Where to release it.
    node: Arc<Node>,
    /// The connection's public id (the lease member).
    conn: Arc<str>,
    /// Whose count.
    principal: Principal,
    /// Whether the count still has to be released.
    held: bool,
    /// The count found no other connection of the principal: it came online with this one.
    first: bool,
    /// The connection opened (its hook and, when first, `online` were announced).
    opened: bool,
    /// Whether the close is still to be announced (opened, or counted).
    pending: bool,
}

impl Admission {
    /// Counts a connection against its principal's limit. A full principal is
    /// `limit_exceeded`; an unreachable store follows the configured fail-open policy
    /// (the connection is then uncounted and announces no status change).
    pub async fn take(node: &Arc<Node>, conn: Arc<str>, principal: &Principal) -> Result<Self, ErrorBody> {
        let limit = node.limit_for(principal.kind);
        let r = ConnRef { node: node.id(), conn: &conn, principal };
        let (held, first) = match node.presence.admit(&r, limit).await {
            Ok(presence::Admission::Admitted { first }) => (true, first),
            Ok(presence::Admission::Full { limit }) => {
                return Err(ErrorBody::new(
                    ErrorCode::LimitExceeded,
                    format!("{} {} already has {limit} connections", principal.kind.as_str(), principal.id),
                ));
            }
            Err(e) if node.fail_open(principal.kind) => {
                tracing::warn!(error = %e, "connection count unknown; admitting (fail-open)");
                (false, false)
            }
            Err(e) => {
                tracing::warn!(error = %e, "connection count unknown; refusing (fail-closed)");
                return Err(ErrorBody::new(ErrorCode::Unavailable, "connection limits cannot be checked"));
            }
        };
        Ok(Admission {
            node: node.clone(),
            conn,
            principal: principal.clone(),
            held,
            first,
            opened: false,
            pending: held,
        })
    }

    /// The connection opened: tells backends, and announces its agent `online` when it
    /// is the first connection anywhere. Once.
    pub async fn open(&mut self) {
        if std::mem::replace(&mut self.opened, true) {
            return;
        }
        self.pending = true;
        let r = ConnRef { node: self.node.id(), conn: &self.conn, principal: &self.principal };
        self.node.lifecycle.opened(&r, self.first).await;
    }

    /// Releases the count now and announces the close (`reason`: why it closed).
    pub async fn release(&mut self, reason: &str) {
        if !std::mem::take(&mut self.pending) {
            return;
        }
        let held = std::mem::take(&mut self.held);
        close(&self.node, &self.conn, &self.principal, held, self.first, self.opened, reason).await;
    }
}

/// Releases a count (when `held`) and announces what it changed.
async fn close(node: &Node, conn: &str, principal: &Principal, held: bool, first: bool, opened: bool, reason: &str) {
    let r = ConnRef { node: node.id(), conn, principal };
    let last = if held {
        match node.presence.release(&r).await {
            Ok(last) => Some(last),
            Err(e) => {
                tracing::warn!(error = %e, "connection count not released; its lease will expire");
                None
            }
        }
    } else {
        None
    };
    // A release that failed is reported by the reaper once its lease expires.
    let owes_online = first && !opened;
    let change = match last {
        Some(true) if !owes_online => StatusChange::Offline,
        Some(false) if owes_online => StatusChange::Online,
        _ => StatusChange::None,
    };
    node.lifecycle.closed(&r, opened, change, reason).await;
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !std::mem::take(&mut self.pending) {
            return;
        }
        // The release is async; hand it to a task. The task owns plain parts, not an
        // `Admission`: if the runtime is shutting down and drops the task unrun, that
        // must not spawn again (it would recurse until the stack overflows). An
        // unreleased count is a lease and expires on its own.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (node, conn, principal) = (self.node.clone(), self.conn.clone(), self.principal.clone());
        let (held, first, opened) = (self.held, self.first, self.opened);
        let tasks = node.tasks.clone();
        tasks.spawn_on(async move { close(&node, &conn, &principal, held, first, opened, ABORTED).await }, &rt);
    }
}
