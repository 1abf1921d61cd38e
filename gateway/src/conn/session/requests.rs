//! Built-in request methods (`channels.list`, `presence.get`, `presence.stats`,
//! `history.get`) and the forwarding of every other method to backends (the bus, or the
//! HTTP backend) on a tracked task.

use std::sync::atomic::Ordering;

use gateway_protocol::{Channel, ErrorBody, ErrorCode, HISTORY_GET, HistoryPage, HistoryQuery, ServerFrame};
use serde_json::{Value, json};

use super::{MAX_NAME_LEN, Session};
use crate::{
    bus::{Correlation, Origin},
    config::ms,
    history::ReadFrom,
    hub::to_message,
    membership::Membership,
    telemetry,
    upstream::UpstreamError,
};

impl Session {
    pub(super) async fn request(&mut self, id: String, method: String, params: Value) {
        match method.as_str() {
            "channels.list" => {
                let list: Vec<&str> = self.channels.iter().map(Channel::as_str).collect();
                self.reply(&ServerFrame::ok(id, json!({ "channels": list })));
            }
            "presence.get" | "presence.stats" => {
                let ch = match self.presence_channel(&params) {
                    Ok(ch) => ch,
                    Err(e) => return self.fail(Some(id), e),
                };
                let result = if method == "presence.get" {
                    self.node.presence.members(&ch).await.map(|m| json!({ "channel": ch, "members": m }))
                } else {
                    self.node.presence.stats(&ch).await.map(|s| json!({ "channel": ch, "stats": s }))
                };
                match result {
                    Ok(v) => self.reply(&ServerFrame::ok(id, v)),
                    Err(e) => self.fail(Some(id), (&e).into()),
                }
            }
            HISTORY_GET => match self.history(params).await {
                Ok(page) => self.reply(&ServerFrame::ok(id, json!(page))),
                Err(e) => self.fail(Some(id), e),
            },
            _ => self.forward(id, method, params),
        }
    }

    /// `history.get`: permitted to whoever may subscribe to the channel.
    async fn history(&self, params: Value) -> Result<HistoryPage, ErrorBody> {
        let q: HistoryQuery = serde_json::from_value(params).map_err(|e| {
            ErrorBody::new(ErrorCode::BadRequest, format!("params must be {{channel, since?, limit?}}: {e}"))
        })?;
        let ch = Channel::parse(&q.channel).map_err(|e| ErrorBody::from(&e))?;
        if !self.node.keeping.keeps(&ch) {
            return Err(Membership::no_history(&ch));
        }
        if !self.channels.contains(&ch) {
            let n = &self.node;
            let timeout = ms(n.cfg.fabric.request_timeout_ms);
            n.access
                .may_subscribe(&self.identity, &ch, None, &n.auth, &*n.bus, timeout)
                .await
                .map_err(|e| ErrorBody::from(&e))?;
        }
        let size = self.node.keeping.size(&ch);
        let limit = q.limit.unwrap_or(size).min(size);
        let from = q.since.map_or(ReadFrom::Latest, ReadFrom::After);
        let since = matches!(from, ReadFrom::After(_));
        let page = self.node.history.read(&ch, from, limit).await.map_err(|e| ErrorBody::from(&e))?;
        Ok(HistoryPage {
            channel: q.channel,
            complete: page.complete && (!since || page.reaches),
            events: page.events,
            offset: page.last,
            epoch: page.epoch,
        })
    }

    fn presence_channel(&self, params: &Value) -> Result<Channel, ErrorBody> {
        let name = params
            .get("channel")
            .and_then(Value::as_str)
            .ok_or_else(|| ErrorBody::new(ErrorCode::BadRequest, "params.channel is required"))?;
        let ch = Channel::parse(name).map_err(|e| ErrorBody::from(&e))?;
        if !self.identity.admin && !self.channels.contains(&ch) {
            return Err(ErrorBody::new(ErrorCode::Forbidden, "subscribe to the channel first"));
        }
        if !self.node.access.tracks_presence(&ch) {
            return Err(ErrorBody::new(ErrorCode::NotFound, "this namespace has no presence"));
        }
        Ok(ch)
    }

    /// Forwards a method to backends on a tracked task, so a slow backend does not stall
    /// this connection's other frames.
    fn forward(&self, id: String, method: String, params: Value) {
        if method.is_empty()
            || method.len() > MAX_NAME_LEN
            || crate::bus::rpc_subject(&self.node.cfg.subject_prefix, &method).is_none()
        {
            return self.fail(Some(id), ErrorBody::new(ErrorCode::BadRequest, "invalid method name"));
        }
        if self.inflight.fetch_add(1, Ordering::AcqRel) >= self.node.cfg.limits.max_inflight_requests {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            return self.fail(Some(id), ErrorBody::new(ErrorCode::LimitExceeded, "too many requests in flight"));
        }
        let (node, handle, inflight) = (self.node.clone(), self.handle.clone(), self.inflight.clone());
        let principal = self.identity.principal.clone();
        let timeout = ms(node.cfg.fabric.request_timeout_ms);
        self.node.tasks.spawn(async move {
            let started = std::time::Instant::now();
            let origin = Origin { principal: &principal, conn: &handle.connection_id, node: node.id() };
            let correlation = Correlation { message_id: Some(&id), ..Correlation::default() };
            let call = node.upstream.request(&origin, &method, &params, &correlation, timeout);
            let outcome = tokio::select! {
                r = call => r,
                _ = handle.closed() => { inflight.fetch_sub(1, Ordering::AcqRel); return; }
                _ = node.shutdown.stopped() => { inflight.fetch_sub(1, Ordering::AcqRel); return; }
            };
            let label = outcome.as_ref().map_or_else(UpstreamError::label, |_| "ok");
            metrics::counter!(telemetry::REQUESTS, "outcome" => label).increment(1);
            metrics::histogram!(telemetry::REQUEST_SECONDS).record(started.elapsed().as_secs_f64());
            let frame = match outcome {
                Ok(v) => ServerFrame::ok(id, v),
                Err(e) => ServerFrame::err(id, (&e).into()),
            };
            metrics::counter!(telemetry::FRAMES_OUT, "type" => "response").increment(1);
            handle.push(to_message(handle.encoding, &frame));
            inflight.fetch_sub(1, Ordering::AcqRel);
        });
    }
}
