/**
 * What a closed socket means for the client: reconnect or stop, and the error that says
 * why. Refused handshakes (status known only with `ws`) stop on 400/401/403/404 and
 * retry otherwise (429, 503); a `disconnecting{reconnect:false}` notice or a terminal
 * close code (4001, 4003, 4010) stops; everything else (1001, 1006, 1011, 4002, 4009, …)
 * reconnects.
 */
import { GatewayError } from "./errors.js";
import { CloseCode, TERMINAL_CLOSE_CODES } from "./frames.js";
const CLOSE_NAMES = {
    [CloseCode.Unauthorized]: "unauthorized",
    [CloseCode.TokenExpired]: "token_expired",
    [CloseCode.Forbidden]: "forbidden",
    [CloseCode.Disconnected]: "kicked",
    [CloseCode.RateLimited]: "rate_limited",
    [CloseCode.ProtocolErrors]: "protocol_errors",
};
/** Subscribe rejections a later reconnect may fix; others drop the channel. */
export const TRANSIENT_CODES = new Set(["unavailable", "timeout", "internal", "rate_limited"]);
export function closeVerdict(f) {
    const r = f.refusal;
    if (r) {
        const status = r.status;
        const code = r.body?.code ?? (status === 401 ? "unauthorized" : status === 403 ? "forbidden" : "handshake_refused");
        const error = new GatewayError(code, r.body?.message ?? `handshake refused with HTTP ${status}`, { status, closeCode: f.code });
        // Credentials, origin, a bad URL or format: retrying cannot help.
        return { terminal: [400, 401, 403, 404].includes(status), error };
    }
    const n = f.notice;
    const name = n?.reason ?? CLOSE_NAMES[f.code] ?? "disconnected";
    const error = new GatewayError(name, `connection closed with ${f.code}${f.reason ? ` (${f.reason})` : ""}${n ? `: ${n.reason}` : ""}`, {
        closeCode: f.code,
    });
    const terminal = (n !== undefined && !n.reconnect) || TERMINAL_CLOSE_CODES.has(f.code) || !f.reconnectEnabled;
    return { terminal, error };
}
