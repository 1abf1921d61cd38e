//! Channel names, the event subjects they map to, and event names.
//!
//! Properties: parsing never panics; an accepted name prints back as exactly the input,
//! reparses to the same value, agrees with its serde form and with the grammar; an
//! accepted channel's subject maps back to it; a refusal names the right reason.

use gateway_protocol::{
    Channel, ChannelError, EventName, EventNameError, Namespace, SystemEvent, channel::valid_id,
    event::MAX_EVENT_NAME_LEN,
};
use serde_json::Value;

/// Channel names, and the same text as a NATS subject under a fixed prefix.
pub fn check_channel(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let parsed = Channel::parse(s);
    // The serde form (subscribe lists, history queries) agrees with `parse`.
    let via_serde = serde_json::from_value::<Channel>(Value::String(s.to_owned()));
    assert_eq!(parsed.as_ref().ok(), via_serde.as_ref().ok(), "serde and parse disagree on {s:?}");
    match &parsed {
        Ok(c) => {
            assert_eq!(c.as_str(), s);
            assert_eq!(c.to_string(), s);
            assert_eq!(Channel::parse(&c.to_string()).as_ref(), Ok(c));
            assert_eq!(format!("{}:{}", c.namespace(), c.id()), s);
            assert!(valid_id(c.id()), "accepted id {:?}", c.id());
            assert_eq!(Channel::new(c.namespace(), c.id()).as_ref(), Ok(c));
            assert_eq!(Channel::from_subject("gw", &c.subject("gw")).as_ref(), Some(c));
            assert_eq!(serde_json::to_value(c).ok(), Some(Value::String(s.to_owned())));
        }
        Err(ChannelError::Shape) => assert!(!s.contains(':'), "{s:?} has a ':'"),
        Err(ChannelError::UnknownNamespace(ns)) => {
            assert!(s.starts_with(&format!("{ns}:")));
            assert!(Namespace::ALL.iter().all(|n| n.as_str() != ns));
        }
        Err(ChannelError::BadId) => {
            let (ns, id) = s.split_once(':').expect("a BadId has the shape");
            assert!(ns.parse::<Namespace>().is_ok());
            assert!(!valid_id(id));
        }
    }
    // The same text as an event subject: only `gw.ev.<ns>.<id>` maps to a channel, and
    // that channel's subject is the text again.
    if let Some(c) = Channel::from_subject("gw", s) {
        assert_eq!(c.subject("gw"), s);
    }
}

/// Event names, against the grammar: 1-64 bytes of `[A-Za-z0-9_.:-]`.
pub fn check_event_name(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let grammar = s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    let parsed = EventName::parse(s);
    let via_serde = serde_json::from_value::<EventName>(Value::String(s.to_owned()));
    assert_eq!(parsed.as_ref().ok(), via_serde.as_ref().ok(), "serde and parse disagree on {s:?}");
    match &parsed {
        Ok(n) => {
            assert!(grammar && !s.is_empty() && s.len() <= MAX_EVENT_NAME_LEN, "accepted {s:?}");
            assert_eq!(n.as_str(), s);
            assert_eq!(n.to_string(), s);
            assert_eq!(EventName::parse(n.to_string()).as_ref(), Ok(n));
            assert_eq!(serde_json::to_value(n).ok(), Some(Value::String(s.to_owned())));
            let lower = s.to_ascii_lowercase();
            let reserved =
                lower.starts_with("presence.") || gateway_protocol::event::GATEWAY_FLAT_TYPES.contains(&lower.as_str());
            assert_eq!(n.is_reserved(), reserved, "{s:?}");
        }
        Err(EventNameError::Empty) => assert!(s.is_empty()),
        Err(EventNameError::TooLong) => assert!(s.len() > MAX_EVENT_NAME_LEN),
        Err(EventNameError::BadChar) => assert!(!grammar && !s.is_empty() && s.len() <= MAX_EVENT_NAME_LEN),
    }
    if let Some(e) = SystemEvent::from_name(s) {
        assert_eq!(e.as_str(), s);
        assert!(parsed.is_ok());
    }
}
