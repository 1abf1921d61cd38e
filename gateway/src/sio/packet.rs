//! The two packet layers of Socket.IO, decoded from untrusted text and encoded for the
//! wire: Engine.IO v4 packets (`0` open … `6` noop; one per WebSocket frame, or several
//! in a long-polling body separated by `\x1e`) and, inside an Engine.IO `message`, the
//! Socket.IO v5 packet `<type>[<attachments>-][<namespace>,][<ack id>][<json>]`.
//!
//! Decoding borrows from the input and never panics; everything past the header is
//! left as raw JSON for the caller to parse into its own types.

use serde_json::value::RawValue;

/// The separator of packets in a long-polling body.
pub const RECORD_SEPARATOR: char = '\x1e';

/// Longest namespace accepted (`/chat/<channel id>` with the longest id fits).
const MAX_NAMESPACE: usize = 160;

/// Why a packet could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Nothing at all.
    #[error("empty packet")]
    Empty,
    /// The first character is not a packet type of this layer.
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// Engine.IO binary packets (`b…` over polling, binary frames) are not accepted.
    #[error("binary packets are not supported")]
    Binary,
    /// The namespace is unterminated, too long or not a path.
    #[error("malformed namespace")]
    Namespace,
    /// The ack id or attachment count is not a number.
    #[error("malformed number")]
    Number,
    /// The payload is not JSON of the shape this packet type carries.
    #[error("malformed payload: {0}")]
    Payload(&'static str),
}

/// An Engine.IO v4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnginePacket<'a> {
    /// `0`: sent by the server only.
    Open,
    /// `1`: the peer closes the session.
    Close,
    /// `2` with optional data (`2probe` starts an upgrade).
    Ping(&'a str),
    /// `3` with optional data (`3probe` answers one).
    Pong(&'a str),
    /// `4`: a Socket.IO packet.
    Message(&'a str),
    /// `5`: the client switches to the probed transport.
    Upgrade,
    /// `6`: nothing (ends a poll during an upgrade).
    Noop,
}

impl<'a> EnginePacket<'a> {
    /// Decodes one text packet.
    pub fn decode(s: &'a str) -> Result<Self, PacketError> {
        let mut chars = s.chars();
        let t = chars.next().ok_or(PacketError::Empty)?;
        let rest = chars.as_str();
        Ok(match t {
            '0' => EnginePacket::Open,
            '1' => EnginePacket::Close,
            '2' => EnginePacket::Ping(rest),
            '3' => EnginePacket::Pong(rest),
            '4' => EnginePacket::Message(rest),
            '5' => EnginePacket::Upgrade,
            '6' => EnginePacket::Noop,
            'b' => return Err(PacketError::Binary),
            other => return Err(PacketError::UnknownType(other)),
        })
    }
}

/// The Socket.IO v5 packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SioType {
    /// `0`: join a namespace (client: with auth data; server: with the socket id).
    Connect,
    /// `1`: leave a namespace.
    Disconnect,
    /// `2`: an event `[name, ...args]`.
    Event,
    /// `3`: an acknowledgement `[...args]`.
    Ack,
    /// `4`: a refused connect (server only).
    ConnectError,
    /// `5`: an event with binary attachments (refused).
    BinaryEvent,
    /// `6`: an ack with binary attachments (refused).
    BinaryAck,
}

impl SioType {
    fn from_char(c: char) -> Option<Self> {
        Some(match c {
            '0' => SioType::Connect,
            '1' => SioType::Disconnect,
            '2' => SioType::Event,
            '3' => SioType::Ack,
            '4' => SioType::ConnectError,
            '5' => SioType::BinaryEvent,
            '6' => SioType::BinaryAck,
            _ => return None,
        })
    }
}

/// A decoded Socket.IO packet; the payload stays raw JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SioPacket<'a> {
    /// Its type.
    pub kind: SioType,
    /// Binary attachments announced (only binary types carry them).
    pub attachments: u32,
    /// The namespace, `/` when absent.
    pub nsp: &'a str,
    /// The ack id, when the sender wants an answer.
    pub id: Option<u64>,
    /// The JSON payload, if any (not yet checked to be JSON).
    pub data: Option<&'a str>,
}

impl<'a> SioPacket<'a> {
    /// Decodes the text of an Engine.IO `message` packet.
    pub fn decode(s: &'a str) -> Result<Self, PacketError> {
        let mut chars = s.chars();
        let t = chars.next().ok_or(PacketError::Empty)?;
        let kind = SioType::from_char(t).ok_or(PacketError::UnknownType(t))?;
        let mut rest = chars.as_str();
        let mut attachments = 0;
        if matches!(kind, SioType::BinaryEvent | SioType::BinaryAck) {
            let (n, tail) = rest.split_once('-').ok_or(PacketError::Number)?;
            attachments = parse_number(n)?.try_into().map_err(|_| PacketError::Number)?;
            rest = tail;
        }
        let mut nsp = "/";
        if rest.starts_with('/') {
            let end = rest.find(',');
            let (name, tail) = match end {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                // A packet of a namespace without payload may omit the comma.
                None => (rest, ""),
            };
            if name.len() > MAX_NAMESPACE || name.contains(['?', '#']) {
                return Err(PacketError::Namespace);
            }
            nsp = name;
            rest = tail;
        }
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let id = if digits > 0 { Some(parse_number(&rest[..digits])?) } else { None };
        rest = &rest[digits..];
        let data = if rest.is_empty() { None } else { Some(rest) };
        Ok(SioPacket { kind, attachments, nsp, id, data })
    }

    /// An event's name and arguments: the payload must be a JSON array whose first
    /// element is a string.
    pub fn event(&self) -> Result<(String, Vec<Box<RawValue>>), PacketError> {
        let raw = self.data.ok_or(PacketError::Payload("an event needs [name, ...args]"))?;
        let mut items: Vec<Box<RawValue>> =
            serde_json::from_str(raw).map_err(|_| PacketError::Payload("an event is a JSON array"))?;
        if items.is_empty() {
            return Err(PacketError::Payload("an event needs a name"));
        }
        let name: String = serde_json::from_str(items.remove(0).get())
            .map_err(|_| PacketError::Payload("an event's name is a string"))?;
        Ok((name, items))
    }
}

fn parse_number(s: &str) -> Result<u64, PacketError> {
    if s.is_empty() || s.len() > 15 {
        return Err(PacketError::Number);
    }
    s.parse().map_err(|_| PacketError::Number)
}

/// Encodes Engine.IO `message` packets carrying Socket.IO packets (text only).
pub mod encode {
    use serde::Serialize;
    use serde_json::Value;

    /// `4` + type + namespace: the common head (the default namespace is omitted).
    fn head(kind: char, nsp: &str) -> String {
        let mut s = String::with_capacity(32 + nsp.len());
        s.push('4');
        s.push(kind);
        if nsp != "/" {
            s.push_str(nsp);
            s.push(',');
        }
        s
    }

    /// An event `[name, data]`, with the data already JSON-encoded.
    pub fn event_raw(nsp: &str, name: &str, data_json: &str) -> String {
        let mut s = head('2', nsp);
        s.reserve(name.len() + data_json.len() + 8);
        s.push('[');
        // A name is plain JSON string text; serde quotes and escapes it.
        s.push_str(&serde_json::to_string(name).unwrap_or_else(|_| "\"\"".into()));
        s.push(',');
        s.push_str(data_json);
        s.push(']');
        s
    }

    /// An event `[name, data]`.
    pub fn event(nsp: &str, name: &str, data: &impl Serialize) -> String {
        event_raw(nsp, name, &serde_json::to_string(data).unwrap_or_else(|_| "null".into()))
    }

    /// The answer to an event's ack id: `[data]`.
    pub fn ack(nsp: &str, id: u64, data: &Value) -> String {
        let mut s = head('3', nsp);
        s.push_str(&id.to_string());
        s.push('[');
        s.push_str(&serde_json::to_string(data).unwrap_or_else(|_| "null".into()));
        s.push(']');
        s
    }

    /// A namespace joined: `{"sid": …}`.
    pub fn connected(nsp: &str, sid: &str) -> String {
        let mut s = head('0', nsp);
        s.push_str(&serde_json::json!({ "sid": sid }).to_string());
        s
    }

    /// A refused namespace connect; `socket.io-client` shows `message` as the error's
    /// message and `data` as its `data`.
    pub fn connect_error(nsp: &str, code: &str, message: &str) -> String {
        let mut s = head('4', nsp);
        let body = serde_json::json!({ "message": code, "data": { "code": code, "message": message } });
        s.push_str(&body.to_string());
        s
    }

    /// The server leaves a namespace.
    pub fn disconnect(nsp: &str) -> String {
        head('1', nsp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_packets() {
        assert_eq!(EnginePacket::decode("2probe"), Ok(EnginePacket::Ping("probe")));
        assert_eq!(EnginePacket::decode("3"), Ok(EnginePacket::Pong("")));
        assert_eq!(EnginePacket::decode("40/portal,"), Ok(EnginePacket::Message("0/portal,")));
        assert_eq!(EnginePacket::decode("5"), Ok(EnginePacket::Upgrade));
        assert_eq!(EnginePacket::decode(""), Err(PacketError::Empty));
        assert_eq!(EnginePacket::decode("bAAA"), Err(PacketError::Binary));
        assert_eq!(EnginePacket::decode("9"), Err(PacketError::UnknownType('9')));
    }

    #[test]
    fn socket_packets() {
        let p = SioPacket::decode("0/portal,{\"token\":\"t\"}").unwrap();
        assert_eq!((p.kind, p.nsp, p.id, p.data), (SioType::Connect, "/portal", None, Some("{\"token\":\"t\"}")));
        let p = SioPacket::decode("2/chat/x,12[\"send_message\",{\"a\":1}]").unwrap();
        assert_eq!((p.kind, p.nsp, p.id), (SioType::Event, "/chat/x", Some(12)));
        let (name, args) = p.event().unwrap();
        assert_eq!((name.as_str(), args.len()), ("send_message", 1));
        let p = SioPacket::decode("2[\"x\"]").unwrap();
        assert_eq!((p.nsp, p.id), ("/", None));
        let p = SioPacket::decode("1/portal").unwrap();
        assert_eq!((p.kind, p.nsp, p.data), (SioType::Disconnect, "/portal", None));
        let p = SioPacket::decode("51-/x,[\"e\",{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!((p.kind, p.attachments, p.nsp), (SioType::BinaryEvent, 1, "/x"));
    }

    #[test]
    fn malformed_socket_packets_are_errors() {
        assert_eq!(SioPacket::decode(""), Err(PacketError::Empty));
        assert_eq!(SioPacket::decode("7"), Err(PacketError::UnknownType('7')));
        assert_eq!(SioPacket::decode("5x-[]"), Err(PacketError::Number));
        assert_eq!(SioPacket::decode("2999999999999999999999[]"), Err(PacketError::Number));
        let long = format!("0/{},", "a".repeat(200));
        assert_eq!(SioPacket::decode(&long), Err(PacketError::Namespace));
        for bad in ["2", "2{}", "2[]", "2[1]", "2[\"x\""] {
            assert!(SioPacket::decode(bad).unwrap().event().is_err(), "{bad}");
        }
    }

    #[test]
    fn encodings() {
        assert_eq!(encode::event("/portal", "a\"b", &1), "42/portal,[\"a\\\"b\",1]");
        assert_eq!(encode::event("/", "x", &serde_json::json!({})), "42[\"x\",{}]");
        assert_eq!(encode::ack("/chat/p", 7, &serde_json::json!({"ok":true})), "43/chat/p,7[{\"ok\":true}]");
        assert_eq!(encode::disconnect("/admin"), "41/admin,");
        assert!(encode::connect_error("/admin", "forbidden", "no").starts_with("44/admin,{"));
        assert_eq!(encode::connected("/portal", "s1"), "40/portal,{\"sid\":\"s1\"}");
    }
}
