//! The typed names of the Socket.IO surface (contract §11): its namespaces and the
//! channels they stand for, the events a client emits that the gateway answers itself,
//! and the events the gateway emits. Every other module matches these enums; no event
//! name is spelled anywhere else.

use std::fmt;

use gateway_protocol::{Channel, Namespace, Principal, PrincipalKind};

/// A namespace a socket may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nsp {
    /// `/portal`: the principal's own channel; projects joined with `join_project`.
    Portal,
    /// `/project/{name}`: the events of `project:{name}` but its chat events.
    Project(String),
    /// `/chat/{name}`: the chat events of `project:{name}`.
    Chat(String),
    /// `/monitoring`: `broadcast:monitoring`.
    Monitoring,
    /// `/admin`: `broadcast:admin`, role admin only.
    Admin,
}

/// What a namespace delivers, independent of its project (the hub's per-namespace
/// encoding depends only on this and the path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NspKind {
    /// `/portal`.
    Portal,
    /// `/project/{name}`.
    Project,
    /// `/chat/{name}`.
    Chat,
    /// `/monitoring`.
    Monitoring,
    /// `/admin`.
    Admin,
}

impl Nsp {
    /// The namespace of a path, if it is one of §11's and its name is a channel id.
    pub fn parse(path: &str) -> Option<Nsp> {
        let project = |name: &str| Channel::new(Namespace::Project, name).ok().map(|c| c.id().to_owned());
        match path {
            "/portal" => Some(Nsp::Portal),
            "/monitoring" => Some(Nsp::Monitoring),
            "/admin" => Some(Nsp::Admin),
            _ => {
                if let Some(name) = path.strip_prefix("/project/") {
                    project(name).map(Nsp::Project)
                } else if let Some(name) = path.strip_prefix("/chat/") {
                    project(name).map(Nsp::Chat)
                } else {
                    None
                }
            }
        }
    }

    /// Its kind.
    pub fn kind(&self) -> NspKind {
        match self {
            Nsp::Portal => NspKind::Portal,
            Nsp::Project(_) => NspKind::Project,
            Nsp::Chat(_) => NspKind::Chat,
            Nsp::Monitoring => NspKind::Monitoring,
            Nsp::Admin => NspKind::Admin,
        }
    }

    /// The project it belongs to, for `/project/…` and `/chat/…`.
    pub fn project(&self) -> Option<&str> {
        match self {
            Nsp::Project(p) | Nsp::Chat(p) => Some(p),
            Nsp::Portal | Nsp::Monitoring | Nsp::Admin => None,
        }
    }

    /// The channels a socket of `principal` joins when it connects here.
    pub fn channels(&self, principal: &Principal) -> Vec<Channel> {
        let ch = match self {
            Nsp::Portal => {
                let ns = match principal.kind {
                    PrincipalKind::User => Namespace::User,
                    PrincipalKind::Agent => Namespace::Agent,
                };
                Channel::new(ns, &principal.id)
            }
            Nsp::Project(p) | Nsp::Chat(p) => Channel::new(Namespace::Project, p),
            Nsp::Monitoring => Channel::new(Namespace::Broadcast, "monitoring"),
            Nsp::Admin => Channel::new(Namespace::Broadcast, "admin"),
        };
        ch.into_iter().collect()
    }
}

impl fmt::Display for Nsp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Nsp::Portal => f.write_str("/portal"),
            Nsp::Project(p) => write!(f, "/project/{p}"),
            Nsp::Chat(p) => write!(f, "/chat/{p}"),
            Nsp::Monitoring => f.write_str("/monitoring"),
            Nsp::Admin => f.write_str("/admin"),
        }
    }
}

/// The events a client emits that the gateway answers itself; any other name is an
/// upstream send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEvent {
    /// `authenticate {token}`.
    Authenticate,
    /// `join_project {project_name}` (`/portal`).
    JoinProject,
    /// `leave_project {project_name}` (`/portal`).
    LeaveProject,
    /// `subscribe_to_events {events, project_name?}`.
    SubscribeToEvents,
    /// `send_message {content, type, thread_id?, attachments?}` (`/chat/…`).
    SendMessage,
    /// `typing_start` (`/chat/…`).
    TypingStart,
    /// `typing_stop` (`/chat/…`).
    TypingStop,
}

impl ClientEvent {
    /// Every client event the gateway answers.
    pub const ALL: [ClientEvent; 7] = [
        ClientEvent::Authenticate,
        ClientEvent::JoinProject,
        ClientEvent::LeaveProject,
        ClientEvent::SubscribeToEvents,
        ClientEvent::SendMessage,
        ClientEvent::TypingStart,
        ClientEvent::TypingStop,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientEvent::Authenticate => "authenticate",
            ClientEvent::JoinProject => "join_project",
            ClientEvent::LeaveProject => "leave_project",
            ClientEvent::SubscribeToEvents => "subscribe_to_events",
            ClientEvent::SendMessage => "send_message",
            ClientEvent::TypingStart => "typing_start",
            ClientEvent::TypingStop => "typing_stop",
        }
    }

    /// The event a name denotes, if the gateway answers it.
    pub fn from_name(name: &str) -> Option<Self> {
        ClientEvent::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// The events the gateway emits to Socket.IO clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent {
    /// In-band authentication succeeded.
    Authenticated,
    /// In-band authentication failed (the namespace is left after it).
    AuthenticationFailed,
    /// Answer to `join_project`.
    JoinedProject,
    /// Another user joined a project (from `presence.join`).
    UserJoined,
    /// A user left a project (from `presence.leave`).
    UserLeft,
    /// A chat message, to everyone in the chat.
    MessageReceived,
    /// Someone else started typing.
    TypingStart,
    /// Someone else stopped typing.
    TypingStop,
    /// An event's data was refused; the socket stays connected.
    ValidationError,
    /// Over the rate limits.
    RateLimited,
    /// Any other refusal (`{code, message}`).
    Error,
    /// The server is about to leave the namespace or close the connection (not
    /// `disconnecting`: `socket.io-client` reserves that name and drops the connection
    /// on a packet carrying it).
    ServerDisconnecting,
}

impl ServerEvent {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerEvent::Authenticated => "authenticated",
            ServerEvent::AuthenticationFailed => "authentication_failed",
            ServerEvent::JoinedProject => "joined_project",
            ServerEvent::UserJoined => "user_joined",
            ServerEvent::UserLeft => "user_left",
            ServerEvent::MessageReceived => "message_received",
            ServerEvent::TypingStart => "typing_start",
            ServerEvent::TypingStop => "typing_stop",
            ServerEvent::ValidationError => "validation_error",
            ServerEvent::RateLimited => "rate_limited",
            ServerEvent::Error => "error",
            ServerEvent::ServerDisconnecting => "server_disconnecting",
        }
    }
}

/// The event whose latest `data.new_state` is a project's `current_state` in
/// `joined_project` (seed 004's workflow state changes).
pub const STATE_CHANGE: &str = "state_change";

/// Events of a project channel that belong to its chat (`/chat/…` gets only these;
/// `/project/…` and `/portal` get every event, these included).
const CHAT_EVENTS: [&str; 6] =
    ["message_received", "typing_start", "typing_stop", "command_result", "thread_created", "thread_updated"];

/// Whether a project channel's event belongs to its chat.
pub fn is_chat_event(name: &str) -> bool {
    CHAT_EVENTS.contains(&name)
}

/// Names `socket.io-client` gives a meaning of its own: an event so named would fire
/// the client's connection listeners, so none is delivered.
const CLIENT_RESERVED: [&str; 6] =
    ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"];

/// Whether an event of this name must not be emitted to a Socket.IO client.
pub fn is_client_reserved(name: &str) -> bool {
    CLIENT_RESERVED.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces() {
        assert_eq!(Nsp::parse("/portal"), Some(Nsp::Portal));
        assert_eq!(Nsp::parse("/project/p-1"), Some(Nsp::Project("p-1".into())));
        assert_eq!(Nsp::parse("/chat/p-1"), Some(Nsp::Chat("p-1".into())));
        assert_eq!(Nsp::parse("/"), None);
        assert_eq!(Nsp::parse("/project/"), None);
        assert_eq!(Nsp::parse("/project/a b"), None);
        assert_eq!(Nsp::parse("/chat/x/y"), None);
        for n in ["/portal", "/project/a", "/chat/b", "/monitoring", "/admin"] {
            assert_eq!(Nsp::parse(n).map(|n| n.to_string()).as_deref(), Some(n));
        }
    }

    #[test]
    fn client_events_round_trip() {
        for e in ClientEvent::ALL {
            assert_eq!(ClientEvent::from_name(e.as_str()), Some(e));
        }
        assert_eq!(ClientEvent::from_name("state_change"), None);
    }
}
