//! Gateway library.
pub mod auth;
pub mod bus;
pub mod config;
pub mod conn;
pub mod hub;
pub mod presence;
pub mod telemetry;
