//! temp
#![allow(missing_docs)]
use fred::prelude::*;
use gateway_tests::servers::RedisServer;
use std::time::{Duration, Instant};

#[tokio::test]
async fn dbg() -> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let client = gateway::presence::redis::open_client(&redis.url).await.map_err(anyhow::Error::msg)?;
    redis.stop().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    for _ in 0..3 {
        let t = Instant::now();
        let st = client.state();
        let r: Result<String, _> = client.with_options(&gateway::presence::redis::command_options()).ping(None).await;
        eprintln!("state {st:?} ping {:?} {r:?}", t.elapsed());
        let t = Instant::now();
        let r: Result<i64, _> = client
            .with_options(&gateway::presence::redis::command_options())
            .evalsha("abc", Vec::<String>::new(), Vec::<String>::new())
            .await;
        eprintln!("evalsha {:?} {r:?}", t.elapsed());
    }
    Ok(())
}
