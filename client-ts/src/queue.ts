/**
 * The bounded offline queue: `send`/`publish` calls made while not connected wait here
 * (never more than `maxSize`) and are flushed in order after the next reconnect. When
 * full, policy `dropOldest` evicts the oldest entry (its promise rejects with
 * `queue_overflow`) and `error` refuses the new one (`queue_full`).
 */

import { GatewayError } from "./errors.js";

export type OverflowPolicy = "dropOldest" | "error";

export interface OfflineQueueOptions {
  /** Most messages held (default 1000). */
  maxSize?: number;
  /** What to do when full (default `dropOldest`). */
  policy?: OverflowPolicy;
}

/** One waiting message with its caller's promise callbacks. */
export interface Queued<T> {
  item: T;
  resolve: () => void;
  reject: (e: GatewayError) => void;
}

export class OfflineQueue<T> {
  readonly maxSize: number;
  readonly policy: OverflowPolicy;
  private items: Queued<T>[] = [];

  constructor(opts: OfflineQueueOptions = {}) {
    const max = opts.maxSize ?? 1000;
    if (!Number.isInteger(max) || max < 1) throw new RangeError("offlineQueue.maxSize must be a positive integer");
    this.maxSize = max;
    this.policy = opts.policy ?? "dropOldest";
  }

  get size(): number {
    return this.items.length;
  }

  /** Adds an entry, applying the overflow policy. Returns false when refused (`error`). */
  push(entry: Queued<T>): boolean {
    if (this.items.length >= this.maxSize) {
      if (this.policy === "error") {
        entry.reject(new GatewayError("queue_full", `offline queue is full (${this.maxSize} messages)`));
        return false;
      }
      const dropped = this.items.shift();
      dropped?.reject(
        new GatewayError("queue_overflow", `dropped from the offline queue (full at ${this.maxSize} messages)`),
      );
    }
    this.items.push(entry);
    return true;
  }

  /** The oldest entry, left in place. */
  peek(): Queued<T> | undefined {
    return this.items[0];
  }

  /** Removes and returns the oldest entry. */
  shift(): Queued<T> | undefined {
    return this.items.shift();
  }

  /** Removes and returns every entry, oldest first. */
  drain(): Queued<T>[] {
    const all = this.items;
    this.items = [];
    return all;
  }

  /** Rejects and removes every entry. */
  rejectAll(e: GatewayError): void {
    for (const q of this.drain()) q.reject(e);
  }
}
