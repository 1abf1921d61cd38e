//! Event names: see [`gateway_fuzz::names::check_event_name`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_fuzz::names::check_event_name(data));
