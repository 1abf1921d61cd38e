//! Channel names and event subjects: see [`gateway_fuzz::names::check_channel`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_fuzz::names::check_channel(data));
