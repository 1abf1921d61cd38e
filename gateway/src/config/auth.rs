//! The `auth` section: JWT claim checks, the in-band authentication timeout, the API-key
//! cache, and where user-token signing keys come from when an identity provider
//! publishes them as a JWKS (`auth.jwks_url`).

use serde::{Deserialize, Serialize};

use super::de::lossy_string;

/// Credential checks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Required `aud` of user JWTs; empty skips the check.
    #[serde(deserialize_with = "lossy_string")]
    pub jwt_audience: String,
    /// Required `iss` of user JWTs; empty skips the check.
    #[serde(deserialize_with = "lossy_string")]
    pub jwt_issuer: String,
    /// How long an unauthenticated socket may wait before `authenticate`.
    pub auth_timeout_ms: u64,
    /// Clock skew tolerated on `exp`/`nbf`.
    pub leeway_secs: u64,
    /// How long a Redis API-key lookup is cached.
    pub key_cache_ms: u64,
    /// Refuse a handshake without credentials (401) instead of waiting for an in-band
    /// `authenticate`.
    pub require_credentials: bool,
    /// An identity provider's JSON Web Key Set (`http(s)://…/jwks.json`): user JWTs are
    /// verified with its RS256/ES256/EdDSA keys, chosen by the token's `kid`, so keys
    /// rotate without a restart. Overrides `jwt_secret` for user tokens (channel tokens
    /// keep the secret); exclusive with `jwt_public_key`. Empty: off.
    #[serde(deserialize_with = "lossy_string")]
    pub jwks_url: String,
    /// How often the key set is fetched again, so a retired key stops being accepted
    /// and a new one is known before its first token.
    pub jwks_refresh_secs: u64,
    /// A token naming a `kid` the set does not hold makes the node fetch the set at once
    /// (a key just added), but at most once per this many seconds: tokens with made-up
    /// key ids cannot turn the gateway into a flood against the identity provider.
    pub jwks_min_refetch_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_audience: String::new(),
            jwt_issuer: String::new(),
            auth_timeout_ms: 5_000,
            leeway_secs: 0,
            key_cache_ms: 5_000,
            require_credentials: false,
            jwks_url: String::new(),
            jwks_refresh_secs: 300,
            jwks_min_refetch_secs: 5,
        }
    }
}

impl AuthConfig {
    /// Checks the JWKS keys; the error names the key.
    pub(super) fn check_jwks(&self, has_public_key: bool) -> Result<(), (&'static str, String)> {
        if self.jwks_url.is_empty() {
            return Ok(());
        }
        let url = reqwest::Url::parse(&self.jwks_url).map_err(|e| ("auth.jwks_url", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(("auth.jwks_url", "must be an http:// or https:// URL with a host".into()));
        }
        if has_public_key {
            return Err(("auth.jwks_url", "set either auth.jwks_url or jwt_public_key, not both".into()));
        }
        if self.jwks_min_refetch_secs == 0 {
            return Err(("auth.jwks_min_refetch_secs", "must be at least 1".into()));
        }
        if self.jwks_refresh_secs < self.jwks_min_refetch_secs {
            return Err(("auth.jwks_refresh_secs", "must be at least auth.jwks_min_refetch_secs".into()));
        }
        Ok(())
    }
}
