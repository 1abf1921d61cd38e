/**
 * The client's channel registry: which channels the application subscribed to (with
 * their handlers and optional channel tokens), whether the current connection has
 * confirmed them, and a stream position per channel (contract §9), which drives
 * `recover` on re-subscribe. A position is either the last event delivered on the
 * channel, which also de-duplicates (within an epoch an offset at or below it is never
 * delivered again), or, on a channel where no event was delivered yet, the start
 * position a `subscribe` answer reported (`positions`: where the channel stood when the
 * connection joined it). A start position is only a place to recover from: it never
 * drops a live event, and an event delivered later replaces it.
 */
export class Channels {
    entries = new Map();
    positions = new Map();
    /** The connection's own channel (`user:<sub>`/`agent:<id>`), joined by the server. */
    own;
    /** Adds a handler; true when the channel is new (a subscribe frame is due). */
    add(channel, handler, token) {
        const e = this.entries.get(channel);
        if (e) {
            e.handlers.add(handler);
            if (token !== undefined)
                e.token = token;
            return false;
        }
        this.entries.set(channel, { handlers: new Set([handler]), token, confirmed: false, waiters: [] });
        return true;
    }
    /** Removes a handler; true when it was the channel's last (the channel is forgotten). */
    remove(channel, handler) {
        const e = this.entries.get(channel);
        if (!e || !e.handlers.delete(handler))
            return false;
        if (e.handlers.size > 0)
            return false;
        this.forget(channel);
        return true;
    }
    /** Forgets a channel entirely (handlers and position). */
    forget(channel) {
        this.entries.delete(channel);
        this.positions.delete(channel);
    }
    has(channel) {
        return this.entries.has(channel);
    }
    token(channel) {
        return this.entries.get(channel)?.token;
    }
    /** A promise settled by `confirm`/`reject` (at once when already confirmed). */
    ready(channel) {
        const e = this.entries.get(channel);
        if (!e || e.confirmed)
            return Promise.resolve();
        const p = new Promise((resolve, reject) => e.waiters.push({ resolve, reject }));
        p.catch(() => { }); // the rejection is also reported on `error`; never unhandled
        return p;
    }
    confirm(channel) {
        const e = this.entries.get(channel);
        if (!e)
            return;
        e.confirmed = true;
        for (const w of e.waiters.splice(0))
            w.resolve();
    }
    /** The server refused the channel: its waiters reject. */
    reject(channel, err) {
        const e = this.entries.get(channel);
        if (!e)
            return;
        for (const w of e.waiters.splice(0))
            w.reject(err);
    }
    /** The connection is gone: nothing is confirmed any more. */
    unconfirmAll() {
        for (const e of this.entries.values())
            e.confirmed = false;
    }
    /** Rejects every waiter (the client closed). */
    rejectAll(err) {
        for (const e of this.entries.values())
            for (const w of e.waiters.splice(0))
                w.reject(err);
    }
    /** Sets the principal's own channel (from `connected`); undefined when unknown. */
    setOwn(channel) {
        this.own = channel;
    }
    /** The principal's own channel, which every connection joins. */
    ownChannel() {
        return this.own;
    }
    /** Subscribed channel names. */
    names() {
        return [...this.entries.keys()];
    }
    /**
     * What to join after a reconnect: every subscribed channel plus every channel with a
     * known position and the own channel (the auto-joined `user:`/`agent:` one), so their
     * missed events come back.
     */
    resubscribeSet() {
        const set = new Set(this.entries.keys());
        for (const ch of this.positions.keys())
            set.add(ch);
        if (this.own !== undefined)
            set.add(this.own);
        return [...set];
    }
    /** The `recover` map for these channels, or undefined when none has a position. */
    recoverFor(channels) {
        let out;
        for (const ch of channels) {
            const p = this.positions.get(ch);
            if (p)
                (out ??= {})[ch] = { offset: p.offset, epoch: p.epoch };
        }
        return out;
    }
    position(channel) {
        const p = this.positions.get(channel);
        return p && { offset: p.offset, epoch: p.epoch };
    }
    /**
     * A `subscribe` answer's `positions` entry: where the channel stood when the connection
     * joined it. Taken only when the client has no position for the channel (it never
     * moves one) and still wants the channel (subscribed, or its own).
     */
    startAt(channel, pos) {
        if (!pos || typeof pos.offset !== "number" || typeof pos.epoch !== "string")
            return;
        if (this.positions.has(channel))
            return;
        if (!this.entries.has(channel) && channel !== this.own)
            return;
        this.positions.set(channel, { offset: pos.offset, epoch: pos.epoch, seen: false });
    }
    /**
     * The server could not recover from `sent` (`recovered: false`): that position is of no
     * more use (a lost store's epoch, or behind the window), so it is dropped, unless an
     * event delivered since replaced it. The answer's start position then takes its place.
     */
    unrecoverable(channel, sent) {
        const p = this.positions.get(channel);
        if (p && p.offset === sent.offset && p.epoch === sent.epoch)
            this.positions.delete(channel);
    }
    /** Forgets every position (the principal changed: they are someone else's). */
    clearPositions() {
        this.positions.clear();
    }
    /**
     * Records an event's position; false when it must not be delivered (an offset at or
     * below the last one delivered in the same epoch: a duplicate or out of order). A start
     * position never refuses an event: the event's position replaces it.
     */
    accept(ev) {
        if (typeof ev.offset !== "number" || typeof ev.epoch !== "string")
            return true;
        const last = this.positions.get(ev.channel);
        if (last && last.seen && last.epoch === ev.epoch && ev.offset <= last.offset)
            return false;
        this.positions.set(ev.channel, { offset: ev.offset, epoch: ev.epoch, seen: true });
        return true;
    }
    /** The channel's handlers (a copy, so handlers may unsubscribe while running). */
    handlers(channel) {
        const e = this.entries.get(channel);
        return e ? [...e.handlers] : [];
    }
}
