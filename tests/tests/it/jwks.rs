//! User tokens verified with an identity provider's JWKS (`auth.jwks_url`), against a
//! key-set server in the test that rotates keys and counts its fetches: rotation without
//! a restart (unknown `kid` refetch, retired keys refused after the refresh), every JWT
//! path (handshake, in-band `authenticate`, `refresh`), RS256/ES256/EdDSA with keys bound
//! to their algorithm, the refetch rate under a flood of unknown key ids, the last good
//! set kept while the provider is down, and 503 before the first successful fetch.

use std::{
    process::Command,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use anyhow::Context;
use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use gateway::Config;
use gateway_client::{Client, Connect, Received};
use gateway_protocol::{ClientFrame, ErrorCode, ServerFrame, now_ms};
use gateway_tests::node::{AGENT_KEYS, TestNode, WAIT, connected, eventually, refusal, response, test_config};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// A signing key of the test "identity provider".
struct SigningKey {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    /// Its public JWK, with `kid`.
    jwk: Value,
}

impl SigningKey {
    /// Generates a key with the openssl CLI (no key material in the repository).
    fn generate(kid: &str, alg: Algorithm) -> anyhow::Result<SigningKey> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("key.pem");
        let args: &[&str] = match alg {
            Algorithm::RS256 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            Algorithm::ES256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Algorithm::EdDSA => &["-algorithm", "ED25519"],
            other => anyhow::bail!("no test key for {other:?}"),
        };
        let out = Command::new("openssl").arg("genpkey").args(args).arg("-out").arg(&path).output()?;
        anyhow::ensure!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
        let pem = std::fs::read(&path)?;
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem)?,
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem)?,
            _ => EncodingKey::from_ed_pem(&pem)?,
        };
        let mut jwk = Jwk::from_encoding_key(&key, alg)?;
        jwk.common.key_id = Some(kid.into());
        Ok(SigningKey { kid: kid.into(), alg, key, jwk: serde_json::to_value(jwk)? })
    }

    /// A user token for `sub`, with this key's `kid` (or `kid` given).
    fn token(&self, sub: &str, kid: Option<&str>) -> anyhow::Result<String> {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.unwrap_or(&self.kid).to_owned());
        let claims = json!({ "sub": sub, "exp": now_ms() / 1000 + 300, "projects": ["p1"] });
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }

    /// A token without `kid`.
    fn token_without_kid(&self, sub: &str) -> anyhow::Result<String> {
        let claims = json!({ "sub": sub, "exp": now_ms() / 1000 + 300 });
        Ok(jsonwebtoken::encode(&Header::new(self.alg), &claims, &self.key)?)
    }
}

/// What the key-set server serves and has seen.
#[derive(Default)]
struct Served {
    keys: Mutex<Vec<Value>>,
    fetches: AtomicUsize,
    failing: AtomicBool,
}

/// A JWKS endpoint on a free port.
struct JwksServer {
    url: String,
    served: Arc<Served>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl JwksServer {
    async fn start(keys: &[&SigningKey]) -> anyhow::Result<JwksServer> {
        let served = Arc::new(Served::default());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr()?);
        let app = Router::new().route("/.well-known/jwks.json", get(serve_keys)).with_state(served.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(stopped.cancelled_owned()).await;
        });
        let server = JwksServer { url, served, stop, task: Some(task) };
        server.set(keys);
        Ok(server)
    }

    fn set(&self, keys: &[&SigningKey]) {
        *self.served.keys.lock().unwrap_or_else(PoisonError::into_inner) = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn fetches(&self) -> usize {
        self.served.fetches.load(Relaxed)
    }

    /// Stops serving: connections are refused from now on.
    async fn down(&mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.context("JWKS server did not stop")??;
        }
        Ok(())
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve_keys(State(served): State<Arc<Served>>) -> axum::response::Response {
    served.fetches.fetch_add(1, Relaxed);
    if served.failing.load(Relaxed) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "provider down").into_response();
    }
    let keys = served.keys.lock().unwrap_or_else(PoisonError::into_inner).clone();
    Json(json!({ "keys": keys })).into_response()
}

/// A node verifying user tokens with `server`'s keys.
fn config(server: &JwksServer, refresh_secs: u64, min_refetch_secs: u64) -> Config {
    let mut cfg = test_config();
    cfg.auth.jwks_url = server.url.clone();
    cfg.auth.jwks_refresh_secs = refresh_secs;
    cfg.auth.jwks_min_refetch_secs = min_refetch_secs;
    cfg
}

/// The user id a bearer token connects as.
async fn user_of(node: &TestNode, token: &str) -> anyhow::Result<String> {
    let mut c = Client::connect(Connect::new(node.ws("")).bearer(token)).await?;
    Ok(connected(&mut c).await?.1)
}

/// The handshake's refusal: (status, code, message).
async fn refused(node: &TestNode, token: &str) -> anyhow::Result<(u16, String, String)> {
    let (status, body) = refusal(Client::connect(Connect::new(node.ws("")).bearer(token)).await)?;
    let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
    Ok((status, text("code"), text("message")))
}

/// The sum of a counter's samples in `/metrics` whose labels contain `labels`.
async fn counter(node: &TestNode, name: &str, labels: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(node.http("/metrics")).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

#[tokio::test]
async fn keys_rotate_without_a_restart() -> anyhow::Result<()> {
    let a = SigningKey::generate("key-a", Algorithm::RS256)?;
    let b = SigningKey::generate("key-b", Algorithm::ES256)?;
    let server = JwksServer::start(&[&a]).await?;
    // A refresh interval far longer than the test's steps until the last one.
    let node = TestNode::start(config(&server, 4, 1)).await?;
    assert_eq!(user_of(&node, &a.token("u-a", None)?).await?, "u-a");
    assert_eq!(server.fetches(), 1, "one fetch at startup, then the set is cached");

    // A new key appears: its first token makes the node fetch the set again (once
    // `min_refetch` has passed since the last fetch), long before the refresh.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    server.set(&[&a, &b]);
    let rotated = tokio::time::Instant::now();
    assert_eq!(user_of(&node, &b.token("u-b", None)?).await?, "u-b");
    assert!(rotated.elapsed() < Duration::from_secs(3), "accepted by the unknown-kid refetch, not the refresh");
    assert!(server.fetches() >= 2, "the unknown kid fetched the set");

    // Every JWT path knows the new key: in-band authenticate, and refresh.
    let mut c = Client::connect(Connect::new(node.ws(""))).await?;
    c.send(&ClientFrame::Authenticate { token: b.token("u-b", None)? }).await?;
    assert_eq!(connected(&mut c).await?.1, "u-b");
    c.send(&ClientFrame::Refresh { id: Some("r1".into()), token: b.token("u-b", None)? }).await?;
    assert!(response(&mut c, "r1").await?.is_ok());
    let mut old = Client::connect(Connect::new(node.ws("")).bearer(&a.token("u-a", None)?)).await?;
    connected(&mut old).await?;

    // A is retired: still accepted until the refresh drops it (the overlap), then refused.
    server.set(&[&b]);
    assert_eq!(user_of(&node, &a.token("u-a", None)?).await?, "u-a");
    let retired = tokio::time::Instant::now();
    eventually(Duration::from_secs(8), || async {
        refused(&node, &a.token("u-a", None).ok()?)
            .await
            .ok()
            .filter(|(s, code, _)| *s == 401 && code == "unauthorized")
    })
    .await?;
    let dropped_after = retired.elapsed();
    assert_eq!(user_of(&node, &b.token("u-b", None)?).await?, "u-b");
    // A refresh with the retired key is refused in band too.
    old.send(&ClientFrame::Refresh { id: Some("r2".into()), token: a.token("u-a", None)? }).await?;
    assert_eq!(response(&mut old, "r2").await?.map_err(|e| e.code), Err(ErrorCode::Unauthorized));
    eprintln!(
        "retired key refused {dropped_after:?} after it left the set (refresh 4 s); fetches {}",
        server.fetches()
    );
    node.stop().await
}

#[tokio::test]
async fn rs256_es256_and_eddsa_keys_each_verify_only_their_algorithm() -> anyhow::Result<()> {
    let rsa = SigningKey::generate("rsa", Algorithm::RS256)?;
    let ec = SigningKey::generate("ec", Algorithm::ES256)?;
    let ed = SigningKey::generate("ed", Algorithm::EdDSA)?;
    let server = JwksServer::start(&[&rsa, &ec, &ed]).await?;
    let node = TestNode::start(config(&server, 300, 1)).await?;
    for (key, sub) in [(&rsa, "u-rsa"), (&ec, "u-ec"), (&ed, "u-ed")] {
        assert_eq!(user_of(&node, &key.token(sub, None)?).await?, sub, "{:?}", key.alg);
    }
    // Signed by one key, naming another's kid: the named key's algorithm is the only one.
    for (signer, named) in [(&rsa, "ec"), (&ec, "ed"), (&ed, "rsa")] {
        let (status, code, _) = refused(&node, &signer.token("u-x", Some(named))?).await?;
        assert_eq!((status, code.as_str()), (401, "unauthorized"), "{:?} as {named}", signer.alg);
    }
    // HS256 "signed" with a public key's bytes, and alg none, under a known kid.
    let n = rsa.jwk["n"].as_str().unwrap_or_default();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa".into());
    let claims = json!({ "sub": "u-evil", "exp": now_ms() / 1000 + 60 });
    let confused = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(n.as_bytes()))?;
    assert_eq!(refused(&node, &confused).await?.0, 401);
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT","kid":"rsa"}"#), b64(claims.to_string().as_bytes()));
    assert_eq!(refused(&node, &none).await?.0, 401);
    // No kid while the set holds several keys: refused, and the message says why.
    let (status, code, message) = refused(&node, &ed.token_without_kid("u-ed")?).await?;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    assert!(message.contains("no kid"), "{message}");
    // With a single key in the set, a token without kid is verified with it.
    server.set(&[&ed]);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // An unknown kid refetches the set (now just `ed`).
    assert_eq!(refused(&node, &ed.token("u-ed", Some("nope"))?).await?.0, 401);
    assert_eq!(user_of(&node, &ed.token_without_kid("u-ed")?).await?, "u-ed");
    node.stop().await
}

/// Unpadded base64url.
fn b64(data: &[u8]) -> String {
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

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_interval() -> anyhow::Result<()> {
    let a = SigningKey::generate("key-a", Algorithm::EdDSA)?;
    let server = JwksServer::start(&[&a]).await?;
    const MIN_REFETCH_SECS: u64 = 2;
    let node = Arc::new(TestNode::start(config(&server, 300, MIN_REFETCH_SECS)).await?);
    let before = server.fetches();
    let started = tokio::time::Instant::now();
    let flood_for = Duration::from_secs(5);
    let mut sent = 0u32;
    while started.elapsed() < flood_for {
        // 20 handshakes at once, each with a kid never seen.
        let wave: Vec<_> = (0..20)
            .map(|i| {
                let token = a.token("u-x", Some(&format!("made-up-{sent}-{i}")));
                let node = node.clone();
                tokio::spawn(async move { refused(&node, &token?).await })
            })
            .collect();
        for h in wave {
            let (status, code, _) = tokio::time::timeout(WAIT, h).await???;
            assert_eq!((status, code.as_str()), (401, "unauthorized"));
        }
        sent += 20;
    }
    let elapsed = started.elapsed();
    let fetched = server.fetches() - before;
    let bound = elapsed.as_secs().div_ceil(MIN_REFETCH_SECS) as usize + 1;
    eprintln!("{sent} unknown-kid handshakes in {elapsed:?} caused {fetched} JWKS fetches (bound {bound})");
    assert!(fetched >= 1, "an unknown kid fetches the set");
    assert!(fetched <= bound, "{fetched} fetches in {elapsed:?} with min_refetch {MIN_REFETCH_SECS} s");
    // The known key still works throughout.
    assert_eq!(user_of(&node, &a.token("u-a", None)?).await?, "u-a");
    Ok(())
}

#[tokio::test]
async fn the_last_good_set_outlives_the_provider() -> anyhow::Result<()> {
    let a = SigningKey::generate("key-a", Algorithm::RS256)?;
    let mut server = JwksServer::start(&[&a]).await?;
    let node = TestNode::start(config(&server, 1, 1)).await?;
    assert_eq!(user_of(&node, &a.token("u-a", None)?).await?, "u-a");
    server.down().await?;
    // Refreshes fail (counted), the set stays.
    eventually(Duration::from_secs(10), || async {
        let errors = counter(&node, "gateway_jwks_fetches_total", "result=\"error\"").await.ok()?;
        (errors >= 2.0).then_some(())
    })
    .await?;
    assert_eq!(user_of(&node, &a.token("u-a", None)?).await?, "u-a");
    // An unknown kid is refused as unknown (401), not as unavailable: a set is loaded.
    assert_eq!(refused(&node, &a.token("u-a", Some("other"))?).await?.0, 401);
    node.stop().await
}

#[tokio::test]
async fn before_the_first_fetch_jwts_get_503_and_api_keys_work() -> anyhow::Result<()> {
    let a = SigningKey::generate("key-a", Algorithm::ES256)?;
    let server = JwksServer::start(&[&a]).await?;
    server.served.failing.store(true, Relaxed);
    let node = TestNode::start(config(&server, 300, 1)).await?;
    let (status, code, _) = refused(&node, &a.token("u-a", None)?).await?;
    assert_eq!((status, code.as_str()), (503, "unavailable"));
    assert_eq!(node.health().await?["jwks"]["status"], "never_fetched");
    let mut agent = Client::connect(Connect::new(node.ws("")).bearer(AGENT_KEYS[0].1)).await?;
    assert_eq!(connected(&mut agent).await?.1, AGENT_KEYS[0].0);
    // In band the same refusal is an error frame, then the close (1001: retry).
    let mut c = Client::connect(Connect::new(node.ws(""))).await?;
    c.send(&ClientFrame::Authenticate { token: a.token("u-a", None)? }).await?;
    let got = c.recv_timeout(WAIT).await?;
    assert!(
        matches!(&got, Received::Frame(ServerFrame::Error { error }) if error.code == ErrorCode::Unavailable),
        "{got:?}"
    );
    // The provider comes back: the next JWT fetches the set (min_refetch 1 s) and passes.
    server.served.failing.store(false, Relaxed);
    let user =
        eventually(Duration::from_secs(5), || async { user_of(&node, &a.token("u-a", None).ok()?).await.ok() }).await?;
    assert_eq!(user, "u-a");
    let health = node.health().await?;
    assert_eq!((&health["jwks"]["status"], &health["jwks"]["keys"]), (&json!("ok"), &json!(1)), "{health}");
    node.stop().await
}
