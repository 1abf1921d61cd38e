//! Connection lifecycle over in-memory channels instead of sockets, on paused time: the
//! auth timeout, token expiry, a dead peer's heartbeat timeout, and a stalled writer.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::Message;
use futures_util::{Sink, Stream, sink, stream};
use gateway_protocol::{Encoding, Principal, PrincipalKind};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::{
    admission::Admission,
    driver::{Start, serve},
};
use crate::{auth::Identity, auth::Projects, config::Config, node::Node, server::build, shutdown::Shutdown};

type Incoming = Result<Message, std::io::Error>;

async fn node(cfg: Config) -> Arc<Node> {
    build(Arc::new(cfg), &TaskTracker::new(), &Shutdown::new()).await.unwrap()
}

/// A socket whose client side the test holds: `to_server` feeds frames, `from_server` reads them.
fn socket() -> (
    impl Sink<Message> + Unpin + Send,
    impl Stream<Item = Incoming> + Unpin + Send,
    mpsc::Sender<Incoming>,
    mpsc::Receiver<Message>,
) {
    let (out_tx, out_rx) = mpsc::channel::<Message>(1024);
    let (in_tx, in_rx) = mpsc::channel::<Incoming>(16);
    let sink = Box::pin(sink::unfold(out_tx, |tx, m: Message| async move {
        tx.send(m).await.map(|_| tx).map_err(|_| std::io::Error::other("closed"))
    }));
    let stream = Box::pin(stream::unfold(in_rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) }));
    (sink, stream, in_tx, out_rx)
}

fn user(id: &str, expires_at_ms: Option<u64>) -> Identity {
    Identity {
        principal: Principal { kind: PrincipalKind::User, id: id.into() },
        projects: Projects::All,
        admin: false,
        expires_at_ms,
    }
}

async fn start(node: &Arc<Node>, identity: Option<Identity>) -> Start {
    let connection_id: Arc<str> = "c1".into();
    let authenticated = match identity {
        Some(id) => Some((Admission::take(node, connection_id.clone(), &id.principal).await.unwrap(), id)),
        None => None,
    }
    .map(|(a, i)| (i, a));
    Start { connection_id, encoding: Encoding::Json, authenticated, subscribe: vec![], socket: None }
}

fn close_code(m: &Message) -> Option<u16> {
    match m {
        Message::Close(Some(f)) => Some(f.code),
        _ => None,
    }
}

async fn drain_until_close(rx: &mut mpsc::Receiver<Message>) -> (Vec<String>, Option<u16>) {
    let mut texts = Vec::new();
    while let Some(m) = rx.recv().await {
        if let Some(code) = close_code(&m) {
            return (texts, Some(code));
        }
        if let Message::Text(t) = m {
            texts.push(t.to_string());
        }
    }
    (texts, None)
}

#[tokio::test(start_paused = true)]
async fn no_authenticate_within_the_timeout_closes_4001() {
    let node = node(Config::default()).await;
    let (sink, stream, _in, mut out) = socket();
    let s = start(&node, None).await;
    let task = tokio::spawn(serve(sink, stream, node.clone(), s));
    let (_, code) = drain_until_close(&mut out).await;
    assert_eq!(code, Some(4001));
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn expiring_token_gets_notice_then_4002() {
    let node = node(Config::default()).await;
    let (sink, stream, _in, mut out) = socket();
    let s = start(&node, Some(user("u1", Some(gateway_protocol::now_ms() + 3_000)))).await;
    let task = tokio::spawn(serve(sink, stream, node.clone(), s));
    let (texts, code) = drain_until_close(&mut out).await;
    assert_eq!(code, Some(4002));
    assert!(texts.first().is_some_and(|t| t.contains("\"connected\"")), "{texts:?}");
    assert!(texts.last().is_some_and(|t| t.contains("token_expired")), "{texts:?}");
    task.await.unwrap();
    assert_eq!(node.hub.stats().connections, 0);
}

#[tokio::test(start_paused = true)]
async fn dead_peer_is_dropped_after_ping_timeout() {
    let mut cfg = Config::default();
    cfg.heartbeat.interval_ms = 1_000;
    cfg.heartbeat.timeout_ms = 500;
    let node = node(cfg).await;
    let (sink, stream, _in, mut out) = socket();
    let s = start(&node, Some(user("u1", None))).await;
    let task = tokio::spawn(serve(sink, stream, node.clone(), s));
    let mut pings = 0;
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = out.recv().await {
            if matches!(m, Message::Ping(_)) {
                pings += 1;
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "the connection should end");
    assert!(pings >= 1);
    task.await.unwrap();
    assert_eq!(node.hub.stats(), crate::hub::HubStats::default());
}

#[tokio::test(start_paused = true)]
async fn stalled_writer_is_closed_as_slow_consumer() {
    let mut cfg = Config::default();
    cfg.limits.outbound_queue_frames = 4;
    let node = node(cfg).await;
    // A sink that never completes a write: the peer's buffers are full.
    let stalled = Box::pin(sink::unfold((), |(), _m: Message| std::future::pending::<Result<(), std::io::Error>>()));
    let (_in_tx, in_rx) = mpsc::channel::<Incoming>(1);
    let stream = Box::pin(stream::unfold(in_rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) }));
    let s = start(&node, Some(user("u1", None))).await;
    let task = tokio::spawn(serve(stalled, stream, node.clone(), s));
    let ch = gateway_protocol::Channel::parse("user:u1").unwrap();
    crate::node::tests_support::wait_subscribed(&node, &ch).await;
    for i in 0..20 {
        node.hub.deliver(node.new_event(
            ch.clone(),
            gateway_protocol::EventName::parse(format!("e{i}")).unwrap(),
            serde_json::json!(i),
        ));
    }
    tokio::time::timeout(Duration::from_secs(30), task).await.expect("closed").unwrap();
    assert_eq!(node.hub.stats().connections, 0);
}

#[tokio::test(start_paused = true)]
async fn in_band_authenticate_then_frames() {
    let cfg = Config { jwt_secret: "unit-secret-unit-secret".into(), ..Config::default() };
    let node = node(cfg).await;
    let (sink, stream, input, mut out) = socket();
    let s = start(&node, None).await;
    let task = tokio::spawn(serve(sink, stream, node.clone(), s));
    input.send(Ok(Message::Text(r#"{"type":"subscribe","channels":["user:u1"]}"#.into()))).await.unwrap();
    let spec = crate::auth::TokenSpec { sub: "u1".into(), ttl: Duration::from_secs(60), ..Default::default() };
    let token = crate::auth::mint_user_token("unit-secret-unit-secret", &spec).unwrap();
    input.send(Ok(Message::Text(format!(r#"{{"type":"authenticate","token":"{token}"}}"#).into()))).await.unwrap();
    input.send(Ok(Message::Text(r#"{"type":"ping"}"#.into()))).await.unwrap();
    let mut seen = Vec::new();
    while let Some(Message::Text(t)) = out.recv().await {
        let done = t.contains("\"pong\"");
        seen.push(t.to_string());
        if done {
            break;
        }
    }
    assert!(seen[0].contains("authenticate first"), "{seen:?}");
    assert!(seen[1].contains("\"connected\""), "{seen:?}");
    drop(input);
    task.await.unwrap();
}

#[tokio::test]
async fn a_session_dropped_without_finish_leaves_no_ghost() {
    let node = node(Config { jwt_secret: "unit-secret-unit-secret".into(), ..Config::default() }).await;
    let id = user("u9", None);
    let admission = Admission::take(&node, "c9".into(), &id.principal).await.unwrap();
    let (handle, _outbox) = crate::conn::handle::ConnHandle::new(
        node.next_conn_id(),
        "c9".into(),
        id.principal.clone(),
        Encoding::Json,
        8,
        1 << 16,
    );
    node.membership.register(&handle);
    let mut session = crate::conn::session::Session::new(node.clone(), handle, id, admission);
    let (joined, _, _) = session.subscribe(&["user:u9".into(), "project:p1".into()], None, &Default::default()).await;
    assert_eq!(joined.len(), 2);
    assert_eq!(node.hub.stats().subscriptions, 2);
    drop(session); // as a panic or a dropped task would
    assert_eq!(node.hub.stats(), crate::hub::HubStats::default());
    let ch = gateway_protocol::Channel::parse("project:p1").unwrap();
    for _ in 0..100 {
        if node.presence.members(&ch).await.unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("presence entry left behind");
}
