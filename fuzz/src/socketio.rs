//! Socket.IO input (contract §11): Engine.IO packets and long-polling bodies, Socket.IO
//! packets inside them, namespace paths, CONNECT auth data, and the data of the events
//! the gateway answers itself. The server's own source files for these are compiled
//! here as they are (they depend only on gateway-protocol and serde), so the fuzzer runs
//! the gateway's code without building the server.
//!
//! Input: byte 0 even — the rest is a WebSocket text frame or a long-polling body
//! (packets separated by `\x1e`). Byte 0 odd — the rest is the JSON data of an event
//! (`send_message`, `join_project`, `subscribe_to_events`).
//!
//! Properties: nothing panics; a decoded packet's namespace is `/` or a path without
//! `,`, `?` or `#` of at most 160 bytes; what the server encodes for a decoded packet's
//! namespace (event, ack, connect, connect error, disconnect) decodes back to that
//! namespace, type, id and payload; a known namespace prints back as its path and names
//! valid channels; event data the validators accept obeys the limits they state, and a
//! refusal lists at least one field.

use gateway_protocol::{Namespace, Principal, PrincipalKind};
use serde_json::Value;

#[path = "../../gateway/src/sio/chat.rs"]
pub mod chat;
#[path = "../../gateway/src/sio/names.rs"]
pub mod names;
#[path = "../../gateway/src/sio/packet.rs"]
pub mod packet;

use chat::{ChatMessage, MAX_ATTACHMENT_BYTES, MAX_ATTACHMENTS, MAX_CONTENT_CHARS, MAX_FILTER_EVENTS};
use names::{ClientEvent, Nsp};
use packet::{EnginePacket, PacketError, RECORD_SEPARATOR, SioPacket, SioType, auth_credential, encode};

/// Runs one input through the Socket.IO decoders.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 1 {
        if let Ok(v) = serde_json::from_slice::<Value>(rest) {
            check_event_data(&v);
        }
        return;
    }
    // Both transports carry text only (a polling body that is not UTF-8 is refused).
    let Ok(text) = std::str::from_utf8(rest) else { return };
    for part in text.split(RECORD_SEPARATOR) {
        match EnginePacket::decode(part) {
            Ok(EnginePacket::Message(m)) => check_socket_packet(m),
            Ok(EnginePacket::Ping(d) | EnginePacket::Pong(d)) => assert_eq!(d, &part[1..]),
            Ok(_) => {}
            Err(PacketError::Empty) => assert!(part.is_empty()),
            Err(PacketError::Binary) => assert!(part.starts_with('b')),
            Err(PacketError::UnknownType(c)) => assert!(part.starts_with(c)),
            Err(e) => panic!("an Engine.IO packet failed with {e:?}"),
        }
    }
}

/// One Socket.IO packet: its invariants, and the server's answers on its namespace.
fn check_socket_packet(m: &str) {
    let Ok(p) = SioPacket::decode(m) else { return };
    let nsp = p.nsp;
    assert!(nsp == "/" || (nsp.starts_with('/') && nsp.len() <= 160 && !nsp.contains([',', '?', '#'])), "{nsp:?}");
    assert!(p.attachments == 0 || matches!(p.kind, SioType::BinaryEvent | SioType::BinaryAck));
    assert!(p.data.is_none_or(|d| !d.is_empty()));
    assert!(p.id.is_none_or(|id| id < 1_000_000_000_000_000));

    if let Some(n) = Nsp::parse(nsp) {
        assert_eq!(n.to_string(), nsp);
        if let Some(project) = n.project() {
            assert!(gateway_protocol::channel::valid_id(project));
        }
        for kind in [PrincipalKind::User, PrincipalKind::Agent] {
            for c in n.channels(&Principal { kind, id: "u1".into() }) {
                assert!(matches!(
                    c.namespace(),
                    Namespace::User | Namespace::Agent | Namespace::Project | Namespace::Broadcast
                ));
            }
        }
    }

    // What the server sends on this namespace reads back as sent.
    answer(&encode::disconnect(nsp), nsp, SioType::Disconnect, None);
    answer(&encode::connected(nsp, "sid"), nsp, SioType::Connect, None);
    answer(&encode::connect_error(nsp, "forbidden", "no"), nsp, SioType::ConnectError, None);
    if let Some(id) = p.id {
        answer(&encode::ack(nsp, id, &Value::Null), nsp, SioType::Ack, Some(id));
    }

    match p.kind {
        SioType::Connect => {
            let _ = auth_credential(p.data);
        }
        SioType::Event => {
            let Ok((name, args)) = p.event() else { return };
            let _ = (ClientEvent::from_name(&name), names::is_chat_event(&name), names::is_client_reserved(&name));
            // The gateway reads the first argument as the event's data.
            let first = args.first().map_or("null", |a| a.get());
            let encoded = encode::event_raw(nsp, &name, first);
            let back = answer(&encoded, nsp, SioType::Event, None);
            let (name2, args2) = back.event().expect("an encoded event decodes");
            assert_eq!(name2, name);
            assert_eq!(args2.first().map(|a| a.get()), Some(first));
            if let Ok(v) = serde_json::from_str::<Value>(first) {
                check_event_data(&v);
            }
        }
        _ => {}
    }
}

/// A packet the server encodes on `nsp`, decoded again: it must be a `message` carrying
/// a Socket.IO packet of `kind` on `nsp` with ack id `id`.
fn answer<'a>(encoded: &'a str, nsp: &str, kind: SioType, id: Option<u64>) -> SioPacket<'a> {
    let Ok(EnginePacket::Message(m)) = EnginePacket::decode(encoded) else {
        panic!("{encoded:?} is not an Engine.IO message");
    };
    let back = SioPacket::decode(m).unwrap_or_else(|e| panic!("{encoded:?} does not decode: {e:?}"));
    assert_eq!((back.kind, back.nsp, back.id), (kind, nsp, id), "{encoded:?}");
    back
}

/// The validators of the events the gateway answers itself.
fn check_event_data(data: &Value) {
    match ChatMessage::parse(data) {
        Ok(m) => {
            assert!(m.content.chars().count() <= MAX_CONTENT_CHARS);
            assert_eq!(data.get("content").and_then(Value::as_str), Some(m.content.as_str()));
            if let Some(t) = &m.thread_id {
                assert!(uuid::Uuid::parse_str(t).is_ok());
            }
            if let Some(list) = &m.attachments {
                assert!(list.len() <= MAX_ATTACHMENTS);
                for a in list {
                    assert!(a.get("name").is_some_and(Value::is_string) && a.get("type").is_some_and(Value::is_string));
                    assert!(a.get("size").and_then(Value::as_u64).is_some_and(|n| n <= MAX_ATTACHMENT_BYTES));
                }
            }
            let out = m.received("m1", "p1", "u1", 0);
            assert_eq!(out["content"], Value::String(m.content.clone()));
        }
        Err(e) => assert!(!e.details.is_empty(), "a refusal names no field"),
    }
    if let Ok(c) = chat::project_of(data) {
        assert_eq!(c.namespace(), Namespace::Project);
        assert_eq!(data.get("project_name").and_then(Value::as_str), Some(c.id()));
    }
    if let Ok((project, events)) = chat::event_filter(data) {
        assert!(events.len() <= MAX_FILTER_EVENTS);
        assert!(events.iter().all(|e| !e.is_empty() && e.len() <= 128));
        if let Some(p) = project {
            assert!(gateway_protocol::channel::valid_id(&p));
        }
    }
}
