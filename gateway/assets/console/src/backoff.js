/**
 * Reconnect delays: exponential backoff with full jitter,
 * `delay = random() * min(maxMs, baseMs * 2^attempt)`, so attempt 0 waits up to
 * `baseMs`, attempt 1 up to `2*baseMs`, … capped at `maxMs`. `random` is injectable
 * so tests can pin the draw.
 */
/** The cap (upper bound of the jittered delay) for an attempt, starting at 0. */
export function backoffCap(attempt, baseMs = 1000, maxMs = 30000) {
    // 2^attempt overflows to Infinity for huge attempts; min() keeps it at maxMs.
    return Math.min(maxMs, baseMs * Math.pow(2, Math.max(0, attempt)));
}
/** A full-jitter delay for an attempt: uniform in [0, cap]. */
export function backoffDelay(attempt, opts = {}) {
    const cap = backoffCap(attempt, opts.baseMs ?? 1000, opts.maxMs ?? 30000);
    const r = (opts.random ?? Math.random)();
    // Clamp a misbehaving random source into [0, 1].
    const u = Number.isFinite(r) ? Math.min(1, Math.max(0, r)) : 0;
    return Math.floor(u * cap);
}
/** Counts consecutive failed attempts and hands out their delays. */
export class Backoff {
    opts;
    attempt = 0;
    constructor(opts = {}) {
        this.opts = opts;
    }
    /** Failed attempts since the last reset. */
    get attempts() {
        return this.attempt;
    }
    /** The delay before the next attempt; counts it. */
    next() {
        const d = backoffDelay(this.attempt, this.opts);
        this.attempt += 1;
        return d;
    }
    /** After a connection stayed up: start again from `baseMs`. */
    reset() {
        this.attempt = 0;
    }
}
