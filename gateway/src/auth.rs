//! Credentials → identity: user JWTs (HS256 secret or RS256/ES256 public key), agent API
//! keys (static from configuration, or a [`KeyStore`] such as Redis), channel tokens for
//! `session:` channels, and minting of tokens for the CLI and `--dev`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use gateway_protocol::{Channel, Principal, PrincipalKind, now_ms};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{cache::TtlCache, config::Config};

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential was presented.
    #[error("no credentials")]
    Missing,
    /// The credential is malformed, badly signed, of the wrong audience/issuer, or unknown.
    #[error("invalid credentials: {0}")]
    Invalid(&'static str),
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The API key was revoked.
    #[error("API key revoked")]
    Revoked,
    /// The key store could not be asked (Redis down).
    #[error("credential store unavailable")]
    Unavailable,
    /// The server cannot check this kind of credential (no key configured).
    #[error("{0} not configured on this gateway")]
    NotConfigured(&'static str),
}

/// Which project channels a principal may join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Projects {
    /// `["*"]`: every project.
    All,
    /// The listed project ids.
    Some(Box<[String]>),
}

impl Projects {
    fn from_list(list: Vec<String>) -> Self {
        if list.iter().any(|p| p == "*") { Projects::All } else { Projects::Some(list.into()) }
    }

    /// Whether `project` is included.
    pub fn contains(&self, project: &str) -> bool {
        match self {
            Projects::All => true,
            Projects::Some(list) => list.iter().any(|p| p == project),
        }
    }
}

/// An authenticated principal and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Who.
    pub principal: Principal,
    /// Project channels it may join.
    pub projects: Projects,
    /// Role `admin`: may subscribe anywhere.
    pub admin: bool,
    /// When the credential stops being valid (JWT `exp`, ms since epoch); keys never expire.
    pub expires_at_ms: Option<u64>,
}

/// An agent key's record in a key store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentKey {
    /// The agent the key authenticates.
    pub agent_id: String,
    /// Project ids (or `*`).
    pub projects: Vec<String>,
    /// Free-form scopes for backends.
    pub scopes: Vec<String>,
    /// Revoked keys are refused.
    pub revoked: bool,
}

/// A failure of the key store itself.
#[derive(Debug, thiserror::Error)]
#[error("key store: {0}")]
pub struct KeyStoreError(pub String);

/// Where agent API keys live beyond the static list (Redis in a cluster). Keys are
/// stored and looked up only by their SHA-256 hash.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// The record for a key hash, if any.
    async fn lookup(&self, key_hash: &str) -> Result<Option<AgentKey>, KeyStoreError>;
}

/// SHA-256 of a key, hex: the only form in which keys are stored or compared.
pub fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

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

/// The user JWT claims the gateway reads once the token is verified.
#[derive(Deserialize)]
struct VerifiedClaims {
    sub: String,
    exp: u64,
    #[serde(default)]
    projects: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    /// Present only in channel tokens, which share the secret: such a token must never
    /// log a user in.
    #[serde(default)]
    channel: Option<serde::de::IgnoredAny>,
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

/// Checks credentials. Built once per node; cheap to share.
pub struct Authenticator {
    /// Verifies user JWTs (secret or public key).
    user_key: Option<(DecodingKey, Validation)>,
    /// Verifies channel tokens (always the HS256 gateway secret).
    channel_key: Option<(DecodingKey, Validation)>,
    /// Static agent keys: key hash → agent id.
    static_keys: HashMap<String, String>,
    /// Dynamic agent keys (Redis), with a short cache in front.
    store: Option<Arc<dyn KeyStore>>,
    /// Known keys from the store: hash → record.
    known: TtlCache<String, AgentKey>,
    /// Unknown keys, kept apart so guessing keys cannot crowd out the known ones.
    unknown: TtlCache<String, ()>,
}

/// Most key lookups cached, of each kind (known, unknown).
const KEY_CACHE_MAX: usize = 10_000;

impl Authenticator {
    /// Builds the verifier from configuration. Fails when a configured key is unusable.
    pub fn new(cfg: &Config, store: Option<Arc<dyn KeyStore>>) -> Result<Self, String> {
        let leeway = cfg.auth.leeway_secs;
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.leeway = leeway;
            v.validate_nbf = true;
            // jsonwebtoken checks `aud`/`iss` only when the token carries them: a
            // configured check must also require the claim, or leaving it out skips it.
            let mut required = vec!["exp", "sub"];
            if cfg.auth.jwt_audience.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&[&cfg.auth.jwt_audience]);
                required.push("aud");
            }
            if !cfg.auth.jwt_issuer.is_empty() {
                v.set_issuer(&[&cfg.auth.jwt_issuer]);
                required.push("iss");
            }
            v.set_required_spec_claims(&required);
            v
        };
        let channel_key = (!cfg.jwt_secret.is_empty()).then(|| {
            let mut v = Validation::new(Algorithm::HS256);
            v.leeway = leeway;
            v.validate_aud = false;
            v.set_required_spec_claims(&["exp", "channel"]);
            (DecodingKey::from_secret(cfg.jwt_secret.as_bytes()), v)
        });
        let user_key = match &cfg.jwt_public_key {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| format!("jwt_public_key: {e}"))?;
                // Exactly one algorithm per key: a token naming another (HS256 signed with
                // the public key, `none`) is refused — no algorithm confusion.
                if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                    Some((k, validation(Algorithm::RS256)))
                } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                    Some((k, validation(Algorithm::ES256)))
                } else {
                    return Err("jwt_public_key: not an RSA or EC public key in PEM".into());
                }
            }
            None if !cfg.jwt_secret.is_empty() => {
                Some((DecodingKey::from_secret(cfg.jwt_secret.as_bytes()), validation(Algorithm::HS256)))
            }
            None => None,
        };
        let static_keys = cfg
            .static_api_keys()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(key, agent)| (hash_key(&key), agent))
            .collect();
        Ok(Authenticator {
            user_key,
            channel_key,
            static_keys,
            store,
            known: TtlCache::new(Duration::from_millis(cfg.auth.key_cache_ms), KEY_CACHE_MAX),
            unknown: TtlCache::new(Duration::from_millis(cfg.auth.key_cache_ms), KEY_CACHE_MAX),
        })
    }

    /// Authenticates a bearer credential: a JWT when it has a JWT's shape, else an API key.
    pub async fn authenticate(&self, credential: &str) -> Result<Identity, AuthError> {
        if credential.is_empty() {
            return Err(AuthError::Missing);
        }
        if looks_like_jwt(credential) { self.verify_jwt(credential) } else { self.verify_api_key(credential).await }
    }

    /// Verifies a user JWT.
    pub fn verify_jwt(&self, token: &str) -> Result<Identity, AuthError> {
        let (key, validation) = self.user_key.as_ref().ok_or(AuthError::NotConfigured("JWT"))?;
        // `aud` and `iss` are checked by the validation, which also accepts an audience
        // list (RFC 7519 §4.1.3); they are not read into a struct that wants one string.
        let data = jsonwebtoken::decode::<VerifiedClaims>(token, key, validation).map_err(jwt_error)?;
        let c = data.claims;
        if c.channel.is_some() {
            return Err(AuthError::Invalid("a channel token is not a user token"));
        }
        // The user is always subscribed to `user:<sub>`, so `sub` must be a channel id;
        // otherwise the user channel silently would not exist.
        if !gateway_protocol::channel::valid_id(&c.sub) {
            return Err(AuthError::Invalid("sub must be 1-128 characters of [A-Za-z0-9_-]"));
        }
        Ok(Identity {
            principal: Principal { kind: PrincipalKind::User, id: c.sub },
            projects: Projects::from_list(c.projects),
            admin: c.roles.iter().any(|r| r == "admin"),
            expires_at_ms: Some(c.exp.saturating_mul(1000)),
        })
    }

    /// Verifies an agent API key against the static list, then the key store.
    pub async fn verify_api_key(&self, key: &str) -> Result<Identity, AuthError> {
        let hash = hash_key(key);
        if let Some(agent) = self.static_keys.get(&hash) {
            return Ok(agent_identity(agent.clone(), vec!["*".into()]));
        }
        let store = self.store.as_ref().ok_or(AuthError::Invalid("unknown API key"))?;
        let record = if self.unknown.get(&hash).is_some() {
            None
        } else if let Some(r) = self.known.get(&hash) {
            Some(r)
        } else {
            let r = store.lookup(&hash).await.map_err(|e| {
                tracing::warn!(error = %e, "API key lookup failed");
                AuthError::Unavailable
            })?;
            match &r {
                Some(rec) => self.known.insert(hash, rec.clone()),
                None => self.unknown.insert(hash, ()),
            }
            r
        };
        match record {
            None => Err(AuthError::Invalid("unknown API key")),
            Some(r) if r.revoked => Err(AuthError::Revoked),
            Some(r) if !gateway_protocol::channel::valid_id(&r.agent_id) => {
                Err(AuthError::Invalid("key record names an invalid agent id"))
            }
            Some(r) => Ok(agent_identity(r.agent_id, r.projects)),
        }
    }

    /// Forgets cached key lookups (after a revocation).
    pub fn forget_keys(&self) {
        self.known.clear();
        self.unknown.clear();
    }

    /// Verifies a channel token for `channel`, used by `principal`.
    pub fn verify_channel_token(&self, token: &str, channel: &Channel, principal: &Principal) -> Result<(), AuthError> {
        let (key, validation) = self.channel_key.as_ref().ok_or(AuthError::NotConfigured("channel tokens"))?;
        let c = jsonwebtoken::decode::<ChannelClaims>(token, key, validation).map_err(jwt_error)?.claims;
        if c.channel != channel.as_str() {
            return Err(AuthError::Invalid("channel token is for another channel"));
        }
        // A token naming a principal binds its kind too (a user unless it says agent),
        // so a token for user `bot1` does not admit agent `bot1`.
        let kind = c.kind.unwrap_or(PrincipalKind::User);
        if c.sub.as_ref().is_some_and(|s| *s != principal.id || kind != principal.kind) {
            return Err(AuthError::Invalid("channel token is for another principal"));
        }
        Ok(())
    }
}

fn agent_identity(agent_id: String, projects: Vec<String>) -> Identity {
    Identity {
        principal: Principal { kind: PrincipalKind::Agent, id: agent_id },
        projects: Projects::from_list(projects),
        admin: false,
        expires_at_ms: None,
    }
}

/// Three non-empty base64url segments: a JWT, not an API key.
fn looks_like_jwt(s: &str) -> bool {
    let mut parts = s.split('.');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    };
    ok(parts.next()) && ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

fn jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::Invalid("token not yet valid"),
        ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience"),
        ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer"),
        ErrorKind::InvalidSignature => AuthError::Invalid("bad signature"),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            AuthError::Invalid("algorithm not accepted")
        }
        ErrorKind::MissingRequiredClaim(_) => AuthError::Invalid("missing required claim"),
        _ => AuthError::Invalid("malformed token"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let t = jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(b"secret-secret-secret"))
            .unwrap();
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
}
