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

import type { EventFrame, StreamPosition } from "./frames.js";
import type { GatewayError } from "./errors.js";

/** Receives a channel's events. */
export type ChannelHandler<D = unknown> = (event: EventFrame<D>) => void;

/** A channel JWT (for `session:` channels under the `token` policy), or how to get one. */
export type ChannelToken = string | (() => string | Promise<string>);

/** What `subscribe` returns. */
export interface Subscription {
  readonly channel: string;
  /** Settles when the server accepted (or rejected) the channel on the current connection. */
  readonly ready: Promise<void>;
  /** Stops delivery to this handler; the last handler of a channel also leaves it. */
  unsubscribe(): void;
}

interface Waiter {
  resolve: () => void;
  reject: (e: GatewayError) => void;
}

/** A channel's position, and whether an event delivered there set it. */
interface Tracked extends StreamPosition {
  /** false: a start position from a `subscribe` answer; no event was delivered since. */
  seen: boolean;
}

interface Entry {
  handlers: Set<ChannelHandler<any>>;
  token: ChannelToken | undefined;
  /** The current connection joined it. */
  confirmed: boolean;
  waiters: Waiter[];
}

export class Channels {
  private readonly entries = new Map<string, Entry>();
  private readonly positions = new Map<string, Tracked>();
  /** The connection's own channel (`user:<sub>`/`agent:<id>`), joined by the server. */
  private own: string | undefined;

  /** Adds a handler; true when the channel is new (a subscribe frame is due). */
  add(channel: string, handler: ChannelHandler<any>, token: ChannelToken | undefined): boolean {
    const e = this.entries.get(channel);
    if (e) {
      e.handlers.add(handler);
      if (token !== undefined) e.token = token;
      return false;
    }
    this.entries.set(channel, { handlers: new Set([handler]), token, confirmed: false, waiters: [] });
    return true;
  }

  /** Removes a handler; true when it was the channel's last (the channel is forgotten). */
  remove(channel: string, handler: ChannelHandler<any>): boolean {
    const e = this.entries.get(channel);
    if (!e || !e.handlers.delete(handler)) return false;
    if (e.handlers.size > 0) return false;
    this.forget(channel);
    return true;
  }

  /** Forgets a channel entirely (handlers and position). */
  forget(channel: string): void {
    this.entries.delete(channel);
    this.positions.delete(channel);
  }

  has(channel: string): boolean {
    return this.entries.has(channel);
  }

  token(channel: string): ChannelToken | undefined {
    return this.entries.get(channel)?.token;
  }

  /** A promise settled by `confirm`/`reject` (at once when already confirmed). */
  ready(channel: string): Promise<void> {
    const e = this.entries.get(channel);
    if (!e || e.confirmed) return Promise.resolve();
    const p = new Promise<void>((resolve, reject) => e.waiters.push({ resolve, reject }));
    p.catch(() => {}); // the rejection is also reported on `error`; never unhandled
    return p;
  }

  confirm(channel: string): void {
    const e = this.entries.get(channel);
    if (!e) return;
    e.confirmed = true;
    for (const w of e.waiters.splice(0)) w.resolve();
  }

  /** The server refused the channel: its waiters reject. */
  reject(channel: string, err: GatewayError): void {
    const e = this.entries.get(channel);
    if (!e) return;
    for (const w of e.waiters.splice(0)) w.reject(err);
  }

  /** The connection is gone: nothing is confirmed any more. */
  unconfirmAll(): void {
    for (const e of this.entries.values()) e.confirmed = false;
  }

  /** Rejects every waiter (the client closed). */
  rejectAll(err: GatewayError): void {
    for (const e of this.entries.values()) for (const w of e.waiters.splice(0)) w.reject(err);
  }

  /** Sets the principal's own channel (from `connected`); undefined when unknown. */
  setOwn(channel: string | undefined): void {
    this.own = channel;
  }

  /** The principal's own channel, which every connection joins. */
  ownChannel(): string | undefined {
    return this.own;
  }

  /** Subscribed channel names. */
  names(): string[] {
    return [...this.entries.keys()];
  }

  /**
   * What to join after a reconnect: every subscribed channel plus every channel with a
   * known position and the own channel (the auto-joined `user:`/`agent:` one), so their
   * missed events come back.
   */
  resubscribeSet(): string[] {
    const set = new Set(this.entries.keys());
    for (const ch of this.positions.keys()) set.add(ch);
    if (this.own !== undefined) set.add(this.own);
    return [...set];
  }

  /** The `recover` map for these channels, or undefined when none has a position. */
  recoverFor(channels: string[]): Record<string, StreamPosition> | undefined {
    let out: Record<string, StreamPosition> | undefined;
    for (const ch of channels) {
      const p = this.positions.get(ch);
      if (p) (out ??= {})[ch] = { offset: p.offset, epoch: p.epoch };
    }
    return out;
  }

  position(channel: string): StreamPosition | undefined {
    const p = this.positions.get(channel);
    return p && { offset: p.offset, epoch: p.epoch };
  }

  /**
   * A `subscribe` answer's `positions` entry: where the channel stood when the connection
   * joined it. Taken only when the client has no position for the channel (it never
   * moves one) and still wants the channel (subscribed, or its own).
   */
  startAt(channel: string, pos: StreamPosition | undefined): void {
    if (!pos || typeof pos.offset !== "number" || typeof pos.epoch !== "string") return;
    if (this.positions.has(channel)) return;
    if (!this.entries.has(channel) && channel !== this.own) return;
    this.positions.set(channel, { offset: pos.offset, epoch: pos.epoch, seen: false });
  }

  /**
   * The server could not recover from `sent` (`recovered: false`): that position is of no
   * more use (a lost store's epoch, or behind the window), so it is dropped, unless an
   * event delivered since replaced it. The answer's start position then takes its place.
   */
  unrecoverable(channel: string, sent: StreamPosition): void {
    const p = this.positions.get(channel);
    if (p && p.offset === sent.offset && p.epoch === sent.epoch) this.positions.delete(channel);
  }

  /** Forgets every position (the principal changed: they are someone else's). */
  clearPositions(): void {
    this.positions.clear();
  }

  /**
   * Records an event's position; false when it must not be delivered (an offset at or
   * below the last one delivered in the same epoch: a duplicate or out of order). A start
   * position never refuses an event: the event's position replaces it.
   */
  accept(ev: EventFrame): boolean {
    if (typeof ev.offset !== "number" || typeof ev.epoch !== "string") return true;
    const last = this.positions.get(ev.channel);
    if (last && last.seen && last.epoch === ev.epoch && ev.offset <= last.offset) return false;
    this.positions.set(ev.channel, { offset: ev.offset, epoch: ev.epoch, seen: true });
    return true;
  }

  /** The channel's handlers (a copy, so handlers may unsubscribe while running). */
  handlers(channel: string): ChannelHandler<any>[] {
    const e = this.entries.get(channel);
    return e ? [...e.handlers] : [];
  }
}
