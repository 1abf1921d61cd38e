/**
 * The WebSocket seam: the minimal socket surface the client uses (what browsers' and the
 * `ws` package's WebSocket both provide), an injectable clock, and the `ws`-only hook
 * that reads the HTTP status of a refused handshake. Browsers never reveal that status:
 * a refused handshake there is an `error` then a close with 1006, exactly like a network
 * failure.
 */
import { SUBPROTOCOL } from "./frames.js";
/**
 * Opens a socket speaking `gateway.v1.json`, with the credential in `?token=` (works for
 * JWTs and API keys, and in browsers), in an `Authorization` header (`ws` only), or not
 * at all (`authenticate`: sent in band once open).
 */
export function createSocket(WS, base, token, auth) {
    const url = new URL(base);
    if (auth === "query")
        url.searchParams.set("token", token);
    if (auth === "header")
        return new WS(url.toString(), SUBPROTOCOL, { headers: { Authorization: `Bearer ${token}` } });
    return new WS(url.toString(), SUBPROTOCOL);
}
export const systemClock = {
    now: () => Date.now(),
    setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
    clearTimeout: (h) => globalThis.clearTimeout(h),
};
/**
 * With `ws`: records the status and body of a refused handshake, then aborts the socket
 * (which then reports `error` and a 1006 close as usual). No effect in browsers.
 */
export function watchRefusal(sock, clock, onRefusal) {
    if (typeof sock.on !== "function")
        return;
    sock.on("unexpected-response", (_req, res) => {
        const refusal = { status: res.statusCode ?? 0 };
        onRefusal(refusal);
        let text = "";
        let done = false;
        const finish = () => {
            if (done)
                return;
            done = true;
            clock.clearTimeout(timer);
            try {
                const body = JSON.parse(text);
                if (body && typeof body === "object")
                    refusal.body = body;
            }
            catch {
                // not JSON: keep the status alone
            }
            // A listener for `unexpected-response` makes `ws` wait for us to abort.
            if (sock.terminate)
                sock.terminate();
            else
                sock.close();
        };
        const timer = clock.setTimeout(finish, 1000);
        res.on("data", (chunk) => {
            if (text.length < 4096)
                text += String(chunk);
        });
        res.on("end", finish);
        res.on("error", finish);
    });
}
/** Text of a message event's data (string for text frames; bytes decoded as UTF-8). */
export function messageText(data) {
    if (typeof data === "string")
        return data;
    if (data instanceof ArrayBuffer)
        return new TextDecoder().decode(data);
    if (ArrayBuffer.isView(data))
        return new TextDecoder().decode(data);
    return undefined;
}
