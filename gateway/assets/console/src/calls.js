/**
 * Calls waiting for the server: requests, acked sends/publishes and internal
 * subscribe/refresh frames, by the `id` the client generated, each with its own timeout.
 * A request made while disconnected is held here unsent until the next connection.
 */
export class PendingCalls {
    clock;
    map = new Map();
    constructor(clock) {
        this.clock = clock;
    }
    /** Registers a call; after `timeoutMs` it is removed and rejected with `timeout()`. */
    add(id, p, timeoutMs, timeout) {
        p.timer = this.clock.setTimeout(() => {
            this.map.delete(id);
            p.reject(timeout());
        }, timeoutMs);
        this.map.set(id, p);
    }
    /** Removes a call (its answer arrived, or it failed), stopping its timer. */
    take(id) {
        const p = this.map.get(id);
        if (!p)
            return undefined;
        this.map.delete(id);
        if (p.timer !== undefined)
            this.clock.clearTimeout(p.timer);
        return p;
    }
    /** Requests still waiting to be written. */
    unsent() {
        return [...this.map.values()].filter((p) => !p.sent && p.frame);
    }
    /** The socket is gone: everything written on it fails; unsent requests keep waiting. */
    rejectSent(err) {
        for (const [id, p] of [...this.map])
            if (p.sent)
                this.take(id)?.reject(err);
    }
    rejectAll(err) {
        for (const id of [...this.map.keys()])
            this.take(id)?.reject(err);
    }
}
