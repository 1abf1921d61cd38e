//! A seed-001 dashboard: a user JWT from a callback (asked again on every reconnect and
//! before `exp`), `agent:status` on `broadcast:agents`, and a refetch when a reconnect
//! could not recover what was missed.
//!
//! ```sh
//! GATEWAY_URL=ws://127.0.0.1:8080/ws GATEWAY_TOKEN=$(gateway token --sub alice --ttl 1h) \
//!   cargo run -p gateway-client --example dashboard -- broadcast:agents project:p1
//! ```

use std::collections::BTreeMap;

use futures_util::StreamExt;
use gateway_client::{Gateway, Notice};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("GATEWAY_URL").unwrap_or("ws://127.0.0.1:8080/ws".into());
    let mut channels: Vec<String> = std::env::args().skip(1).collect();
    if channels.is_empty() {
        channels.push("broadcast:agents".into());
    }
    // A real dashboard asks its auth service here; this one re-reads the environment.
    let gw = Gateway::builder(url)
        .token_source(|| async { std::env::var("GATEWAY_TOKEN").map_err(|_| "set GATEWAY_TOKEN to a user JWT") })
        .start()?;
    let mut events = gw.events();
    let mut notices = gw.notices();
    for ch in &channels {
        gw.subscribe(ch).await?;
    }
    let mut agents: BTreeMap<String, String> = BTreeMap::new();
    loop {
        tokio::select! {
            Some(ev) = events.next() => {
                if ev.event == "agent:status" {
                    let id = ev.data["agentId"].as_str().unwrap_or("?").to_owned();
                    agents.insert(id, ev.data["status"].as_str().unwrap_or("?").to_owned());
                    eprintln!("agents: {agents:?}");
                } else {
                    eprintln!("{} {} {}", ev.channel, ev.event, ev.data);
                }
            }
            Some(n) = notices.next() => match n {
                Notice::Recovered { channel, recovered: false } => eprintln!("{channel}: events may be missed; refetch its state"),
                other => eprintln!("notice: {other:?}"),
            },
            stop = gw.stopped() => {
                eprintln!("stopped: {stop}");
                return Ok(());
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    gw.close().await;
    Ok(())
}
