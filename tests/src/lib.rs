//! Integration-test harness: real NATS and Redis servers on free ports, gateway nodes in
//! process or as child processes, tokens and helpers. Every wait is bounded.

pub mod backend;
pub mod cluster_script;
pub mod node;
pub mod relay;
pub mod servers;
