//! The connection task: one per [`crate::Gateway`], the only owner of the socket, the
//! channel registry, the offline queue and the calls in flight. It connects, serves a
//! connection (see `session`), and between connections decides with the close-code
//! policy whether to wait a backoff delay and try again or stop. While disconnected it
//! keeps serving the application: subscriptions are registered for the next connection
//! and `send`/`publish`/`request` wait in the bounded queue.

use std::collections::HashMap;

use gateway_protocol::{ClientFrame, EventFrame, Principal, ServerFrame};
use serde_json::Value;
use tokio::{
    sync::{broadcast, mpsc, oneshot, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::Backoff,
    channels::Channels,
    config::GatewayConfig,
    credentials::{Credential, CredentialsError},
    error::{GatewayError, StopReason},
    events::{Notice, State},
    pacer::Pacer,
    policy::{Ended, verdict},
    queue::{OfflineQueue, QueueError},
    raw::{Client, ClientError, Connect, Received, Socket},
};

/// Where a call's answer goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, GatewayError>>;

/// What the application asks of the connection task.
pub(crate) enum Command {
    /// Join a channel (now, or on the next connection).
    Subscribe {
        /// The channel.
        channel: String,
        /// Its channel token, for `session:` channels under the `token` policy.
        token: Option<String>,
        /// Answered once the server accepted or refused it (at once while offline).
        reply: Reply<()>,
    },
    /// Leave a channel.
    Unsubscribe {
        /// The channel.
        channel: String,
        /// Answered once the frame is written (or at once while offline).
        reply: Reply<()>,
    },
    /// A `request`, `send` or `publish`.
    Call(Call),
}

/// A `request`, `send` or `publish` and its caller.
pub(crate) struct Call {
    /// The frame; its id is set when it is written.
    pub frame: ClientFrame,
    /// The caller: the request's result, or `Null` on `ack`.
    pub reply: Reply<Value>,
}

impl Call {
    /// Whether its answer is an `ack` (bounded by the ack timeout once written).
    pub fn acked(&self) -> bool {
        matches!(self.frame, ClientFrame::Send { .. } | ClientFrame::Publish { .. })
    }

    /// Whether the caller stopped waiting (a request timed out): then it is not sent.
    pub fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// A frame written and waiting for its answer, by id.
pub(crate) enum Pending {
    /// A request, send or publish.
    Call {
        /// The caller.
        reply: Reply<Value>,
        /// For acks: when to give up.
        deadline: Option<Instant>,
    },
    /// A subscribe frame.
    Subscribe {
        /// The channels it named.
        channels: Vec<String>,
        /// Whether it re-subscribes after a reconnect (then `recovered` is reported).
        reconnect: bool,
        /// Callers waiting for a channel of it.
        replies: Vec<(String, Reply<()>)>,
    },
    /// An unsubscribe frame (its answer only matters as an error notice).
    Unsubscribe,
    /// A `refresh` with this token.
    Refresh {
        /// The token offered.
        token: String,
    },
}

/// How a stage ended.
pub(crate) enum Outcome {
    /// The connection (or attempt) ended; the policy decides what next.
    Ended(Ended),
    /// Stop for good.
    Stop(StopReason),
}

/// A connection ready to serve: the socket and what the `connected` frame said.
pub(crate) struct Opened {
    /// The socket.
    pub socket: Socket,
    /// The credential it was opened with (refreshes compare against it).
    pub credential: Credential,
    /// The `connected` frame.
    pub connected: ServerFrame,
}

/// The connection task's state.
pub(crate) struct Driver {
    /// The configuration.
    pub cfg: GatewayConfig,
    /// Cancelled by `close()` and when the last handle drops.
    pub cancel: CancellationToken,
    /// Publishes the connection state.
    pub state: watch::Sender<State>,
    /// Publishes every delivered event.
    pub events: broadcast::Sender<EventFrame>,
    /// Publishes notices.
    pub notices: broadcast::Sender<Notice>,
    /// Subscribed channels and positions.
    pub channels: Channels,
    /// Calls waiting for a connection (or for pacing); `None` when turned off.
    pub queue: Option<OfflineQueue<Call>>,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Pacing of queued frames; `None` when turned off.
    pub pacer: Option<Pacer>,
    /// Frames written and not yet answered.
    pub pending: HashMap<String, Pending>,
    /// The last id handed out.
    pub seq: u64,
    /// Who the last connection acted as (positions are per principal).
    pub principal: Option<Principal>,
    /// Whether a connection was ever established (the next one re-subscribes).
    pub ever_connected: bool,
}

impl Driver {
    /// Runs until stopped, then fails everything still waiting and publishes `Stopped`.
    pub async fn run(mut self, mut cmds: mpsc::Receiver<Command>) {
        let stop = self.main(&mut cmds).await;
        tracing::debug!(%stop, "gateway client stopped");
        self.fail_all(GatewayError::Stopped(stop.clone()));
        cmds.close();
        while let Ok(cmd) = cmds.try_recv() {
            self.refuse(cmd, GatewayError::Stopped(stop.clone()));
        }
        self.state.send_replace(State::Stopped(stop));
    }

    async fn main(&mut self, cmds: &mut mpsc::Receiver<Command>) -> StopReason {
        loop {
            self.state.send_replace(State::Connecting { attempt: self.backoff.attempts() });
            let opened = match self.offline(cmds, open(self.cfg.clone())).await {
                Err(stop) | Ok(Err(Outcome::Stop(stop))) => return stop,
                Ok(Err(Outcome::Ended(e))) => Err(e),
                Ok(Ok(o)) => Ok(o),
            };
            let ended = match opened {
                Err(e) => e,
                Ok(o) => match self.session(cmds, o).await {
                    Outcome::Stop(stop) => return stop,
                    Outcome::Ended(e) => e,
                },
            };
            self.lost();
            tracing::debug!(%ended, "gateway connection ended");
            if let Some(stop) = verdict(&ended) {
                return stop;
            }
            if !self.cfg.reconnect {
                return StopReason::Lost(ended.to_string());
            }
            let attempts = self.backoff.attempts();
            let Some(delay) = self.backoff.next_delay() else {
                return StopReason::RetriesExhausted { attempts, last: ended.to_string() };
            };
            let cause = ended.to_string();
            self.state.send_replace(State::Reconnecting { attempt: self.backoff.attempts(), delay, cause });
            if let Err(stop) = self.offline(cmds, tokio::time::sleep(delay)).await {
                return stop;
            }
        }
    }

    /// Serves the application while `fut` runs (connecting, or waiting to reconnect).
    async fn offline<T>(
        &mut self,
        cmds: &mut mpsc::Receiver<Command>,
        fut: impl Future<Output = T>,
    ) -> Result<T, StopReason> {
        let cancel = self.cancel.clone();
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(StopReason::Closed),
                out = &mut fut => return Ok(out),
                cmd = cmds.recv() => match cmd {
                    None => return Err(StopReason::Closed),
                    Some(cmd) => self.offline_command(cmd),
                },
            }
        }
    }

    fn offline_command(&mut self, cmd: Command) {
        match cmd {
            Command::Subscribe { channel, token, reply } => {
                self.channels.add(&channel, token);
                let _ = reply.send(Ok(()));
            }
            Command::Unsubscribe { channel, reply } => {
                self.channels.forget(&channel);
                let _ = reply.send(Ok(()));
            }
            Command::Call(call) => self.enqueue(call),
        }
    }

    /// Puts a call in the offline queue under its policy.
    pub fn enqueue(&mut self, call: Call) {
        let Some(queue) = self.queue.as_mut() else {
            let _ = call.reply.send(Err(GatewayError::NotConnected));
            return;
        };
        queue.retain(|c| !c.abandoned());
        match queue.push(call) {
            Ok(None) => {}
            Ok(Some(evicted)) => {
                let _ = evicted.reply.send(Err(QueueError::Evicted(self.cfg.queue_capacity.unwrap_or(0)).into()));
            }
            Err((refused, e)) => {
                let _ = refused.reply.send(Err(e.into()));
            }
        }
    }

    /// The connection is gone: calls in flight fail with `Disconnected` (never resent);
    /// subscribe callers are answered `Ok`, their channels join on the next connection.
    fn lost(&mut self) {
        for (_, p) in self.pending.drain() {
            match p {
                Pending::Call { reply, .. } => {
                    let _ = reply.send(Err(GatewayError::Disconnected));
                }
                Pending::Subscribe { replies, .. } => {
                    for (_, r) in replies {
                        let _ = r.send(Ok(()));
                    }
                }
                Pending::Unsubscribe | Pending::Refresh { .. } => {}
            }
        }
    }

    fn fail_all(&mut self, e: GatewayError) {
        for (_, p) in self.pending.drain() {
            match p {
                Pending::Call { reply, .. } => {
                    let _ = reply.send(Err(e.clone()));
                }
                Pending::Subscribe { replies, .. } => {
                    for (_, r) in replies {
                        let _ = r.send(Err(e.clone()));
                    }
                }
                Pending::Unsubscribe | Pending::Refresh { .. } => {}
            }
        }
        if let Some(q) = self.queue.as_mut() {
            for call in q.drain() {
                let _ = call.reply.send(Err(e.clone()));
            }
        }
    }

    fn refuse(&mut self, cmd: Command, e: GatewayError) {
        match cmd {
            Command::Subscribe { reply, .. } | Command::Unsubscribe { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Command::Call(call) => {
                let _ = call.reply.send(Err(e));
            }
        }
    }

    /// A fresh frame id with a prefix naming its kind.
    pub fn next_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}{}", self.seq)
    }
}

/// One connection attempt, bounded by the connect timeout: credentials, handshake, and
/// the `connected` frame.
async fn open(cfg: GatewayConfig) -> Result<Opened, Outcome> {
    let limit = cfg.connect_timeout;
    match tokio::time::timeout(limit, open_unbounded(cfg)).await {
        Ok(r) => r,
        Err(_) => Err(Outcome::Ended(Ended::Failed(format!("not connected within {limit:?}")))),
    }
}

async fn open_unbounded(cfg: GatewayConfig) -> Result<Opened, Outcome> {
    let credential = match cfg.credentials.current().await {
        Ok(c) => c,
        Err(e @ CredentialsError::Expired) => return Err(Outcome::Stop(StopReason::Credentials(e))),
        Err(e) => return Err(Outcome::Ended(Ended::Failed(e.to_string()))),
    };
    let mut connect = Connect::new(cfg.url.clone()).header(credential.header, &credential.value);
    if cfg.encoding != gateway_protocol::Encoding::Json {
        connect = connect.encoding(cfg.encoding);
    }
    for (k, v) in &cfg.headers {
        connect = connect.header(k, v);
    }
    let mut client = match Client::connect(connect).await {
        Ok(c) => c,
        Err(ClientError::Refused { status, body }) => return Err(Outcome::Ended(Ended::Refused { status, body })),
        Err(ClientError::Request(e)) => return Err(Outcome::Stop(StopReason::BadRequest(e))),
        Err(e) => return Err(Outcome::Ended(Ended::Failed(e.to_string()))),
    };
    loop {
        match client.recv().await {
            Ok(Received::Frame(f @ ServerFrame::Connected { .. })) => {
                return Ok(Opened { socket: client.into_socket(), credential, connected: f });
            }
            Ok(Received::Closed(c)) => {
                let (code, reason) = c.map_or((None, String::new()), |(code, r)| (Some(code), r));
                return Err(Outcome::Ended(Ended::Closed { code, reason, notice: None }));
            }
            Ok(_) => {}
            Err(e) => return Err(Outcome::Ended(Ended::Failed(e.to_string()))),
        }
    }
}
