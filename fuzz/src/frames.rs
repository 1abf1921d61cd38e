//! Client frames in the three encodings.
//!
//! Properties: decoding never panics; a frame on the wrong kind of WebSocket message is
//! refused; a refusal is a `bad_request`; a decoded frame re-encodes (canonical JSON
//! and MessagePack) and decodes back equal in both; its payload stays within the depth
//! bound; channel names and `history.get` parameters in it parse without panicking (the
//! parameters round-trip); a publish becomes an event that every encoding delivers
//! intact and within [`max_encoded_len`]; a flat frame re-shaped as flat decodes back
//! equal.

use gateway_protocol::{
    Channel, ClientFrame, ClientTimestamp, Encoding, ErrorCode, EventFrame, HistoryQuery, ServerFrame,
    event::depth_within, max_encoded_len,
};
use serde_json::{Map, Value, json};

/// Decodes `data` as a client frame in `encoding` and checks the properties above.
pub fn check(encoding: Encoding, data: &[u8]) {
    assert!(encoding.decode(data, !encoding.is_binary()).is_err(), "accepted on the wrong message kind");
    let frame = match encoding.decode(data, encoding.is_binary()) {
        Ok(frame) => frame,
        Err(e) => {
            assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
            assert!(!e.message.is_empty());
            return;
        }
    };
    if let ClientFrame::Publish { data, .. }
    | ClientFrame::Send { data, .. }
    | ClientFrame::Request { params: data, .. } = &frame
    {
        assert!(depth_within(data, gateway_protocol::MAX_DATA_DEPTH), "payload deeper than the bound");
    }
    // Canonical round trips: whatever one encoding accepted, both canonical encodings
    // carry unchanged.
    let json = serde_json::to_vec(&frame).expect("a frame serialises as JSON");
    assert_eq!(Encoding::Json.decode(&json, false).as_ref(), Ok(&frame), "JSON round trip: {}", show(&json));
    let packed = rmp_serde::to_vec_named(&frame).expect("a frame serialises as MessagePack");
    assert_eq!(Encoding::MsgPack.decode(&packed, true).as_ref(), Ok(&frame), "MessagePack round trip");
    check_names(&frame);
    if let ClientFrame::Publish { channel, event, data, .. } = frame
        && let Ok(channel) = Channel::parse(&channel)
    {
        deliver(EventFrame { channel, event, data, id: "m1".into(), ts: 1, from: None, offset: None, epoch: None });
    }
}

/// What the session decodes further from a frame: channel names (subscribe lists,
/// recovery positions, a publish's channel) and `history.get` parameters, which the
/// session reads with serde from the request's `params`.
fn check_names(frame: &ClientFrame) {
    match frame {
        ClientFrame::Subscribe { channels, recover, .. } => {
            for name in channels.iter().chain(recover.keys()) {
                let _ = Channel::parse(name);
            }
        }
        ClientFrame::Unsubscribe { channels, .. } => {
            for name in channels {
                let _ = Channel::parse(name);
            }
        }
        ClientFrame::Request { params, .. } => {
            if let Ok(q) = serde_json::from_value::<HistoryQuery>(params.clone()) {
                let _ = Channel::parse(&q.channel);
                let back = serde_json::to_value(&q).expect("a query serialises");
                assert_eq!(
                    serde_json::from_value::<HistoryQuery>(back).ok().as_ref(),
                    Some(&q),
                    "history query round trip"
                );
            }
        }
        _ => {}
    }
}

/// An accepted publish, as the server fans it out: each encoding's bytes decode back to
/// the same event (JSON, MessagePack) or carry the same payload (flat), and none is
/// larger than [`max_encoded_len`], which the queues' byte bounds trust.
fn deliver(ev: EventFrame) {
    let max = max_encoded_len(&ev);
    let frame = ServerFrame::Event(ev);
    for encoding in Encoding::ALL {
        let out = encoding.encode(&frame);
        assert!(!out.bytes.is_empty(), "{encoding:?} encoded nothing");
        assert!(out.bytes.len() <= max, "{encoding:?}: {} bytes over max_encoded_len {max}", out.bytes.len());
        assert_eq!(out.binary, encoding.is_binary());
        match encoding {
            Encoding::Json => {
                let back: ServerFrame = serde_json::from_slice(&out.bytes).expect("a subscriber decodes JSON");
                assert_eq!(back, frame);
            }
            Encoding::MsgPack => {
                let back: ServerFrame = rmp_serde::from_slice(&out.bytes).expect("a subscriber decodes MessagePack");
                assert_eq!(back, frame);
            }
            Encoding::Flat => {
                let back: Value = serde_json::from_slice(&out.bytes).expect("a subscriber decodes flat JSON");
                let ServerFrame::Event(ev) = &frame else { unreachable!("built as an event") };
                assert_eq!(back["type"], json!(ev.event.as_str()));
                assert_eq!(back["payload"], ev.data);
            }
        }
    }
}

/// A flat frame that decodes, written back in the flat shape, decodes to the same frame:
/// nothing a flat client sent is lost or changed on the way to a backend.
pub fn check_flat(data: &[u8]) {
    let Ok(frame) = Encoding::Flat.decode(data, false) else { return };
    let mut flat = Map::new();
    match &frame {
        ClientFrame::Ping => {
            flat.insert("type".into(), json!("ping"));
        }
        ClientFrame::Authenticate { token } => {
            flat.insert("type".into(), json!("authenticate"));
            flat.insert("token".into(), json!(token));
        }
        ClientFrame::Send { id, event, data, correlation_id, timestamp } => {
            assert!(!matches!(event.as_str(), "ping" | "authenticate" | ""), "flat type {event} became a send");
            flat.insert("type".into(), json!(event.as_str()));
            flat.insert("payload".into(), data.clone());
            if let Some(id) = id {
                flat.insert("messageId".into(), json!(id));
            }
            if let Some(c) = correlation_id {
                flat.insert("correlationId".into(), json!(c));
            }
            match timestamp {
                Some(ClientTimestamp::Millis(ms)) => flat.insert("timestamp".into(), json!(ms)),
                Some(ClientTimestamp::Text(t)) => flat.insert("timestamp".into(), json!(t)),
                None => None,
            };
        }
        other => panic!("the flat shape decoded to a {} frame", other.kind()),
    }
    let bytes = serde_json::to_vec(&flat).expect("a map serialises");
    assert_eq!(Encoding::Flat.decode(&bytes, false).as_ref(), Ok(&frame), "flat round trip: {}", show(&bytes));
}

/// Bytes for an assertion message, lossily as text.
fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(500).collect()
}
