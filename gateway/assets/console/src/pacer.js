/**
 * Client-side view of the server's per-connection frame buckets (defaults 10/s with a
 * burst of 20, and 100/min; 20 limited frames in a row close the connection with 4008).
 * Every written frame is recorded; the offline-queue flush waits for a token, so a
 * reconnect with a full queue never trips the limit. Live calls are never delayed.
 */
export class Pacer {
    clock;
    buckets;
    constructor(clock, opts = {}) {
        this.clock = clock;
        const now = clock.now();
        const perSecond = opts.perSecond ?? 9;
        const burst = opts.burst ?? 18;
        const perMinute = opts.perMinute ?? 95;
        this.buckets = [
            { capacity: burst, perMs: perSecond / 1000, tokens: burst, at: now },
            { capacity: perMinute, perMs: perMinute / 60_000, tokens: perMinute, at: now },
        ];
    }
    /** A new connection: the server's buckets start full. */
    reset() {
        const now = this.clock.now();
        for (const b of this.buckets) {
            b.tokens = b.capacity;
            b.at = now;
        }
    }
    /** A frame was written (may run into debt: live frames are never held back). */
    record() {
        for (const b of this.refill())
            b.tokens -= 1;
    }
    /** Ms until a frame can be written without being limited (0: now). */
    wait() {
        let ms = 0;
        for (const b of this.refill())
            if (b.tokens < 1)
                ms = Math.max(ms, Math.ceil((1 - b.tokens) / b.perMs));
        return ms;
    }
    refill() {
        const now = this.clock.now();
        for (const b of this.buckets) {
            b.tokens = Math.min(b.capacity, b.tokens + (now - b.at) * b.perMs);
            b.at = now;
        }
        return this.buckets;
    }
}
