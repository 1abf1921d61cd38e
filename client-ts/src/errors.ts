/**
 * `GatewayError`: the one error type the client rejects promises with and emits on
 * `error`. `code` is either a server error code (contract §2: `forbidden`, `timeout`,
 * `unavailable`, …) or one of the client's own codes listed in `ClientErrorCode`.
 */

import type { ErrorBody, ServerErrorCode } from "./frames.js";

/** Codes the client produces itself (never sent by the server). */
export type ClientErrorCode =
  /** The connection dropped while the request / ack was pending. */
  | "disconnected"
  /** The client is closed (by `close()` or a terminal close). */
  | "closed"
  /** Not connected and the call cannot wait (offline queue off). */
  | "not_connected"
  /** Offline queue full with policy `error`. */
  | "queue_full"
  /** Dropped from the offline queue by policy `dropOldest`. */
  | "queue_overflow"
  /** `reconnect.maxRetries` consecutive attempts failed. */
  | "retries_exhausted"
  /** The handshake was refused with an HTTP status (see `status`). */
  | "handshake_refused"
  /** `getToken` threw or returned nothing. */
  | "token_error"
  /** An application handler threw. */
  | "handler_error";

export type GatewayErrorCode = ServerErrorCode | ClientErrorCode | (string & {});

export interface GatewayErrorDetails {
  /** WebSocket close code, when the error comes from a close. */
  closeCode?: number;
  /** HTTP status, when the handshake was refused and the socket implementation told us. */
  status?: number;
  /** With `rate_limited`. */
  retryAfterMs?: number;
  /** The channel concerned, for subscribe rejections. */
  channel?: string;
  /** The underlying error. */
  cause?: unknown;
}

export class GatewayError extends Error implements GatewayErrorDetails {
  readonly code: GatewayErrorCode;
  readonly closeCode?: number;
  readonly status?: number;
  readonly retryAfterMs?: number;
  readonly channel?: string;
  override readonly cause?: unknown;

  constructor(code: GatewayErrorCode, message: string, details: GatewayErrorDetails = {}) {
    super(message);
    this.name = "GatewayError";
    this.code = code;
    if (details.closeCode !== undefined) this.closeCode = details.closeCode;
    if (details.status !== undefined) this.status = details.status;
    if (details.retryAfterMs !== undefined) this.retryAfterMs = details.retryAfterMs;
    if (details.channel !== undefined) this.channel = details.channel;
    if (details.cause !== undefined) this.cause = details.cause;
  }

  /** From a server error body (`error` frame or failed `response`). */
  static fromBody(body: ErrorBody, extra: GatewayErrorDetails = {}): GatewayError {
    const details: GatewayErrorDetails = { ...extra };
    if (body.retryAfterMs !== undefined) details.retryAfterMs = body.retryAfterMs;
    return new GatewayError(body.code, body.message, details);
  }
}
