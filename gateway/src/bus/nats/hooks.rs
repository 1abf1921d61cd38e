//! Lifecycle hooks on NATS (contract §10): every connection that opens or closes is
//! published to `<prefix>.lc.connected` / `<prefix>.lc.disconnected` with the body
//! `{"kind","id","connection","node","ts","reason"?}` and the gateway-set `Gw-*` headers
//! of the connection (for a lost one, those of the dead node that held it).

use super::{NatsBus, wire::bad_request, wire::origin_headers};
use crate::{
    bus::{BusError, Origin},
    lifecycle::{HookBody, HookKind},
};

/// The subject of a hook: `<prefix>.lc.<kind>`.
pub(super) fn hook_subject(prefix: &str, kind: HookKind) -> String {
    format!("{prefix}.lc.{}", kind.as_str())
}

impl NatsBus {
    /// Publishes one hook (fire and forget, like an upstream send).
    pub(super) async fn publish_hook(
        &self,
        kind: HookKind,
        origin: &Origin<'_>,
        reason: Option<&str>,
    ) -> Result<(), BusError> {
        let headers = origin_headers(origin)?;
        let body = serde_json::to_vec(&HookBody::new(origin, reason)).map_err(|e| bad_request(format!("hook: {e}")))?;
        self.send(hook_subject(&self.prefix, kind), Some(headers), body).await
    }
}

#[cfg(test)]
mod tests {
    use gateway_protocol::{Principal, PrincipalKind};
    use serde_json::json;

    use super::*;
    use crate::presence::ConnRef;

    #[test]
    fn subjects_and_bodies() {
        assert_eq!(hook_subject("gw", HookKind::Connected), "gw.lc.connected");
        assert_eq!(hook_subject("gw", HookKind::Disconnected), "gw.lc.disconnected");
        let p = Principal { kind: PrincipalKind::Agent, id: "a1".into() };
        let o = ConnRef { node: "n1", conn: "c1", principal: &p };
        let mut body = serde_json::to_value(HookBody::new(&o, Some("lost"))).unwrap_or_default();
        assert!(body["ts"].as_u64().is_some_and(|t| t > 0), "{body}");
        body["ts"] = json!(0);
        assert_eq!(body, json!({"kind":"agent","id":"a1","connection":"c1","node":"n1","ts":0,"reason":"lost"}));
        let body = serde_json::to_value(HookBody::new(&o, None)).unwrap_or_default();
        assert!(body.get("reason").is_none(), "{body}");
    }
}
