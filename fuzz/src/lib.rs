//! Property checks behind the fuzz targets in `fuzz_targets/`: each takes arbitrary
//! bytes, runs one decoder of untrusted input, and panics (a crash libFuzzer reports)
//! when a property fails, not only when the decoder itself panics.

pub mod frames;
pub mod handshake;
pub mod jwt;
pub mod names;
pub mod socketio;
