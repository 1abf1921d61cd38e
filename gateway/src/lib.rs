//! A horizontally scalable WebSocket gateway.
//!
//! Stateless nodes hold client and agent connections; channels map onto NATS subjects so
//! an event published anywhere reaches its subscribers on every node; Redis holds
//! presence and cluster-wide connection counts. Without NATS and Redis a node runs on
//! in-process twins of both, through the same code paths.
//!
//! Rooms: [`config`], [`auth`], [`access`], [`http`], [`console`], [`conn`], [`hub`], [`bus`],
//! [`upstream`], [`backend_http`], [`presence`], [`lifecycle`], [`membership`], [`history`],
//! [`events`], [`keys`], [`node`], [`listener`], [`server`], [`shutdown`], [`telemetry`],
//! [`error`].

pub mod access;
pub mod auth;
pub mod backend_http;
pub mod bus;
pub mod cache;
pub mod cli;
pub mod config;
pub mod conn;
pub mod console;
pub mod error;
pub mod events;
pub mod history;
pub mod http;
pub mod hub;
pub mod keys;
pub mod lifecycle;
pub mod listener;
pub mod membership;
pub mod node;
pub mod presence;
pub mod server;
pub mod shutdown;
pub mod sio;
pub mod telemetry;
pub mod upstream;

pub use config::Config;
pub use server::run;
