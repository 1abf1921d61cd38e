//! Token shapes and minting: the user and channel JWT claims, and HS256 signing of both
//! for the CLI (`gateway token`), `--dev` and tests.

use std::time::Duration;

use gateway_protocol::{PrincipalKind, now_ms};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// User JWT claims.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Expiry, seconds since epoch.
    pub exp: u64,
    /// Not before, seconds since epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Project ids, or `["*"]`.
    #[serde(default)]
    pub projects: Vec<String>,
    /// Roles; `admin` may subscribe anywhere.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Audience, when the issuer sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Issuer, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

/// Channel token claims: permission to join one channel.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChannelClaims {
    /// The channel, e.g. `session:abc`.
    pub channel: String,
    /// Expiry, seconds since epoch.
    pub exp: u64,
    /// When set, only this user or agent id may use the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The kind of `sub`; absent means a user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<PrincipalKind>,
}

/// What to put in a minted user token.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    /// User id.
    pub sub: String,
    /// Project ids (or `*`).
    pub projects: Vec<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// Lifetime.
    pub ttl: Duration,
    /// Audience, if the gateway checks one.
    pub aud: Option<String>,
    /// Issuer, if the gateway checks one.
    pub iss: Option<String>,
}

/// Signs an HS256 user token (for `gateway token`, `--dev` and tests).
pub fn mint_user_token(secret: &str, spec: &TokenSpec) -> Result<String, jsonwebtoken::errors::Error> {
    let now = now_ms() / 1000;
    let claims = Claims {
        sub: spec.sub.clone(),
        exp: now + spec.ttl.as_secs(),
        nbf: None,
        iat: Some(now),
        projects: spec.projects.clone(),
        roles: spec.roles.clone(),
        aud: spec.aud.clone(),
        iss: spec.iss.clone(),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
}

/// Signs an HS256 channel token granting `channel` (optionally to one principal id).
pub fn mint_channel_token(
    secret: &str,
    channel: &str,
    sub: Option<&str>,
    ttl: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let claims = ChannelClaims {
        channel: channel.into(),
        exp: now_ms() / 1000 + ttl.as_secs(),
        sub: sub.map(String::from),
        kind: None,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
}
