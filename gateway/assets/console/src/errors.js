/**
 * `GatewayError`: the one error type the client rejects promises with and emits on
 * `error`. `code` is either a server error code (contract §2: `forbidden`, `timeout`,
 * `unavailable`, …) or one of the client's own codes listed in `ClientErrorCode`.
 */
export class GatewayError extends Error {
    code;
    closeCode;
    status;
    retryAfterMs;
    channel;
    cause;
    constructor(code, message, details = {}) {
        super(message);
        this.name = "GatewayError";
        this.code = code;
        if (details.closeCode !== undefined)
            this.closeCode = details.closeCode;
        if (details.status !== undefined)
            this.status = details.status;
        if (details.retryAfterMs !== undefined)
            this.retryAfterMs = details.retryAfterMs;
        if (details.channel !== undefined)
            this.channel = details.channel;
        if (details.cause !== undefined)
            this.cause = details.cause;
    }
    /** From a server error body (`error` frame or failed `response`). */
    static fromBody(body, extra = {}) {
        const details = { ...extra };
        if (body.retryAfterMs !== undefined)
            details.retryAfterMs = body.retryAfterMs;
        return new GatewayError(body.code, body.message, details);
    }
}
