//! The client's view of the server's per-connection frame buckets (10/s with a burst of
//! 20, and 100/min; 20 limited frames in a row close the connection with 4008 and no
//! reconnect). Every written frame is recorded; flushing the offline queue waits for a
//! token, so a reconnect with a full queue never trips the limit. Live frames are
//! recorded but never held back, as in the TypeScript client.

use std::time::Duration;

use tokio::time::Instant;

/// The budget the pacer keeps to, a little under the server's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained frames per second (server: 10).
    pub per_second: f64,
    /// Burst bucket size (server: 20).
    pub burst: f64,
    /// Frames per minute (server: 100).
    pub per_minute: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit { per_second: 9.0, burst: 18.0, per_minute: 95.0 }
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Most tokens held.
    capacity: f64,
    /// Tokens added per second.
    rate: f64,
    /// Tokens now (negative: in debt after live frames).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

/// Two buckets that every frame draws from.
#[derive(Debug)]
pub struct Pacer {
    /// Per-second (burst) and per-minute buckets.
    buckets: [Bucket; 2],
}

impl Pacer {
    /// Full buckets under `limit`.
    pub fn new(limit: RateLimit) -> Self {
        let now = Instant::now();
        let b = |capacity: f64, rate: f64| Bucket { capacity, rate, tokens: capacity, at: now };
        Pacer { buckets: [b(limit.burst, limit.per_second), b(limit.per_minute, limit.per_minute / 60.0)] }
    }

    /// A new connection: the server's buckets start full.
    pub fn reset(&mut self) {
        let now = Instant::now();
        for b in &mut self.buckets {
            b.tokens = b.capacity;
            b.at = now;
        }
    }

    /// A frame was written.
    pub fn record(&mut self) {
        self.refill();
        for b in &mut self.buckets {
            b.tokens -= 1.0;
        }
    }

    /// How long until a frame can go out unlimited (zero: now).
    pub fn wait(&mut self) -> Duration {
        self.refill();
        self.buckets
            .iter()
            .filter(|b| b.tokens < 1.0 && b.rate > 0.0)
            .map(|b| Duration::from_secs_f64((1.0 - b.tokens) / b.rate))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    fn refill(&mut self) {
        let now = Instant::now();
        for b in &mut self.buckets {
            let dt = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens = (b.tokens + dt * b.rate).min(b.capacity);
            b.at = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_paced_flush_never_trips_the_servers_buckets() {
        let mut p = Pacer::new(RateLimit::default());
        // The server's own buckets, fed the same frames.
        let mut server = Pacer::new(RateLimit { per_second: 10.0, burst: 20.0, per_minute: 100.0 });
        let start = Instant::now();
        let mut sent = 0u32;
        while start.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(p.wait()).await;
            p.record();
            assert_eq!(server.wait(), Duration::ZERO, "frame {sent} would be limited");
            server.record();
            sent += 1;
            if sent == 18 {
                assert!(start.elapsed() < Duration::from_millis(1), "the burst goes out at once");
                assert!(p.wait() > Duration::ZERO);
            }
        }
        // Two minutes at most 95 + 2·95 per minute, and not much less.
        assert!((180..=300).contains(&sent), "{sent}");
    }
}
