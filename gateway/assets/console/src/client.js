/**
 * `GatewayClient`: one logical connection to the gateway that outlives sockets. It
 * (re)connects with full-jitter backoff, stops on terminal close codes and refused
 * credentials, re-subscribes every channel after a reconnect with `recover` positions,
 * de-duplicates replayed events, queues `send`/`publish` while offline (bounded) and
 * flushes them in order after the re-subscribe, matches `request`/`ack` ids with
 * timeouts, and refreshes a JWT shortly before its `exp`.
 */
import { Backoff } from "./backoff.js";
import { PendingCalls } from "./calls.js";
import { Channels } from "./channels.js";
import { Emitter } from "./emitter.js";
import { GatewayError } from "./errors.js";
import { CloseCode, decodeServerFrame } from "./frames.js";
import { Heartbeat, Refresher } from "./liveness.js";
import { closeVerdict } from "./policy.js";
import { Pacer } from "./pacer.js";
import { OfflineQueue } from "./queue.js";
import { Subscriber } from "./resubscribe.js";
import { jwtExpiryMs } from "./token.js";
import { createSocket, messageText, systemClock, watchRefusal } from "./transport.js";
/** The channel the server joins this principal to at connect (contract §1). */
function ownChannel(p) {
    if (!p || typeof p.id !== "string" || p.id === "")
        return undefined;
    return p.kind === "user" ? `user:${p.id}` : p.kind === "agent" ? `agent:${p.id}` : undefined;
}
/** Names `on` treats as client notifications; any other name is an event name. */
const RESERVED = new Set(["state", "error", "recovered", "connected", "event"]);
export class GatewayClient {
    opts;
    WS;
    clock;
    backoff;
    reconnectOpts;
    queue;
    channels = new Channels();
    events = new Emitter();
    pending;
    heartbeat;
    refresher;
    subscriber;
    pacer;
    _state = "idle";
    ws;
    /** Bumped per socket attempt and on close(): callbacks of older sockets are ignored. */
    gen = 0;
    seq = 0;
    token;
    connectedFrame;
    everConnected = false;
    notice;
    refusal;
    connectWaiters = [];
    closeWaiters = [];
    /** Connected, re-subscribe frames still being written: every new call waits in line. */
    resubscribing = false;
    /** Connected, the offline queue still draining (paced): new sends/publishes queue behind it. */
    flushing = false;
    flushTimer;
    retryTimer;
    stableTimer;
    constructor(opts) {
        if (!opts.url)
            throw new TypeError("GatewayClient: url is required");
        if (opts.token === undefined && opts.getToken === undefined)
            throw new TypeError("GatewayClient: token or getToken is required");
        const WS = opts.WebSocket ?? globalThis.WebSocket;
        if (!WS)
            throw new TypeError("GatewayClient: no global WebSocket; pass one, e.g. `import WebSocket from 'ws'`");
        this.opts = opts;
        this.WS = WS;
        this.clock = opts.clock ?? systemClock;
        this.token = opts.token;
        this.reconnectOpts = opts.reconnect === false ? undefined : opts.reconnect === true ? {} : (opts.reconnect ?? {});
        const ro = this.reconnectOpts;
        this.backoff = new Backoff({
            ...(ro?.baseMs !== undefined ? { baseMs: ro.baseMs } : {}),
            ...(ro?.maxMs !== undefined ? { maxMs: ro.maxMs } : {}),
            ...(opts.random ? { random: opts.random } : {}),
        });
        this.queue = opts.offlineQueue === false ? undefined : new OfflineQueue(opts.offlineQueue ?? {});
        this.pending = new PendingCalls(this.clock);
        this.pacer = opts.rateLimit === false ? undefined : new Pacer(this.clock, opts.rateLimit ?? {});
        this.heartbeat = new Heartbeat(this.clock, opts.heartbeat, () => this.write({ type: "ping" }), () => this.abandon("no answer to ping"));
        this.subscriber = new Subscriber({
            channels: this.channels,
            call: (frame) => this.call("s", frame),
            emit: (key, ...args) => this.events.emit(key, ...args),
            live: () => (this._state === "connected" ? this.gen : undefined),
        });
        this.refresher = new Refresher({
            clock: this.clock,
            getToken: opts.getToken,
            refreshBeforeMs: opts.refreshBeforeMs ?? 60_000,
            current: () => this.token,
            send: (token) => this.call("f", { type: "refresh", token }),
            accepted: (token, res) => {
                this.token = token;
                for (const ch of res?.left ?? []) {
                    this.channels.forget(ch);
                    this.events.emit("error", new GatewayError("forbidden", `left ${ch}: the refreshed token does not allow it`, { channel: ch }));
                }
            },
            error: (e) => this.events.emit("error", e),
        });
    }
    // ------------------------------------------------------------ public surface
    get state() {
        return this._state;
    }
    /** The node holding the connection (from the last `connected` frame). */
    get node() {
        return this.connectedFrame?.node;
    }
    get connectionId() {
        return this.connectedFrame?.connectionId;
    }
    get principal() {
        return this.connectedFrame?.principal;
    }
    /** Messages waiting in the offline queue. */
    get queuedCount() {
        return this.queue?.size ?? 0;
    }
    /** Connects (also after a terminal close); resolves once `connected` arrived. */
    connect() {
        if (this._state === "connected" && !this.resubscribing)
            return Promise.resolve();
        const p = new Promise((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
        if (this._state === "idle" || this._state === "closed") {
            this.backoff.reset();
            this.setState("connecting");
            void this.open();
        }
        return p;
    }
    /** Closes for good: no reconnect; pending calls and queued messages reject with `closed`. */
    close() {
        const sock = this.ws;
        let done = Promise.resolve();
        if (sock && sock.readyState < 2) {
            done = new Promise((r) => this.closeWaiters.push(r));
            // Stop waiting for a hung close after a second.
            const t = this.clock.setTimeout(() => this.closeWaiters.splice(0).forEach((r) => r()), 1000);
            this.closeWaiters.push(() => this.clock.clearTimeout(t));
            try {
                sock.close(1000, "client closed");
            }
            catch {
                // already closing
            }
        }
        this.ws = undefined;
        this.finish(new GatewayError("closed", "client closed"), false);
        return done;
    }
    on(name, fn) {
        return this.events.on(RESERVED.has(name) ? name : "ev:" + name, fn);
    }
    /** Events by name on any channel, even names that `on` reserves (`error`, `state`, …). */
    onEvent(eventName, fn) {
        return this.events.on("ev:" + eventName, fn);
    }
    /** Delivers the channel's events to `handler`; joins the channel now or on connect. */
    subscribe(channel, handler, opts = {}) {
        // A distinct function per call, so subscribing one handler twice yields two handles.
        const h = (ev) => handler(ev);
        const isNew = this.channels.add(channel, h, opts.token);
        const ready = this.channels.ready(channel);
        if (isNew && this._state === "connected")
            this.subscriber.add(channel);
        let active = true;
        return {
            channel,
            ready,
            unsubscribe: () => {
                if (!active)
                    return;
                active = false;
                if (!this.channels.remove(channel, h))
                    return;
                this.subscriber.drop(channel);
                if (this._state === "connected")
                    this.call("u", { type: "unsubscribe", channels: [channel] }).catch(() => { });
            },
        };
    }
    request(method, params, opts = {}) {
        if (this._state === "closed" || this._state === "idle") {
            const code = this._state === "closed" ? "closed" : "not_connected";
            return Promise.reject(new GatewayError(code, "not connected; call connect()"));
        }
        const id = this.nextId("r");
        const frame = { type: "request", id, method, params: params ?? {} };
        const timeoutMs = opts.timeoutMs ?? this.opts.requestTimeoutMs ?? 10_000;
        return new Promise((resolve, reject) => {
            const p = { resolve, reject, sent: false, frame, seq: ++this.seq };
            this.pending.add(id, p, timeoutMs, () => new GatewayError("timeout", `request ${method} timed out after ${timeoutMs} ms`));
            // While disconnected it waits, unsent, for the next connection.
            if (this._state === "connected" && !this.resubscribing && this.write(frame))
                p.sent = true;
        });
    }
    /** Sends an event upstream to backends; resolves on `ack`. Queued while offline. */
    send(event, data) {
        return this.outgoing({ type: "send", event, data: data ?? null });
    }
    /** Publishes on a channel (where the namespace allows clients to); resolves on `ack`. */
    publish(channel, event, data) {
        return this.outgoing({ type: "publish", channel, event, data: data ?? null });
    }
    /** Seed 000's helper: `send("status:update", {status, ...extra, timestamp})`. */
    sendStatusUpdate(status, extra = {}) {
        const body = typeof status === "string" ? { status, ...extra } : { ...status, ...extra };
        return this.send("status:update", { timestamp: this.clock.now(), ...body });
    }
    // ------------------------------------------------------------ connection lifecycle
    async open() {
        const gen = ++this.gen;
        this.notice = undefined;
        this.refusal = undefined;
        let token;
        try {
            token = this.opts.getToken ? await this.opts.getToken() : this.token;
            if (typeof token !== "string" || token === "")
                throw new Error("getToken returned no token");
        }
        catch (e) {
            if (gen !== this.gen)
                return;
            this.events.emit("error", new GatewayError("token_error", `getToken failed: ${String(e)}`, { cause: e }));
            return this.retryOrFinish(new GatewayError("token_error", "no token", { cause: e }));
        }
        if (gen !== this.gen)
            return;
        this.token = token;
        const exp = jwtExpiryMs(token);
        if (!this.opts.getToken && exp !== undefined && exp <= this.clock.now()) {
            return this.finish(new GatewayError("token_expired", "the token has expired; pass getToken to renew it"), true);
        }
        const auth = this.opts.auth ?? "query";
        let sock;
        try {
            sock = createSocket(this.WS, this.opts.url, token, auth);
        }
        catch (e) {
            // A malformed URL or similar: retrying will not help.
            return this.finish(new GatewayError("bad_request", `cannot open WebSocket: ${String(e)}`, { cause: e }), true);
        }
        this.ws = sock;
        watchRefusal(sock, this.clock, (r) => gen === this.gen && (this.refusal = r));
        sock.onopen = () => {
            if (gen === this.gen && auth === "authenticate")
                this.write({ type: "authenticate", token });
        };
        sock.onmessage = (ev) => {
            if (gen !== this.gen)
                return;
            const text = messageText(ev.data);
            const frame = text === undefined ? undefined : decodeServerFrame(text);
            if (frame)
                this.onFrame(frame);
        };
        sock.onerror = () => { }; // always followed by a close, which decides
        sock.onclose = (ev) => {
            if (gen === this.gen)
                this.onSocketClosed(ev.code, ev.reason);
            else
                this.closeWaiters.splice(0).forEach((r) => r());
        };
    }
    onFrame(f) {
        this.heartbeat.seen();
        switch (f.type) {
            case "connected":
                return this.onConnected(f);
            case "event":
                return this.onEventFrame(f);
            case "response": {
                const p = this.pending.take(f.id);
                if (f.error)
                    p?.reject(GatewayError.fromBody(f.error));
                else
                    p?.resolve(f.result);
                return;
            }
            case "ack":
                this.pending.take(f.id)?.resolve(undefined);
                return;
            case "error":
                return this.events.emit("error", GatewayError.fromBody(f.error));
            case "disconnecting":
                this.notice = f;
                return;
            default:
                return; // pong, heartbeat, unknown: liveness only
        }
    }
    onConnected(f) {
        const reconnect = this.everConnected;
        const prev = this.connectedFrame?.principal;
        // Positions of another principal's channels mean nothing to this one.
        if (prev && (prev.kind !== f.principal.kind || prev.id !== f.principal.id))
            this.channels.clearPositions();
        this.channels.setOwn(ownChannel(f.principal));
        this.connectedFrame = f;
        this.everConnected = true;
        this.setState("connected");
        this.stableTimer = this.clock.setTimeout(() => this.backoff.reset(), this.reconnectOpts?.stableMs ?? 5000);
        this.refresher.schedule();
        this.heartbeat.start(f.heartbeatMs);
        this.pacer?.reset();
        // Re-subscribe first, then flush the offline queue: a channel token from a function
        // may take a moment, and queued publishes to that channel must come after it.
        this.resubscribing = true;
        const gen = this.gen;
        const after = () => {
            if (gen !== this.gen)
                return;
            this.resubscribing = false;
            this.flushing = true;
            for (const w of this.connectWaiters.splice(0))
                w.resolve();
            this.events.emit("connected", f);
            this.flush(gen);
        };
        const waiting = this.subscriber.resubscribe(reconnect);
        if (waiting)
            void waiting.then(after);
        else
            after();
    }
    onSocketClosed(code, reason) {
        this.ws = undefined;
        this.stopConnection();
        this.pending.rejectSent(new GatewayError("disconnected", `connection closed (${code}${reason ? " " + reason : ""})`, { closeCode: code }));
        const verdict = closeVerdict({ code, reason, refusal: this.refusal, notice: this.notice, reconnectEnabled: !!this.reconnectOpts });
        if (verdict.terminal)
            this.finish(verdict.error, true);
        else
            this.retryOrFinish(verdict.error);
    }
    retryOrFinish(cause) {
        const ro = this.reconnectOpts;
        if (!ro)
            return this.finish(cause, true);
        if (ro.maxRetries !== undefined && this.backoff.attempts >= ro.maxRetries) {
            const e = new GatewayError("retries_exhausted", `gave up after ${this.backoff.attempts} reconnect attempts: ${cause.message}`, {
                cause,
                ...(cause.closeCode !== undefined ? { closeCode: cause.closeCode } : {}),
                ...(cause.status !== undefined ? { status: cause.status } : {}),
            });
            return this.finish(e, true);
        }
        const delayMs = this.backoff.next();
        this.setState("reconnecting", { error: cause, attempt: this.backoff.attempts, delayMs });
        this.retryTimer = this.clock.setTimeout(() => {
            this.retryTimer = undefined;
            void this.open();
        }, delayMs);
    }
    /** Ends the client: state `closed`, every waiting call rejected. */
    finish(error, report) {
        this.gen++;
        this.stopConnection();
        if (this.retryTimer !== undefined)
            this.clock.clearTimeout(this.retryTimer);
        this.retryTimer = undefined;
        const closed = error.code === "closed" ? error : new GatewayError("closed", `client closed: ${error.message}`, { cause: error });
        this.pending.rejectAll(closed);
        this.queue?.rejectAll(closed);
        this.channels.rejectAll(closed);
        for (const w of this.connectWaiters.splice(0))
            w.reject(error);
        if (this._state !== "closed")
            this.setState("closed", { error });
        if (report)
            this.events.emit("error", error);
    }
    /** Per-connection state and timers, when a socket ends. */
    stopConnection() {
        this.flushing = this.resubscribing = false;
        if (this.flushTimer !== undefined)
            this.clock.clearTimeout(this.flushTimer);
        this.flushTimer = undefined;
        this.heartbeat.stop();
        this.refresher.stop();
        if (this.stableTimer !== undefined)
            this.clock.clearTimeout(this.stableTimer);
        this.stableTimer = undefined;
        this.channels.unconfirmAll();
        this.subscriber.clear();
    }
    /** Gives up on a dead socket without waiting for its close handshake. */
    abandon(why) {
        const sock = this.ws;
        if (!sock)
            return;
        this.gen++;
        try {
            if (sock.terminate)
                sock.terminate();
            else
                sock.close(4000, why);
        }
        catch {
            // ignore
        }
        this.onSocketClosed(CloseCode.Abnormal, why);
    }
    // ------------------------------------------------------------ events
    onEventFrame(f) {
        if (!this.channels.accept(f))
            return;
        for (const h of this.channels.handlers(f.channel))
            this.events.safely(() => h(f));
        this.events.emit("event", f);
        this.events.emit("ev:" + f.event, f.data, f);
    }
    // ------------------------------------------------------------ outgoing
    outgoing(frame) {
        if (this._state === "closed")
            return Promise.reject(new GatewayError("closed", "client is closed"));
        return new Promise((resolve, reject) => {
            const connected = this._state === "connected";
            const free = connected && !this.flushing && !this.resubscribing;
            if (free && (this.pacer?.wait() ?? 0) === 0)
                return this.sendAcked(frame, resolve, reject);
            if (!this.queue) {
                if (connected)
                    return this.sendAcked(frame, resolve, reject);
                return reject(new GatewayError("not_connected", "not connected and the offline queue is off"));
            }
            // Offline, or over the rate limit: in line, flushed in order (and paced).
            this.queue.push({ item: { frame, seq: ++this.seq }, resolve, reject });
            if (free) {
                this.flushing = true;
                this.flush(this.gen);
            }
        });
    }
    sendAcked(frame, resolve, reject) {
        const id = this.nextId(frame.type === "send" ? "m" : "p");
        const timeoutMs = this.opts.ackTimeoutMs ?? 10_000;
        const what = `${frame.type} ${frame.event}`;
        this.pending.add(id, { resolve, reject, sent: true }, timeoutMs, () => new GatewayError("timeout", `no ack for ${what} within ${timeoutMs} ms`));
        if (!this.write({ ...frame, id })) {
            this.pending.take(id);
            reject(new GatewayError("disconnected", "the socket refused the frame"));
        }
    }
    /**
     * After (re)subscribing: the offline queue and the requests made while disconnected,
     * in call order, paced under the server's rate limit. Until it is done new sends and
     * publishes queue behind it; a drop leaves the rest queued for the next connection.
     */
    flush(gen) {
        this.flushTimer = undefined;
        for (;;) {
            if (gen !== this.gen || this._state !== "connected")
                return;
            const q = this.queue?.peek();
            let r;
            for (const p of this.pending.unsent())
                if (!r || (p.seq ?? 0) < (r.seq ?? 0))
                    r = p;
            if (!q && !r) {
                this.flushing = false;
                return;
            }
            const wait = this.pacer?.wait() ?? 0;
            if (wait > 0) {
                this.flushTimer = this.clock.setTimeout(() => this.flush(gen), wait);
                return;
            }
            if (q && (!r || q.item.seq < (r.seq ?? 0))) {
                this.queue?.shift();
                this.sendAcked(q.item.frame, q.resolve, q.reject);
            }
            else if (r) {
                if (!this.write(r.frame))
                    return;
                r.sent = true;
            }
        }
    }
    /** Sends a frame with a fresh id and resolves with its response's `result`. */
    call(prefix, frame) {
        const id = this.nextId(prefix);
        const timeoutMs = this.opts.requestTimeoutMs ?? 10_000;
        return new Promise((resolve, reject) => {
            this.pending.add(id, { resolve, reject, sent: true }, timeoutMs, () => new GatewayError("timeout", `${frame.type} timed out after ${timeoutMs} ms`));
            if (!this.write({ ...frame, id })) {
                this.pending.take(id);
                reject(new GatewayError("disconnected", "not connected"));
            }
        });
    }
    write(frame) {
        const ws = this.ws;
        if (!ws || ws.readyState !== 1)
            return false;
        try {
            ws.send(JSON.stringify(frame));
            this.pacer?.record();
            return true;
        }
        catch {
            return false;
        }
    }
    nextId(prefix) {
        return prefix + ++this.seq;
    }
    setState(state, extra = {}) {
        const previous = this._state;
        if (previous === state && state !== "reconnecting")
            return;
        this._state = state;
        this.events.emit("state", state, { previous, ...extra });
    }
}
