/**
 * Calls waiting for the server: requests, acked sends/publishes and internal
 * subscribe/refresh frames, by the `id` the client generated, each with its own timeout.
 * A request made while disconnected is held here unsent until the next connection.
 */

import type { GatewayError } from "./errors.js";
import type { ClientFrame } from "./frames.js";
import type { Clock } from "./transport.js";

export interface Pending {
  resolve: (v: any) => void;
  reject: (e: GatewayError) => void;
  /** Written on the current socket (false: a request waiting for a connection). */
  sent: boolean;
  /** For requests waiting to be written: the frame and its call order. */
  frame?: ClientFrame;
  seq?: number;
  timer?: unknown;
}

export class PendingCalls {
  private readonly map = new Map<string, Pending>();

  constructor(private readonly clock: Clock) {}

  /** Registers a call; after `timeoutMs` it is removed and rejected with `timeout()`. */
  add(id: string, p: Pending, timeoutMs: number, timeout: () => GatewayError): void {
    p.timer = this.clock.setTimeout(() => {
      this.map.delete(id);
      p.reject(timeout());
    }, timeoutMs);
    this.map.set(id, p);
  }

  /** Removes a call (its answer arrived, or it failed), stopping its timer. */
  take(id: string): Pending | undefined {
    const p = this.map.get(id);
    if (!p) return undefined;
    this.map.delete(id);
    if (p.timer !== undefined) this.clock.clearTimeout(p.timer);
    return p;
  }

  /** Requests still waiting to be written. */
  unsent(): Pending[] {
    return [...this.map.values()].filter((p) => !p.sent && p.frame);
  }

  /** The socket is gone: everything written on it fails; unsent requests keep waiting. */
  rejectSent(err: GatewayError): void {
    for (const [id, p] of [...this.map]) if (p.sent) this.take(id)?.reject(err);
  }

  rejectAll(err: GatewayError): void {
    for (const id of [...this.map.keys()]) this.take(id)?.reject(err);
  }
}
