//! The `lifecycle` section (contract §10): where agent status events go.

use gateway_protocol::{Channel, ChannelError};
use serde::{Deserialize, Serialize};

/// Lifecycle announcements.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    /// The channel of `agent:status` events (an agent's first connection anywhere
    /// opened, its last closed, its node died); empty turns them off.
    pub agent_status_channel: String,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig { agent_status_channel: "broadcast:agents".into() }
    }
}

impl LifecycleConfig {
    /// The status channel, `None` when turned off (or, unvalidated, invalid).
    pub fn status_channel(&self) -> Option<Channel> {
        self.parsed().ok().flatten()
    }

    /// Checks the channel name.
    pub fn parsed(&self) -> Result<Option<Channel>, ChannelError> {
        if self.agent_status_channel.is_empty() {
            return Ok(None);
        }
        Channel::parse(&self.agent_status_channel).map(Some)
    }
}
