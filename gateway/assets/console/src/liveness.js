/**
 * Keeping a connection alive and authorised: `Heartbeat` pings a quiet connection and
 * reports it dead when nothing answers; `Refresher` swaps a JWT for a fresh one from
 * `getToken` shortly before its `exp` (half its lifetime when that is shorter). API keys
 * have no `exp` and are never refreshed.
 */
import { GatewayError } from "./errors.js";
import { jwtExpiryMs } from "./token.js";
export class Heartbeat {
    clock;
    opts;
    sendPing;
    dead;
    ping;
    pong;
    lastSeen = 0;
    constructor(clock, opts, sendPing, dead) {
        this.clock = clock;
        this.opts = opts;
        this.sendPing = sendPing;
        this.dead = dead;
    }
    /** Starts for a new connection; the server's heartbeat is the default interval. */
    start(serverHeartbeatMs) {
        this.stop();
        if (this.opts === false)
            return;
        this.lastSeen = this.clock.now();
        const interval = this.opts?.intervalMs ?? (serverHeartbeatMs > 0 ? serverHeartbeatMs : 30_000);
        const timeout = this.opts?.timeoutMs ?? 10_000;
        const tick = () => {
            // Only a quiet connection is pinged; any frame proves it alive.
            if (this.clock.now() - this.lastSeen >= interval) {
                this.sendPing();
                this.pong = this.clock.setTimeout(() => this.dead(), timeout);
            }
            this.ping = this.clock.setTimeout(tick, interval);
        };
        this.ping = this.clock.setTimeout(tick, interval);
    }
    /** Any frame arrived. */
    seen() {
        this.lastSeen = this.clock.now();
        if (this.pong !== undefined)
            this.clock.clearTimeout(this.pong);
        this.pong = undefined;
    }
    stop() {
        if (this.ping !== undefined)
            this.clock.clearTimeout(this.ping);
        if (this.pong !== undefined)
            this.clock.clearTimeout(this.pong);
        this.ping = this.pong = undefined;
    }
}
export class Refresher {
    d;
    timer;
    /** Bumped by `stop`, so an in-flight refresh of an old connection is ignored. */
    gen = 0;
    constructor(d) {
        this.d = d;
    }
    /** Plans the next refresh from the current token's `exp`. */
    schedule() {
        this.clear();
        const token = this.d.current();
        if (!this.d.getToken || !token)
            return;
        const exp = jwtExpiryMs(token);
        if (exp === undefined)
            return;
        const left = exp - this.d.clock.now();
        const before = Math.min(this.d.refreshBeforeMs, left / 2);
        this.timer = this.d.clock.setTimeout(() => void this.refresh(exp), Math.max(0, left - before));
    }
    stop() {
        this.gen++;
        this.clear();
    }
    clear() {
        if (this.timer !== undefined)
            this.d.clock.clearTimeout(this.timer);
        this.timer = undefined;
    }
    async refresh(oldExp) {
        const gen = this.gen;
        let token;
        try {
            token = await this.d.getToken();
        }
        catch (e) {
            if (gen === this.gen)
                this.d.error(new GatewayError("token_error", `getToken failed: ${String(e)}`, { cause: e }));
            return;
        }
        if (gen !== this.gen)
            return;
        const exp = jwtExpiryMs(token);
        if (token === this.d.current() || (exp !== undefined && exp <= oldExp)) {
            // Not newer: ask again later, until the old one runs out (then 4002 and a reconnect).
            const left = oldExp - this.d.clock.now();
            if (left > 1000)
                this.timer = this.d.clock.setTimeout(() => void this.refresh(oldExp), Math.max(1000, left / 2));
            return;
        }
        try {
            const res = await this.d.send(token);
            if (gen !== this.gen)
                return;
            this.d.accepted(token, res);
            this.schedule();
        }
        catch (e) {
            if (gen === this.gen)
                this.d.error(e instanceof GatewayError ? e : new GatewayError("internal", String(e)));
        }
    }
}
