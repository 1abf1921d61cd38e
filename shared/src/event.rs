//! Event names and payload bounds: one grammar for every event that crosses the gateway
//! (client `publish` and `send`, `POST /api/publish`, backend events on NATS), the names
//! the gateway reserves for its own frames, and the nesting bound every encoding can carry.

use std::{borrow::Borrow, fmt, ops::Deref};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest event name, in bytes (the grammar is ASCII).
pub const MAX_EVENT_NAME_LEN: usize = 64;

/// Deepest nesting of an event's `data` (or a request's `params`): an object or array
/// counts one level, a scalar none. The frame around it adds one or two, so every
/// delivered frame stays well within what common JSON parsers accept (serde_json and
/// many others stop at 128).
pub const MAX_DATA_DEPTH: usize = 64;

/// The flat frame types the gateway itself emits (contract §4). A published event with
/// one of these names would reach a flat subscriber looking like the gateway's own frame.
pub const GATEWAY_FLAT_TYPES: [&str; 7] =
    ["connected", "heartbeat", "pong", "ack", "error", "response", "disconnecting"];

/// The prefix of the gateway's presence events (`presence.join`, `presence.leave`).
pub const PRESENCE_PREFIX: &str = "presence.";

/// Why a name is not an event name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventNameError {
    /// Empty.
    #[error("event name must not be empty")]
    Empty,
    /// Longer than [`MAX_EVENT_NAME_LEN`].
    #[error("event name is longer than {MAX_EVENT_NAME_LEN} characters")]
    TooLong,
    /// A character outside `[A-Za-z0-9_.:-]`.
    #[error("event name may only contain A-Z a-z 0-9 _ . : -")]
    BadChar,
}

/// An event name: 1–64 characters of `[A-Za-z0-9_.:-]`, e.g. `task:assigned` or
/// `message.created`. Decoding a frame checks it, so a name with a newline, markup or a
/// wildcard never gets past the codec.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventName(String);

impl EventName {
    /// Checks `name` against the grammar.
    pub fn parse(name: impl Into<String>) -> Result<Self, EventNameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(EventNameError::Empty);
        }
        if name.len() > MAX_EVENT_NAME_LEN {
            return Err(EventNameError::TooLong);
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')) {
            return Err(EventNameError::BadChar);
        }
        Ok(EventName(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether only the gateway may emit this name (any case): `presence.*` and the flat
    /// frame types. Clients, the admin API and backends are refused it.
    pub fn is_reserved(&self) -> bool {
        let lower = self.0.to_ascii_lowercase();
        lower.starts_with(PRESENCE_PREFIX) || GATEWAY_FLAT_TYPES.contains(&lower.as_str())
    }
}

impl TryFrom<String> for EventName {
    type Error = EventNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        EventName::parse(s)
    }
}

/// Names written in code (tests, the gateway's own events) are trusted as they are.
impl From<&'static str> for EventName {
    fn from(s: &'static str) -> Self {
        debug_assert!(EventName::parse(s).is_ok(), "{s:?} is not an event name");
        EventName(s.to_owned())
    }
}

impl From<EventName> for String {
    fn from(n: EventName) -> String {
        n.0
    }
}

impl From<SystemEvent> for EventName {
    fn from(e: SystemEvent) -> Self {
        EventName(e.as_str().to_owned())
    }
}

impl Deref for EventName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for EventName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for EventName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for EventName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for EventName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The events the gateway itself publishes on channels. Only the `presence.*` ones are
/// reserved (see [`EventName::is_reserved`]); `agent:status` is the name seed 001's
/// dashboards already listen to, and backends may publish it too (an agent's `error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SystemEvent {
    /// A member's first connection joined a channel with presence.
    PresenceJoin,
    /// A member's last connection left (or its lease expired).
    PresenceLeave,
    /// An agent's first connection anywhere in the cluster opened, or its last closed
    /// (contract §10): `{"agentId","status","timestamp","reason"?}`.
    AgentStatus,
}

impl SystemEvent {
    /// Every system event.
    pub const ALL: [SystemEvent; 3] = [SystemEvent::PresenceJoin, SystemEvent::PresenceLeave, SystemEvent::AgentStatus];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SystemEvent::PresenceJoin => "presence.join",
            SystemEvent::PresenceLeave => "presence.leave",
            SystemEvent::AgentStatus => "agent:status",
        }
    }

    /// The system event a name denotes, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        SystemEvent::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// Whether `v` nests no deeper than `max` (objects and arrays count one level each).
/// Stops descending as soon as the bound is passed, so a hostile value costs at most
/// `max` levels of recursion.
pub fn depth_within(v: &Value, max: usize) -> bool {
    match v {
        Value::Array(items) => max > 0 && items.iter().all(|i| depth_within(i, max - 1)),
        Value::Object(map) => max > 0 && map.values().all(|i| depth_within(i, max - 1)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn grammar() {
        for ok in ["task:assigned", "message.created", "a", "user_joined", "x-1", &"a".repeat(64)] {
            assert!(EventName::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(EventName::parse(""), Err(EventNameError::Empty));
        assert_eq!(EventName::parse("a".repeat(65)), Err(EventNameError::TooLong));
        for bad in ["a b", "a\nb", "<script>", "a>", "é", "a*"] {
            assert_eq!(EventName::parse(bad), Err(EventNameError::BadChar), "{bad}");
        }
    }

    #[test]
    fn reserved_any_case() {
        for r in ["presence.join", "PRESENCE.join", "Presence.x", "connected", "Heartbeat", "ERROR", "disconnecting"] {
            assert!(EventName::parse(r).is_ok_and(|n| n.is_reserved()), "{r}");
        }
        for free in ["presence", "presencejoin", "agent:status", "task:assigned", "errors"] {
            assert!(EventName::parse(free).is_ok_and(|n| !n.is_reserved()), "{free}");
        }
        assert!(EventName::from(SystemEvent::PresenceJoin).is_reserved());
        // Backends publish `agent:status` too (seed 001's `broadcastAgentStatus`).
        assert!(!EventName::from(SystemEvent::AgentStatus).is_reserved());
        for e in SystemEvent::ALL {
            assert_eq!(SystemEvent::from_name(e.as_str()), Some(e));
            assert!(EventName::parse(e.as_str()).is_ok());
        }
    }

    #[test]
    fn decoding_checks_the_grammar() {
        assert!(serde_json::from_value::<EventName>(json!("ok.name")).is_ok());
        assert!(serde_json::from_value::<EventName>(json!("bad name")).is_err());
    }

    #[test]
    fn depth() {
        assert!(depth_within(&json!(1), 0));
        assert!(!depth_within(&json!([]), 0));
        assert!(depth_within(&json!({"a": [1]}), 2));
        assert!(!depth_within(&json!({"a": [[1]]}), 2));
        let mut deep = json!(0);
        for _ in 0..1000 {
            deep = json!([deep]);
        }
        assert!(!depth_within(&deep, MAX_DATA_DEPTH));
    }
}
