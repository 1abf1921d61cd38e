//! Channel names (`<namespace>:<id>`) and their mapping onto NATS subjects.
//!
//! A channel is parsed once at the edge; everything inside the gateway carries the typed
//! [`Channel`], whose full name is shared (`Arc<str>`) so cloning it per subscriber is a
//! reference-count bump.

use std::{fmt, str::FromStr, sync::Arc};

use serde::{Deserialize, Serialize};

/// Longest id accepted after the `:`.
pub const MAX_ID_LEN: usize = 128;

/// The kinds of channel the gateway knows; each has its own permission rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    /// Events for one user; that user is auto-subscribed.
    User,
    /// Events for one agent (task assignment, config); that agent is auto-subscribed.
    Agent,
    /// Project-wide events, for principals whose claims include the project.
    Project,
    /// One working session (chat, typing indicators), per the session policy.
    Session,
    /// Events for every authenticated principal (dashboards).
    Broadcast,
}

impl Namespace {
    /// Every namespace, in a fixed order (for configuration and metrics).
    pub const ALL: [Namespace; 5] =
        [Namespace::User, Namespace::Agent, Namespace::Project, Namespace::Session, Namespace::Broadcast];

    /// The name used on the wire and in subjects.
    pub fn as_str(self) -> &'static str {
        match self {
            Namespace::User => "user",
            Namespace::Agent => "agent",
            Namespace::Project => "project",
            Namespace::Session => "session",
            Namespace::Broadcast => "broadcast",
        }
    }
}

impl FromStr for Namespace {
    type Err = ChannelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Namespace::ALL
            .into_iter()
            .find(|ns| ns.as_str() == s)
            .ok_or_else(|| ChannelError::UnknownNamespace(s.to_owned()))
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a channel name; every variant is the `bad_channel` error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// No `:` separates namespace and id.
    #[error("channel must look like <namespace>:<id>")]
    Shape,
    /// The namespace is not one of user, agent, project, session, broadcast.
    #[error("unknown channel namespace {0:?}")]
    UnknownNamespace(String),
    /// The id is empty, too long or has characters outside `[A-Za-z0-9_-]`.
    #[error("channel id must be 1-128 characters of [A-Za-z0-9_-]")]
    BadId,
}

/// A validated channel, e.g. `session:abc`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel {
    /// Which permission rule applies.
    ns: Namespace,
    /// The whole name, `ns:id`, shared between every holder.
    name: Arc<str>,
}

impl Channel {
    /// Parses and validates `ns:id`.
    pub fn parse(s: &str) -> Result<Self, ChannelError> {
        let (ns, id) = s.split_once(':').ok_or(ChannelError::Shape)?;
        let ns: Namespace = ns.parse()?;
        Self::new(ns, id)
    }

    /// Builds a channel from its parts, validating the id.
    pub fn new(ns: Namespace, id: &str) -> Result<Self, ChannelError> {
        if !valid_id(id) {
            return Err(ChannelError::BadId);
        }
        Ok(Channel { ns, name: format!("{}:{id}", ns.as_str()).into() })
    }

    /// The namespace.
    pub fn namespace(&self) -> Namespace {
        self.ns
    }

    /// The id after the `:`.
    pub fn id(&self) -> &str {
        &self.name[self.ns.as_str().len() + 1..]
    }

    /// The full name, `ns:id`.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The NATS subject events for this channel are published on: `<prefix>.ev.<ns>.<id>`.
    pub fn subject(&self, prefix: &str) -> String {
        format!("{prefix}.ev.{}.{}", self.ns.as_str(), self.id())
    }

    /// The channel an event subject names, if it is one (`<prefix>.ev.<ns>.<id>`).
    pub fn from_subject(prefix: &str, subject: &str) -> Option<Self> {
        let rest = subject.strip_prefix(prefix)?.strip_prefix(".ev.")?;
        let (ns, id) = rest.split_once('.')?;
        Channel::new(ns.parse().ok()?, id).ok()
    }
}

/// True when `id` is 1-128 characters of `[A-Za-z0-9_-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Channel({})", self.name)
    }
}

impl FromStr for Channel {
    type Err = ChannelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::parse(s)
    }
}

impl Serialize for Channel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for Channel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Channel::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_namespace() {
        for ns in Namespace::ALL {
            let c = Channel::parse(&format!("{ns}:a-b_C9")).unwrap();
            assert_eq!(c.namespace(), ns);
            assert_eq!(c.id(), "a-b_C9");
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(Channel::parse("session"), Err(ChannelError::Shape));
        assert!(matches!(Channel::parse("room:x"), Err(ChannelError::UnknownNamespace(_))));
        assert_eq!(Channel::parse("session:"), Err(ChannelError::BadId));
        assert_eq!(Channel::parse("session:a.b"), Err(ChannelError::BadId));
        assert_eq!(Channel::parse("session:a*"), Err(ChannelError::BadId));
        assert_eq!(Channel::parse("session:a:b"), Err(ChannelError::BadId));
        assert_eq!(Channel::parse(&format!("user:{}", "x".repeat(129))), Err(ChannelError::BadId));
        assert!(Channel::parse(&format!("user:{}", "x".repeat(128))).is_ok());
    }

    #[test]
    fn subject_round_trip() {
        let c = Channel::parse("session:s1").unwrap();
        assert_eq!(c.subject("gw"), "gw.ev.session.s1");
        assert_eq!(Channel::from_subject("gw", "gw.ev.session.s1"), Some(c));
        assert_eq!(Channel::from_subject("gw", "gw.up.session.s1"), None);
        assert_eq!(Channel::from_subject("gw", "gw.ev.session.s1.x"), None);
    }
}
