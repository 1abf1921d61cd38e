//! The real binary under signals: SIGTERM drains and exits 0; a second SIGTERM during the
//! drain exits at once.

use std::time::{Duration, Instant};

use gateway_client::{Client, Connect};
use gateway_tests::node::{ProcessNode, connected, user_token};

#[tokio::test]
async fn sigterm_drains_then_exits_cleanly() -> anyhow::Result<()> {
    let mut node = ProcessNode::start(&[
        ("GATEWAY_DRAIN__DELAY_MS", "200".into()),
        ("GATEWAY_DRAIN__PERIOD_MS", "300".into()),
        ("GATEWAY_DRAIN__DEADLINE_MS", "5000".into()),
    ])
    .await?;
    let t = user_token("u1", &[], &[], Duration::from_secs(60));
    let mut c = Client::connect(Connect::new(node.ws("")).bearer(&t)).await?;
    connected(&mut c).await?;
    node.sigterm()?;
    assert_eq!(c.closed(Duration::from_secs(5)).await?, Some(1001));
    assert_eq!(node.wait(Duration::from_secs(10)).await?, Some(0));
    Ok(())
}

#[tokio::test]
async fn a_second_signal_exits_at_once() -> anyhow::Result<()> {
    let mut node = ProcessNode::start(&[
        ("GATEWAY_DRAIN__DELAY_MS", "20000".into()),
        ("GATEWAY_DRAIN__PERIOD_MS", "1000".into()),
        ("GATEWAY_DRAIN__DEADLINE_MS", "30000".into()),
    ])
    .await?;
    let t = user_token("u1", &[], &[], Duration::from_secs(60));
    let mut c = Client::connect(Connect::new(node.ws("")).bearer(&t)).await?;
    connected(&mut c).await?;
    node.sigterm()?;
    // Draining: not ready, the connection still open.
    gateway_tests::node::eventually(Duration::from_secs(5), || async {
        let r = reqwest::get(node.http("/ready")).await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await?;
    let second = Instant::now();
    node.sigterm()?;
    assert_eq!(node.wait(Duration::from_secs(5)).await?, Some(130));
    assert!(second.elapsed() < Duration::from_secs(3), "took {:?}", second.elapsed());
    Ok(())
}
