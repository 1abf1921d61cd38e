//! What may be published on a channel: one check for every source of events (a client's
//! `publish`, `POST /api/publish`, a backend's event on NATS), and the signature that
//! lets nodes tell the gateway's own events (presence) from a backend's imitation.
//!
//! The event-name grammar itself is the protocol crate's ([`EventName`]); decoding
//! already enforced it. Here: reserved names, payload depth, and the encoded size — the
//! size in the largest encoding, because re-encoding can multiply it and every copy lands
//! in a subscriber's bounded queue.

use gateway_protocol::{Channel, EventFrame, EventName, MAX_DATA_DEPTH, event::depth_within, max_encoded_len};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::config::Config;

/// A new event with a fresh id (uuid v7) and the current time: how the gateway names
/// every event it accepts or makes itself.
pub fn fresh(channel: Channel, event: EventName, data: serde_json::Value) -> EventFrame {
    EventFrame {
        channel,
        event,
        data,
        id: uuid::Uuid::now_v7().to_string(),
        ts: gateway_protocol::now_ms(),
        from: None,
        offset: None,
        epoch: None,
    }
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventRefused {
    /// The name is the gateway's own (`presence.*`, a flat frame type).
    #[error("event name {0} is reserved for the gateway")]
    Reserved(EventName),
    /// The payload nests too deeply for every subscriber's parser.
    #[error("data nests deeper than {MAX_DATA_DEPTH} levels")]
    TooDeep,
    /// The event would weigh more than the limit in some encoding.
    #[error("event is {size} bytes when encoded; the limit is {max}")]
    TooLarge {
        /// The size in the largest encoding.
        size: usize,
        /// `limits.max_event_bytes`.
        max: usize,
    },
}

impl EventRefused {
    /// A metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            EventRefused::Reserved(_) => "reserved",
            EventRefused::TooDeep => "too_deep",
            EventRefused::TooLarge { .. } => "too_large",
        }
    }
}

/// The checks, configured once per node.
#[derive(Debug, Clone)]
pub struct EventPolicy {
    /// `limits.max_event_bytes`.
    max_bytes: usize,
}

impl EventPolicy {
    /// The policy of a node's configuration.
    pub fn new(cfg: &Config) -> Self {
        EventPolicy { max_bytes: cfg.limits.max_event_bytes }
    }

    /// Checks an event from anyone but the gateway itself: name not reserved, payload
    /// not too deep, encoded size within the limit (the costliest check, last).
    pub fn check(&self, ev: &EventFrame) -> Result<(), EventRefused> {
        if ev.event.is_reserved() {
            return Err(EventRefused::Reserved(ev.event.clone()));
        }
        self.check_shape(ev)
    }

    /// The depth and size checks alone, for the gateway's own events.
    pub fn check_shape(&self, ev: &EventFrame) -> Result<(), EventRefused> {
        if !depth_within(&ev.data, MAX_DATA_DEPTH) {
            return Err(EventRefused::TooDeep);
        }
        let size = max_encoded_len(ev);
        if size > self.max_bytes {
            return Err(EventRefused::TooLarge { size, max: self.max_bytes });
        }
        Ok(())
    }
}

/// Signs and verifies the gateway's own events on the bus (HMAC-SHA256 over the
/// channel, the event name, the message id and the data, so a captured signature fits
/// no other event). Every node of a cluster derives the same
/// key from the shared configuration.
#[derive(Clone)]
pub struct SystemSigner {
    /// The HMAC key.
    key: [u8; 32],
}

impl std::fmt::Debug for SystemSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SystemSigner(..)")
    }
}

impl SystemSigner {
    /// The signer of a configuration: `cluster_secret`, else a key derived from the
    /// secrets nodes share. Returns whether the key rests on a real secret.
    pub fn new(cfg: &Config) -> (Self, bool) {
        let mut h = Sha256::new();
        h.update(b"gateway system events v1\0");
        let secret = !cfg.cluster_secret.is_empty() || !cfg.jwt_secret.is_empty() || !cfg.admin_key.is_empty();
        if cfg.cluster_secret.is_empty() {
            h.update(cfg.jwt_secret.as_bytes());
            h.update(b"\0");
            h.update(cfg.admin_key.as_bytes());
        } else {
            h.update(cfg.cluster_secret.as_bytes());
        }
        (SystemSigner { key: h.finalize().into() }, secret)
    }

    fn mac(&self, ev: &EventFrame) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        for part in [ev.channel.as_str(), ev.event.as_str(), ev.id.as_str()] {
            mac.update(part.as_bytes());
            mac.update(b"\0");
        }
        mac.update(ev.data.to_string().as_bytes());
        mac
    }

    /// The signature header value of an event the gateway publishes.
    pub fn sign(&self, ev: &EventFrame) -> String {
        self.mac(ev).finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `sig` is this cluster's signature of `ev` (constant time).
    pub fn verify(&self, ev: &EventFrame, sig: &str) -> bool {
        let Some(bytes) = decode_hex(sig) else {
            return false;
        };
        self.mac(ev).verify_slice(&bytes).is_ok()
    }
}

/// The gate of events arriving from the bus: backends' events get the full check, and
/// a reserved name passes only with this cluster's signature (the gateway's own presence
/// events, published by another node).
#[derive(Debug, Clone)]
pub struct BusScreen {
    /// Depth and size bounds.
    pub policy: EventPolicy,
    /// Verifies the gateway's own events.
    pub signer: SystemSigner,
}

impl BusScreen {
    /// The screen of a node's configuration.
    pub fn new(cfg: &Config) -> Self {
        BusScreen { policy: EventPolicy::new(cfg), signer: SystemSigner::new(cfg).0 }
    }

    /// Whether an event read from the bus, with its signature header if any, may be
    /// delivered.
    pub fn admit(&self, ev: &EventFrame, sig: Option<&str>) -> Result<(), EventRefused> {
        if ev.event.is_reserved() {
            return match sig {
                Some(sig) if self.signer.verify(ev, sig) => Ok(()),
                _ => Err(EventRefused::Reserved(ev.event.clone())),
            };
        }
        self.policy.check_shape(ev)
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_protocol::{Channel, SystemEvent};
    use serde_json::json;

    fn ev(name: EventName, data: serde_json::Value) -> EventFrame {
        EventFrame {
            channel: Channel::parse("session:s").unwrap(),
            event: name,
            data,
            id: "m1".into(),
            ts: 1,
            from: None,
            offset: None,
            epoch: None,
        }
    }

    #[test]
    fn refuses_reserved_deep_and_large() {
        let p = EventPolicy { max_bytes: 1024 };
        assert_eq!(p.check(&ev("typing".into(), json!({"a": 1}))), Ok(()));
        assert!(matches!(p.check(&ev(SystemEvent::PresenceJoin.into(), json!({}))), Err(EventRefused::Reserved(_))));
        let mut deep = json!(1);
        for _ in 0..65 {
            deep = json!([deep]);
        }
        assert_eq!(p.check(&ev("x".into(), deep)), Err(EventRefused::TooDeep));
        // 200 control bytes weigh 200 in MessagePack but 1,200 in JSON (`\u0001`).
        let r = p.check(&ev("x".into(), json!("\u{1}".repeat(200))));
        assert!(matches!(r, Err(EventRefused::TooLarge { size, .. }) if size > 1200), "{r:?}");
    }

    #[test]
    fn signatures() {
        let mut cfg = Config { jwt_secret: "s".into(), ..Config::default() };
        let (a, real) = SystemSigner::new(&cfg);
        assert!(real);
        let e = ev(SystemEvent::PresenceLeave.into(), json!({}));
        let sig = a.sign(&e);
        assert!(a.verify(&e, &sig));
        assert!(!a.verify(&e, "00"));
        let mut other = e.clone();
        other.id = "m2".into();
        assert!(!a.verify(&other, &sig), "bound to the message id");
        let mut other = e.clone();
        other.data = json!({"id": "someone else"});
        assert!(!a.verify(&other, &sig), "bound to the data");
        cfg.cluster_secret = "c".into();
        assert!(!SystemSigner::new(&cfg).0.verify(&e, &sig), "another cluster's key");
    }
}
