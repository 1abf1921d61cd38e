/**
 * The client's public option and notification types: constructor options (credentials,
 * socket class, reconnect, offline queue, timeouts, heartbeat, injectable clock/random),
 * connection states, and the payloads of the `state` and `recovered` notifications.
 */

import type { GatewayError } from "./errors.js";
import type { ChannelToken } from "./channels.js";
import type { RateOptions } from "./pacer.js";
import type { OfflineQueueOptions } from "./queue.js";
import type { Clock, WebSocketConstructor } from "./transport.js";

export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

export interface ReconnectOptions {
  /** First backoff cap, ms (default 1000). */
  baseMs?: number;
  /** Largest backoff cap, ms (default 30000). */
  maxMs?: number;
  /** Consecutive failed attempts before giving up (default: unlimited). */
  maxRetries?: number;
  /** A connection up this long resets the backoff (default 5000 ms). */
  stableMs?: number;
}

export interface GatewayClientOptions {
  /** `ws(s)://host:port/ws` (a query string is kept). */
  url: string;
  /** A JWT or an agent API key. */
  token?: string;
  /** Called before every (re)connect and before each refresh; wins over `token`. */
  getToken?: () => string | Promise<string>;
  /**
   * How credentials travel: `query` (`?token=`, the only way in browsers; default),
   * `header` (`Authorization: Bearer`, needs the `ws` package) or `authenticate`
   * (an in-band frame right after the socket opens, keeping tokens out of URLs/logs).
   */
  auth?: "query" | "header" | "authenticate";
  /** The WebSocket class; default `globalThis.WebSocket`. Node 20: pass `ws`'s. */
  WebSocket?: WebSocketConstructor;
  /** `false` disables reconnecting (default: on). */
  reconnect?: boolean | ReconnectOptions;
  /** Bounded queue for `send`/`publish` while not connected; `false` rejects them. */
  offlineQueue?: false | OfflineQueueOptions;
  /** Default `request` timeout, ms (default 10000). */
  requestTimeoutMs?: number;
  /** How long `send`/`publish` wait for their `ack` once written, ms (default 10000). */
  ackTimeoutMs?: number;
  /** Refresh a JWT this long before its `exp` (default 60000; half the lifetime when shorter). */
  refreshBeforeMs?: number;
  /** Client pings to detect dead connections; `false` disables (default: every heartbeatMs, 10 s timeout). */
  heartbeat?: false | { intervalMs?: number; timeoutMs?: number };
  /**
   * Pace the offline-queue flush under the server's frame limits (default a little under
   * its defaults: 9/s, burst 18, 95/min); `false` flushes at once. Live calls are never held.
   */
  rateLimit?: false | RateOptions;
  /** Injectable time and timers (tests). */
  clock?: Clock;
  /** Injectable uniform random in [0, 1) for the backoff jitter (tests). */
  random?: () => number;
}

export interface StateInfo {
  previous: ConnectionState;
  /** Why the client is reconnecting or closed. */
  error?: GatewayError;
  /** Reconnecting: the attempt number (1 = first retry) and the delay before it. */
  attempt?: number;
  delayMs?: number;
}

/** After a reconnect, per re-subscribed channel: whether every missed event is replayed. */
export interface RecoveredInfo {
  channel: string;
  /** `false`: events may have been missed; refetch the channel's state. */
  recovered: boolean;
}

export interface RequestOptions {
  timeoutMs?: number;
}

export interface SubscribeOptions {
  /** Channel JWT for `session:` channels (contract §3). */
  token?: ChannelToken;
}

