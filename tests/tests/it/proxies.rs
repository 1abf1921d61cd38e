//! The client address behind proxies (`http.trusted_proxies`) and the handshake rate per
//! address (`limits.handshakes_per_ip_per_sec`): `X-Forwarded-For` from an untrusted
//! peer is ignored, from a trusted one the per-IP cap counts the forwarded client (the
//! rightmost untrusted hop, whatever a client wrote to its left), trusted proxies are
//! not held to `pending_per_ip`, and a handshake flood from one address gets 429 with
//! `Retry-After` while another address is unaffected.

use std::time::Duration;

use gateway::Config;
use gateway_client::{Client, Connect};
use gateway_tests::node::{TestNode, WAIT, connected, refusal, test_config, user_token};
use serde_json::Value;
use tokio::{io::AsyncReadExt, net::TcpStream};

const LONG: Duration = Duration::from_secs(300);

fn config(trusted: &[&str]) -> Config {
    let mut cfg = test_config();
    cfg.http.trusted_proxies = trusted.iter().map(|s| s.to_string()).collect();
    cfg
}

/// A connection for user `sub` whose request says it was forwarded for `xff`.
async fn via(node: &TestNode, sub: &str, xff: &str) -> Result<Client, gateway_client::ClientError> {
    let token = user_token(sub, &[], &[], LONG);
    Client::connect(Connect::new(node.ws("")).bearer(&token).header("X-Forwarded-For", xff)).await
}

/// Asserts a connection opened (and keeps it open).
async fn opened(r: Result<Client, gateway_client::ClientError>) -> anyhow::Result<Client> {
    let mut c = r?;
    connected(&mut c).await?;
    Ok(c)
}

/// Asserts the per-IP cap refused a handshake.
fn over_cap(r: Result<Client, gateway_client::ClientError>) -> anyhow::Result<()> {
    let (status, body) = refusal(r)?;
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")), "{body}");
    Ok(())
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() -> anyhow::Result<()> {
    // The loopback peer is not trusted (the default: no trusted proxies).
    let mut cfg = config(&[]);
    cfg.limits.per_ip = 1;
    let node = TestNode::start(cfg).await?;
    let first = opened(via(&node, "u1", "203.0.113.1").await).await?;
    // Another forwarded address changes nothing: the cap applies to the TCP peer.
    over_cap(via(&node, "u2", "203.0.113.2").await)?;
    drop(first);
    // Trusting another network does not make the loopback peer trusted either.
    let mut cfg = config(&["10.0.0.0/8"]);
    cfg.limits.per_ip = 1;
    let other = TestNode::start(cfg).await?;
    let first = opened(via(&other, "u1", "203.0.113.1").await).await?;
    over_cap(via(&other, "u2", "203.0.113.2").await)?;
    drop(first);
    other.stop().await?;
    node.stop().await
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_cap_counts_forwarded_clients() -> anyhow::Result<()> {
    let mut cfg = config(&["127.0.0.1/32", "10.0.0.0/8"]);
    cfg.limits.per_ip = 1;
    let node = TestNode::start(cfg).await?;
    // Two clients behind the same proxy are both admitted past a cap of 1 each …
    let a = opened(via(&node, "u1", "203.0.113.1").await).await?;
    let b = opened(via(&node, "u2", "203.0.113.2").await).await?;
    // … and each is held to it.
    over_cap(via(&node, "u3", "203.0.113.1").await)?;
    // Spoofed hops: whatever the client wrote left of the address the trusted proxies
    // appended does not make it another client.
    over_cap(via(&node, "u3", "198.51.100.66, 203.0.113.1").await)?;
    over_cap(via(&node, "u3", "198.51.100.66, 203.0.113.1, 10.1.2.3").await)?;
    over_cap(via(&node, "u3", "not-an-ip, 203.0.113.2").await)?;
    // The rightmost untrusted hop is a new client here: admitted.
    let c = opened(via(&node, "u4", "203.0.113.1, 203.0.113.3").await).await?;
    // No header from the trusted peer: the peer itself is the client.
    let d = opened(Client::connect(Connect::new(node.ws("")).bearer(&user_token("u5", &[], &[], LONG))).await).await?;
    let health = node.health().await?;
    assert_eq!(health["websocket"]["trackedIps"], 4, "{health}");
    drop((a, b, c, d));
    node.stop().await
}

/// Whether the server answered a fresh idle socket at once (a pending-cap refusal).
async fn answered_at_once(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
}

#[tokio::test]
async fn trusted_proxies_are_not_held_to_pending_per_ip() -> anyhow::Result<()> {
    for (trusted, refused) in [(&[][..], true), (&["127.0.0.1"][..], false)] {
        let mut cfg = config(trusted);
        cfg.limits.pending_per_ip = 2;
        let node = TestNode::start(cfg).await?;
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(TcpStream::connect(node.addr).await?);
        }
        let mut any_refused = false;
        for s in &mut idle {
            any_refused |= answered_at_once(s).await;
        }
        assert_eq!(any_refused, refused, "trusted {trusted:?}");
        drop(idle);
        node.stop().await?;
    }
    Ok(())
}

/// A WebSocket handshake with a bad API key from `xff` (through the trusted loopback
/// peer): (status, Retry-After, body).
async fn handshake(http: &reqwest::Client, node: &TestNode, xff: &str) -> anyhow::Result<(u16, Option<u64>, Value)> {
    let r = http
        .get(node.http("/ws"))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("X-API-Key", "not-a-known-key")
        .header("X-Forwarded-For", xff)
        .timeout(WAIT)
        .send()
        .await?;
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
    Ok((status, retry, r.json().await.unwrap_or(Value::Null)))
}

#[tokio::test]
async fn a_handshake_flood_from_one_address_gets_429_with_retry_after() -> anyhow::Result<()> {
    let mut cfg = config(&["127.0.0.1/32"]);
    (cfg.limits.handshakes_per_ip_per_sec, cfg.limits.handshakes_per_ip_burst) = (5, 10);
    let node = TestNode::start(cfg).await?;
    let http = reqwest::Client::new();
    // 60 handshakes from one address as fast as they go: the burst passes the rate
    // check (and fails on the key: 401), the rest get 429.
    let started = tokio::time::Instant::now();
    let (mut passed, mut limited) = (0u32, 0u32);
    for _ in 0..60 {
        let (status, retry, body) = handshake(&http, &node, "203.0.113.1").await?;
        match status {
            401 => passed += 1,
            429 => {
                limited += 1;
                assert_eq!(body["code"], "rate_limited", "{body}");
                assert!(body["message"].as_str().is_some_and(|m| m.contains("handshakes")), "{body}");
                let ms = body["retryAfterMs"].as_u64().unwrap_or(0);
                assert!((1..=1_000).contains(&ms), "{body}");
                assert_eq!(retry, Some(1), "Retry-After in whole seconds, rounded up");
            }
            other => anyhow::bail!("unexpected {other}: {body}"),
        }
    }
    let elapsed = started.elapsed();
    // Burst 10, plus 5/s refill over the flood's duration.
    let allowed = 10 + (elapsed.as_secs_f64() * 5.0).ceil() as u32;
    eprintln!("60 handshakes in {elapsed:?}: {passed} past the rate check, {limited} refused with 429");
    assert!(passed >= 10 && passed <= allowed, "{passed} passed, {allowed} allowed");
    // Another address is unaffected, the flooding one recovers after Retry-After.
    assert_eq!(handshake(&http, &node, "203.0.113.2").await?.0, 401);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(handshake(&http, &node, "203.0.113.1").await?.0, 401);
    // The refusals are counted under their own reason.
    let metrics = reqwest::get(node.http("/metrics")).await?.text().await?;
    assert!(metrics.lines().any(|l| l.contains("reason=\"handshake_rate\"")), "no handshake_rate refusals counted");
    node.stop().await
}

#[tokio::test]
async fn socketio_handshakes_share_the_rate_and_the_client_address() -> anyhow::Result<()> {
    let mut cfg = config(&["127.0.0.1/32"]);
    (cfg.limits.handshakes_per_ip_per_sec, cfg.limits.handshakes_per_ip_burst) = (1, 3);
    let node = TestNode::start(cfg).await?;
    let http = reqwest::Client::new();
    let open = |xff: &'static str| {
        http.get(node.http("/socket.io/?EIO=4&transport=polling")).header("X-Forwarded-For", xff).timeout(WAIT).send()
    };
    // A native handshake and Engine.IO opens draw on the same bucket of the address.
    assert_eq!(handshake(&http, &node, "203.0.113.1").await?.0, 401);
    for _ in 0..2 {
        assert_eq!(open("203.0.113.1").await?.status().as_u16(), 200);
    }
    let r = open("203.0.113.1").await?;
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(open("203.0.113.2").await?.status().as_u16(), 200);
    node.stop().await
}
