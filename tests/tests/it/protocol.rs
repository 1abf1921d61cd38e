//! The wire (contract §1, §2, §4): the flat compatibility shape as the seed-001 dashboard
//! and a Mission Control agent use it, MessagePack end to end, encoding negotiation,
//! malformed and wrong-kind frames, repeated protocol errors (4000) and oversize frames
//! (1009).

use std::time::Duration;

use anyhow::bail;
use gateway_client::{Client, Connect, Message, Received};
use gateway_protocol::{ClientFrame, DisconnectReason, Encoding, ErrorCode, ServerFrame};
use gateway_tests::node::{
    AGENT_KEYS, TestNode, WAIT, assert_quiet, connected, eventually, next_error, refusal, response, subscribe,
    test_config, user_token,
};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(300);

/// The next flat frame of `type` (skipping others, e.g. heartbeats).
async fn flat_of(c: &mut Client, kind: &str) -> anyhow::Result<Value> {
    Ok(c.recv_until(WAIT, |r| match r {
        Received::Flat(v) if v["type"] == kind => Some(v.clone()),
        _ => None,
    })
    .await?)
}

/// Asserts the seed-001 shape: an object with a string `type` and a `payload`.
fn assert_seed_shape(v: &Value) {
    assert!(v["type"].is_string(), "{v}");
    assert!(v.get("payload").is_some(), "{v}");
}

#[tokio::test]
async fn flat_dashboard_like_seed_001() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.heartbeat.interval_ms = 200;
    let node = TestNode::start(cfg).await?;
    let token = user_token("u1", &[], &[], LONG);
    // new WebSocket(`ws://…?token=${token}`), reading {type, payload}.
    let url = node.ws(&format!("?token={token}&format=flat&subscribe=broadcast:dashboard"));
    let mut ws = Client::connect(Connect::new(url).format(Encoding::Flat)).await?;
    let hello = ws.recv_timeout(WAIT).await?;
    let Received::Flat(hello) = hello else { bail!("expected a flat frame, got {hello:?}") };
    assert_eq!(hello["type"], "connected", "{hello}");
    assert_eq!(hello["payload"]["userId"], "u1", "{hello}");
    assert!(hello["payload"]["connectionId"].as_str().is_some_and(|s| !s.is_empty()), "{hello}");

    let status = json!({"agentId": "agent-abc-123", "status": "online", "timestamp": 1707163200000u64});
    let (code, body) = node.publish("user:u1", "agent:status", status.clone()).await?;
    assert_eq!(code, 202, "{body}");
    let msg = flat_of(&mut ws, "agent:status").await?;
    assert_seed_shape(&msg);
    assert_eq!(msg["payload"], status);
    assert_eq!(msg["payload"]["agentId"], "agent-abc-123");
    assert_eq!(msg["channel"], "user:u1");
    assert_eq!(msg["messageId"], body["id"]);
    assert!(msg["timestamp"].as_u64().is_some_and(|t| t > 0), "{msg}");

    let offline = json!({"agentId": "agent-abc-123", "status": "offline", "timestamp": 1707163200001u64});
    node.publish("broadcast:dashboard", "agent:status", offline.clone()).await?;
    let msg = flat_of(&mut ws, "agent:status").await?;
    assert_eq!((&msg["payload"], &msg["channel"]), (&offline, &json!("broadcast:dashboard")));

    // Heartbeats every interval, with a timestamp.
    let h1 = flat_of(&mut ws, "heartbeat").await?;
    let h2 = flat_of(&mut ws, "heartbeat").await?;
    assert_seed_shape(&h1);
    let (t1, t2) = (h1["payload"]["timestamp"].as_u64(), h2["payload"]["timestamp"].as_u64());
    assert!(t1.is_some() && t2 > t1, "{h1} {h2}");
    node.stop().await
}

#[tokio::test]
async fn flat_agent_status_update_is_acked() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let c = Connect::new(node.ws("")).header("X-API-Key", AGENT_KEYS[0].1).encoding(Encoding::Flat);
    let mut agent = Client::connect(c).await?;
    let hello = flat_of(&mut agent, "connected").await?;
    assert_eq!(hello["payload"]["agentId"], "a1", "{hello}");
    agent.send_text(r#"{"type":"status:update","payload":{"status":"online","load":0.3},"messageId":"m1"}"#).await?;
    let ack = agent.recv_timeout(WAIT).await?;
    assert_eq!(ack, Received::Flat(json!({"type": "ack", "payload": {"messageId": "m1"}})));
    // Without messageId: accepted silently.
    agent.send_text(r#"{"type":"status:update","payload":{"status":"busy"}}"#).await?;
    assert_quiet(&mut agent, Duration::from_millis(300)).await?;
    // Flat ping.
    agent.send_text(r#"{"type":"ping"}"#).await?;
    let pong = flat_of(&mut agent, "pong").await?;
    assert!(pong["payload"]["timestamp"].as_u64().is_some_and(|t| t > 0), "{pong}");
    // Malformed: a flat error, and the connection stays.
    agent.send_text("{nope").await?;
    let err = flat_of(&mut agent, "error").await?;
    assert_eq!(err["payload"]["code"], "bad_request", "{err}");
    assert!(err["payload"]["message"].is_string(), "{err}");
    agent.send_text(r#"{"type":"task:done","payload":{},"messageId":"m2"}"#).await?;
    assert_eq!(flat_of(&mut agent, "ack").await?["payload"]["messageId"], "m2");
    node.stop().await
}

#[tokio::test]
async fn canonical_send_is_acked() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let mut agent = Client::connect(Connect::new(node.ws("")).bearer(AGENT_KEYS[1].1)).await?;
    connected(&mut agent).await?;
    agent
        .send(&ClientFrame::Send {
            id: Some("m1".into()),
            event: "status:update".into(),
            data: json!({"s": 1}),
            correlation_id: None,
            timestamp: None,
        })
        .await?;
    assert_eq!(agent.recv_timeout(WAIT).await?, Received::Frame(ServerFrame::Ack { id: "m1".into() }));
    // Names outside the event-name grammar, or that cannot be an upstream subject, are
    // refused here as on NATS (sent raw: the typed frame cannot even hold them).
    for (id, bad) in [("m2", ""), ("m3", "has space"), ("m4", "a:>"), ("m5", "a..b"), ("m6", "a\nb")] {
        let send = json!({"type": "send", "id": id, "event": bad, "data": {}});
        agent.send_text(&send.to_string()).await?;
        assert_eq!(response(&mut agent, id).await?.map_err(|e| e.code), Err(ErrorCode::BadRequest), "{bad:?}");
    }
    node.stop().await
}

/// Receives one message, asserts it is binary, and decodes it.
async fn binary_frame(c: &mut Client) -> anyhow::Result<ServerFrame> {
    let m = c.recv_message(WAIT).await?;
    let Message::Binary(_) = m else { bail!("expected a binary message, got {m:?}") };
    match c.decode(m)? {
        Received::Frame(f) => Ok(f),
        other => bail!("expected a frame, got {other:?}"),
    }
}

#[tokio::test]
async fn messagepack_round_trip() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let token = user_token("u1", &["p1"], &[], LONG);
    for (how, connect) in [
        ("subprotocol", Connect::new(node.ws("")).bearer(&token).encoding(Encoding::MsgPack)),
        ("?format=", Connect::new(node.ws("?format=msgpack")).bearer(&token).format(Encoding::MsgPack)),
    ] {
        let mut c = Client::connect(connect).await?;
        let ServerFrame::Connected { principal, heartbeat_ms, .. } = binary_frame(&mut c).await? else {
            bail!("{how}: expected connected")
        };
        assert_eq!((principal.id.as_str(), heartbeat_ms), ("u1", 30_000), "{how}");
        c.send(&ClientFrame::Subscribe {
            id: Some("s1".into()),
            channels: vec!["project:p1".into()],
            token: None,
            recover: Default::default(),
        })
        .await?;
        let (id, r) = loop {
            match binary_frame(&mut c).await? {
                ServerFrame::Response { id, result: Some(r), error: None } => break (id, r),
                // Our own presence.join may come first.
                ServerFrame::Event(e) if e.event == "presence.join" => continue,
                other => bail!("{how}: expected a response, got {other:?}"),
            }
        };
        assert_eq!((id.as_str(), &r["subscribed"]), ("s1", &json!(["project:p1"])), "{how}");
        let data = json!({"text": "héllo", "n": 42, "list": [1, 2.5, null, true], "nested": {"k": "v"}});
        node.publish("project:p1", "message.created", data.clone()).await?;
        let ev = loop {
            match binary_frame(&mut c).await? {
                ServerFrame::Event(e) if e.event == "message.created" => break e,
                ServerFrame::Event(_) => continue,
                other => bail!("{how}: expected an event, got {other:?}"),
            }
        };
        assert_eq!((ev.channel.as_str(), &ev.data), ("project:p1", &data), "{how}");
        c.send(&ClientFrame::Ping).await?;
        assert!(matches!(binary_frame(&mut c).await?, ServerFrame::Pong { ts } if ts > 0), "{how}");
        // JSON text on a MessagePack connection is the wrong kind.
        c.send_text(r#"{"type":"ping"}"#).await?;
        let ServerFrame::Error { error } = binary_frame(&mut c).await? else { bail!("{how}: expected an error") };
        assert_eq!(error.code, ErrorCode::BadRequest, "{how}");
    }
    node.stop().await
}

#[tokio::test]
async fn encoding_negotiation() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let token = user_token("u1", &[], &[], LONG);
    // The JSON subprotocol explicitly, and JSON by default: text frames.
    for c in
        [Connect::new(node.ws("")).bearer(&token).encoding(Encoding::Json), Connect::new(node.ws("")).bearer(&token)]
    {
        let mut c = Client::connect(c).await?;
        let m = c.recv_message(WAIT).await?;
        assert!(matches!(&m, Message::Text(t) if t.contains(r#""type":"connected""#)), "{m:?}");
    }
    let (status, body) = refusal(Client::connect(Connect::new(node.ws("?format=xml")).bearer(&token)).await)?;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "{body}");
    let unknown = Connect::new(node.ws("")).bearer(&token).header("Sec-WebSocket-Protocol", "graphql-ws");
    let (status, body) = refusal(Client::connect(unknown).await)?;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "{body}");
    node.stop().await
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_connection_stays() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let mut c = node.user("u1", &[]).await?;
    connected(&mut c).await?;
    for bad in ["not json", "{}", r#"{"type":"bogus"}"#, r#"{"type":"subscribe","channels":"x"}"#, "[1,2]"] {
        c.send_text(bad).await?;
        let e = next_error(&mut c).await?;
        assert_eq!(e.code, ErrorCode::BadRequest, "{bad}: {e:?}");
    }
    // A malformed frame whose id can be read is answered on that id.
    c.send_text(r#"{"type":"request","id":"r1"}"#).await?;
    assert_eq!(response(&mut c, "r1").await?.map_err(|e| e.code), Err(ErrorCode::BadRequest));
    // Binary on a JSON connection is the wrong kind.
    c.send_raw(Message::Binary(bytes::Bytes::from_static(b"\x81\xa4type\xa4ping"))).await?;
    assert_eq!(next_error(&mut c).await?.code, ErrorCode::BadRequest);
    // Still fine.
    let r = subscribe(&mut c, "s1", &["broadcast:x"], None).await?;
    assert_eq!(r["subscribed"], json!(["broadcast:x"]));
    node.stop().await
}

#[tokio::test]
async fn repeated_protocol_errors_close_4000() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.limits.max_protocol_errors = 4;
    let node = TestNode::start(cfg).await?;
    let mut c = node.user("u1", &[]).await?;
    connected(&mut c).await?;
    for _ in 0..3 {
        c.send_text("garbage").await?;
        assert_eq!(next_error(&mut c).await?.code, ErrorCode::BadRequest);
    }
    c.send_text("garbage").await?;
    let notice = c
        .recv_until(WAIT, |r| match r {
            Received::Frame(ServerFrame::Disconnecting { reason, reconnect }) => Some((*reason, *reconnect)),
            _ => None,
        })
        .await?;
    assert_eq!(notice, (DisconnectReason::ProtocolErrors, false));
    assert_eq!(c.closed(WAIT).await?, Some(4000));
    node.stop().await
}

#[tokio::test]
async fn oversize_frames_close_1009() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.limits.max_frame_bytes = 1024;
    let node = TestNode::start(cfg).await?;
    let mut c = node.user("u1", &[]).await?;
    connected(&mut c).await?;
    // Just under the limit is fine.
    let fits = json!({"type": "send", "id": "m1", "event": "e", "data": "x".repeat(900)}).to_string();
    assert!(fits.len() <= 1024);
    c.send_text(&fits).await?;
    assert_eq!(c.recv_timeout(WAIT).await?, Received::Frame(ServerFrame::Ack { id: "m1".into() }));
    let big = json!({"type": "send", "id": "m2", "event": "e", "data": "x".repeat(2000)}).to_string();
    c.send_text(&big).await?;
    assert_eq!(c.closed(WAIT).await?, Some(1009));

    // Before authentication too.
    let mut anon = Client::connect(Connect::new(node.ws(""))).await?;
    anon.send_text(&json!({"type": "authenticate", "token": "x".repeat(4000)}).to_string()).await?;
    assert_eq!(anon.closed(WAIT).await?, Some(1009));
    // Both connections are gone from the node.
    eventually(WAIT, || async { node.health().await.ok().filter(|h| h["websocket"]["connections"] == 0) }).await?;
    node.stop().await
}
