/**
 * Credential helpers: tell a JWT from an API key, and read a JWT's `exp` without
 * verifying it (only to know when to refresh). Uses `atob`, present in browsers and
 * Node 16+.
 */
/** Whether the value has a JWT's shape: three base64url segments. */
export function looksLikeJwt(token) {
    return /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(token);
}
/** The JWT's `exp` in ms since epoch, or undefined (API key, malformed, no exp). */
export function jwtExpiryMs(token) {
    if (!looksLikeJwt(token))
        return undefined;
    const payload = token.split(".")[1] ?? "";
    try {
        let b64 = payload.replace(/-/g, "+").replace(/_/g, "/");
        b64 += "=".repeat((4 - (b64.length % 4)) % 4);
        const bin = atob(b64);
        const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
        const claims = JSON.parse(new TextDecoder().decode(bytes));
        const exp = claims?.exp;
        return typeof exp === "number" && Number.isFinite(exp) ? exp * 1000 : undefined;
    }
    catch {
        return undefined;
    }
}
