//! MessagePack client frames: see [`gateway_fuzz::frames::check`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_fuzz::frames::check(gateway_protocol::Encoding::MsgPack, data));
