/**
 * Writing `subscribe` frames: new channels subscribed in the same tick travel in one
 * frame; after a (re)connect every channel goes out again in one frame carrying
 * `recover: {channel: {offset, epoch}}` for the channels with a known position (§9),
 * except channels with a channel token, which need a frame each. That frame also names
 * the connection's own channel (`user:<sub>`/`agent:<id>`, joined by the server at
 * connect), so its answer tells where that channel stood too; with no other channel it
 * is the one frame sent, and `connect()` never waits for its answer. The answers confirm
 * or reject channels, report `recovered` per channel after a reconnect, and give each
 * joined channel's start position (`positions`), kept where the client has none.
 */
import { GatewayError } from "./errors.js";
import { TRANSIENT_CODES } from "./policy.js";
export class Subscriber {
    d;
    batch = new Set();
    scheduled = false;
    constructor(d) {
        this.d = d;
    }
    /** A channel subscribed while connected: joins with the others of this tick. */
    add(channel) {
        this.batch.add(channel);
        if (this.scheduled)
            return;
        this.scheduled = true;
        queueMicrotask(() => {
            this.scheduled = false;
            const names = [...this.batch].filter((c) => this.d.channels.has(c));
            this.batch.clear();
            if (names.length && this.d.live() !== undefined)
                void this.send(names, false);
        });
    }
    /** Unsubscribed before its frame went out. */
    drop(channel) {
        this.batch.delete(channel);
    }
    /** The connection ended. */
    clear() {
        this.batch.clear();
    }
    /**
     * After `connected`: every channel (the first time, those subscribed so far). Returns a
     * promise only when a channel token function must be awaited; it settles once every
     * frame is written.
     */
    resubscribe(reconnect) {
        this.batch.clear();
        const { channels } = this.d;
        const names = reconnect ? channels.resubscribeSet() : channels.names();
        // The own channel is joined already; naming it gets its position (and, after a
        // reconnect, recovers it). Cheap: it rides in the frame of the other plain channels.
        const own = channels.ownChannel();
        if (own !== undefined && !names.includes(own))
            names.push(own);
        return names.length ? this.send(names, reconnect) : undefined;
    }
    send(names, reconnect) {
        const { channels } = this.d;
        const plain = names.filter((c) => channels.token(c) === undefined);
        if (plain.length)
            this.frame(plain, undefined, reconnect);
        const waits = [];
        const conn = this.d.live();
        for (const ch of names.filter((c) => channels.token(c) !== undefined)) {
            const t = channels.token(ch);
            if (typeof t === "string") {
                this.frame([ch], t, reconnect);
                continue;
            }
            const written = Promise.resolve()
                .then(t)
                .then((tok) => {
                if (conn !== undefined && this.d.live() === conn)
                    this.frame([ch], tok, reconnect);
            }, (e) => {
                const err = new GatewayError("token_error", `channel token for ${ch}: ${String(e)}`, { channel: ch, cause: e });
                channels.reject(ch, err);
                this.d.emit("error", err);
            });
            waits.push(written);
        }
        return waits.length ? Promise.all(waits).then(() => undefined) : undefined;
    }
    frame(names, token, reconnect) {
        const { channels } = this.d;
        const recover = channels.recoverFor(names);
        const frame = { type: "subscribe", channels: names, ...(token ? { token } : {}), ...(recover ? { recover } : {}) };
        this.d.call(frame).then((res) => {
            const rejected = new Map((res?.rejected ?? []).map((r) => [r.channel, r]));
            for (const ch of names) {
                const r = rejected.get(ch);
                if (r) {
                    const err = new GatewayError(r.code, `subscribe ${ch}: ${r.message}`, { channel: ch });
                    channels.reject(ch, err);
                    // A first refusal, or one a reconnect cannot fix, drops the channel.
                    if (!reconnect || !TRANSIENT_CODES.has(r.code))
                        channels.forget(ch);
                    this.d.emit("error", err);
                    continue;
                }
                const recovered = res?.recovered?.[ch] === true;
                const sent = recover?.[ch];
                // Only an explicit refusal discards the position (an answer without the map keeps it).
                if (sent && res?.recovered?.[ch] === false)
                    channels.unrecoverable(ch, sent);
                channels.startAt(ch, res?.positions?.[ch]);
                channels.confirm(ch);
                if (reconnect)
                    this.d.emit("recovered", { channel: ch, recovered });
            }
        }, (err) => {
            if (err.code === "disconnected" || err.code === "closed")
                return; // again on the next connection
            for (const ch of names)
                channels.reject(ch, err);
            this.d.emit("error", err);
        });
    }
}
