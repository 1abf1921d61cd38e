//! Integration-test harness: real NATS and Redis servers on free ports (single, or a NATS
//! cluster and Redis behind Sentinel), relays that break one node's links, gateway nodes
//! in process or as child processes, tokens and helpers. Every wait is bounded.

pub mod backend;
pub mod cluster_script;
pub mod ha;
pub mod node;
pub mod probe;
pub mod relay;
pub mod resp;
pub mod servers;
