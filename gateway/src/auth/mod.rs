//! Credentials → identity: user JWTs (HS256 secret, an RS256/ES256 public key, or the
//! keys of an identity provider's JWKS, see [`jwks`]), agent API keys (static from
//! configuration, or a [`KeyStore`] such as Redis), channel tokens for `session:`
//! channels, and minting of tokens for the CLI and `--dev` ([`mint`]).

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use gateway_protocol::{Channel, Principal, PrincipalKind, handshake::looks_like_jwt};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
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
    /// The identity provider's key set has not been fetched yet: retry shortly.
    #[error("token signing keys not loaded yet (JWKS unreachable); retry shortly")]
    KeysUnavailable,
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

/// What verifies user JWTs.
enum UserKeys {
    /// One key (the HS256 secret or a PEM public key) and its one algorithm.
    Static(Box<(DecodingKey, Validation)>),
    /// The keys of `auth.jwks_url`, by `kid`.
    Jwks(Arc<Jwks>),
}

/// Checks credentials. Built once per node; cheap to share.
pub struct Authenticator {
    /// Verifies user JWTs (secret, public key or JWKS).
    user_key: Option<UserKeys>,
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
            None if !cfg.auth.jwks_url.is_empty() => {
                Some(UserKeys::Jwks(Arc::new(Jwks::new(&cfg.auth, validation(Algorithm::RS256))?)))
            }
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| format!("jwt_public_key: {e}"))?;
                // Exactly one algorithm per key: a token naming another (HS256 signed with
                // the public key, `none`) is refused — no algorithm confusion.
                if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                    Some(UserKeys::Static(Box::new((k, validation(Algorithm::RS256)))))
                } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                    Some(UserKeys::Static(Box::new((k, validation(Algorithm::ES256)))))
                } else {
                    return Err("jwt_public_key: not an RSA or EC public key in PEM".into());
                }
            }
            None if !cfg.jwt_secret.is_empty() => Some(UserKeys::Static(Box::new((
                DecodingKey::from_secret(cfg.jwt_secret.as_bytes()),
                validation(Algorithm::HS256),
            )))),
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
        if looks_like_jwt(credential) {
            self.verify_jwt(credential).await
        } else {
            self.verify_api_key(credential).await
        }
    }

    /// The JWKS of `auth.jwks_url`, when user tokens are verified with one (to start
    /// its refresh).
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        match &self.user_key {
            Some(UserKeys::Jwks(j)) => Some(j),
            _ => None,
        }
    }

    /// Verifies a user JWT: at the handshake, in-band `authenticate` and `refresh`.
    pub async fn verify_jwt(&self, token: &str) -> Result<Identity, AuthError> {
        // `aud` and `iss` are checked by the validation, which also accepts an audience
        // list (RFC 7519 §4.1.3); they are not read into a struct that wants one string.
        let data = match self.user_key.as_ref().ok_or(AuthError::NotConfigured("JWT"))? {
            UserKeys::Static(key) => jsonwebtoken::decode::<VerifiedClaims>(token, &key.0, &key.1),
            UserKeys::Jwks(jwks) => {
                // The header is read unverified only to pick the key; the key's own
                // algorithm is then the only one the signature may use.
                let header = jsonwebtoken::decode_header(token).map_err(jwt_error)?;
                let key = jwks.key_for(&header).await?;
                jsonwebtoken::decode::<VerifiedClaims>(token, &key.key, &key.validation)
            }
        }
        .map_err(jwt_error)?;
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

pub mod jwks;
pub mod mint;
#[cfg(test)]
mod tests;

pub use jwks::Jwks;
pub use mint::{ChannelClaims, Claims, TokenSpec, mint_channel_token, mint_user_token};
