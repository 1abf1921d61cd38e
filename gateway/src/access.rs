//! Who may join which channel (contract §3) and who may publish where.

use std::time::Duration;

use gateway_protocol::{Channel, ErrorBody, ErrorCode, Namespace, Principal, PrincipalKind};

use crate::{
    auth::{Authenticator, Identity},
    bus::Bus,
    cache::TtlCache,
    config::{ChannelsConfig, SessionPolicy},
};

/// Most cached proxy answers.
const PROXY_CACHE_MAX: usize = 50_000;

/// Why a subscribe was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The principal may not join this channel.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The policy needs a backend and none answered.
    #[error("subscribe authorization unavailable")]
    Unavailable,
}

impl From<&AccessError> for ErrorBody {
    fn from(e: &AccessError) -> Self {
        let code = match e {
            AccessError::Forbidden(_) => ErrorCode::Forbidden,
            AccessError::Unavailable => ErrorCode::Unavailable,
        };
        ErrorBody::new(code, e.to_string())
    }
}

/// Channel permission checks, with the short cache for `proxy` answers.
pub struct Access {
    /// Channel policies from configuration.
    cfg: ChannelsConfig,
    /// (principal, channel) → allowed, for `proxy_cache_ms`.
    proxy_cache: TtlCache<(Principal, Channel), bool>,
}

impl Access {
    /// Checks from the given policies.
    pub fn new(cfg: ChannelsConfig) -> Self {
        let proxy_cache = TtlCache::new(Duration::from_millis(cfg.proxy_cache_ms), PROXY_CACHE_MAX);
        Access { cfg, proxy_cache }
    }

    /// Whether `who` may subscribe to `ch`; `token` is a channel token from the frame.
    pub async fn may_subscribe(
        &self,
        who: &Identity,
        ch: &Channel,
        token: Option<&str>,
        auth: &Authenticator,
        bus: &dyn Bus,
        timeout: Duration,
    ) -> Result<(), AccessError> {
        if who.admin {
            return Ok(());
        }
        let p = &who.principal;
        match ch.namespace() {
            Namespace::User if p.kind == PrincipalKind::User && p.id == ch.id() => Ok(()),
            Namespace::Agent if p.kind == PrincipalKind::Agent && p.id == ch.id() => Ok(()),
            Namespace::User | Namespace::Agent => Err(AccessError::Forbidden("not your channel")),
            Namespace::Project if who.projects.contains(ch.id()) => Ok(()),
            Namespace::Project => Err(AccessError::Forbidden("project not in your claims")),
            Namespace::Broadcast => Ok(()),
            Namespace::Session => match self.cfg.session_policy {
                SessionPolicy::Authenticated => Ok(()),
                SessionPolicy::Token => {
                    let token = token.ok_or(AccessError::Forbidden("session channels need a channel token"))?;
                    auth.verify_channel_token(token, ch, p)
                        .map_err(|_| AccessError::Forbidden("channel token rejected"))
                }
                SessionPolicy::Proxy => self.ask_backend(p, ch, bus, timeout).await,
            },
        }
    }

    async fn ask_backend(
        &self,
        p: &Principal,
        ch: &Channel,
        bus: &dyn Bus,
        timeout: Duration,
    ) -> Result<(), AccessError> {
        let key = (p.clone(), ch.clone());
        let allowed = match self.proxy_cache.get(&key) {
            Some(a) => a,
            None => {
                let a = bus.authorize_subscribe(p, ch, timeout).await.map_err(|e| {
                    tracing::warn!(error = %e, channel = %ch, "subscribe proxy failed");
                    AccessError::Unavailable
                })?;
                self.proxy_cache.insert(key, a);
                a
            }
        };
        if allowed { Ok(()) } else { Err(AccessError::Forbidden("denied by backend")) }
    }

    /// Whether a subscriber (or admin) may `publish` on `ch`.
    pub fn may_publish(&self, who: &Identity, ch: &Channel, subscribed: bool) -> Result<(), AccessError> {
        if !self.cfg.publish.contains(&ch.namespace()) {
            return Err(AccessError::Forbidden("clients may not publish in this namespace"));
        }
        if subscribed || who.admin { Ok(()) } else { Err(AccessError::Forbidden("subscribe before publishing")) }
    }

    /// Whether the namespace tracks presence.
    pub fn tracks_presence(&self, ch: &Channel) -> bool {
        self.cfg.presence.contains(&ch.namespace())
    }
}
