//! The gateway's wire protocol: what a client, an agent or a backend can rely on.
//!
//! This crate is pure data: channel names and their NATS subjects, the typed frames of
//! both directions, the error and close codes, and the three encodings (canonical JSON,
//! MessagePack, and the flat compatibility shape). It does no I/O so the server, the
//! client SDK and the tests share one definition of every byte on the wire. The
//! handshake's untrusted inputs (credential carriers, subprotocols) are parsed here too.

pub mod channel;
pub mod codec;
pub mod error;
pub mod event;
pub mod flat;
pub mod frame;
pub mod handshake;
pub mod history;
pub mod tags;

pub use channel::{Channel, ChannelError, Namespace};
pub use codec::{DecodeError, Encoded, Encoding, max_encoded_len};
pub use error::{CloseCode, ErrorBody, ErrorCode};
pub use event::{EventName, EventNameError, MAX_DATA_DEPTH, SystemEvent};
pub use frame::{
    ClientFrame, ClientTimestamp, DisconnectReason, EventFrame, Principal, PrincipalKind, ServerFrame, StreamPosition,
};
pub use history::{HISTORY_GET, HistoryPage, HistoryQuery};
pub use tags::{client_frame_types, server_frame_types};

/// Milliseconds since the Unix epoch, the unit of every `ts` on the wire.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `ms` since the Unix epoch as ISO 8601 UTC with milliseconds, e.g.
/// `2026-02-05T21:50:00.000Z` (the `timestamp` of `/health`, as seed 001 shows it).
pub fn iso8601(ms: u64) -> String {
    let (secs, milli) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm, proleptic
    // Gregorian, years 0..=9999 and beyond without overflow for any u64 ms of interest).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso8601_in_utc_with_ms() {
        assert_eq!(super::iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::iso8601(1_707_163_200_000), "2024-02-05T20:00:00.000Z");
        assert_eq!(super::iso8601(1_770_328_200_007), "2026-02-05T21:50:00.007Z");
        assert_eq!(super::iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(super::iso8601(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }
}
