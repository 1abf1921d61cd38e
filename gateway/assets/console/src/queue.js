/**
 * The bounded offline queue: `send`/`publish` calls made while not connected wait here
 * (never more than `maxSize`) and are flushed in order after the next reconnect. When
 * full, policy `dropOldest` evicts the oldest entry (its promise rejects with
 * `queue_overflow`) and `error` refuses the new one (`queue_full`).
 */
import { GatewayError } from "./errors.js";
export class OfflineQueue {
    maxSize;
    policy;
    items = [];
    constructor(opts = {}) {
        const max = opts.maxSize ?? 1000;
        if (!Number.isInteger(max) || max < 1)
            throw new RangeError("offlineQueue.maxSize must be a positive integer");
        this.maxSize = max;
        this.policy = opts.policy ?? "dropOldest";
    }
    get size() {
        return this.items.length;
    }
    /** Adds an entry, applying the overflow policy. Returns false when refused (`error`). */
    push(entry) {
        if (this.items.length >= this.maxSize) {
            if (this.policy === "error") {
                entry.reject(new GatewayError("queue_full", `offline queue is full (${this.maxSize} messages)`));
                return false;
            }
            const dropped = this.items.shift();
            dropped?.reject(new GatewayError("queue_overflow", `dropped from the offline queue (full at ${this.maxSize} messages)`));
        }
        this.items.push(entry);
        return true;
    }
    /** The oldest entry, left in place. */
    peek() {
        return this.items[0];
    }
    /** Removes and returns the oldest entry. */
    shift() {
        return this.items.shift();
    }
    /** Removes and returns every entry, oldest first. */
    drain() {
        const all = this.items;
        this.items = [];
        return all;
    }
    /** Rejects and removes every entry. */
    rejectAll(e) {
        for (const q of this.drain())
            q.reject(e);
    }
}
