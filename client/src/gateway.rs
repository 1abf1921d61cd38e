//! [`Gateway`]: one logical connection to the gateway that outlives sockets. A cheap,
//! cloneable handle over the connection task (see `driver`): subscribe to channels and
//! read their events as streams, make requests, send and publish (acked), watch the
//! connection state. Every task it spawns is tracked and cancelled by
//! [`Gateway::close`], or when the last handle drops.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use gateway_protocol::{ClientFrame, EventFrame, EventName, HISTORY_GET, HistoryPage, HistoryQuery};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    agent::Handler,
    backoff::Backoff,
    channels::Channels,
    config::{GatewayBuilder, GatewayConfig},
    driver::{Call, Command, Driver},
    error::{GatewayError, StopReason},
    events::{Events, Notice, Notices, State, Subscription},
    pacer::Pacer,
    queue::OfflineQueue,
};

/// Commands buffered between the handles and the connection task; a caller beyond this
/// waits (backpressure), nothing grows without bound.
const COMMAND_BUFFER: usize = 256;
/// Notices buffered per [`Notices`] stream.
const NOTICE_BUFFER: usize = 256;

/// A reconnecting gateway client. Clone it freely; every clone is the same connection.
#[derive(Clone)]
pub struct Gateway {
    /// The shared state; the connection is cancelled when the last clone drops.
    pub(crate) inner: Arc<Inner>,
}

/// What the handles share.
pub(crate) struct Inner {
    /// Commands to the connection task.
    pub cmds: mpsc::Sender<Command>,
    /// The connection state.
    pub state: watch::Receiver<State>,
    /// A receiver kept only to hand out new ones (`resubscribe`).
    pub events: broadcast::Receiver<EventFrame>,
    /// Likewise for notices.
    pub notices: broadcast::Receiver<Notice>,
    /// Stops the connection task and the handler dispatcher.
    pub cancel: CancellationToken,
    /// Every task spawned for this gateway.
    pub tracker: TaskTracker,
    /// `on(event, handler)` registrations, by event name.
    pub handlers: Arc<Mutex<HashMap<String, Vec<Handler>>>>,
    /// Whether the handler dispatcher runs.
    pub dispatching: AtomicBool,
    /// Default bound of requests and subscribes.
    pub request_timeout: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Gateway {
    /// A builder for `url` (`ws://host:port/ws`).
    pub fn builder(url: impl Into<String>) -> GatewayBuilder {
        GatewayBuilder::new(url)
    }

    /// Starts the connection task (on the current tokio runtime) and returns at once;
    /// calls made before the connection is up wait in the offline queue.
    pub fn start(cfg: GatewayConfig) -> Gateway {
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_BUFFER);
        let (state_tx, state_rx) = watch::channel(State::Connecting { attempt: 0 });
        let (events_tx, events_rx) = broadcast::channel(cfg.event_buffer);
        let (notices_tx, notices_rx) = broadcast::channel(NOTICE_BUFFER);
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let request_timeout = cfg.request_timeout;
        let driver = Driver {
            queue: cfg.queue_capacity.map(|c| OfflineQueue::new(c, cfg.overflow)),
            backoff: Backoff::new(cfg.backoff.clone()),
            pacer: cfg.rate_limit.map(Pacer::new),
            cfg,
            cancel: cancel.clone(),
            state: state_tx,
            events: events_tx,
            notices: notices_tx,
            channels: Channels::default(),
            pending: HashMap::new(),
            seq: 0,
            principal: None,
            ever_connected: false,
        };
        tracker.spawn(driver.run(cmd_rx));
        Gateway {
            inner: Arc::new(Inner {
                cmds: cmd_tx,
                state: state_rx,
                events: events_rx,
                notices: notices_rx,
                cancel,
                tracker,
                handlers: Arc::default(),
                dispatching: AtomicBool::new(false),
                request_timeout,
            }),
        }
    }

    /// The connection state, as a watch: `borrow()` for now, `changed()` to wait.
    pub fn state(&self) -> watch::Receiver<State> {
        self.inner.state.clone()
    }

    /// Waits until connected; fails when the gateway stopped for good first.
    pub async fn connected(&self) -> Result<(), GatewayError> {
        let mut rx = self.state();
        let state = rx
            .wait_for(|s| matches!(s, State::Connected { .. } | State::Stopped(_)))
            .await
            .map_err(|_| GatewayError::Stopped(StopReason::Closed))?
            .clone();
        match state {
            State::Stopped(stop) => Err(GatewayError::Stopped(stop)),
            _ => Ok(()),
        }
    }

    /// Waits until the gateway stopped for good; returns why.
    pub async fn stopped(&self) -> StopReason {
        let mut rx = self.state();
        match rx.wait_for(|s| matches!(s, State::Stopped(_))).await.map(|s| s.clone()) {
            Ok(State::Stopped(stop)) => stop,
            _ => StopReason::Closed,
        }
    }

    /// Subscribes to `channel`. Connected: waits for the server's answer (a refusal is
    /// `Err(Server(..))`); disconnected: registers it for the next connection. Either
    /// way the channel is re-subscribed with `recover` after every reconnect.
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, GatewayError> {
        self.subscribe_inner(channel, None).await
    }

    /// [`Gateway::subscribe`] with a channel token (`session:` channels under the
    /// `token` policy); kept for re-subscribes.
    pub async fn subscribe_with_token(&self, channel: &str, token: &str) -> Result<Subscription, GatewayError> {
        self.subscribe_inner(channel, Some(token.to_owned())).await
    }

    async fn subscribe_inner(&self, channel: &str, token: Option<String>) -> Result<Subscription, GatewayError> {
        // The stream exists before the frame goes out, so no event slips past it.
        let sub = Subscription::new(channel.to_owned(), self.inner.events.resubscribe());
        let (reply, rx) = oneshot::channel();
        self.command(Command::Subscribe { channel: channel.to_owned(), token, reply }).await?;
        self.answer(rx, self.inner.request_timeout).await?;
        Ok(sub)
    }

    /// Leaves `channel` (also for the next connections).
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), GatewayError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Unsubscribe { channel: channel.to_owned(), reply }).await?;
        self.answer(rx, self.inner.request_timeout).await
    }

    /// Every delivered event, on every channel (auto-joined ones included).
    pub fn events(&self) -> Events {
        Events::new(self.inner.events.resubscribe(), |_| true)
    }

    /// Notices: recovered or not after a reconnect, refused channels, server errors.
    pub fn notices(&self) -> Notices {
        Notices::new(self.inner.notices.resubscribe())
    }

    /// Asks a built-in method or a backend; `timeout` covers waiting for a connection
    /// too. Fails with `Disconnected` if the connection drops after the request went out
    /// (it is not resent), `Timeout`, or `Server(body)`.
    pub async fn request(&self, method: &str, params: Value, timeout: Duration) -> Result<Value, GatewayError> {
        let frame = ClientFrame::Request { id: String::new(), method: method.to_owned(), params };
        let (reply, rx) = oneshot::channel();
        let call = async {
            self.command(Command::Call(Call { frame, reply })).await?;
            self.answer(rx, Duration::MAX).await
        };
        tokio::time::timeout(timeout, call).await.map_err(|_| GatewayError::Timeout(timeout))?
    }

    /// `history.get` (contract §9): the channel's stored events, oldest first.
    pub async fn history(&self, query: &HistoryQuery) -> Result<HistoryPage, GatewayError> {
        let params = serde_json::to_value(query).map_err(|e| GatewayError::Decode(e.to_string()))?;
        let v = self.request(HISTORY_GET, params, self.inner.request_timeout).await?;
        serde_json::from_value(v).map_err(|e| GatewayError::Decode(e.to_string()))
    }

    /// Sends an event upstream to backends; resolves on the server's `ack`. While
    /// disconnected it waits in the offline queue.
    pub async fn send(&self, event: &str, data: Value) -> Result<(), GatewayError> {
        let event = EventName::parse(event)?;
        self.call_acked(ClientFrame::Send { id: None, event, data, correlation_id: None, timestamp: None }).await
    }

    /// Publishes on a channel (where the namespace lets clients); resolves on `ack`.
    pub async fn publish(&self, channel: &str, event: &str, data: Value) -> Result<(), GatewayError> {
        let event = EventName::parse(event)?;
        self.call_acked(ClientFrame::Publish { id: None, channel: channel.to_owned(), event, data }).await
    }

    async fn call_acked(&self, frame: ClientFrame) -> Result<(), GatewayError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Call(Call { frame, reply })).await?;
        // The ack timeout runs in the connection task from the moment it is written.
        self.answer(rx, Duration::MAX).await.map(|_| ())
    }

    /// Closes for good: the socket is closed, waiting calls fail with `Stopped(Closed)`,
    /// and every task of this gateway has ended when this returns.
    pub async fn close(&self) {
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }

    async fn command(&self, cmd: Command) -> Result<(), GatewayError> {
        if self.inner.cmds.send(cmd).await.is_err() {
            return Err(GatewayError::Stopped(self.stop_reason()));
        }
        Ok(())
    }

    async fn answer<T>(
        &self,
        rx: oneshot::Receiver<Result<T, GatewayError>>,
        limit: Duration,
    ) -> Result<T, GatewayError> {
        let answer = if limit == Duration::MAX {
            rx.await
        } else {
            tokio::time::timeout(limit, rx).await.map_err(|_| GatewayError::Timeout(limit))?
        };
        answer.map_err(|_| GatewayError::Stopped(self.stop_reason()))?
    }

    fn stop_reason(&self) -> StopReason {
        match &*self.inner.state.borrow() {
            State::Stopped(s) => s.clone(),
            _ => StopReason::Closed,
        }
    }
}
