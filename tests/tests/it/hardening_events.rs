//! What may be published, from every source (issue 12, points 3, 4, 6, 7): the event-name
//! grammar and the gateway's reserved names, the nesting bound, the encoded-size bound
//! (refused at the source, never at the subscribers), and the admin API checking its key
//! before it reads a body. Embedded nodes, plus a NATS-backed pair for backend inputs.

use std::time::Duration;

use gateway::{Config, config::SessionPolicy};
use gateway_client::Message;
use gateway_client::{Client, Connect, Received};
use gateway_protocol::{ClientFrame, Encoding, ErrorCode, ServerFrame};
use gateway_tests::{
    node::{
        ADMIN_KEY, TestNode, WAIT, assert_no_app_event, connected, next_app_event, response, subscribe, test_config,
        user_token,
    },
    servers::{NatsServer, RedisServer},
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn open_sessions() -> Config {
    let mut cfg = test_config();
    cfg.channels.session_policy = SessionPolicy::Authenticated;
    // These tests send bursts on purpose; the frame rate limit is not what they test.
    (cfg.rate.per_second, cfg.rate.burst, cfg.rate.per_minute) = (1_000, 1_000, 100_000);
    cfg
}

async fn client(node: &TestNode, sub: &str, encoding: Encoding) -> anyhow::Result<Client> {
    let t = user_token(sub, &["p1"], &[], Duration::from_secs(300));
    let mut c = Client::connect(Connect::new(node.ws("")).bearer(&t).encoding(encoding)).await?;
    connected(&mut c).await?;
    Ok(c)
}

async fn joined(node: &TestNode, sub: &str, encoding: Encoding, ch: &str) -> anyhow::Result<Client> {
    let mut c = client(node, sub, encoding).await?;
    subscribe(&mut c, "j", &[ch], None).await?;
    Ok(c)
}

/// A flat-shape subscriber (flat clients join at connect, with `?subscribe=`).
async fn flat_on(node: &TestNode, sub: &str, ch: &str) -> anyhow::Result<Client> {
    let t = user_token(sub, &["p1"], &[], Duration::from_secs(300));
    let url = node.ws(&format!("?subscribe={ch}"));
    let mut c = Client::connect(Connect::new(url).bearer(&t).encoding(Encoding::Flat)).await?;
    c.recv_until(WAIT, |r| matches!(r, Received::Flat(v) if v["type"] == "connected").then_some(())).await?;
    Ok(c)
}

/// Waits for the `ack` of frame `id` (a refusal fails the test).
async fn acked(c: &mut Client, id: &str) -> anyhow::Result<()> {
    let got = c
        .recv_until(WAIT, |r| match r {
            Received::Frame(ServerFrame::Ack { id: got }) if got == id => Some(Ok(())),
            Received::Frame(ServerFrame::Response { id: got, error: Some(e), .. }) if got == id => Some(Err(e.clone())),
            _ => None,
        })
        .await?;
    got.map_err(|e| anyhow::anyhow!("{id} refused: {e:?}"))
}

fn publish(id: &str, channel: &str, event: &'static str, data: Value) -> ClientFrame {
    ClientFrame::Publish { id: Some(id.into()), channel: channel.into(), event: event.into(), data }
}

/// A MessagePack `publish` frame whose data is `depth` nested one-element arrays, written
/// byte by byte (building it as a value would recurse as deep as the nesting).
fn msgpack_publish(id: &str, depth: usize) -> Vec<u8> {
    let mut out = vec![0x85];
    for (k, v) in [("type", "publish"), ("id", id), ("channel", "session:x"), ("event", "deep")] {
        for s in [k, v] {
            out.push(0xa0 | s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
    }
    out.push(0xa4);
    out.extend_from_slice(b"data");
    out.extend(std::iter::repeat_n(0x91, depth));
    out.push(0x00);
    out
}

fn nested(depth: usize) -> Value {
    let mut v = json!(0);
    for _ in 0..depth {
        v = json!([v]);
    }
    v
}

/// A MessagePack string of control bytes weighs six times as much in JSON (`\u0001`).
/// Refused at the publisher; the JSON subscribers keep their connection and their queue.
#[tokio::test]
async fn expanding_events_are_refused_at_the_source() -> anyhow::Result<()> {
    let node = TestNode::start(open_sessions()).await?;
    let mut honest = joined(&node, "honest", Encoding::Json, "session:x").await?;
    let mut flat = flat_on(&node, "flat", "session:x").await?;
    let mut attacker = joined(&node, "attacker", Encoding::MsgPack, "session:x").await?;
    let payload = "\u{1}".repeat(60_000);
    for i in 0..30 {
        let id = format!("p{i}");
        attacker
            .send(&ClientFrame::Publish {
                id: Some(id.clone()),
                channel: "session:x".into(),
                event: "blob".into(),
                data: json!(payload),
            })
            .await?;
        let e = response(&mut attacker, &id).await?.err().map(|e| e.code);
        assert_eq!(e, Some(ErrorCode::TooLarge), "publish {i}");
    }
    // The same bytes as plain ASCII fit in every encoding and are delivered.
    attacker.send(&publish("ok", "session:x", "fine", json!("a".repeat(60_000)))).await?;
    acked(&mut attacker, "ok").await?;
    let e = next_app_event(&mut honest).await?;
    assert_eq!(e.event.as_str(), "fine", "the refused events never reached the subscriber");
    let f = flat
        .recv_until(WAIT, |r| match r {
            Received::Flat(v) if !v["type"].as_str().is_some_and(|t| t.starts_with("presence.")) => Some(v.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(f["type"], "fine", "{f}");
    node.stop().await
}

#[tokio::test]
async fn http_publish_is_bounded_and_checks_the_key_before_the_body() -> anyhow::Result<()> {
    let node = TestNode::start(open_sessions()).await?;
    let mut sub = joined(&node, "s", Encoding::Json, "session:x").await?;
    // A 2 MiB event: 413, and the subscriber is not closed.
    let (status, body) = node.publish("session:x", "big", json!("a".repeat(2 << 20))).await?;
    assert_eq!((status, body["code"].as_str()), (413, Some("too_large")), "{body}");
    // Small on the wire, large once re-encoded: 413 too.
    let (status, body) = node.publish("session:x", "big", json!("\u{1}".repeat(20_000))).await?;
    assert_eq!((status, body["code"].as_str()), (413, Some("too_large")), "{body}");
    let (status, _) = node.publish("session:x", "small", json!({"n": 1})).await?;
    assert_eq!(status, 202);
    assert_eq!(next_app_event(&mut sub).await?.event.as_str(), "small");

    // Without the key the answer comes before the body is sent: headers announcing 2 MB
    // and ten bytes of it get a 401 at once.
    let mut s = tokio::net::TcpStream::connect(node.addr).await?;
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n{{\"channel\"",
        node.addr
    );
    s.write_all(head.as_bytes()).await?;
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await??;
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // With a wrong key too.
    let r = reqwest::Client::new()
        .post(node.http("/api/publish"))
        .bearer_auth(format!("{ADMIN_KEY}-wrong"))
        .json(&json!({"channel": "session:x", "event": "e", "data": 1}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 401);
    node.stop().await
}

/// Event names have one grammar, and the gateway's own names are reserved in any case,
/// from clients and from the admin API alike. Flat events name their publisher.
#[tokio::test]
async fn event_names_have_one_grammar_and_reserved_names() -> anyhow::Result<()> {
    let node = TestNode::start(open_sessions()).await?;
    let mut flat = flat_on(&node, "flat", "session:x").await?;
    let mut c = joined(&node, "pub", Encoding::Json, "session:x").await?;
    let reserved = ["disconnecting", "connected", "error", "heartbeat", "ack", "PRESENCE.join", "Presence.leave"];
    for (i, name) in reserved.iter().enumerate() {
        let id = format!("r{i}");
        let frame = json!({"type": "publish", "id": id, "channel": "session:x", "event": name, "data": {}});
        c.send_text(&frame.to_string()).await?;
        assert_eq!(response(&mut c, &id).await?.err().map(|e| e.code), Some(ErrorCode::Forbidden), "{name}");
        let (status, body) = node.publish("session:x", name, json!({})).await?;
        assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{name}: {body}");
    }
    let long = "a".repeat(65);
    for (i, name) in ["<script>", "a\nb", "a b", "", long.as_str(), "é"].iter().enumerate() {
        let id = format!("b{i}");
        let frame = json!({"type": "publish", "id": id, "channel": "session:x", "event": name, "data": {}});
        c.send_text(&frame.to_string()).await?;
        assert_eq!(response(&mut c, &id).await?.err().map(|e| e.code), Some(ErrorCode::BadRequest), "{name:?}");
        let (status, body) = node.publish("session:x", name, json!({})).await?;
        assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "{name:?}: {body}");
    }
    // Nothing of that reached the flat subscriber; a valid event does, with `from`.
    c.send(&publish("ok", "session:x", "chat:message", json!({"text": "hi"}))).await?;
    acked(&mut c, "ok").await?;
    let v = flat
        .recv_until(WAIT, |r| match r {
            Received::Flat(v) if !v["type"].as_str().is_some_and(|t| t.starts_with("presence.")) => Some(v.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(v["type"], "chat:message", "{v}");
    assert_eq!(v["from"], json!({"kind": "user", "id": "pub"}), "{v}");
    node.stop().await
}

/// One nesting bound for every input, whatever the encoding could carry.
#[tokio::test]
async fn nesting_is_bounded_for_every_input() -> anyhow::Result<()> {
    let node = TestNode::start(open_sessions()).await?;
    let mut json_sub = joined(&node, "j", Encoding::Json, "session:x").await?;
    let mut mp = joined(&node, "m", Encoding::MsgPack, "session:x").await?;
    for (id, depth) in [("d60000", 60_000), ("d1000", 1000), ("d65", 65)] {
        mp.send_raw(Message::Binary(msgpack_publish(id, depth).into())).await?;
        // Too deep to read even the id without passing the bound: an `error` frame.
        let code = mp
            .recv_until(WAIT, |r| match r {
                Received::Frame(ServerFrame::Error { error }) => Some(error.code),
                Received::Frame(ServerFrame::Response { id: got, error: Some(e), .. }) if got == id => Some(e.code),
                _ => None,
            })
            .await?;
        assert_eq!(code, ErrorCode::BadRequest, "{id}");
    }
    let mut js = client(&node, "k", Encoding::Json).await?;
    let frame = json!({"type": "publish", "id": "j65", "channel": "session:x", "event": "deep", "data": nested(65)});
    js.send_text(&frame.to_string()).await?;
    assert_eq!(response(&mut js, "j65").await?.err().map(|e| e.code), Some(ErrorCode::BadRequest));
    let (status, body) = node.publish("session:x", "deep", nested(100)).await?;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "{body}");
    // At the bound it is delivered, and the connection that was refused still works.
    mp.send(&publish("d64", "session:x", "deep", nested(64))).await?;
    acked(&mut mp, "d64").await?;
    let e = next_app_event(&mut json_sub).await?;
    assert_eq!((e.event.as_str(), &e.data), ("deep", &nested(64)));
    node.stop().await
}

/// Backends' events on NATS pass the same screen: reserved names, too deep, too large
/// are dropped (and counted) on every node; the gateway's own presence events, signed by
/// the node that published them, still reach the other nodes.
#[tokio::test]
async fn nats_inputs_are_screened_and_presence_still_crosses_nodes() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let redis = RedisServer::start().await?;
    let mut cfg = open_sessions();
    cfg.nats_url = nats.url.clone();
    cfg.redis_url = redis.url.clone();
    let a = TestNode::start(cfg.clone()).await?;
    let b = TestNode::start(Config { node_id: format!("{}-b", cfg.node_id), ..cfg }).await?;
    let mut watcher = joined(&a, "watcher", Encoding::Json, "session:s1").await?;
    let backend = async_nats::connect(&nats.url).await?;
    let send = |body: Value| {
        let backend = backend.clone();
        async move {
            let bytes = serde_json::to_vec(&body)?;
            backend.publish("gw.ev.session.s1", bytes.into()).await?;
            backend.flush().await?;
            anyhow::Ok(())
        }
    };
    send(json!({"event": "presence.join", "data": {"kind": "user", "id": "ghost"}})).await?;
    send(json!({"event": "Connected", "data": {}})).await?;
    send(json!({"event": "deep", "data": nested(100)})).await?;
    send(json!({"event": "big", "data": "\u{1}".repeat(30_000)})).await?;
    send(json!({"event": "bad name", "data": {}})).await?;
    send(json!({"event": "after", "data": 1})).await?;
    let e = watcher
        .recv_until(WAIT, |r| match r {
            Received::Frame(ServerFrame::Event(e)) if e.data["id"] != "watcher" => Some(e.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(e.event.as_str(), "after", "the screened events were dropped: {e:?}");
    // A real join on node B reaches the watcher on node A, signature verified.
    let _member = joined(&b, "member", Encoding::Json, "session:s1").await?;
    let e = watcher
        .recv_until(WAIT, |r| match r {
            Received::Frame(ServerFrame::Event(e)) if e.event == "presence.join" => Some(e.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(e.data, json!({"kind": "user", "id": "member"}));
    assert_no_app_event(&mut watcher, Duration::from_millis(300)).await?;
    let metrics = reqwest::get(a.http("/metrics")).await?.text().await?;
    assert!(metrics.contains("gateway_events_refused_total{source=\"nats\",reason=\"reserved\"}"), "{metrics}");
    b.stop().await?;
    a.stop().await
}
