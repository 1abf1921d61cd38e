//! A connection's place in its principal's cluster-wide connection count. Taken before
//! the upgrade (so a full principal gets 429) and released exactly once: by the session
//! when it ends, or on drop when the upgrade never happened.

use std::sync::Arc;

use gateway_protocol::{ErrorBody, ErrorCode, Principal};

use crate::{
    node::Node,
    presence::{self, ConnRef},
};

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
}

impl Admission {
    /// Counts a connection against its principal's limit. A full principal is
    /// `limit_exceeded`; an unreachable store follows the configured fail-open policy.
    pub async fn take(node: &Arc<Node>, conn: Arc<str>, principal: &Principal) -> Result<Self, ErrorBody> {
        let limit = node.limit_for(principal.kind);
        let r = ConnRef { node: node.id(), conn: &conn, principal };
        let held = match node.presence.admit(&r, limit).await {
            Ok(presence::Admission::Admitted) => true,
            Ok(presence::Admission::Full { limit }) => {
                return Err(ErrorBody::new(
                    ErrorCode::LimitExceeded,
                    format!("{} {} already has {limit} connections", principal.kind.as_str(), principal.id),
                ));
            }
            Err(e) if node.fail_open(principal.kind) => {
                tracing::warn!(error = %e, "connection count unknown; admitting (fail-open)");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "connection count unknown; refusing (fail-closed)");
                return Err(ErrorBody::new(ErrorCode::Unavailable, "connection limits cannot be checked"));
            }
        };
        Ok(Admission { node: node.clone(), conn, principal: principal.clone(), held })
    }

    /// Releases the count now.
    pub async fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            let r = ConnRef { node: self.node.id(), conn: &self.conn, principal: &self.principal };
            if let Err(e) = self.node.presence.release(&r).await {
                tracing::warn!(error = %e, "connection count not released; its lease will expire");
            }
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !std::mem::take(&mut self.held) {
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
        let tasks = node.tasks.clone();
        tasks.spawn_on(
            async move {
                let r = ConnRef { node: node.id(), conn: &conn, principal: &principal };
                if let Err(e) = node.presence.release(&r).await {
                    tracing::warn!(error = %e, "connection count not released; its lease will expire");
                }
            },
            &rt,
        );
    }
}
