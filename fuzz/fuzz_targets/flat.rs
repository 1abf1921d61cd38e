//! Flat (`gateway.v1.flat`) client frames: see [`gateway_fuzz::frames::check`] and
//! [`gateway_fuzz::frames::check_flat`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gateway_fuzz::frames::check(gateway_protocol::Encoding::Flat, data);
    gateway_fuzz::frames::check_flat(data);
});
