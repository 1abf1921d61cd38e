//! Upstream sends (`send`, and every flat client message with another `type`). To the
//! bus a send is a local hand-off (a NATS publish), done inline. To a backend that
//! answers each one (`backend_http`) it is a round trip: those run off the read loop,
//! on a bounded per-connection queue worked in order by one tracked task, so a slow
//! backend never stalls the connection's other frames, sends reach the backend in the
//! order the client sent them, and each `ack` follows its backend's 2xx.

use std::sync::Arc;

use gateway_protocol::{ClientTimestamp, ErrorBody, ErrorCode, EventName, Principal, ServerFrame};
use serde_json::Value;
use tokio::sync::mpsc;

use super::Session;
use crate::{
    bus::{Correlation, Origin},
    conn::handle::ConnHandle,
    hub::to_message,
    node::Node,
    telemetry,
};

/// One send waiting for the backend, with what the client said about it.
struct Queued {
    id: Option<String>,
    event: EventName,
    data: Value,
    correlation_id: Option<String>,
    client_ts: Option<String>,
}

impl Queued {
    fn correlation(&self) -> Correlation<'_> {
        Correlation {
            message_id: self.id.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
            client_ts: self.client_ts.clone(),
        }
    }
}

/// The queue of a connection's sends to a backend that answers each one.
pub(super) struct SendQueue(mpsc::Sender<Queued>);

impl Session {
    /// An upstream `send`, with what the client said about it passed on as headers.
    pub(super) async fn send(
        &mut self,
        id: Option<String>,
        event: EventName,
        data: Value,
        correlation_id: Option<String>,
        timestamp: Option<ClientTimestamp>,
    ) {
        // The same rule for every upstream: the name must map onto an upstream subject.
        if crate::bus::upstream_subject(&self.node.cfg.subject_prefix, &event).is_none() {
            return self.fail(
                id,
                ErrorBody::new(ErrorCode::BadRequest, "event must be [A-Za-z0-9_-] tokens separated by ':' or '.'"),
            );
        }
        let q = Queued { id, event, data, correlation_id, client_ts: timestamp.as_ref().map(ClientTimestamp::to_text) };
        if !self.node.upstream.sends_wait_for_backend() {
            let outcome = self.node.upstream.send(&self.conn_ref(), &q.event, &q.data, &q.correlation()).await;
            return match outcome {
                Ok(()) => self.ack(q.id),
                Err(e) => self.fail(q.id, (&e).into()),
            };
        }
        let queue = self.sends.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(self.node.cfg.limits.max_inflight_requests.max(1));
            let worker = work(self.node.clone(), self.handle.clone(), self.identity.principal.clone(), rx);
            self.node.tasks.spawn(worker);
            SendQueue(tx)
        });
        if let Err(e) = queue.0.try_send(q) {
            let (q, error) = match e {
                mpsc::error::TrySendError::Full(q) => {
                    (q, ErrorBody::new(ErrorCode::LimitExceeded, "too many sends waiting for the backend"))
                }
                mpsc::error::TrySendError::Closed(q) => {
                    (q, ErrorBody::new(ErrorCode::Unavailable, "connection closing"))
                }
            };
            self.fail(q.id, error);
        }
    }
}

/// Works a connection's queue in order until the session drops it, the connection
/// closes or the node stops; answers each send with `ack` or the error.
async fn work(node: Arc<Node>, handle: Arc<ConnHandle>, principal: Principal, mut rx: mpsc::Receiver<Queued>) {
    loop {
        let q = tokio::select! {
            q = rx.recv() => match q { Some(q) => q, None => return },
            _ = handle.closed() => return,
            _ = node.shutdown.stopped() => return,
        };
        let origin = Origin { node: node.id(), conn: &handle.connection_id, principal: &principal };
        let correlation = q.correlation();
        let outcome = tokio::select! {
            r = node.upstream.send(&origin, &q.event, &q.data, &correlation) => r,
            _ = handle.closed() => return,
            _ = node.shutdown.stopped() => return,
        };
        let frame = match (outcome, q.id) {
            (Ok(()), Some(id)) => ServerFrame::Ack { id },
            (Err(e), Some(id)) => ServerFrame::err(id, (&e).into()),
            (Err(e), None) => ServerFrame::Error { error: (&e).into() },
            (Ok(()), None) => continue,
        };
        metrics::counter!(telemetry::FRAMES_OUT, "type" => frame.kind()).increment(1);
        handle.push(to_message(handle.encoding, &frame));
    }
}
