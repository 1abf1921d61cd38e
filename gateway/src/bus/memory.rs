//! The in-process bus twin for an embedded single node: the same interest bookkeeping and
//! delivery path as NATS, with no network. Requests find no backend (`unavailable`).
//! Events of channels with history are stamped and kept by the in-process history twin,
//! which delivers them under its per-channel lock (the role JetStream plays with NATS).

use std::{collections::HashSet, sync::Arc, sync::Mutex, time::Duration};

use async_trait::async_trait;
use gateway_protocol::{Channel, EventFrame, Principal};
use serde_json::Value;

use super::{Bus, BusError, ComponentHealth, Correlation, DisconnectCommand, Inbound, Origin};
use crate::{history::memory::MemoryHistory, telemetry};

/// The embedded bus.
pub struct MemoryBus {
    /// Where events and commands go.
    inbound: Arc<dyn Inbound>,
    /// Channels this node is "subscribed" to, as a NATS server would track them.
    subscribed: Mutex<HashSet<Channel>>,
    /// Stamps and keeps events of channels with history.
    history: Arc<MemoryHistory>,
}

impl MemoryBus {
    /// A bus delivering into `inbound`, keeping history in `history`.
    pub fn new(inbound: Arc<dyn Inbound>, history: Arc<MemoryHistory>) -> Self {
        MemoryBus { inbound, subscribed: Mutex::default(), history }
    }

    /// Channels currently subscribed (for tests of interest bookkeeping).
    pub fn subscribed(&self) -> usize {
        self.subscribed.lock().map(|s| s.len()).unwrap_or(0)
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn sync_interest(&self, ch: &Channel) -> Result<(), BusError> {
        let mut subs = self.subscribed.lock().map_err(|_| BusError::Unavailable("poisoned".into()))?;
        if self.inbound.has_subscribers(ch) {
            subs.insert(ch.clone());
        } else {
            subs.remove(ch);
        }
        Ok(())
    }

    async fn publish(&self, ev: &EventFrame) -> Result<(), BusError> {
        // Kept whether or not anyone listens now (a client may recover it later); the
        // interest is read under the history's channel lock, so a join that reads the
        // history either finds the event there or receives it live.
        self.history.append_and(ev.clone(), |ev| {
            if self.subscribed.lock().map(|s| s.contains(&ev.channel)).unwrap_or(false) {
                self.inbound.event(ev);
            } else {
                metrics::counter!(telemetry::DROPS, "reason" => "no_subscribers").increment(1);
            }
        });
        Ok(())
    }

    async fn send_upstream(&self, _: &Origin<'_>, _: &str, _: &Value, _: &Correlation<'_>) -> Result<(), BusError> {
        // Like a NATS publish with no subscriber: accepted, and nobody hears it.
        metrics::counter!(telemetry::DROPS, "reason" => "no_backend").increment(1);
        Ok(())
    }

    async fn request(&self, _: &Origin<'_>, _: &str, _: &Value, _: Duration) -> Result<Value, BusError> {
        Err(BusError::NoResponders)
    }

    async fn authorize_subscribe(&self, _: &Principal, _: &Channel, _: Duration) -> Result<bool, BusError> {
        Err(BusError::NoResponders)
    }

    async fn disconnect(&self, cmd: &DisconnectCommand) -> Result<(), BusError> {
        self.inbound.control(cmd.clone());
        Ok(())
    }

    fn health(&self) -> ComponentHealth {
        ComponentHealth::embedded()
    }
}
