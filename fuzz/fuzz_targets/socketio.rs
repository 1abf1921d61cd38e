//! Socket.IO and Engine.IO packets, namespaces and event data: see
//! [`gateway_fuzz::socketio::check`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_fuzz::socketio::check(data));
