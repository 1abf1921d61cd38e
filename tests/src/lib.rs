//! Integration-test harness.
pub mod servers;
