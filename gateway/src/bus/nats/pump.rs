//! One channel's subscription drained into the node, in order. On a channel with
//! history the subscription is on the stream's re-published subject: each event carries
//! its offset (`Nats-Sequence`) and the previous offset on the channel
//! (`Nats-Last-Sequence`). When the previous offset is newer than the last one this node
//! delivered, events were missed (the link dropped, a slow consumer): they are fetched
//! from the store and delivered first. After a reconnect the pump also catches up
//! without waiting for the next event. Events that fail the screen (reserved names
//! without the cluster's signature, too deep, too large) are dropped and counted.

use std::sync::Arc;

use async_nats::{Message, Subscriber};
use futures_util::StreamExt;
use gateway_protocol::{Channel, EventFrame};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::wire::{decode_body, number, signature};
use crate::{
    bus::Inbound,
    events::BusScreen,
    history::jetstream::{JetStreamHistory, stamp},
    telemetry,
};

/// What a pump needs besides its subscription.
pub(super) struct PumpCtx {
    /// The channel.
    pub(super) ch: Channel,
    /// Where events go.
    pub(super) inbound: Arc<dyn Inbound>,
    /// What they must pass.
    pub(super) screen: Arc<BusScreen>,
    /// The store, when the channel keeps history.
    pub(super) history: Option<Arc<JetStreamHistory>>,
    /// Bumped on every reconnect of the NATS link.
    pub(super) reconnects: watch::Receiver<u64>,
    /// Most events fetched to fill one hole (the channel's history size).
    pub(super) max_fill: usize,
}

/// Drains `sub` until `stop` (this subscription) is cancelled; then unsubscribes, bounded
/// by `bus` (the whole bus's stop).
pub(super) async fn pump(mut sub: Subscriber, mut ctx: PumpCtx, stop: CancellationToken, bus: CancellationToken) {
    // The last offset delivered on this channel by this node.
    let mut last: Option<u64> = None;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            m = sub.next() => match m {
                Some(msg) => ctx.on_message(&msg, &mut last).await,
                None => break,
            },
            Ok(()) = ctx.reconnects.changed() => ctx.catch_up(&mut last).await,
        }
    }
    if !stop.is_cancelled() {
        tracing::warn!(channel = %ctx.ch, "nats subscription ended");
        return;
    }
    // Unsubscribed by `sync_interest`: send UNSUB now, so the server stops routing before
    // the caller's barrier. Bounded by the bus's stop (the command queue may be full while
    // disconnected); on shutdown, dropping `sub` is enough.
    let _ = bus.run_until_cancelled(sub.unsubscribe()).await;
}

impl PumpCtx {
    async fn on_message(&self, msg: &Message, last: &mut Option<u64>) {
        let mut ev = match decode_body(&self.ch, &msg.payload, msg.headers.as_ref()) {
            Ok(ev) => ev,
            Err(e) => {
                metrics::counter!(telemetry::DROPS, "reason" => "bad_event").increment(1);
                tracing::debug!(channel = %self.ch, error = %e, "undecodable event dropped");
                return;
            }
        };
        let Some(history) = &self.history else {
            if ev.id.is_empty() {
                ev.id = uuid::Uuid::now_v7().to_string();
            }
            return self.deliver(ev, signature(msg));
        };
        let Some(seq) = number(msg, "Nats-Sequence") else {
            // Not a re-published copy (someone published on the live subject): no offset
            // to trust, so not delivered on a history channel.
            metrics::counter!(telemetry::DROPS, "reason" => "no_sequence").increment(1);
            return;
        };
        let prev = number(msg, "Nats-Last-Sequence").unwrap_or(0);
        if let Some(l) = *last {
            if seq <= l && (prev != 0 || seq == l) {
                // Delivered already (a catch-up ran ahead of the live feed).
                return;
            }
            if seq < l {
                // Offsets went back to a channel's first event: the stream was made
                // again (its store lost), a new epoch.
                history.refresh_of(&self.ch).await;
            } else if prev > l {
                self.fill(history, l, seq).await;
            }
        }
        let epoch = history.epoch(&self.ch).unwrap_or_default();
        stamp(&mut ev, seq, &epoch);
        *last = Some(seq);
        self.deliver(ev, signature(msg));
    }

    /// Delivers the stored events between `after` and `before` (exclusive).
    async fn fill(&self, history: &JetStreamHistory, after: u64, before: u64) {
        match history.between(&self.ch, after, before, self.max_fill).await {
            Ok(missed) => {
                metrics::counter!(telemetry::GAP_FILLS).increment(missed.len() as u64);
                tracing::info!(channel = %self.ch, after, before, filled = missed.len(), "history gap filled");
                // Screened by the store already.
                for ev in missed {
                    self.inbound.event(ev);
                }
            }
            Err(e) => tracing::warn!(channel = %self.ch, error = %e, "history gap not filled"),
        }
    }

    /// After a reconnect: delivers what was stored while the link was down.
    async fn catch_up(&self, last: &mut Option<u64>) {
        let (Some(history), Some(l)) = (&self.history, *last) else {
            return;
        };
        history.refresh_of(&self.ch).await;
        match history.between(&self.ch, l, 0, self.max_fill).await {
            Ok(missed) => {
                if let Some(newest) = missed.last().and_then(|e| e.offset) {
                    *last = Some(newest);
                }
                metrics::counter!(telemetry::GAP_FILLS).increment(missed.len() as u64);
                for ev in missed {
                    self.inbound.event(ev);
                }
            }
            Err(e) => tracing::warn!(channel = %self.ch, error = %e, "history catch-up failed"),
        }
    }

    fn deliver(&self, ev: EventFrame, sig: Option<&str>) {
        match self.screen.admit(&ev, sig) {
            Ok(()) => self.inbound.event(ev),
            Err(e) => {
                metrics::counter!(telemetry::EVENTS_REFUSED, "source" => "nats", "reason" => e.label()).increment(1);
                tracing::debug!(channel = %self.ch, error = %e, "event from nats refused");
            }
        }
    }
}
