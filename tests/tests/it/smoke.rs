//! The smallest end-to-end path: connect, subscribe, receive an HTTP publish.

use std::time::Duration;

use gateway_client::Received;
use gateway_protocol::ServerFrame;
use gateway_tests::node::TestNode;
use serde_json::json;

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn connect_and_receive_a_publish() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let mut c = node.user("u1", &["p1"]).await?;
    let first = c.recv_timeout(T).await?;
    assert!(matches!(first, Received::Frame(ServerFrame::Connected { .. })), "{first:?}");
    let (status, body) = node.publish("user:u1", "hello", json!({"x": 1})).await?;
    assert_eq!(status, 202, "{body}");
    let ev = c
        .recv_until(T, |r| match r {
            Received::Frame(ServerFrame::Event(e)) => Some(e.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(ev.event, "hello");
    assert_eq!(ev.data, json!({"x": 1}));
    assert_eq!(ev.id, body["id"].as_str().unwrap_or_default());
    node.stop().await
}
