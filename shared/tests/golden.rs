//! Golden tests: the exact bytes of every frame in every encoding. A change here is a
//! wire-protocol change and must be deliberate.

use gateway_protocol::{
    Channel, ClientFrame, ClientTimestamp, DisconnectReason, Encoding, ErrorBody, ErrorCode, EventFrame, Principal,
    PrincipalKind, ServerFrame,
};
use serde_json::json;

#[path = "golden/fuzz_seeds.rs"]
mod fuzz_seeds;

fn event() -> ServerFrame {
    ServerFrame::Event(EventFrame {
        channel: Channel::parse("session:abc").expect("valid"),
        event: "message.created".into(),
        data: json!({"text":"hi"}),
        id: "m1".into(),
        ts: 1700000000000,
        from: None,
        offset: None,
        epoch: None,
    })
}

#[test]
fn client_published_events_name_their_publisher() {
    let frame = ServerFrame::Event(EventFrame {
        channel: Channel::parse("session:abc").expect("valid"),
        event: "typing".into(),
        data: json!({}),
        id: "m2".into(),
        ts: 1,
        from: Some(Principal { kind: PrincipalKind::User, id: "u1".into() }),
        offset: None,
        epoch: None,
    });
    assert_eq!(
        std::str::from_utf8(&Encoding::Json.encode(&frame).bytes).unwrap(),
        r#"{"type":"event","channel":"session:abc","event":"typing","data":{},"id":"m2","ts":1,"from":{"kind":"user","id":"u1"}}"#
    );
    // The flat shape names the publisher too, so a flat subscriber can tell a client's
    // event from a backend's or the gateway's.
    assert_eq!(
        std::str::from_utf8(&Encoding::Flat.encode(&frame).bytes).unwrap(),
        r#"{"type":"typing","payload":{},"channel":"session:abc","timestamp":1,"messageId":"m2","from":{"kind":"user","id":"u1"}}"#
    );
}

fn server_frames() -> Vec<(ServerFrame, &'static str, &'static str)> {
    // (frame, canonical JSON, flat JSON)
    vec![
        (
            ServerFrame::Connected {
                connection_id: "c1".into(),
                principal: Principal { kind: PrincipalKind::User, id: "u1".into() },
                node: "n1".into(),
                heartbeat_ms: 30000,
            },
            r#"{"type":"connected","connectionId":"c1","principal":{"kind":"user","id":"u1"},"node":"n1","heartbeatMs":30000}"#,
            r#"{"type":"connected","payload":{"connectionId":"c1","userId":"u1"}}"#,
        ),
        (
            ServerFrame::ok("s1", json!({"subscribed":["session:abc"],"rejected":[]})),
            r#"{"type":"response","id":"s1","result":{"subscribed":["session:abc"],"rejected":[]}}"#,
            r#"{"type":"response","payload":{"id":"s1","result":{"subscribed":["session:abc"],"rejected":[]}}}"#,
        ),
        (
            ServerFrame::err("r1", ErrorBody::new(ErrorCode::Unavailable, "no backend")),
            r#"{"type":"response","id":"r1","error":{"code":"unavailable","message":"no backend"}}"#,
            r#"{"type":"error","payload":{"code":"unavailable","message":"no backend","messageId":"r1"}}"#,
        ),
        (
            event(),
            r#"{"type":"event","channel":"session:abc","event":"message.created","data":{"text":"hi"},"id":"m1","ts":1700000000000}"#,
            r#"{"type":"message.created","payload":{"text":"hi"},"channel":"session:abc","timestamp":1700000000000,"messageId":"m1"}"#,
        ),
        (
            ServerFrame::Ack { id: "m1".into() },
            r#"{"type":"ack","id":"m1"}"#,
            r#"{"type":"ack","payload":{"messageId":"m1"}}"#,
        ),
        (ServerFrame::Pong { ts: 5 }, r#"{"type":"pong","ts":5}"#, r#"{"type":"pong","payload":{"timestamp":5}}"#),
        (
            ServerFrame::Error {
                error: ErrorBody {
                    code: ErrorCode::RateLimited,
                    message: "slow down".into(),
                    retry_after_ms: Some(100),
                },
            },
            r#"{"type":"error","error":{"code":"rate_limited","message":"slow down","retryAfterMs":100}}"#,
            r#"{"type":"error","payload":{"code":"rate_limited","message":"slow down","retryAfterMs":100}}"#,
        ),
        (
            ServerFrame::Disconnecting { reason: DisconnectReason::Shutdown, reconnect: true },
            r#"{"type":"disconnecting","reason":"shutdown","reconnect":true}"#,
            r#"{"type":"disconnecting","payload":{"reason":"shutdown","reconnect":true}}"#,
        ),
        (
            ServerFrame::Heartbeat { ts: 7 },
            r#"{"type":"heartbeat","ts":7}"#,
            r#"{"type":"heartbeat","payload":{"timestamp":7}}"#,
        ),
    ]
}

#[test]
fn server_frames_json_and_flat_bytes() {
    for (frame, json, flat) in server_frames() {
        let j = Encoding::Json.encode(&frame);
        assert!(!j.binary);
        assert_eq!(std::str::from_utf8(&j.bytes).unwrap(), json, "{frame:?}");
        let f = Encoding::Flat.encode(&frame);
        assert_eq!(std::str::from_utf8(&f.bytes).unwrap(), flat, "{frame:?}");
    }
}

#[test]
fn server_frames_msgpack_is_the_same_map() {
    for (frame, json, _) in server_frames() {
        let m = Encoding::MsgPack.encode(&frame);
        assert!(m.binary);
        // The MessagePack map decodes to exactly the canonical JSON document.
        let v: serde_json::Value = rmp_serde::from_slice(&m.bytes).unwrap();
        assert_eq!(v, serde_json::from_str::<serde_json::Value>(json).unwrap());
        // And back into the same typed frame.
        let back: ServerFrame = rmp_serde::from_slice(&m.bytes).unwrap();
        assert_eq!(back, frame);
    }
}

#[test]
fn msgpack_event_bytes_are_pinned() {
    let m = Encoding::MsgPack.encode(&ServerFrame::Pong { ts: 5 });
    // fixmap(2) "type" "pong" "ts" 5
    assert_eq!(&m.bytes[..], b"\x82\xa4type\xa4pong\xa2ts\x05");
    let m = Encoding::MsgPack.encode(&ServerFrame::Ack { id: "m1".into() });
    assert_eq!(&m.bytes[..], b"\x82\xa4type\xa3ack\xa2id\xa2m1");
}

fn client_frames() -> Vec<(ClientFrame, &'static str)> {
    vec![
        (ClientFrame::Authenticate { token: "t".into() }, r#"{"type":"authenticate","token":"t"}"#),
        (
            ClientFrame::Subscribe {
                id: Some("s1".into()),
                channels: vec!["session:abc".into()],
                token: None,
                recover: Default::default(),
            },
            r#"{"type":"subscribe","id":"s1","channels":["session:abc"]}"#,
        ),
        (
            ClientFrame::Unsubscribe { id: Some("s2".into()), channels: vec!["session:abc".into()] },
            r#"{"type":"unsubscribe","id":"s2","channels":["session:abc"]}"#,
        ),
        (
            ClientFrame::Request { id: "r1".into(), method: "sessions.create".into(), params: json!({"a":1}) },
            r#"{"type":"request","id":"r1","method":"sessions.create","params":{"a":1}}"#,
        ),
        (
            ClientFrame::Publish {
                id: Some("p1".into()),
                channel: "session:abc".into(),
                event: "typing".into(),
                data: json!({}),
            },
            r#"{"type":"publish","id":"p1","channel":"session:abc","event":"typing","data":{}}"#,
        ),
        (
            ClientFrame::Send {
                id: Some("m1".into()),
                event: "status:update".into(),
                data: json!({"s":"busy"}),
                correlation_id: None,
                timestamp: None,
            },
            r#"{"type":"send","id":"m1","event":"status:update","data":{"s":"busy"}}"#,
        ),
        (
            ClientFrame::Send {
                id: Some("m2".into()),
                event: "task:done".into(),
                data: json!({}),
                correlation_id: Some("c-7".into()),
                timestamp: Some(ClientTimestamp::Millis(1707163200000)),
            },
            r#"{"type":"send","id":"m2","event":"task:done","data":{},"correlationId":"c-7","timestamp":1707163200000}"#,
        ),
        (
            ClientFrame::Send {
                id: None,
                event: "task:done".into(),
                data: json!(null),
                correlation_id: None,
                timestamp: Some(ClientTimestamp::Text("2026-02-05T21:50:00.000Z".into())),
            },
            r#"{"type":"send","event":"task:done","data":null,"timestamp":"2026-02-05T21:50:00.000Z"}"#,
        ),
        (ClientFrame::Refresh { id: None, token: "t2".into() }, r#"{"type":"refresh","token":"t2"}"#),
        (ClientFrame::Ping, r#"{"type":"ping"}"#),
    ]
}

#[test]
fn client_frames_decode_in_json_and_msgpack() {
    for (frame, json) in client_frames() {
        assert_eq!(serde_json::to_string(&frame).unwrap(), json);
        assert_eq!(Encoding::Json.decode(json.as_bytes(), false).unwrap(), frame);
        let packed = rmp_serde::to_vec_named(&frame).unwrap();
        assert_eq!(Encoding::MsgPack.decode(&packed, true).unwrap(), frame);
    }
}

#[test]
fn flat_client_frames() {
    let f = Encoding::Flat;
    assert_eq!(f.decode(br#"{"type":"ping"}"#, false).unwrap(), ClientFrame::Ping);
    assert_eq!(
        f.decode(br#"{"type":"status:update","payload":{"status":"busy"},"messageId":"x1"}"#, false).unwrap(),
        ClientFrame::Send {
            id: Some("x1".into()),
            event: "status:update".into(),
            data: json!({"status":"busy"}),
            correlation_id: None,
            timestamp: None,
        }
    );
    // Correlation beside `type`/`payload`: strings or numbers; a number id becomes text,
    // a fractional timestamp stays text, other shapes are ignored rather than refused.
    let send = |s: &str| f.decode(s.as_bytes(), false).unwrap();
    assert_eq!(
        send(r#"{"type":"task:done","payload":{},"messageId":"x2","correlationId":"c1","timestamp":1707163200000}"#),
        ClientFrame::Send {
            id: Some("x2".into()),
            event: "task:done".into(),
            data: json!({}),
            correlation_id: Some("c1".into()),
            timestamp: Some(ClientTimestamp::Millis(1707163200000)),
        }
    );
    assert_eq!(
        send(r#"{"type":"task:done","correlationId":42,"timestamp":"2026-02-05T21:50:00.000Z"}"#),
        ClientFrame::Send {
            id: None,
            event: "task:done".into(),
            data: json!(null),
            correlation_id: Some("42".into()),
            timestamp: Some(ClientTimestamp::Text("2026-02-05T21:50:00.000Z".into())),
        }
    );
    assert_eq!(
        send(r#"{"type":"task:done","correlationId":{"a":1},"timestamp":1.5}"#),
        ClientFrame::Send {
            id: None,
            event: "task:done".into(),
            data: json!(null),
            correlation_id: None,
            timestamp: Some(ClientTimestamp::Text("1.5".into())),
        }
    );
    assert_eq!(
        f.decode(br#"{"type":"authenticate","payload":{"token":"k"}}"#, false).unwrap(),
        ClientFrame::Authenticate { token: "k".into() }
    );
    assert!(f.decode(br#"{"payload":{}}"#, false).is_err());
}

#[test]
fn malformed_frames_are_bad_request_and_keep_the_id() {
    let e = Encoding::Json.decode(br#"{"type":"request","id":"r9"}"#, false).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert_eq!(e.id.as_deref(), Some("r9"));
    let e = Encoding::Json.decode(b"not json", false).unwrap_err();
    assert_eq!(e.id, None);
    let e = Encoding::Json.decode(br#"{"type":"nope"}"#, false).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    // A text frame on a MessagePack connection, and the reverse, are refused.
    assert!(Encoding::MsgPack.decode(b"{}", false).is_err());
    assert!(Encoding::Json.decode(b"{}", true).is_err());
}

#[test]
fn negotiation_names() {
    for e in Encoding::ALL {
        assert_eq!(Encoding::from_subprotocol(e.subprotocol()), Some(e));
        assert_eq!(Encoding::from_format(e.as_str()), Some(e));
    }
    assert_eq!(Encoding::from_format("xml"), None);
}
