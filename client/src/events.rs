//! What the application observes: the connection [`State`] (a `tokio::sync::watch`),
//! [`Notice`]s about subscriptions and server errors, and typed events as
//! [`futures_util::Stream`]s: [`Subscription`] for one channel, [`Events`] for all.
//!
//! Events reach the streams through a bounded broadcast channel, so an application that
//! stops reading never blocks the connection (and with it requests and acks). A stream
//! that falls more than the buffer behind skips the oldest events and counts them in
//! [`Subscription::missed`]; treat a growing count like `recovered:false`: refetch.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, StreamExt, stream::BoxStream};
use gateway_protocol::{ErrorBody, EventFrame, Principal};
use tokio::sync::broadcast;

use crate::error::StopReason;

/// The connection's state.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Opening a socket (attempt `attempt` since the last stable connection).
    Connecting {
        /// Failed attempts before this one.
        attempt: u32,
    },
    /// Authenticated and serving.
    Connected {
        /// The node holding the connection.
        node: String,
        /// The connection's id (in server logs and upstream headers).
        connection_id: String,
        /// Who the connection acts as.
        principal: Principal,
    },
    /// Waiting `delay` before the next attempt.
    Reconnecting {
        /// Failed attempts so far.
        attempt: u32,
        /// The jittered wait.
        delay: Duration,
        /// What ended the last connection or attempt.
        cause: String,
    },
    /// Stopped for good.
    Stopped(StopReason),
}

impl State {
    /// Whether this is [`State::Connected`].
    pub fn is_connected(&self) -> bool {
        matches!(self, State::Connected { .. })
    }
}

/// Something the application may want to act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// After a reconnect, for each re-subscribed channel: `true` when the server replays
    /// every missed event (contract §9), `false` when events may have been missed (or the
    /// server keeps no history): refetch that channel's state.
    Recovered {
        /// The channel.
        channel: String,
        /// Whether nothing was lost.
        recovered: bool,
    },
    /// The server refused a channel; unless the refusal is transient it is forgotten.
    Rejected {
        /// The channel.
        channel: String,
        /// Why.
        error: ErrorBody,
    },
    /// A refreshed token no longer allows this channel; the server left it.
    Left {
        /// The channel.
        channel: String,
    },
    /// The server reported an error not tied to a call (an `error` frame), or a token
    /// refresh failed.
    Error(ErrorBody),
}

/// A stream of events, ending when the gateway stops.
pub struct Events {
    /// The events, filtered as asked.
    inner: BoxStream<'static, EventFrame>,
    /// Events skipped because this stream fell behind the buffer.
    missed: Arc<AtomicU64>,
}

impl Events {
    /// Events from `rx` that `keep` accepts.
    pub(crate) fn new(
        rx: broadcast::Receiver<EventFrame>,
        keep: impl Fn(&EventFrame) -> bool + Send + 'static,
    ) -> Self {
        let missed = Arc::new(AtomicU64::new(0));
        let counter = missed.clone();
        let inner = futures_util::stream::unfold((rx, keep, counter), |(mut rx, keep, counter)| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) if keep(&ev) => return Some((ev, (rx, keep, counter))),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "event stream fell behind; events skipped");
                        counter.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed();
        Events { inner, missed }
    }

    /// Events skipped so far because this stream was read too slowly.
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }
}

impl Stream for Events {
    type Item = EventFrame;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<EventFrame>> {
        self.inner.poll_next_unpin(cx)
    }
}

/// One channel's events (see [`crate::Gateway::subscribe`]). Dropping it stops the
/// stream but stays subscribed; [`crate::Gateway::unsubscribe`] leaves the channel.
pub struct Subscription {
    /// The channel.
    channel: String,
    /// Its events.
    events: Events,
}

impl Subscription {
    pub(crate) fn new(channel: String, rx: broadcast::Receiver<EventFrame>) -> Self {
        let name = channel.clone();
        Subscription { channel, events: Events::new(rx, move |ev| ev.channel.as_str() == name) }
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Events skipped so far because this stream was read too slowly.
    pub fn missed(&self) -> u64 {
        self.events.missed()
    }
}

impl Stream for Subscription {
    type Item = EventFrame;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<EventFrame>> {
        Pin::new(&mut self.events).poll_next(cx)
    }
}

/// A stream of [`Notice`]s, ending when the gateway stops.
pub struct Notices {
    /// The notices.
    inner: BoxStream<'static, Notice>,
}

impl Notices {
    pub(crate) fn new(rx: broadcast::Receiver<Notice>) -> Self {
        let inner = futures_util::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(n) => return Some((n, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed();
        Notices { inner }
    }
}

impl Stream for Notices {
    type Item = Notice;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Notice>> {
        self.inner.poll_next_unpin(cx)
    }
}
