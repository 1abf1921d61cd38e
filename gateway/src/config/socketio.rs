//! The `socketio` section (contract §11): Socket.IO clients on `/socket.io/`.

use serde::{Deserialize, Serialize};

/// Socket.IO (Engine.IO v4) settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoConfig {
    /// Whether `/socket.io/` answers at all.
    pub enabled: bool,
    /// How often the server pings each Engine.IO connection (announced in the
    /// handshake; the client waits `ping_interval_ms + ping_timeout_ms` for a ping).
    pub ping_interval_ms: u64,
    /// How long a ping may go unanswered before the connection counts as gone.
    pub ping_timeout_ms: u64,
    /// How long an upgrade from long-polling to WebSocket may take.
    pub upgrade_timeout_ms: u64,
    /// Namespaces one Engine.IO connection may join at once (the client multiplexes
    /// every namespace of a host over one connection).
    pub max_namespaces: usize,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            enabled: true,
            ping_interval_ms: 25_000,
            ping_timeout_ms: 60_000,
            upgrade_timeout_ms: 10_000,
            max_namespaces: 8,
        }
    }
}

impl SocketIoConfig {
    /// Why the values cannot work, if they cannot: (key, reason).
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.ping_interval_ms < 100 {
            return Err(("socketio.ping_interval_ms", "must be at least 100"));
        }
        if self.ping_timeout_ms < 100 {
            return Err(("socketio.ping_timeout_ms", "must be at least 100"));
        }
        if self.upgrade_timeout_ms < 100 {
            return Err(("socketio.upgrade_timeout_ms", "must be at least 100"));
        }
        if self.max_namespaces == 0 {
            return Err(("socketio.max_namespaces", "must be at least 1"));
        }
        Ok(())
    }
}
