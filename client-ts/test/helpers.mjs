// Test doubles for the unit tests: a fake WebSocket (no network) that records what the
// client sends and lets a test play the server, a manual clock, and a few helpers.

import { GatewayClient } from "../dist/index.js";

/** Lets pending promise continuations and microtasks run. */
export function flush() {
  return new Promise((r) => setImmediate(r));
}

export class FakeClock {
  constructor(now = 1_700_000_000_000) {
    this.t = now;
    this.timers = new Map();
    this.nextId = 1;
  }
  now() {
    return this.t;
  }
  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn, id });
    return id;
  }
  clearTimeout(id) {
    this.timers.delete(id);
  }
  /** Delays of the timers now pending, soonest first. */
  pending() {
    return [...this.timers.values()].map((t) => t.at - this.t).sort((a, b) => a - b);
  }
  /** Moves time forward, firing due timers in order (and letting promises settle between). */
  async advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let next;
      for (const t of this.timers.values()) if (t.at <= end && (!next || t.at < next.at || (t.at === next.at && t.id < next.id))) next = t;
      if (!next) break;
      this.timers.delete(next.id);
      this.t = next.at;
      next.fn();
      await flush();
    }
    this.t = end;
    await flush();
  }
}

export class FakeWebSocket {
  static instances = [];
  static reset() {
    FakeWebSocket.instances = [];
  }
  static get last() {
    return FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
  }

  constructor(url, protocols, options) {
    this.url = new URL(url);
    this.protocols = protocols;
    this.options = options;
    this.readyState = 0;
    this.sent = [];
    this.listeners = {};
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeWebSocket.instances.push(this);
  }
  // ---- the client's side
  send(text) {
    if (this.readyState !== 1) throw new Error("not open");
    this.sent.push(JSON.parse(text));
  }
  close(code = 1005, reason = "") {
    if (this.readyState >= 2) return;
    this.readyState = 2;
    queueMicrotask(() => this._closed(code, reason));
  }
  terminate() {
    if (this.readyState === 3) return;
    this.readyState = 2;
    queueMicrotask(() => {
      this.onerror?.({ type: "error" });
      this._closed(1006, "");
    });
  }
  on(event, fn) {
    (this.listeners[event] ??= []).push(fn);
    return this;
  }
  // ---- the server's side
  open() {
    this.readyState = 1;
    this.onopen?.({ type: "open" });
  }
  receive(frame) {
    this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
  }
  /** Opens and sends `connected`. */
  accept({ node = "n1", connectionId = "c" + FakeWebSocket.instances.length, principal = { kind: "user", id: "u1" }, heartbeatMs = 30000 } = {}) {
    this.open();
    this.receive({ type: "connected", connectionId, principal, node, heartbeatMs });
  }
  serverClose(code, reason = "") {
    this._closed(code, reason);
  }
  /** A failed connect as a browser / `ws` without status reports it: error, then 1006. */
  fail() {
    this.onerror?.({ type: "error" });
    this._closed(1006, "");
  }
  /** A refused handshake as `ws` reports it (status readable via unexpected-response). */
  refuse(status, body) {
    const res = { statusCode: status, handlers: {}, on(ev, fn) { (this.handlers[ev] ??= []).push(fn); return this; } };
    for (const fn of this.listeners["unexpected-response"] ?? []) fn({}, res);
    for (const fn of res.handlers.data ?? []) fn(JSON.stringify(body));
    for (const fn of res.handlers.end ?? []) fn();
  }
  _closed(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  /** Frames sent of one type. */
  frames(type) {
    return this.sent.filter((f) => f.type === type);
  }
}

/** A client on the fake socket and clock; records states and errors. */
export function makeClient(opts = {}) {
  FakeWebSocket.reset();
  const clock = opts.clock ?? new FakeClock();
  const client = new GatewayClient({
    url: "ws://gw.test/ws",
    token: "key-agent-1",
    WebSocket: FakeWebSocket,
    clock,
    random: () => 0.5,
    heartbeat: false,
    ...opts,
  });
  const states = [];
  const errors = [];
  const recovered = [];
  client.on("state", (s) => states.push(s));
  client.on("error", (e) => errors.push(e));
  client.on("recovered", (r) => recovered.push(r));
  return { client, clock, states, errors, recovered };
}

/** Connects a fresh client and accepts its first socket. */
export async function connected(opts = {}) {
  const t = makeClient(opts);
  const p = t.client.connect();
  await flush();
  FakeWebSocket.last.accept(opts.accept);
  await p;
  return t;
}

/** An unsigned JWT-shaped token with the given claims (the client never verifies). */
export function fakeJwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}.c2ln`;
}

/** Whether a promise has settled, without waiting for it. */
export async function settled(p) {
  let done = false;
  p.then(() => (done = true), () => (done = true));
  await flush();
  return done;
}
