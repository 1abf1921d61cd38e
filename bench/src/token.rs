//! User JWTs for the clients: HS256 with the secret the nodes were given, claims `sub`,
//! `exp`, `iat` and `projects` (as `gateway::auth::mint_user_token` writes them; minted
//! here so the server crate stays out of the load generator).

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde::Serialize;

/// Token lifetime: long enough for any run.
const TTL_SECS: u64 = 6 * 3600;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    projects: &'a [&'a str],
}

/// An HS256 user token for `sub`, member of no project.
pub fn mint(secret: &str, sub: &str) -> Result<String, jsonwebtoken::errors::Error> {
    mint_with_projects(secret, sub, &[])
}

/// An HS256 user token for `sub`, member of `projects` (`["*"]`: every project).
pub fn mint_with_projects(secret: &str, sub: &str, projects: &[&str]) -> Result<String, jsonwebtoken::errors::Error> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let claims = Claims { sub, exp: now + TTL_SECS, iat: now, projects };
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
}
