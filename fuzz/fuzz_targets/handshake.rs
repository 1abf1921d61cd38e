//! Handshake credential carriers and encoding negotiation: see
//! [`gateway_fuzz::handshake::check`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_fuzz::handshake::check(data));
