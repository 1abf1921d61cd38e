//! How much history each namespace keeps (contract §9), and why the defaults.

use gateway_protocol::Namespace;
use serde::{Deserialize, Serialize};

/// The history one namespace keeps (contract §9): per channel, the last `size` events,
/// each for at most `ttl_ms`. `size = 0` keeps none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NsHistory {
    /// Events kept per channel.
    pub size: u64,
    /// How long an event is kept, in ms.
    pub ttl_ms: u64,
}

/// History per namespace. The defaults keep enough for a client to ride out a network
/// change, a node drain or a node crash (seconds to minutes) with room to spare:
/// sessions, projects and users 200 events / 15 minutes; agents 200 events / 1 hour,
/// because an agent's `task:assigned` must survive a redeploy of the agent itself;
/// broadcast channels none (they fan out to everyone and are usually ephemeral).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// `session:` channels.
    pub session: NsHistory,
    /// `project:` channels.
    pub project: NsHistory,
    /// `user:` channels.
    pub user: NsHistory,
    /// `agent:` channels.
    pub agent: NsHistory,
    /// `broadcast:` channels.
    pub broadcast: NsHistory,
    /// JetStream replicas of each history stream (1; 3 on a NATS cluster for HA).
    pub replicas: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        let minutes = |m: u64| m * 60_000;
        HistoryConfig {
            session: NsHistory { size: 200, ttl_ms: minutes(15) },
            project: NsHistory { size: 200, ttl_ms: minutes(15) },
            user: NsHistory { size: 200, ttl_ms: minutes(15) },
            agent: NsHistory { size: 200, ttl_ms: minutes(60) },
            broadcast: NsHistory::default(),
            replicas: 1,
        }
    }
}

impl HistoryConfig {
    /// What a namespace keeps.
    pub fn of(&self, ns: Namespace) -> NsHistory {
        match ns {
            Namespace::Session => self.session,
            Namespace::Project => self.project,
            Namespace::User => self.user,
            Namespace::Agent => self.agent,
            Namespace::Broadcast => self.broadcast,
        }
    }

    /// Whether a namespace keeps history.
    pub fn keeps(&self, ns: Namespace) -> bool {
        self.of(ns).size > 0
    }
}
