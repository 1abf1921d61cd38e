//! The checks a configuration must pass beyond its types; each refusal names its key.

use gateway_protocol::Namespace;

use super::{Config, ConfigError, compat, default_node_id, valid_id, ws_paths};

impl Config {
    /// Checks values that types alone cannot; fills the node id.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| Err(ConfigError::Invalid { key, reason: reason.into() });
        if self.node_id.is_empty() {
            self.node_id = default_node_id();
        }
        if !valid_id(&self.node_id) {
            return invalid("node_id", "must be 1-128 characters of [A-Za-z0-9_-]");
        }
        if self.nats_url.is_empty() != self.redis_url.is_empty() {
            return invalid("nats_url", "set both nats_url and redis_url, or neither (embedded)");
        }
        if self.subject_prefix.is_empty() || self.subject_prefix.contains(['.', '*', '>', ' ']) {
            return invalid("subject_prefix", "must be one NATS token");
        }
        self.static_api_keys()?;
        if self.auth.auth_timeout_ms == 0 {
            return invalid("auth.auth_timeout_ms", "must be > 0");
        }
        if self.limits.max_frame_bytes < 256 {
            return invalid("limits.max_frame_bytes", "must be at least 256");
        }
        if self.limits.outbound_queue_frames == 0 || self.limits.outbound_queue_bytes == 0 {
            return invalid("limits.outbound_queue_bytes", "queues must be > 0");
        }
        if self.limits.max_event_bytes < 256 || self.limits.max_event_bytes > self.limits.outbound_queue_bytes {
            return invalid("limits.max_event_bytes", "must be at least 256 and at most limits.outbound_queue_bytes");
        }
        for ns in Namespace::ALL {
            let h = self.history.of(ns);
            if h.size > 100_000 || (h.size > 0 && h.ttl_ms < 1_000) {
                return invalid(
                    "history",
                    "each namespace: size at most 100000, and ttl_ms at least 1000 when size > 0",
                );
            }
        }
        if self.http.header_timeout_ms == 0 || self.http.idle_timeout_ms == 0 {
            return invalid("http.header_timeout_ms", "http timeouts must be > 0");
        }
        if self.limits.max_pending == 0 || self.limits.pending_per_ip == 0 {
            return invalid("limits.max_pending", "pending connection caps must be > 0");
        }
        if self.heartbeat.interval_ms == 0 || self.heartbeat.timeout_ms == 0 {
            return invalid("heartbeat.interval_ms", "must be > 0");
        }
        if self.rate.per_second == 0 || self.rate.per_minute == 0 {
            return invalid("rate.per_second", "must be > 0");
        }
        if self.presence.refresh_ms == 0 || self.presence.refresh_ms >= self.presence.lease_ms {
            return invalid("presence.refresh_ms", "must be > 0 and below presence.lease_ms");
        }
        if self.drain.deadline_ms < self.drain.delay_ms + self.drain.period_ms {
            return invalid("drain.deadline_ms", "must cover drain.delay_ms + drain.period_ms");
        }
        if let Err(reason) = ws_paths::check(&self.ws_paths) {
            return invalid("ws_paths", &reason);
        }
        if let Err(reason) = compat::check_default_formats(&self.ws_default_format, &self.ws_paths) {
            return invalid("ws_default_format", &reason);
        }
        if let Err(reason) = self.channels.auto_join.check(self.limits.max_channels) {
            return invalid("channels.auto_join", &reason);
        }
        if let Err((key, reason)) = self.backend_http.check() {
            return invalid(key, &reason);
        }
        if let Err((key, reason)) = self.socketio.check() {
            return invalid(key, reason);
        }
        if let Err(e) = self.lifecycle.parsed() {
            return invalid("lifecycle.agent_status_channel", &format!("must be a channel name or empty: {e}"));
        }
        if self.jwt_public_key.as_ref().is_some_and(|p| !p.exists()) {
            return invalid("jwt_public_key", "file does not exist");
        }
        Ok(())
    }
}
