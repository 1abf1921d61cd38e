/**
 * The client's public option and notification types: constructor options (credentials,
 * socket class, reconnect, offline queue, timeouts, heartbeat, injectable clock/random),
 * connection states, and the payloads of the `state` and `recovered` notifications.
 */
export {};
