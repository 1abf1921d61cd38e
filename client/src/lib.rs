//! Clients for the gateway.
//!
//! - [`Gateway`]: the SDK. One logical connection that outlives sockets: it reconnects
//!   with full-jitter backoff (1 s → 30 s, optional retry limit), stops on terminal
//!   refusals and close codes (400/401/403, 4001, 4003, 4010, `disconnecting
//!   {reconnect:false}`), re-subscribes every channel in one frame with `recover`
//!   positions and reports `recovered` per channel, drops duplicate offsets, queues
//!   `send`/`publish`/`request` while offline in a bounded queue flushed in order under
//!   the server's rate limit, refreshes a JWT before its `exp`, and exposes events as
//!   streams and the connection state as a `watch`. See `client/README.md`.
//! - [`raw`]: the small typed test client ([`Client`], [`Connect`], [`Received`]): one
//!   socket, no reconnect; used by the integration tests and the bench tool.

pub mod agent;
pub mod backoff;
mod channels;
pub mod config;
pub mod credentials;
mod driver;
pub mod error;
pub mod events;
mod gateway;
pub mod pacer;
pub mod policy;
pub mod queue;
pub mod raw;
mod session;

pub use backoff::{BackoffConfig, Jitter};
pub use config::{ConfigError, GatewayBuilder, GatewayConfig};
pub use credentials::{Credentials, CredentialsError, TokenSource};
pub use error::{GatewayError, StopReason};
pub use events::{Events, Notice, Notices, State, Subscription};
pub use gateway::Gateway;
pub use pacer::RateLimit;
pub use queue::{OverflowPolicy, QueueError};
pub use raw::{Client, ClientError, Connect, Message, Received};
