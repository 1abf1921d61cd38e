//! A seed-000 agent: connects with an API key (`X-API-Key`), reconnects with backoff,
//! handles `task:assigned` and reports `status:update`.
//!
//! ```sh
//! GATEWAY_URL=ws://127.0.0.1:8080/ws AGENT_KEY=key-agent-1 cargo run -p gateway-client --example agent
//! ```

use std::time::Duration;

use gateway_client::{Gateway, OverflowPolicy, State};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("GATEWAY_URL").ok())
        .unwrap_or("ws://127.0.0.1:8080/ws".into());
    let key = std::env::var("AGENT_KEY").map_err(|_| anyhow::anyhow!("set AGENT_KEY to the agent's API key"))?;

    let gw =
        Gateway::builder(url).api_key(key).max_retries(10).offline_queue(1000, OverflowPolicy::DropOldest).start()?;
    let g = gw.clone();
    gw.on("task:assigned", move |task| {
        let g = g.clone();
        async move {
            eprintln!("task assigned: {}", task.data);
            let id = task.data["id"].clone();
            if let Err(e) = g.send_status_update("busy", json!({ "currentTask": id, "progress": 0 })).await {
                eprintln!("status update failed: {e}");
            }
        }
    });
    let mut state = gw.state();
    tokio::spawn(async move {
        while state.changed().await.is_ok() {
            eprintln!("gateway: {:?}", *state.borrow_and_update());
        }
    });
    gw.connected().await?;
    gw.send_status_update("idle", serde_json::Value::Null).await?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        stop = gw.stopped() => eprintln!("stopped: {stop}"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), gw.close()).await;
    if let State::Stopped(stop) = &*gw.state().borrow() {
        eprintln!("bye ({stop})");
    }
    Ok(())
}
