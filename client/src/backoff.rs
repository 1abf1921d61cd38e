//! Reconnect delays: exponential backoff with full jitter. Attempt `n` (from 0) waits a
//! uniform random time in `[0, min(max, base·2ⁿ)]`, so a fleet of agents dropped by one
//! node does not come back in lock-step. The random source is injectable ([`Jitter`]) so
//! tests can pin the draw, and an optional retry limit turns "keep trying" into "give up
//! after N failed attempts in a row". The count resets once a connection stayed up for
//! [`BackoffConfig::stable_after`] (the connection task does that).

use std::{fmt, sync::Arc, time::Duration};

/// A uniform random number in `[0, 1)`; the jitter of each delay.
pub trait Jitter: Send + Sync {
    /// The next draw.
    fn unit(&self) -> f64;
}

/// The default jitter: the thread-local generator of `rand`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadJitter;

impl Jitter for ThreadJitter {
    fn unit(&self) -> f64 {
        rand::random_range(0.0..1.0)
    }
}

/// Any `Fn() -> f64` is a jitter source (e.g. `|| 0.5` in tests).
impl<F: Fn() -> f64 + Send + Sync> Jitter for F {
    fn unit(&self) -> f64 {
        self()
    }
}

/// How reconnecting paces itself.
#[derive(Clone)]
pub struct BackoffConfig {
    /// The cap of the first delay; doubles per failed attempt (seed 000: 1 s).
    pub base: Duration,
    /// The largest cap, so a long outage is retried at least this often (seed 000: 30 s).
    pub max: Duration,
    /// Give up after this many failed attempts in a row (`None`: never), so an agent
    /// pointed at a dead URL ends instead of retrying forever.
    pub max_retries: Option<u32>,
    /// A connection that stayed up this long resets the attempt count, so one flap after
    /// hours of uptime starts again from `base` instead of where the last outage ended.
    pub stable_after: Duration,
    /// The random source of the jitter; injectable for deterministic tests.
    pub jitter: Arc<dyn Jitter>,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_secs(1),
            max: Duration::from_secs(30),
            max_retries: None,
            stable_after: Duration::from_secs(5),
            jitter: Arc::new(ThreadJitter),
        }
    }
}

impl fmt::Debug for BackoffConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackoffConfig")
            .field("base", &self.base)
            .field("max", &self.max)
            .field("max_retries", &self.max_retries)
            .field("stable_after", &self.stable_after)
            .finish_non_exhaustive()
    }
}

/// The upper bound of attempt `attempt`'s delay: `min(max, base·2^attempt)`.
pub fn cap(attempt: u32, base: Duration, max: Duration) -> Duration {
    // 2^31 · base overflows long before it matters: saturate, then clamp.
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

/// Counts failed attempts in a row and hands out their delays.
#[derive(Debug)]
pub struct Backoff {
    /// The pacing rules.
    config: BackoffConfig,
    /// Failed attempts since the last reset; the exponent of the next cap.
    attempts: u32,
}

impl Backoff {
    /// A fresh counter.
    pub fn new(config: BackoffConfig) -> Self {
        Backoff { config, attempts: 0 }
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The delay before the next attempt, counting it; `None` once the retry limit is
    /// used up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.config.max_retries.is_some_and(|m| self.attempts >= m) {
            return None;
        }
        let cap = cap(self.attempts, self.config.base, self.config.max);
        let u = self.config.jitter.unit();
        // Clamp a misbehaving source into [0, 1].
        let u = if u.is_finite() { u.clamp(0.0, 1.0) } else { 0.0 };
        self.attempts = self.attempts.saturating_add(1);
        Some(cap.mul_f64(u))
    }

    /// A connection stayed up: start again from `base`.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// How long a connection must stay up before [`Backoff::reset`].
    pub fn stable_after(&self) -> Duration {
        self.config.stable_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(jitter: impl Jitter + 'static, max_retries: Option<u32>) -> Backoff {
        Backoff::new(BackoffConfig { jitter: Arc::new(jitter), max_retries, ..BackoffConfig::default() })
    }

    #[test]
    fn caps_double_from_one_second_to_thirty() {
        let caps: Vec<u64> =
            (0..8).map(|a| cap(a, Duration::from_secs(1), Duration::from_secs(30)).as_secs()).collect();
        assert_eq!(caps, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(cap(u32::MAX, Duration::from_secs(1), Duration::from_secs(30)), Duration::from_secs(30));
    }

    #[test]
    fn delays_grow_and_stay_within_bounds() {
        let mut top = with(|| 0.999_999, None);
        let mut prev = Duration::ZERO;
        for a in 0..12 {
            let d = top.next_delay().expect("no limit");
            assert!(d <= cap(a, Duration::from_secs(1), Duration::from_secs(30)), "{a}: {d:?}");
            assert!(d >= prev, "{a}: {d:?} < {prev:?}");
            prev = d;
        }
        assert!(prev > Duration::from_millis(29_900) && prev <= Duration::from_secs(30));
        let mut bottom = with(|| 0.0, None);
        assert!((0..10).all(|_| bottom.next_delay() == Some(Duration::ZERO)));
        let mut wild = with(|| f64::NAN, None);
        assert_eq!(wild.next_delay(), Some(Duration::ZERO));
        let mut over = with(|| 7.0, None);
        assert_eq!(over.next_delay(), Some(Duration::from_secs(1)));
        // The real source stays within the cap too.
        let mut real = with(ThreadJitter, None);
        for a in 0..20 {
            let d = real.next_delay().expect("no limit");
            assert!(d <= cap(a, Duration::from_secs(1), Duration::from_secs(30)));
        }
    }

    #[test]
    fn retry_limit_and_reset() {
        let mut b = with(|| 0.5, Some(3));
        assert_eq!(b.next_delay(), Some(Duration::from_millis(500)));
        assert_eq!(b.next_delay(), Some(Duration::from_secs(1)));
        assert_eq!(b.next_delay(), Some(Duration::from_secs(2)));
        assert_eq!(b.next_delay(), None);
        assert_eq!(b.attempts(), 3);
        b.reset();
        assert_eq!(b.next_delay(), Some(Duration::from_millis(500)));
    }
}
