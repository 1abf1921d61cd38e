//! Agent API keys in Redis: created and revoked by operators (`gateway apikey`), looked up
//! by every node when an agent connects.
//!
//! Only the SHA-256 of a key is stored: HASH `{prefix}apikey:{sha256hex}` with fields
//! `agent_id`, `projects` and `scopes` (JSON arrays), `revoked` (`0`/`1`) and `created_at`
//! (ms since epoch), plus SET `{prefix}apikeys:{agent}` of that agent's key hashes so they
//! can be listed and revoked per agent. The plaintext key is shown once, at creation.

use std::collections::HashMap;

use async_trait::async_trait;
use base64::Engine;
use fred::prelude::{Client, ClientLike, Error as RedisError, HashesInterface, Options, SetsInterface};
use gateway_protocol::{channel::valid_id, now_ms};
use rand::Rng;

use crate::{
    auth::{AgentKey, KeyStore, KeyStoreError, hash_key},
    config::Config,
    presence::redis::{command_options, eval, open_client},
};

/// Prefix of every generated key, so leaked keys are recognisable by secret scanners.
pub const KEY_PREFIX: &str = "gwk_";

/// KEYS key hash, agent set; ARGV agent, projects, scopes, created_at, hash. Fails if the
/// hash exists (a 256-bit collision: never in practice, but never overwrite a key).
const CREATE: &str = "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'agent_id', ARGV[1], 'projects', ARGV[2], 'scopes', ARGV[3], 'revoked', '0',
  'created_at', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
return 1";

/// KEYS key hash → the agent id after marking the key revoked, or nil when unknown.
const REVOKE: &str = "local agent = redis.call('HGET', KEYS[1], 'agent_id')
if not agent then return false end
redis.call('HSET', KEYS[1], 'revoked', '1')
return agent";

/// Why a key operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Redis is unreachable or answered with an error.
    #[error("key store unavailable: {0}")]
    Unavailable(String),
    /// An argument cannot be stored (bad agent id, empty project).
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// A stored record is malformed.
    #[error("corrupt key record: {0}")]
    Corrupt(String),
}

impl From<RedisError> for KeyError {
    fn from(e: RedisError) -> Self {
        KeyError::Unavailable(e.to_string())
    }
}

/// Agent API keys stored in Redis.
pub struct RedisKeyStore {
    /// The connection (may be shared with presence).
    client: Client,
    /// Bounded timeout, fail fast while disconnected.
    opts: Options,
    /// Key prefix (`gw:`).
    prefix: String,
}

impl RedisKeyStore {
    /// A store on an existing client under `prefix` (e.g. `gw:`).
    pub fn new(client: Client, prefix: impl Into<String>) -> Self {
        RedisKeyStore { client, opts: command_options(), prefix: prefix.into() }
    }

    /// Connects to Redis (`cfg.redis_url`, or through `cfg.redis_sentinel`); fails fast
    /// when unreachable.
    pub async fn connect(cfg: &Config) -> Result<Self, KeyError> {
        let client = open_client(cfg).await.map_err(KeyError::Unavailable)?;
        Ok(Self::new(client, cfg.redis_prefix.clone()))
    }

    fn key_key(&self, hash: &str) -> String {
        format!("{}apikey:{hash}", self.prefix)
    }

    fn agent_key(&self, agent: &str) -> String {
        format!("{}apikeys:{agent}", self.prefix)
    }

    /// Creates a key for `agent_id` and returns it in plaintext: the only time it is seen.
    pub async fn create(&self, agent_id: &str, projects: &[String], scopes: &[String]) -> Result<String, KeyError> {
        if !valid_id(agent_id) {
            return Err(KeyError::Invalid("agent id (1-128 characters of [A-Za-z0-9_-])"));
        }
        if projects.iter().chain(scopes).any(|s| s.is_empty()) {
            return Err(KeyError::Invalid("project or scope (empty)"));
        }
        let json = |v: &[String]| serde_json::to_string(v).map_err(|e| KeyError::Corrupt(e.to_string()));
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let key = format!("{KEY_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
        let hash = hash_key(&key);
        let keys = vec![self.key_key(&hash), self.agent_key(agent_id)];
        let args = vec![agent_id.to_owned(), json(projects)?, json(scopes)?, now_ms().to_string(), hash];
        let created: i64 = eval(&self.client, &self.opts, CREATE, None, keys, args).await?;
        if created != 1 {
            return Err(KeyError::Corrupt("key hash already exists".into()));
        }
        Ok(key)
    }

    /// Revokes a key given in plaintext or as its SHA-256 hex; returns its agent id, or
    /// `None` when no such key exists. Nodes stop accepting it within the lookup cache
    /// period; disconnecting its live connections is the caller's job.
    pub async fn revoke(&self, key_or_hash: &str) -> Result<Option<String>, KeyError> {
        let is_hash = key_or_hash.len() == 64 && key_or_hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let hash = if is_hash { key_or_hash.to_owned() } else { hash_key(key_or_hash) };
        let agent: Option<String> =
            eval(&self.client, &self.opts, REVOKE, None, vec![self.key_key(&hash)], vec![]).await?;
        Ok(agent)
    }

    /// The hashes of an agent's keys (revoked ones included).
    pub async fn list(&self, agent_id: &str) -> Result<Vec<String>, KeyError> {
        let mut hashes: Vec<String> = self.client.with_options(&self.opts).smembers(self.agent_key(agent_id)).await?;
        hashes.sort();
        Ok(hashes)
    }

    /// The record of a key hash.
    pub async fn get(&self, key_hash: &str) -> Result<Option<AgentKey>, KeyError> {
        let fields: HashMap<String, String> =
            self.client.with_options(&self.opts).hgetall(self.key_key(key_hash)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let agent_id =
            fields.get("agent_id").filter(|a| !a.is_empty()).ok_or_else(|| KeyError::Corrupt("agent_id".into()))?;
        Ok(Some(AgentKey {
            agent_id: agent_id.clone(),
            projects: list_field(fields.get("projects")),
            scopes: list_field(fields.get("scopes")),
            revoked: fields.get("revoked").is_some_and(|r| r != "0" && !r.is_empty()),
        }))
    }
}

/// A JSON array, or a comma list for records written by hand.
fn list_field(raw: Option<&String>) -> Vec<String> {
    let Some(raw) = raw.map(|r| r.trim()).filter(|r| !r.is_empty()) else {
        return Vec::new();
    };
    serde_json::from_str(raw)
        .unwrap_or_else(|_| raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
}

#[async_trait]
impl KeyStore for RedisKeyStore {
    async fn lookup(&self, key_hash: &str) -> Result<Option<AgentKey>, KeyStoreError> {
        self.get(key_hash).await.map_err(|e| KeyStoreError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_fields_accept_json_and_commas() {
        assert_eq!(list_field(Some(&r#"["p1","*"]"#.to_owned())), vec!["p1", "*"]);
        assert_eq!(list_field(Some(&"p1, p2".to_owned())), vec!["p1", "p2"]);
        assert!(list_field(None).is_empty());
    }
}
