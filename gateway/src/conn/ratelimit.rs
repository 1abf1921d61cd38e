//! Per-connection frame limits: two token buckets (per second with burst, per minute)
//! and the count of consecutive refusals after which the connection is closed (4008).

use std::num::NonZeroU32;

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    state::{InMemoryState, NotKeyed},
};

use crate::config::RateConfig;

type Bucket = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// The verdict on one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within limits.
    Allowed,
    /// Over a limit; retry after this many ms.
    Limited {
        /// When a frame would be accepted again.
        retry_after_ms: u64,
    },
    /// Over a limit too many times in a row: close the connection.
    Close,
}

/// One connection's limits.
pub struct FrameLimiter {
    /// Frames per second with burst.
    second: Bucket,
    /// Frames per minute.
    minute: Bucket,
    /// Consecutive limited frames.
    strikes: u32,
    /// Strikes that close the connection.
    max_strikes: u32,
}

fn nz(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN)
}

impl FrameLimiter {
    /// Limits from configuration.
    pub fn new(cfg: &RateConfig) -> Self {
        FrameLimiter {
            second: RateLimiter::direct(Quota::per_second(nz(cfg.per_second)).allow_burst(nz(cfg.burst))),
            minute: RateLimiter::direct(Quota::per_minute(nz(cfg.per_minute))),
            strikes: 0,
            max_strikes: cfg.strikes_to_close.max(1),
        }
    }

    /// Charges one frame.
    pub fn check(&mut self) -> Verdict {
        let refused = self.second.check().err().or_else(|| self.minute.check().err());
        match refused {
            None => {
                self.strikes = 0;
                Verdict::Allowed
            }
            Some(not_until) => {
                self.strikes += 1;
                if self.strikes >= self.max_strikes {
                    return Verdict::Close;
                }
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Verdict::Limited { retry_after_ms: (wait.as_millis() as u64).max(1) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_limited_then_closed() {
        let cfg = RateConfig { per_second: 10, burst: 20, per_minute: 100, strikes_to_close: 3 };
        let mut l = FrameLimiter::new(&cfg);
        for _ in 0..20 {
            assert_eq!(l.check(), Verdict::Allowed);
        }
        assert!(
            matches!(l.check(), Verdict::Limited { retry_after_ms } if retry_after_ms > 0 && retry_after_ms <= 100)
        );
        assert!(matches!(l.check(), Verdict::Limited { .. }));
        assert_eq!(l.check(), Verdict::Close);
    }
}
