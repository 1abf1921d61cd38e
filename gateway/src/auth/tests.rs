//! Unit tests of credential checks: carriers, bad tokens, channel tokens.

use std::time::Duration;

use gateway_protocol::{Channel, Principal, PrincipalKind, now_ms};
use jsonwebtoken::{EncodingKey, Header};

use super::*;
use crate::config::Config;

fn auth() -> Authenticator {
    let cfg = Config {
        jwt_secret: "secret-secret-secret".into(),
        api_keys: vec!["a1:key-aaaaaaaa".into()],
        ..Config::default()
    };
    Authenticator::new(&cfg, None).unwrap()
}

fn spec(ttl: u64) -> TokenSpec {
    TokenSpec { sub: "u1".into(), projects: vec!["p1".into()], ttl: Duration::from_secs(ttl), ..Default::default() }
}

#[tokio::test]
async fn jwt_and_key_carriers() {
    let a = auth();
    let t = mint_user_token("secret-secret-secret", &spec(60)).unwrap();
    let id = a.authenticate(&t).await.unwrap();
    assert_eq!(id.principal.id, "u1");
    assert!(id.projects.contains("p1") && !id.projects.contains("p2"));
    let id = a.authenticate("key-aaaaaaaa").await.unwrap();
    assert_eq!(id.principal, Principal { kind: PrincipalKind::Agent, id: "a1".into() });
    assert_eq!(a.authenticate("key-bbbbbbbb").await, Err(AuthError::Invalid("unknown API key")));
    assert_eq!(a.authenticate("").await, Err(AuthError::Missing));
}

#[tokio::test]
async fn bad_tokens() {
    let a = auth();
    let wrong = mint_user_token("other-secret-other", &spec(60)).unwrap();
    assert_eq!(a.authenticate(&wrong).await, Err(AuthError::Invalid("bad signature")));
    let mut expired = spec(0);
    expired.ttl = Duration::ZERO;
    let claims = Claims {
        sub: "u1".into(),
        exp: now_ms() / 1000 - 10,
        nbf: None,
        iat: None,
        projects: vec![],
        roles: vec![],
        aud: None,
        iss: None,
    };
    let t =
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(b"secret-secret-secret")).unwrap();
    assert_eq!(a.authenticate(&t).await, Err(AuthError::Expired));
    // alg: none
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.sig",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(format!(r#"{{"sub":"u1","exp":{}}}"#, now_ms() / 1000 + 60))
    );
    assert!(matches!(a.authenticate(&none).await, Err(AuthError::Invalid(_))));
}

#[tokio::test]
async fn a_channel_token_does_not_log_in() {
    let a = auth();
    let t = mint_channel_token("secret-secret-secret", "session:s1", Some("u1"), Duration::from_secs(60)).unwrap();
    assert_eq!(a.authenticate(&t).await, Err(AuthError::Invalid("a channel token is not a user token")));
}

#[test]
fn channel_tokens() {
    let a = auth();
    let ch = Channel::parse("session:s1").unwrap();
    let me = Principal { kind: PrincipalKind::User, id: "u1".into() };
    let t = mint_channel_token("secret-secret-secret", "session:s1", Some("u1"), Duration::from_secs(60)).unwrap();
    assert!(a.verify_channel_token(&t, &ch, &me).is_ok());
    let other = Channel::parse("session:s2").unwrap();
    assert!(a.verify_channel_token(&t, &other, &me).is_err());
    let you = Principal { kind: PrincipalKind::User, id: "u2".into() };
    assert!(a.verify_channel_token(&t, &ch, &you).is_err());
    let agent_namesake = Principal { kind: PrincipalKind::Agent, id: "u1".into() };
    assert!(a.verify_channel_token(&t, &ch, &agent_namesake).is_err());
}
