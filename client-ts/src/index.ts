/**
 * Public entry point of the gateway client: `GatewayClient`, `GatewayError`, the wire
 * types of every frame, and the small building blocks (backoff, offline queue, JWT
 * expiry) for callers who want them.
 */

export { GatewayClient } from "./client.js";
export type {
  ConnectionState,
  GatewayClientOptions,
  ReconnectOptions,
  RecoveredInfo,
  RequestOptions,
  StateInfo,
  SubscribeOptions,
} from "./options.js";
export type { ChannelHandler, ChannelToken, Subscription } from "./channels.js";
export { GatewayError, type ClientErrorCode, type GatewayErrorCode, type GatewayErrorDetails } from "./errors.js";
export * from "./frames.js";
export { Backoff, backoffCap, backoffDelay, type BackoffOptions } from "./backoff.js";
export { OfflineQueue, type OfflineQueueOptions, type OverflowPolicy } from "./queue.js";
export { Pacer, type RateOptions } from "./pacer.js";
export { jwtExpiryMs, looksLikeJwt } from "./token.js";
export type { Clock, WebSocketConstructor, WebSocketLike } from "./transport.js";
