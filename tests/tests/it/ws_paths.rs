//! Seed clients unchanged (contract §12): every `ws_paths` entry accepts the WebSocket
//! upgrade, so `ws_paths = ["/ws", "/"]` serves seed 001's `ws://host:3000?token=…`;
//! other paths stay 404; `/health`'s `timestamp` is an ISO 8601 string.

use std::time::Duration;

use anyhow::ensure;
use gateway_client::{Client, Connect, Received};
use gateway_protocol::Encoding;
use gateway_tests::node::{TestNode, WAIT, refusal, test_config, user_token};

#[tokio::test]
async fn every_listed_path_upgrades_and_others_are_not_found() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.ws_paths = vec!["/ws".into(), "/".into()];
    let node = TestNode::start(cfg).await?;
    let token = user_token("u1", &[], &[], Duration::from_secs(300));
    // Seed 001: `new WebSocket(`ws://localhost:3000?token=${token}`)`: browsers and the
    // `ws` package send that empty path as `/`.
    let (bare, ws) =
        (format!("ws://{}/?token={token}&format=flat", node.addr), node.ws(&format!("?token={token}&format=flat")));
    for url in [bare, ws] {
        let mut c = Client::connect(Connect::new(&url).format(Encoding::Flat)).await?;
        let hello = c.recv_timeout(WAIT).await?;
        ensure!(matches!(&hello, Received::Flat(v) if v["type"] == "connected"), "{url}: {hello:?}");
    }
    let (status, body) =
        refusal(Client::connect(Connect::new(format!("ws://{}/other", node.addr)).bearer(&token)).await)?;
    ensure!(status == 404 && body["code"] == "not_found", "{status} {body}");
    // The node's own endpoints are unchanged.
    ensure!(reqwest::get(node.http("/ready")).await?.status() == 200);

    // By default only `/ws` upgrades.
    let plain = TestNode::embedded().await?;
    let (status, _) = refusal(Client::connect(Connect::new(format!("ws://{}/", plain.addr)).bearer(&token)).await)?;
    ensure!(status == 404, "{status}");
    Ok(())
}

#[tokio::test]
async fn health_timestamp_is_iso_8601_utc_with_ms() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let before = gateway_protocol::now_ms();
    let h = node.health().await?;
    let after = gateway_protocol::now_ms();
    let ts = h["timestamp"].as_str().unwrap_or_default();
    // e.g. 2026-02-05T21:50:00.000Z: the shape of seed 001's `new Date().toISOString()`.
    let shape: Vec<bool> = ts.bytes().map(|b| b.is_ascii_digit()).collect();
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22];
    ensure!(ts.len() == 24 && digits.iter().all(|&i| shape[i]), "{h}");
    ensure!(&ts[4..5] == "-" && &ts[10..11] == "T" && &ts[19..20] == "." && ts.ends_with('Z'), "{h}");
    let (lo, hi) = (gateway_protocol::iso8601(before), gateway_protocol::iso8601(after));
    ensure!(lo.as_str() <= ts && ts <= hi.as_str(), "{ts} not within [{lo}, {hi}]");
    ensure!(h["status"] == "ok" && h["websocket"]["connections"] == 0, "{h}");
    Ok(())
}
