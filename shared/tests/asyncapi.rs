//! Keeps `docs/asyncapi.yaml` true to the protocol crate: its WebSocket messages are
//! exactly the frame types of both directions (read from the frames' serde derive, so a
//! new variant fails here until it is described), each named after its `type` tag, and
//! every example decodes into the frame it names and encodes back to the same JSON, in
//! JSON and MessagePack; the flat channel covers the flat frame types the gateway emits.
//! (The document's validity as AsyncAPI is checked by `docs/asyncapi`, a Node package
//! running the official parser.)

use std::collections::BTreeSet;

use gateway_protocol::{
    ClientFrame, Encoding, ServerFrame, client_frame_types, event::GATEWAY_FLAT_TYPES, server_frame_types,
};
use serde_json::Value;

/// The document, as JSON values.
fn doc() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/asyncapi.yaml");
    let text = std::fs::read_to_string(path).expect("docs/asyncapi.yaml is readable");
    serde_norway::from_str(&text).expect("docs/asyncapi.yaml is YAML")
}

/// Follows local `$ref`s (`#/a/b`) until a value that is not a reference.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    let mut v = v;
    for _ in 0..16 {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else { return v };
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("only local references: {r}"));
        v = doc.pointer(pointer).unwrap_or_else(|| panic!("dangling reference {r}"));
    }
    panic!("reference chain too long at {v}")
}

/// The messages an operation names: (key in its channel, the message).
fn operation_messages<'a>(doc: &'a Value, op: &str) -> Vec<(String, &'a Value)> {
    let refs = doc["operations"][op]["messages"].as_array().unwrap_or_else(|| panic!("operation {op} lists messages"));
    refs.iter()
        .map(|r| {
            let path = r["$ref"].as_str().unwrap_or_else(|| panic!("{op}: messages are references"));
            let key = path.rsplit('/').next().unwrap_or_default().to_owned();
            (key, resolve(doc, r))
        })
        .collect()
}

/// The `type` constant of a message's payload (directly or in an `allOf` part).
fn type_const<'a>(doc: &'a Value, message: &'a Value) -> Option<&'a str> {
    let payload = resolve(doc, &message["payload"]);
    let direct = resolve(doc, &payload["properties"]["type"])["const"].as_str();
    direct.or_else(|| {
        payload["allOf"]
            .as_array()?
            .iter()
            .find_map(|p| resolve(doc, &resolve(doc, p)["properties"]["type"])["const"].as_str())
    })
}

/// The example payloads of a message.
fn examples<'a>(message: &'a Value, key: &str) -> Vec<&'a Value> {
    let ex: Vec<&Value> =
        message["examples"].as_array().map(|a| a.iter().map(|e| &e["payload"]).collect()).unwrap_or_default();
    assert!(!ex.is_empty(), "message {key} has no example");
    ex
}

/// Checks the canonical messages of `op` against `types`; returns their keys.
fn frames_of(doc: &Value, op: &str, types: &[&str]) -> BTreeSet<String> {
    let msgs = operation_messages(doc, op);
    for (key, m) in &msgs {
        assert_eq!(m["name"].as_str(), Some(key.as_str()), "message {key}: name must be its key");
        assert_eq!(type_const(doc, m), Some(key.as_str()), "message {key}: payload type must be const {key:?}");
    }
    let documented: BTreeSet<String> = msgs.into_iter().map(|(k, _)| k).collect();
    let real: BTreeSet<String> = types.iter().map(|t| (*t).to_owned()).collect();
    let missing: Vec<_> = real.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&real).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{op}: frame types not described: {missing:?}; described but not frame types: {extra:?}"
    );
    documented
}

#[test]
fn socket_messages_are_exactly_the_frame_types() {
    let doc = doc();
    let client = frames_of(&doc, "receiveClientFrames", &client_frame_types());
    let server = frames_of(&doc, "sendServerFrames", &server_frame_types());
    let in_channel: BTreeSet<String> =
        doc["channels"]["socket"]["messages"].as_object().expect("socket messages").keys().cloned().collect();
    let both: BTreeSet<String> = client.union(&server).cloned().collect();
    assert_eq!(in_channel, both, "channel socket must list exactly the frames of both operations");
}

#[test]
fn client_examples_decode_to_their_frame_in_json_and_msgpack() {
    let doc = doc();
    for (key, m) in operation_messages(&doc, "receiveClientFrames") {
        for ex in examples(m, &key) {
            let frame = Encoding::Json
                .decode(ex.to_string().as_bytes(), false)
                .unwrap_or_else(|e| panic!("{key} example {ex} does not decode: {e}"));
            assert_eq!(frame.kind(), key, "{ex}");
            assert_eq!(&serde_json::to_value(&frame).expect("serialises"), ex, "{key}: example is not canonical");
            let packed = rmp_serde::to_vec_named(ex).expect("msgpack");
            let again = Encoding::MsgPack.decode(&packed, true).unwrap_or_else(|e| panic!("{key} as msgpack: {e}"));
            assert_eq!(again, frame, "{key}: MessagePack carries the same frame");
        }
    }
}

#[test]
fn server_examples_are_what_the_encoder_writes() {
    let doc = doc();
    for (key, m) in operation_messages(&doc, "sendServerFrames") {
        for ex in examples(m, &key) {
            let frame: ServerFrame =
                serde_json::from_value(ex.clone()).unwrap_or_else(|e| panic!("{key} example {ex} is no frame: {e}"));
            assert_eq!(frame.kind(), key, "{ex}");
            let json: Value = serde_json::from_slice(&Encoding::Json.encode(&frame).bytes).expect("JSON");
            assert_eq!(&json, ex, "{key}: the encoder writes something else");
            let packed = Encoding::MsgPack.encode(&frame);
            assert!(packed.binary, "MessagePack travels in binary messages");
            let back: ServerFrame = rmp_serde::from_slice(&packed.bytes).expect("msgpack decodes");
            assert_eq!(back, frame, "{key}: MessagePack carries the same frame");
        }
    }
}

#[test]
fn flat_messages_cover_the_flat_shape() {
    let doc = doc();
    for (key, m) in operation_messages(&doc, "receiveFlatFrames") {
        for ex in examples(m, &key) {
            let frame = Encoding::Flat
                .decode(ex.to_string().as_bytes(), false)
                .unwrap_or_else(|e| panic!("{key} example {ex} does not decode: {e}"));
            let expected = match &frame {
                ClientFrame::Ping => "flatPing",
                ClientFrame::Authenticate { .. } => "flatAuthenticate",
                ClientFrame::Send { .. } => "flatSend",
                other => panic!("the flat shape never decodes to {}", other.kind()),
            };
            assert_eq!(key, expected, "{ex}");
        }
    }
    // Every frame type the gateway emits in the flat shape has its message, plus events
    // (whose `type` is the event name).
    let mut emitted = BTreeSet::new();
    for (key, m) in operation_messages(&doc, "sendFlatFrames") {
        examples(m, &key);
        match type_const(&doc, m) {
            Some(t) => assert!(emitted.insert(t.to_owned()), "two flat messages for {t}"),
            None => assert_eq!(key, "flatEvent", "only events have no fixed flat type"),
        }
    }
    let flat: BTreeSet<String> = GATEWAY_FLAT_TYPES.iter().map(|t| (*t).to_owned()).collect();
    assert_eq!(emitted, flat, "flat server messages must be the flat frame types");
}
