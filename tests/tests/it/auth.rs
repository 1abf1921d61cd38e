//! Authentication at the handshake and in band (contract §1): every credential carrier,
//! every refusal with its HTTP status and `{"code","message"}` body, RS256/ES256 public
//! keys and algorithm confusion, the origin allow-list, the in-band `authenticate` phase
//! and its timeout, and a token that expires while connected (with and without `refresh`).

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, bail};
use gateway::auth::{TokenSpec, mint_user_token};
use gateway_client::{Client, Connect, Received};
use gateway_protocol::{ClientFrame, DisconnectReason, ErrorCode, PrincipalKind, ServerFrame, now_ms};
use gateway_tests::node::{
    AGENT_KEYS, SECRET, TestNode, WAIT, connected, next_error, refusal, response, subscribe, test_config, user_token,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(300);

/// Unpadded base64url, for hand-made tokens.
fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

/// Claims for user `sub` valid for `ttl_secs` (negative: already expired).
fn claims(sub: &str, ttl_secs: i64) -> Value {
    let exp = (now_ms() / 1000) as i64 + ttl_secs;
    json!({ "sub": sub, "exp": exp, "iat": now_ms() / 1000, "projects": ["p1"] })
}

/// Signs `claims` with `alg` and `key`.
fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(&Header::new(alg), claims, key)?)
}

/// A token with `"alg":"none"` and an empty or junk signature.
fn alg_none(claims: &Value, sig: &str) -> String {
    format!("{}.{}.{sig}", b64url(br#"{"alg":"none","typ":"JWT"}"#), b64url(claims.to_string().as_bytes()))
}

/// Connects and returns the principal of the `connected` frame.
async fn principal_of(c: Connect) -> anyhow::Result<(PrincipalKind, String)> {
    let mut client = Client::connect(c).await?;
    let first = client.recv_timeout(WAIT).await?;
    match first {
        Received::Frame(ServerFrame::Connected { principal, .. }) => Ok((principal.kind, principal.id)),
        other => bail!("expected connected, got {other:?}"),
    }
}

/// Asserts a handshake is refused with `status` and `code`, and a message.
async fn assert_refused(c: Connect, status: u16, code: &str) -> anyhow::Result<()> {
    let (got, body) = refusal(Client::connect(c).await)?;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    Ok(())
}

#[tokio::test]
async fn every_carrier_is_accepted() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let jwt = user_token("u1", &["p1"], &[], LONG);
    let (a1, a2, a3) = (AGENT_KEYS[0].1, AGENT_KEYS[1].1, AGENT_KEYS[2].1);
    let user = (PrincipalKind::User, "u1".to_string());
    let cases = [
        ("Authorization: Bearer <jwt>", Connect::new(node.ws("")).bearer(&jwt), user.clone()),
        ("?token=<jwt>", Connect::new(node.ws(&format!("?token={jwt}"))), user.clone()),
        ("Authorization: Bearer <key>", Connect::new(node.ws("")).bearer(a1), (PrincipalKind::Agent, "a1".into())),
        ("X-API-Key", Connect::new(node.ws("")).header("X-API-Key", a2), (PrincipalKind::Agent, "a2".into())),
        ("?apiKey=", Connect::new(node.ws(&format!("?apiKey={a3}"))), (PrincipalKind::Agent, "a3".into())),
    ];
    for (carrier, connect, want) in cases {
        let got = principal_of(connect).await.with_context(|| carrier.to_string())?;
        assert_eq!(got, want, "{carrier}");
    }
    node.stop().await
}

#[tokio::test]
async fn the_first_carrier_wins() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let good = user_token("u1", &[], &[], LONG);
    // A bad Authorization header is not rescued by a good ?token=.
    let c = Connect::new(node.ws(&format!("?token={good}"))).bearer("not-a-key-at-all");
    assert_refused(c, 401, "unauthorized").await?;
    // Authorization beats X-API-Key: the JWT's user, not the agent.
    let c = Connect::new(node.ws("")).bearer(&good).header("X-API-Key", AGENT_KEYS[0].1);
    assert_eq!(principal_of(c).await?, (PrincipalKind::User, "u1".into()));
    node.stop().await
}

#[tokio::test]
async fn bad_credentials_are_refused_before_the_upgrade() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let ws = node.ws("");
    let wrong_secret = mint_user_token(
        "some-other-secret-0123456789",
        &TokenSpec { sub: "u1".into(), ttl: LONG, ..TokenSpec::default() },
    )?;
    assert_refused(Connect::new(&ws).bearer(&wrong_secret), 401, "unauthorized").await?;
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    let expired = sign(Algorithm::HS256, &hs, &claims("u1", -30))?;
    assert_refused(Connect::new(&ws).bearer(&expired), 401, "token_expired").await?;
    assert_refused(Connect::new(node.ws(&format!("?token={expired}"))), 401, "token_expired").await?;
    // alg:none with and without a junk signature, and a tampered payload.
    assert_refused(Connect::new(&ws).bearer(&alg_none(&claims("u1", 60), "")), 401, "unauthorized").await?;
    assert_refused(Connect::new(&ws).bearer(&alg_none(&claims("u1", 60), "c2ln")), 401, "unauthorized").await?;
    let good = sign(Algorithm::HS256, &hs, &claims("u1", 60))?;
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged = b64url(claims("admin", 60).to_string().as_bytes());
    parts[1] = &forged;
    assert_refused(Connect::new(&ws).bearer(&parts.join(".")), 401, "unauthorized").await?;
    // Not yet valid, no sub, no exp.
    let mut early = claims("u1", 600);
    early["nbf"] = json!(now_ms() / 1000 + 300);
    assert_refused(Connect::new(&ws).bearer(&sign(Algorithm::HS256, &hs, &early)?), 401, "unauthorized").await?;
    let no_sub = json!({ "exp": now_ms() / 1000 + 60 });
    assert_refused(Connect::new(&ws).bearer(&sign(Algorithm::HS256, &hs, &no_sub)?), 401, "unauthorized").await?;
    let no_exp = json!({ "sub": "u1" });
    assert_refused(Connect::new(&ws).bearer(&sign(Algorithm::HS256, &hs, &no_exp)?), 401, "unauthorized").await?;
    // Unknown API keys on every key carrier; an empty bearer.
    assert_refused(Connect::new(&ws).bearer("key-unknown-0000"), 401, "unauthorized").await?;
    assert_refused(Connect::new(&ws).header("X-API-Key", "key-unknown-0000"), 401, "unauthorized").await?;
    assert_refused(Connect::new(node.ws("?apiKey=key-unknown-0000")), 401, "unauthorized").await?;
    assert_refused(Connect::new(&ws).header("Authorization", "Bearer "), 401, "unauthorized").await?;
    // Nothing was counted by the refusals.
    let h = node.health().await?;
    assert_eq!(h["websocket"]["connections"], 0, "{h}");
    assert_eq!(h["websocket"]["trackedIps"], 0, "{h}");
    node.stop().await
}

#[tokio::test]
async fn a_sub_that_cannot_name_a_user_channel_is_refused() -> anyhow::Result<()> {
    // Users are always subscribed to `user:<sub>`; a sub outside the channel-id alphabet
    // would silently get no user channel (and no backend could reach it).
    let node = TestNode::embedded().await?;
    for sub in ["alice@example.com", "auth0|123", "x".repeat(129).as_str()] {
        let t = user_token(sub, &[], &[], LONG);
        assert_refused(Connect::new(node.ws("")).bearer(&t), 401, "unauthorized").await?;
    }
    let ok = user_token("Alice_01-x", &[], &[], LONG);
    let mut c = Client::connect(Connect::new(node.ws("")).bearer(&ok)).await?;
    connected(&mut c).await?;
    c.send(&ClientFrame::Request { id: "r".into(), method: "channels.list".into(), params: Value::Null }).await?;
    let r = response(&mut c, "r").await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(r, json!({"channels": ["user:Alice_01-x"]}));
    node.stop().await
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.auth.jwt_audience = "gateway".into();
    cfg.auth.jwt_issuer = "https://id.example".into();
    let node = TestNode::start(cfg).await?;
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    let with = |aud: Option<Value>, iss: Option<&str>| {
        let mut c = claims("u1", 60);
        if let Some(a) = aud {
            c["aud"] = a;
        }
        if let Some(i) = iss {
            c["iss"] = json!(i);
        }
        sign(Algorithm::HS256, &hs, &c)
    };
    let ws = node.ws("");
    let ok = with(Some(json!("gateway")), Some("https://id.example"))?;
    assert_eq!(principal_of(Connect::new(&ws).bearer(&ok)).await?.1, "u1");
    // An audience list that includes ours is fine (RFC 7519 §4.1.3).
    let list = with(Some(json!(["other", "gateway"])), Some("https://id.example"))?;
    assert_eq!(principal_of(Connect::new(&ws).bearer(&list)).await?.1, "u1");
    let wrong_aud = with(Some(json!("another-service")), Some("https://id.example"))?;
    assert_refused(Connect::new(&ws).bearer(&wrong_aud), 401, "unauthorized").await?;
    let wrong_iss = with(Some(json!("gateway")), Some("https://evil.example"))?;
    assert_refused(Connect::new(&ws).bearer(&wrong_iss), 401, "unauthorized").await?;
    // A configured check cannot be skipped by leaving the claim out.
    let no_aud = with(None, Some("https://id.example"))?;
    assert_refused(Connect::new(&ws).bearer(&no_aud), 401, "unauthorized").await?;
    let no_iss = with(Some(json!("gateway")), None)?;
    assert_refused(Connect::new(&ws).bearer(&no_iss), 401, "unauthorized").await?;
    node.stop().await
}

/// Generates a key pair with the openssl CLI; returns (private PEM, public PEM path).
fn keypair(dir: &Path, name: &str, genpkey_args: &[&str]) -> anyhow::Result<(Vec<u8>, std::path::PathBuf)> {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let run = |cmd: &mut Command| -> anyhow::Result<()> {
        let out = cmd.output().context("run openssl")?;
        anyhow::ensure!(out.status.success(), "openssl failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    run(Command::new("openssl").arg("genpkey").args(genpkey_args).arg("-out").arg(&private))?;
    run(Command::new("openssl").arg("pkey").arg("-in").arg(&private).arg("-pubout").arg("-out").arg(&public))?;
    Ok((std::fs::read(&private)?, public))
}

#[tokio::test]
async fn public_key_algorithms_and_no_confusion() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (rsa_private, rsa_public) =
        keypair(dir.path(), "rsa", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])?;
    let (ec_private, ec_public) =
        keypair(dir.path(), "ec", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])?;
    let rsa = EncodingKey::from_rsa_pem(&rsa_private)?;
    let ec = EncodingKey::from_ec_pem(&ec_private)?;
    let rs256 = sign(Algorithm::RS256, &rsa, &claims("u-rsa", 60))?;
    let es256 = sign(Algorithm::ES256, &ec, &claims("u-ec", 60))?;
    let hs256 = sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), &claims("u-hs", 60))?;

    for (public, good, good_sub, other) in
        [(&rsa_public, &rs256, "u-rsa", &es256), (&ec_public, &es256, "u-ec", &rs256)]
    {
        let mut cfg = test_config();
        cfg.jwt_public_key = Some(public.clone());
        let node = TestNode::start(cfg).await?;
        let ws = node.ws("");
        assert_eq!(principal_of(Connect::new(&ws).bearer(good)).await?, (PrincipalKind::User, good_sub.into()));
        // The other asymmetric algorithm, and HS256 with the (still configured) secret.
        assert_refused(Connect::new(&ws).bearer(other), 401, "unauthorized").await?;
        assert_refused(Connect::new(&ws).bearer(&hs256), 401, "unauthorized").await?;
        // Algorithm confusion: HS256 "signed" with the public key PEM as the HMAC secret.
        let pem = std::fs::read(public)?;
        let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(&pem), &claims("u-evil", 60))?;
        assert_refused(Connect::new(&ws).bearer(&confused), 401, "unauthorized").await?;
        let pem_trimmed = String::from_utf8(pem)?;
        let confused =
            sign(Algorithm::HS256, &EncodingKey::from_secret(pem_trimmed.trim().as_bytes()), &claims("u-evil", 60))?;
        assert_refused(Connect::new(&ws).bearer(&confused), 401, "unauthorized").await?;
        assert_refused(Connect::new(&ws).bearer(&alg_none(&claims("u-evil", 60), "")), 401, "unauthorized").await?;
        // An expired token under the public key is `token_expired`.
        let key = if good_sub == "u-rsa" { (&rsa, Algorithm::RS256) } else { (&ec, Algorithm::ES256) };
        let expired = sign(key.1, key.0, &claims(good_sub, -30))?;
        assert_refused(Connect::new(&ws).bearer(&expired), 401, "token_expired").await?;
        node.stop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn forbidden_origin_is_403() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.allowed_origins = vec!["https://app.example".into()];
    let node = TestNode::start(cfg).await?;
    let jwt = user_token("u1", &[], &[], LONG);
    let evil = Connect::new(node.ws("")).bearer(&jwt).header("Origin", "https://evil.example");
    assert_refused(evil, 403, "forbidden").await?;
    let good = Connect::new(node.ws("")).bearer(&jwt).header("Origin", "https://app.example");
    assert_eq!(principal_of(good).await?.1, "u1");
    // Non-browser clients send no Origin.
    assert_eq!(principal_of(Connect::new(node.ws("")).bearer(&jwt)).await?.1, "u1");
    node.stop().await
}

#[tokio::test]
async fn in_band_authenticate() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let mut c = Client::connect(Connect::new(node.ws(""))).await?;
    // Before authenticating: ping is answered, anything else is refused and nothing is sent.
    c.send(&ClientFrame::Ping).await?;
    assert!(matches!(c.recv_timeout(WAIT).await?, Received::Frame(ServerFrame::Pong { .. })));
    c.send(&ClientFrame::Subscribe {
        id: Some("s0".into()),
        channels: vec!["broadcast:all".into()],
        token: None,
        recover: Default::default(),
    })
    .await?;
    let e = next_error(&mut c).await?;
    assert_eq!(e.code, ErrorCode::Unauthorized, "{e:?}");
    c.send(&ClientFrame::Authenticate { token: user_token("u1", &["p1"], &[], LONG) }).await?;
    let (_, who) = connected(&mut c).await?;
    assert_eq!(who, "u1");
    let r = subscribe(&mut c, "s1", &["project:p1"], None).await?;
    assert_eq!(r["subscribed"], json!(["project:p1"]), "{r}");
    // A second authenticate is a bad request, and the connection stays.
    c.send(&ClientFrame::Authenticate { token: "x".into() }).await?;
    assert_eq!(next_error(&mut c).await?.code, ErrorCode::BadRequest);
    c.send(&ClientFrame::Ping).await?;
    c.recv_until(WAIT, |r| matches!(r, Received::Frame(ServerFrame::Pong { .. })).then_some(())).await?;

    // An agent key works in band too.
    let mut a = Client::connect(Connect::new(node.ws(""))).await?;
    a.send(&ClientFrame::Authenticate { token: AGENT_KEYS[0].1.into() }).await?;
    assert_eq!(connected(&mut a).await?.1, "a1");

    // A bad in-band credential gets its error and closes 4001; an expired one 4002.
    let mut b = Client::connect(Connect::new(node.ws(""))).await?;
    b.send(&ClientFrame::Authenticate { token: "key-unknown-0000".into() }).await?;
    assert_eq!(next_error(&mut b).await?.code, ErrorCode::Unauthorized);
    assert_eq!(b.closed(WAIT).await?, Some(4001));
    let expired = sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), &claims("u1", -30))?;
    let mut d = Client::connect(Connect::new(node.ws(""))).await?;
    d.send(&ClientFrame::Authenticate { token: expired }).await?;
    assert_eq!(next_error(&mut d).await?.code, ErrorCode::TokenExpired);
    assert_eq!(d.closed(WAIT).await?, Some(4002));
    node.stop().await
}

#[tokio::test]
async fn in_band_flat_authenticate_with_the_token_in_the_payload() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let mut c = Client::connect(Connect::new(node.ws("?format=flat")).format(gateway_protocol::Encoding::Flat)).await?;
    let token = user_token("u7", &[], &[], LONG);
    c.send_text(&json!({"type": "authenticate", "payload": {"token": token}}).to_string()).await?;
    let Received::Flat(v) = c.recv_timeout(WAIT).await? else { bail!("expected a flat frame") };
    assert_eq!(v["type"], "connected", "{v}");
    assert_eq!(v["payload"]["userId"], "u7", "{v}");
    node.stop().await
}

#[tokio::test]
async fn no_authenticate_within_the_timeout_closes_4001() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.auth.auth_timeout_ms = 300;
    let node = TestNode::start(cfg).await?;
    let began = std::time::Instant::now();
    let mut c = Client::connect(Connect::new(node.ws(""))).await?;
    // Pings do not extend the deadline.
    c.send(&ClientFrame::Ping).await?;
    assert_eq!(c.closed(WAIT).await?, Some(4001));
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");
    let h = node.health().await?;
    assert_eq!(h["websocket"]["connections"], 0, "{h}");
    node.stop().await
}

#[tokio::test]
async fn token_expiry_while_connected_closes_4002() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let short = user_token("u1", &[], &[], Duration::from_secs(2));
    let mut c = Client::connect(Connect::new(node.ws("")).bearer(&short)).await?;
    connected(&mut c).await?;
    let notice = c
        .recv_until(Duration::from_secs(4), |r| match r {
            Received::Frame(ServerFrame::Disconnecting { reason, .. }) => Some(*reason),
            _ => None,
        })
        .await?;
    assert_eq!(notice, DisconnectReason::TokenExpired);
    assert_eq!(c.closed(WAIT).await?, Some(4002));
    node.stop().await
}

#[tokio::test]
async fn leeway_applies_while_connected_too() -> anyhow::Result<()> {
    let mut cfg = test_config();
    cfg.auth.leeway_secs = 30;
    let node = TestNode::start(cfg).await?;
    // Expired 5 s ago, within the 30 s leeway: accepted, and not dropped at once.
    let late = sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), &claims("u1", -5))?;
    let mut c = Client::connect(Connect::new(node.ws("")).bearer(&late)).await?;
    connected(&mut c).await?;
    match c.recv_timeout(Duration::from_millis(500)).await {
        Err(gateway_client::ClientError::Timeout(_)) => {}
        other => bail!("expected the connection to stay, got {other:?}"),
    }
    c.send(&ClientFrame::Ping).await?;
    assert!(matches!(c.recv_timeout(WAIT).await?, Received::Frame(ServerFrame::Pong { .. })));
    // Beyond the leeway it is refused.
    let stale = sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), &claims("u1", -60))?;
    assert_refused(Connect::new(node.ws("")).bearer(&stale), 401, "token_expired").await?;
    node.stop().await
}

#[tokio::test]
async fn refresh_before_expiry_keeps_the_connection() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let short = user_token("u1", &[], &[], Duration::from_secs(2));
    let mut c = Client::connect(Connect::new(node.ws("")).bearer(&short)).await?;
    connected(&mut c).await?;
    // Another user's token and an expired one are refused and change nothing.
    c.send(&ClientFrame::Refresh { id: Some("r0".into()), token: user_token("u2", &[], &[], LONG) }).await?;
    assert_eq!(response(&mut c, "r0").await?.map_err(|e| e.code), Err(ErrorCode::Forbidden));
    let expired = sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), &claims("u1", -30))?;
    c.send(&ClientFrame::Refresh { id: Some("r1".into()), token: expired }).await?;
    assert_eq!(response(&mut c, "r1").await?.map_err(|e| e.code), Err(ErrorCode::TokenExpired));
    c.send(&ClientFrame::Refresh { id: Some("r2".into()), token: user_token("u1", &[], &[], LONG) }).await?;
    let r = response(&mut c, "r2").await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert!(r["expiresAt"].as_u64().is_some_and(|t| t > now_ms() + 200_000), "{r}");
    // Past the old expiry (at most 2 s away), still open and answering.
    let until = tokio::time::Instant::now() + Duration::from_millis(2_500);
    while tokio::time::Instant::now() < until {
        match c.recv_timeout(Duration::from_millis(200)).await {
            Err(gateway_client::ClientError::Timeout(_)) => {}
            other => bail!("expected silence, got {other:?}"),
        }
    }
    c.send(&ClientFrame::Ping).await?;
    assert!(matches!(c.recv_timeout(WAIT).await?, Received::Frame(ServerFrame::Pong { .. })));
    node.stop().await
}

#[tokio::test]
async fn refresh_with_fewer_claims_leaves_channels_no_longer_allowed() -> anyhow::Result<()> {
    let node = TestNode::embedded().await?;
    let t = user_token("u1", &["p1", "p2"], &[], LONG);
    let mut c = Client::connect(Connect::new(node.ws("")).bearer(&t)).await?;
    connected(&mut c).await?;
    subscribe(&mut c, "s", &["project:p1", "project:p2"], None).await?;
    c.send(&ClientFrame::Refresh { id: Some("r".into()), token: user_token("u1", &["p1"], &[], LONG) }).await?;
    let r = response(&mut c, "r").await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(r["left"], json!(["project:p2"]), "{r}");
    let (status, _) = node.publish("project:p2", "after", json!(1)).await?;
    assert_eq!(status, 202);
    node.publish("project:p1", "kept", json!(1)).await?;
    let e = c
        .recv_until(WAIT, |r| match r {
            Received::Frame(ServerFrame::Event(e)) if !e.event.starts_with("presence.") => Some(e.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(e.event, "kept");
    node.stop().await
}
