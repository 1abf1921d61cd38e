/**
 * Wire types of the gateway's canonical JSON encoding (`gateway.v1.json`, contract §2
 * and §9): every client and server frame as a discriminated union on `type`, error and
 * close codes, and the shapes of the built-in methods' results. Types only, plus a few
 * constants; no I/O.
 */
/** The subprotocol this client speaks. */
export const SUBPROTOCOL = "gateway.v1.json";
// ---------------------------------------------------------------- close codes
/** WebSocket close codes the gateway uses (contract §6). */
export const CloseCode = {
    Normal: 1000,
    GoingAway: 1001,
    Abnormal: 1006,
    Policy: 1008,
    TooBig: 1009,
    Internal: 1011,
    ProtocolErrors: 4000,
    Unauthorized: 4001,
    TokenExpired: 4002,
    Forbidden: 4003,
    ConnectionLimit: 4004,
    RateLimited: 4008,
    SlowConsumer: 4009,
    Disconnected: 4010,
};
/** Close codes after which reconnecting cannot help: the client stops. */
export const TERMINAL_CLOSE_CODES = new Set([
    CloseCode.Unauthorized,
    CloseCode.Forbidden,
    CloseCode.Disconnected,
]);
/** Parses one text message into a server frame; `undefined` when it is not one. */
export function decodeServerFrame(text) {
    let v;
    try {
        v = JSON.parse(text);
    }
    catch {
        return undefined;
    }
    if (v === null || typeof v !== "object" || typeof v.type !== "string") {
        return undefined;
    }
    return v;
}
