//! Clients for the gateway.
//!
//! - [`raw`]: the small typed test client ([`Client`], [`Connect`], [`Received`]): one
//!   socket, no reconnect; used by the integration tests and the bench tool.

pub mod raw;

pub use raw::{Client, ClientError, Connect, Message, Received};
