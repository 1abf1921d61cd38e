/**
 * Keeping a connection alive and authorised: `Heartbeat` pings a quiet connection and
 * reports it dead when nothing answers; `Refresher` swaps a JWT for a fresh one from
 * `getToken` shortly before its `exp` (half its lifetime when that is shorter). API keys
 * have no `exp` and are never refreshed.
 */

import { GatewayError } from "./errors.js";
import type { RefreshResult } from "./frames.js";
import { jwtExpiryMs } from "./token.js";
import type { Clock } from "./transport.js";

export class Heartbeat {
  private ping: unknown;
  private pong: unknown;
  private lastSeen = 0;

  constructor(
    private readonly clock: Clock,
    private readonly opts: false | { intervalMs?: number; timeoutMs?: number } | undefined,
    private readonly sendPing: () => void,
    private readonly dead: () => void,
  ) {}

  /** Starts for a new connection; the server's heartbeat is the default interval. */
  start(serverHeartbeatMs: number): void {
    this.stop();
    if (this.opts === false) return;
    this.lastSeen = this.clock.now();
    const interval = this.opts?.intervalMs ?? (serverHeartbeatMs > 0 ? serverHeartbeatMs : 30_000);
    const timeout = this.opts?.timeoutMs ?? 10_000;
    const tick = () => {
      // Only a quiet connection is pinged; any frame proves it alive.
      if (this.clock.now() - this.lastSeen >= interval) {
        this.sendPing();
        this.pong = this.clock.setTimeout(() => this.dead(), timeout);
      }
      this.ping = this.clock.setTimeout(tick, interval);
    };
    this.ping = this.clock.setTimeout(tick, interval);
  }

  /** Any frame arrived. */
  seen(): void {
    this.lastSeen = this.clock.now();
    if (this.pong !== undefined) this.clock.clearTimeout(this.pong);
    this.pong = undefined;
  }

  stop(): void {
    if (this.ping !== undefined) this.clock.clearTimeout(this.ping);
    if (this.pong !== undefined) this.clock.clearTimeout(this.pong);
    this.ping = this.pong = undefined;
  }
}

export interface RefresherDeps {
  clock: Clock;
  getToken: (() => string | Promise<string>) | undefined;
  refreshBeforeMs: number;
  /** The token the connection currently runs on. */
  current: () => string | undefined;
  /** Sends `refresh` and resolves with its result. */
  send: (token: string) => Promise<RefreshResult>;
  /** The server accepted the new token. */
  accepted: (token: string, result: RefreshResult) => void;
  error: (e: GatewayError) => void;
}

export class Refresher {
  private timer: unknown;
  /** Bumped by `stop`, so an in-flight refresh of an old connection is ignored. */
  private gen = 0;

  constructor(private readonly d: RefresherDeps) {}

  /** Plans the next refresh from the current token's `exp`. */
  schedule(): void {
    this.clear();
    const token = this.d.current();
    if (!this.d.getToken || !token) return;
    const exp = jwtExpiryMs(token);
    if (exp === undefined) return;
    const left = exp - this.d.clock.now();
    const before = Math.min(this.d.refreshBeforeMs, left / 2);
    this.timer = this.d.clock.setTimeout(() => void this.refresh(exp), Math.max(0, left - before));
  }

  stop(): void {
    this.gen++;
    this.clear();
  }

  private clear(): void {
    if (this.timer !== undefined) this.d.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  private async refresh(oldExp: number): Promise<void> {
    const gen = this.gen;
    let token: string;
    try {
      token = await (this.d.getToken as () => string | Promise<string>)();
    } catch (e) {
      if (gen === this.gen) this.d.error(new GatewayError("token_error", `getToken failed: ${String(e)}`, { cause: e }));
      return;
    }
    if (gen !== this.gen) return;
    const exp = jwtExpiryMs(token);
    if (token === this.d.current() || (exp !== undefined && exp <= oldExp)) {
      // Not newer: ask again later, until the old one runs out (then 4002 and a reconnect).
      const left = oldExp - this.d.clock.now();
      if (left > 1000) this.timer = this.d.clock.setTimeout(() => void this.refresh(oldExp), Math.max(1000, left / 2));
      return;
    }
    try {
      const res = await this.d.send(token);
      if (gen !== this.gen) return;
      this.d.accepted(token, res);
      this.schedule();
    } catch (e) {
      if (gen === this.gen) this.d.error(e instanceof GatewayError ? e : new GatewayError("internal", String(e)));
    }
  }
}
