//! The per-client-address handshake rate (`limits.handshakes_per_ip_per_sec`, burst
//! `limits.handshakes_per_ip_burst`): a token bucket per address (IPv6 per /64, the
//! block one subscriber gets), checked before any other handshake work, so a reconnect
//! loop or a flood costs a 429 with `Retry-After` and no credential check.
//!
//! Memory is bounded: buckets that have refilled are dropped every [`PRUNE_INTERVAL`],
//! and at most [`MAX_TRACKED`] addresses are tracked. When that many addresses are
//! active at once, new ones are admitted unmetered (counted as
//! `gateway_handshake_rate_untracked_total`) until pruning makes room; the concurrent
//! `limits.per_ip` and node caps still apply to them.

use std::{
    net::{IpAddr, Ipv6Addr},
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    state::keyed::DefaultKeyedStateStore,
};
use tokio_util::sync::CancellationToken;

use crate::{config::Limits, telemetry};

/// Most client addresses tracked at once (about 100 bytes each).
pub const MAX_TRACKED: usize = 100_000;
/// How often refilled buckets are dropped.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(10);
/// Least time between two prunes forced by a full table.
const FORCED_PRUNE_GAP: Duration = Duration::from_secs(1);

type Keyed = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>;

/// The per-address handshake buckets of one node.
pub struct HandshakeRate {
    /// `None` when the rate is off (`handshakes_per_ip_per_sec = 0`).
    limiter: Option<Keyed>,
    /// When a full table last forced a prune (ms on the limiter's clock), so a flood of
    /// new addresses cannot make every handshake scan the table.
    last_forced_prune_ms: AtomicU64,
    /// Where `last_forced_prune_ms` counts from.
    born: std::time::Instant,
}

impl HandshakeRate {
    /// Buckets from the limits.
    pub fn new(limits: &Limits) -> Self {
        let limiter = NonZeroU32::new(limits.handshakes_per_ip_per_sec).map(|rate| {
            let burst = NonZeroU32::new(limits.handshakes_per_ip_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        HandshakeRate { limiter, last_forced_prune_ms: AtomicU64::new(0), born: std::time::Instant::now() }
    }

    /// Charges one handshake to `ip`; `Err(wait)` when over the rate.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        let key = bucket_key(ip);
        if limiter.len() >= MAX_TRACKED && !self.make_room(limiter) {
            metrics::counter!(telemetry::HANDSHAKE_RATE_UNTRACKED).increment(1);
            return Ok(());
        }
        limiter.check_key(&key).map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Drops refilled buckets when the table is full, at most once per
    /// [`FORCED_PRUNE_GAP`]; whether there is room now.
    fn make_room(&self, limiter: &Keyed) -> bool {
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_forced_prune_ms.load(Relaxed);
        let gap = u64::try_from(FORCED_PRUNE_GAP.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(last) >= gap
            && self.last_forced_prune_ms.compare_exchange(last, now, Relaxed, Relaxed).is_ok()
        {
            limiter.retain_recent();
        }
        limiter.len() < MAX_TRACKED
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, Keyed::len)
    }

    /// Drops refilled buckets every [`PRUNE_INTERVAL`] until `stop`.
    pub async fn prune_loop(self: std::sync::Arc<Self>, stop: CancellationToken) {
        let Some(limiter) = &self.limiter else { return };
        let mut tick = tokio::time::interval(PRUNE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while stop.run_until_cancelled(tick.tick()).await.is_some() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// The bucket of an address: IPv4 itself, IPv6 its /64.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_sec: u32, burst: u32) -> HandshakeRate {
        let limits = Limits { handshakes_per_ip_per_sec: per_sec, handshakes_per_ip_burst: burst, ..Limits::default() };
        HandshakeRate::new(&limits)
    }

    #[test]
    fn burst_then_refused_per_address() {
        let r = rate(1, 3);
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        for _ in 0..3 {
            assert!(r.check(a).is_ok());
        }
        let wait = r.check(a).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(r.check(b).is_ok());
        assert_eq!(r.tracked(), 2);
    }

    #[test]
    fn ipv6_counts_per_64_and_off_means_off() {
        let r = rate(1, 1);
        assert!(r.check("2001:db8:1:2::1".parse().unwrap()).is_ok());
        assert!(r.check("2001:db8:1:2::ffff".parse().unwrap()).is_err());
        assert!(r.check("2001:db8:1:3::1".parse().unwrap()).is_ok());
        let off = rate(0, 0);
        for _ in 0..100 {
            assert!(off.check("203.0.113.1".parse().unwrap()).is_ok());
        }
    }
}
