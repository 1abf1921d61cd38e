/**
 * Public entry point of the gateway client: `GatewayClient`, `GatewayError`, the wire
 * types of every frame, and the small building blocks (backoff, offline queue, JWT
 * expiry) for callers who want them.
 */
export { GatewayClient } from "./client.js";
export { GatewayError } from "./errors.js";
export * from "./frames.js";
export { Backoff, backoffCap, backoffDelay } from "./backoff.js";
export { OfflineQueue } from "./queue.js";
export { Pacer } from "./pacer.js";
export { jwtExpiryMs, looksLikeJwt } from "./token.js";
