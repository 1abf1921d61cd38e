//! How the hub's fan-out reaches Socket.IO sockets: an event is translated and encoded
//! at most once per namespace path in use on its channel (`42/<nsp>,["name",data]`),
//! and those bytes are shared by every socket of that namespace, as the native
//! encodings are. `/chat/…` sockets get the chat events of their project only, the
//! other namespaces every event. Per socket only cheap checks remain: its `subscribe_to_events`
//! filter, and not echoing a user's own presence or typing back to them.

use std::sync::{Arc, RwLock};

use axum::extract::ws::{Message, Utf8Bytes};
use gateway_protocol::{Channel, EventFrame, Namespace, Principal, ServerFrame, SystemEvent, iso8601};
use serde_json::{Value, json};

use super::{
    names::{NspKind, ServerEvent, is_chat_event, is_client_reserved},
    packet::encode,
};
use crate::conn::handle::{ConnHandle, message_len};

/// Most `subscribe_to_events` filters a socket keeps (one per project, one for all).
pub const MAX_FILTERS: usize = 16;

/// One `subscribe_to_events` filter: its project (`None`: every channel) and the names.
type Filter = (Option<String>, Box<[String]>);

/// What the hub needs to know of a Socket.IO socket to deliver to it.
#[derive(Debug)]
pub struct SioTarget {
    /// The namespace path as on the wire (`/chat/p1`); the key of the shared encoding.
    pub nsp: Arc<str>,
    /// What the namespace delivers.
    pub kind: NspKind,
    /// `subscribe_to_events` filters: (project, or `None` for every channel; names).
    /// Written rarely, read per delivery.
    filters: RwLock<Vec<Filter>>,
}

impl SioTarget {
    /// A socket of namespace `nsp` with no filter.
    pub fn new(nsp: Arc<str>, kind: NspKind) -> Self {
        SioTarget { nsp, kind, filters: RwLock::default() }
    }

    /// Limits the events this socket receives to `events` (on `project`'s channel only,
    /// or on every channel). False when the socket already has too many filters.
    pub fn set_filter(&self, project: Option<String>, events: Vec<String>) -> bool {
        let mut f = self.filters.write().unwrap_or_else(|p| p.into_inner());
        f.retain(|(p, _)| *p != project);
        if f.len() >= MAX_FILTERS {
            return false;
        }
        f.push((project, events.into()));
        true
    }

    /// Whether an event named `name` on `ch` passes this socket's filters.
    pub fn accepts(&self, name: &str, ch: &Channel) -> bool {
        let f = self.filters.read().unwrap_or_else(|p| p.into_inner());
        if f.is_empty() {
            return true;
        }
        let project = (ch.namespace() == Namespace::Project).then(|| ch.id());
        let specific = f.iter().find(|(p, _)| p.is_some() && p.as_deref() == project);
        let general = f.iter().find(|(p, _)| p.is_none());
        match specific.or(general) {
            Some((_, names)) => names.iter().any(|n| n == name),
            None => true,
        }
    }
}

/// An event as one namespace's sockets receive it.
pub struct Translated {
    /// The message, shared by every socket of the namespace.
    msg: Message,
    /// Its length, for the queue bounds.
    len: usize,
    /// The emitted name, for the sockets' filters.
    name: String,
    /// A principal that must not receive it (its own presence, its own typing).
    exclude: Option<Principal>,
}

/// The Socket.IO encodings of one event, made as the fan-out meets each namespace.
pub struct SioFrames<'e> {
    /// The event.
    ev: Option<&'e EventFrame>,
    /// Per namespace path: its translation, or `None` when it does not get the event.
    done: Vec<(Arc<str>, Option<Translated>)>,
}

impl<'e> SioFrames<'e> {
    /// For the event inside `frame` (any other frame reaches no Socket.IO socket).
    pub fn new(frame: &'e ServerFrame) -> Self {
        let ev = match frame {
            ServerFrame::Event(ev) => Some(ev),
            _ => None,
        };
        SioFrames { ev, done: Vec::new() }
    }

    /// The message for `conn` (a socket of `t`), or `None` when it must not get it.
    pub fn for_conn(&mut self, conn: &ConnHandle, t: &SioTarget) -> Option<(Message, usize)> {
        let ev = self.ev?;
        let i = match self.done.iter().position(|(nsp, _)| **nsp == *t.nsp) {
            Some(i) => i,
            None => {
                self.done.push((t.nsp.clone(), translate(t.kind, &t.nsp, ev)));
                self.done.len() - 1
            }
        };
        let tr = self.done[i].1.as_ref()?;
        if tr.exclude.as_ref() == Some(&conn.principal) || !t.accepts(&tr.name, &ev.channel) {
            return None;
        }
        Some((tr.msg.clone(), tr.len))
    }
}

/// `ev` as the sockets of a namespace of `kind` at `nsp` receive it, if they do.
fn translate(kind: NspKind, nsp: &str, ev: &EventFrame) -> Option<Translated> {
    let name = ev.event.as_str();
    let project = (ev.channel.namespace() == Namespace::Project).then(|| ev.channel.id());
    let (name, data, exclude): (&str, Option<Value>, Option<Principal>) = match SystemEvent::from_name(name) {
        Some(sys @ (SystemEvent::PresenceJoin | SystemEvent::PresenceLeave)) => {
            // Users joining and leaving a project, told to the others in it.
            let project = project?;
            if !matches!(kind, NspKind::Portal | NspKind::Project) {
                return None;
            }
            let member: Principal = serde_json::from_value(ev.data.clone()).ok()?;
            let out = if sys == SystemEvent::PresenceJoin { ServerEvent::UserJoined } else { ServerEvent::UserLeft };
            let data = json!({ "user_id": member.id, "project_name": project, "timestamp": iso8601(ev.ts) });
            (out.as_str(), Some(data), Some(member))
        }
        _ if is_client_reserved(name) => return None,
        _ if project.is_some() && is_chat_event(name) => {
            // Typing is for the others; a message is for everyone, its sender too.
            let typing = name == ServerEvent::TypingStart.as_str() || name == ServerEvent::TypingStop.as_str();
            (name, None, if typing { ev.from.clone() } else { None })
        }
        _ if kind == NspKind::Chat && project.is_some() => return None,
        _ => (name, None, None),
    };
    let data_json = serde_json::to_string(data.as_ref().unwrap_or(&ev.data)).ok()?;
    let text = encode::event_raw(nsp, name, &data_json);
    let msg = Message::Text(Utf8Bytes::from(text));
    let len = message_len(&msg);
    Some(Translated { msg, len, name: name.to_owned(), exclude })
}

#[cfg(test)]
mod tests {
    use gateway_protocol::PrincipalKind;

    use super::*;

    fn ev(ch: &str, name: &str, data: Value) -> EventFrame {
        crate::events::fresh(Channel::parse(ch).unwrap(), gateway_protocol::EventName::parse(name).unwrap(), data)
    }

    fn text(t: &Translated) -> &str {
        match &t.msg {
            Message::Text(s) => s.as_str(),
            _ => "",
        }
    }

    #[test]
    fn project_events_reach_project_and_portal_but_not_chat() {
        let e = ev("project:p", "state_change", json!({"new_state": "x"}));
        assert_eq!(
            text(&translate(NspKind::Project, "/project/p", &e).unwrap()),
            r#"42/project/p,["state_change",{"new_state":"x"}]"#
        );
        assert!(translate(NspKind::Portal, "/portal", &e).is_some());
        assert!(translate(NspKind::Chat, "/chat/p", &e).is_none());
    }

    #[test]
    fn chat_events_reach_every_namespace_of_the_project_and_typing_skips_its_author() {
        let mut e = ev("project:p", "typing_start", json!({"user_id": "u1"}));
        e.from = Some(Principal { kind: PrincipalKind::User, id: "u1".into() });
        let t = translate(NspKind::Chat, "/chat/p", &e).unwrap();
        assert_eq!(t.exclude.as_ref().map(|p| p.id.as_str()), Some("u1"));
        // Every event of a joined channel reaches /project and /portal (contract §11).
        assert!(translate(NspKind::Project, "/project/p", &e).is_some());
        let m = ev("project:p", "message_received", json!({}));
        assert!(translate(NspKind::Chat, "/chat/p", &m).unwrap().exclude.is_none());
    }

    #[test]
    fn presence_becomes_user_joined_for_the_others() {
        let e = ev("project:p", "presence.join", json!({"kind": "user", "id": "u2"}));
        let t = translate(NspKind::Portal, "/portal", &e).unwrap();
        assert!(text(&t).starts_with(r#"42/portal,["user_joined",{"#));
        assert!(text(&t).contains(r#""user_id":"u2""#) && text(&t).contains(r#""project_name":"p""#));
        assert_eq!(t.exclude.map(|p| p.id), Some("u2".into()));
        assert!(translate(NspKind::Chat, "/chat/p", &e).is_none());
        let own = ev("user:u2", "presence.join", json!({"kind": "user", "id": "u2"}));
        assert!(translate(NspKind::Portal, "/portal", &own).is_none());
    }

    #[test]
    fn reserved_client_names_are_not_delivered() {
        assert!(
            translate(NspKind::Monitoring, "/monitoring", &ev("broadcast:monitoring", "connect", json!(1))).is_none()
        );
    }

    #[test]
    fn filters_per_project_and_general() {
        let t = SioTarget::new("/portal".into(), NspKind::Portal);
        let (p1, p2) = (Channel::parse("project:p1").unwrap(), Channel::parse("project:p2").unwrap());
        assert!(t.accepts("anything", &p1));
        assert!(t.set_filter(Some("p1".into()), vec!["task_update".into()]));
        assert!(t.accepts("task_update", &p1) && !t.accepts("state_change", &p1));
        assert!(t.accepts("state_change", &p2));
        assert!(t.set_filter(None, vec!["state_change".into()]));
        assert!(!t.accepts("task_update", &p2) && t.accepts("state_change", &p2));
        assert!(t.accepts("task_update", &p1));
    }
}
