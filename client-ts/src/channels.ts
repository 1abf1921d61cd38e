/**
 * The client's channel registry: which channels the application subscribed to (with
 * their handlers and optional channel tokens), whether the current connection has
 * confirmed them, and the last stream position seen on each channel (contract §9),
 * which drives both `recover` on re-subscribe and de-duplication: within an epoch an
 * offset at or below the last delivered one is never delivered again.
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

interface Entry {
  handlers: Set<ChannelHandler<any>>;
  token: ChannelToken | undefined;
  /** The current connection joined it. */
  confirmed: boolean;
  waiters: Waiter[];
}

export class Channels {
  private readonly entries = new Map<string, Entry>();
  private readonly positions = new Map<string, StreamPosition>();

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

  /** Subscribed channel names. */
  names(): string[] {
    return [...this.entries.keys()];
  }

  /**
   * What to join after a reconnect: every subscribed channel plus every channel with a
   * known position (e.g. the auto-joined `agent:<id>`), so their missed events come back.
   */
  resubscribeSet(): string[] {
    const set = new Set(this.entries.keys());
    for (const ch of this.positions.keys()) set.add(ch);
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
    return this.positions.get(channel);
  }

  /** Forgets every position (the principal changed: they are someone else's). */
  clearPositions(): void {
    this.positions.clear();
  }

  /**
   * Records an event's position; false when it must not be delivered (an offset at or
   * below the last one delivered in the same epoch: a duplicate or out of order).
   */
  accept(ev: EventFrame): boolean {
    if (typeof ev.offset !== "number" || typeof ev.epoch !== "string") return true;
    const last = this.positions.get(ev.channel);
    if (last && last.epoch === ev.epoch && ev.offset <= last.offset) return false;
    this.positions.set(ev.channel, { offset: ev.offset, epoch: ev.epoch });
    return true;
  }

  /** The channel's handlers (a copy, so handlers may unsubscribe while running). */
  handlers(channel: string): ChannelHandler<any>[] {
    const e = this.entries.get(channel);
    return e ? [...e.handlers] : [];
  }
}
