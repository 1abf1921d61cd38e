//! JWTs before and through verification: see [`gateway_fuzz::jwt::check`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_fuzz::jwt::check(data));
