// Integration tests against the real gateway binary (env GATEWAY_BIN, default
// ../target/debug/gateway): an embedded single node on a free port, JWTs minted here
// with node:crypto, events published over the HTTP admin API. Every wait is bounded and
// the child process is killed in `after`.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { createServer } from "node:net";
import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { GatewayClient } from "../dist/index.js";

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.GATEWAY_BIN ?? resolve(here, "../../target/debug/gateway");
const SECRET = "ts-test-secret-0123456789abcdef";
const ADMIN = "ts-admin-key";
const AGENT_KEY = "key-agent-1";
const skip = existsSync(BIN) ? false : `gateway binary not found at ${BIN} (set GATEWAY_BIN)`;

let port;
let child;
let logs = "";
const clients = [];

// ------------------------------------------------------------ helpers

function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/** Resolves with `fn()`'s truthy value, polling; rejects after `ms`. */
async function waitFor(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A promise with a deadline. */
function within(p, ms, what) {
  let t;
  return Promise.race([p, new Promise((_, rej) => (t = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms)))]).finally(() =>
    clearTimeout(t),
  );
}

async function startGateway() {
  child = spawn(BIN, ["serve"], {
    env: {
      ...process.env,
      GATEWAY_LISTEN: `127.0.0.1:${port}`,
      GATEWAY_NODE_ID: "ts-1",
      GATEWAY_JWT_SECRET: SECRET,
      GATEWAY_ADMIN_KEY: ADMIN,
      // Every test client comes from 127.0.0.1: no per-address handshake rate.
      GATEWAY_LIMITS__HANDSHAKES_PER_IP_PER_SEC: "0",
      GATEWAY_API_KEYS: `a1:${AGENT_KEY}`,
      GATEWAY_DRAIN__DELAY_MS: "0",
      GATEWAY_DRAIN__PERIOD_MS: "200",
      RUST_LOG: process.env.RUST_LOG ?? "warn",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const proc = child;
  proc.stdout.on("data", (d) => (logs += d));
  proc.stderr.on("data", (d) => (logs += d));
  proc.exited = new Promise((r) => proc.once("exit", (code, signal) => r({ code, signal })));
  await waitFor(
    async () => {
      if (proc.exitCode !== null) throw new Error(`gateway exited early (${proc.exitCode}):\n${logs}`);
      try {
        const r = await fetch(`http://127.0.0.1:${port}/health`);
        return r.ok;
      } catch {
        return false;
      }
    },
    20_000,
    "/health",
  );
}

async function stopGateway() {
  const proc = child;
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  proc.kill("SIGTERM");
  try {
    await within(proc.exited, 10_000, "gateway exit after SIGTERM");
  } catch {
    proc.kill("SIGKILL");
    await within(proc.exited, 5_000, "gateway exit after SIGKILL");
  }
}

function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${head}.${createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}

const nowS = () => Math.floor(Date.now() / 1000);
const userToken = (sub, extra = {}) => jwt({ sub, exp: nowS() + 3600, projects: ["p1"], roles: [], ...extra });

async function publishHttp(channel, event, data) {
  const r = await fetch(`http://127.0.0.1:${port}/api/publish`, {
    method: "POST",
    headers: { Authorization: `Bearer ${ADMIN}`, "Content-Type": "application/json" },
    body: JSON.stringify({ channel, event, data }),
  });
  const text = await r.text();
  assert.equal(r.status, 202, `publish: ${r.status} ${text}`);
  return JSON.parse(text);
}

/**
 * A token source that can hold the client back: while held, `getToken` (called before
 * every reconnect) waits, so the client stays away for as long as a test needs.
 */
function gatedToken(token) {
  let held;
  return {
    getToken: () => (held ? held.promise.then(() => token) : token),
    hold() {
      let release;
      const promise = new Promise((r) => (release = r));
      held = { promise, release };
    },
    release() {
      held?.release();
      held = undefined;
    },
  };
}

function client(opts) {
  const c = new GatewayClient({
    url: `ws://127.0.0.1:${port}/ws`,
    WebSocket,
    reconnect: { baseMs: 100, maxMs: 1000 },
    requestTimeoutMs: 5000,
    ...opts,
  });
  c.states = [];
  c.errors = [];
  c.on("state", (s) => c.states.push(s));
  c.on("error", (e) => c.errors.push(e));
  clients.push(c);
  return c;
}

/**
 * Collects a channel's events (without the gateway's own `presence.*` ones, which
 * session and project channels carry); `next(n)` waits (bounded) until n arrived.
 */
function collector() {
  const events = [];
  return {
    events,
    handler: (e) => e.event.startsWith("presence.") || events.push(e),
    next: (n = 1, ms = 5000) => waitFor(() => events.length >= n && events, ms, `${n} event(s)`),
  };
}

// ------------------------------------------------------------ lifecycle

before(async () => {
  if (skip) return;
  port = await freePort();
  await startGateway();
});

after(async () => {
  await Promise.allSettled(clients.map((c) => within(c.close(), 3000, "client close")));
  if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
});

// ------------------------------------------------------------ tests

test("connect, subscribe, receive an HTTP-published event", { skip, timeout: 20_000 }, async () => {
  const c = client({ token: userToken("alice") });
  await within(c.connect(), 5000, "connect");
  assert.equal(c.state, "connected");
  assert.equal(c.node, "ts-1");
  assert.ok(c.connectionId);
  assert.deepEqual(c.principal, { kind: "user", id: "alice" });
  const got = collector();
  const sub = c.subscribe("project:p1", got.handler);
  await within(sub.ready, 5000, "subscribe");
  const { id } = await publishHttp("project:p1", "task.created", { id: 7 });
  const [e] = await got.next();
  assert.equal(e.type, "event");
  assert.equal(e.channel, "project:p1");
  assert.equal(e.event, "task.created");
  assert.deepEqual(e.data, { id: 7 });
  assert.equal(e.id, id);
  assert.equal(typeof e.ts, "number");
  // A channel outside the token's projects is refused on its own.
  const bad = c.subscribe("project:p9", () => {});
  await assert.rejects(within(bad.ready, 5000, "rejection"), { code: "forbidden" });
});

test("request channels.list; unknown methods are unavailable without a backend", { skip, timeout: 20_000 }, async () => {
  const c = client({ token: userToken("bob") });
  await within(c.connect(), 5000, "connect");
  await within(c.subscribe("broadcast:agents", () => {}).ready, 5000, "subscribe");
  const res = await c.request("channels.list");
  assert.deepEqual(new Set(res.channels), new Set(["user:bob", "broadcast:agents"]));
  await assert.rejects(c.request("tasks.list", {}), { code: "unavailable" });
});

test("publish on session: refused unless joined with a channel token; then acked and delivered", { skip, timeout: 20_000 }, async () => {
  const c = client({ token: userToken("carol") });
  await within(c.connect(), 5000, "connect");
  await assert.rejects(c.publish("session:s1", "typing", { on: true }), { code: "forbidden" });
  await assert.rejects(c.publish("project:p1", "typing", {}), { code: "forbidden" }, "clients may publish only on session:");
  // Without a channel token the default `token` policy refuses the subscription.
  await assert.rejects(within(c.subscribe("session:s1", () => {}).ready, 5000, "refusal"), (e) => e.channel === "session:s1");
  const got = collector();
  const chan = jwt({ channel: "session:s1", sub: "carol", exp: nowS() + 600 });
  await within(c.subscribe("session:s1", got.handler, { token: chan }).ready, 5000, "subscribe");
  await c.publish("session:s1", "typing", { on: true });
  const [e] = await got.next();
  assert.equal(e.event, "typing");
  assert.deepEqual(e.from, { kind: "user", id: "carol" });
  await assert.rejects(c.publish("session:s1", "presence.fake", {}), { code: "forbidden" });
});

test("agent with an API key: send acked, sendStatusUpdate, task:assigned by name", { skip, timeout: 20_000 }, async () => {
  const c = client({ token: AGENT_KEY });
  const tasks = [];
  c.on("task:assigned", (data) => tasks.push(data));
  await within(c.connect(), 5000, "connect");
  assert.deepEqual(c.principal, { kind: "agent", id: "a1" });
  await c.send("task:completed", { taskId: "t0" });
  await c.sendStatusUpdate("busy", { progress: 50, currentTask: "task_123" });
  await assert.rejects(c.send("bad event name!", {}), { code: "bad_request" });
  // A burst over the server's limit (burst 20; 20 refusals in a row close with 4008) is
  // paced by the client instead of getting the connection closed.
  await within(Promise.all(Array.from({ length: 40 }, (_, i) => c.send("task:progress", { i }))), 15_000, "burst acked");
  assert.equal(c.state, "connected");
  await publishHttp("agent:a1", "task:assigned", { id: "task_1", priority: "high" });
  await waitFor(() => tasks.length === 1, 5000, "task:assigned");
  assert.deepEqual(tasks[0], { id: "task_1", priority: "high" });
});

test("a bad token is refused at the handshake (401): closed, no reconnect loop", { skip, timeout: 20_000 }, async () => {
  const c = client({ token: jwt({ sub: "mallory", exp: nowS() + 600 }).slice(0, -4) + "AAAA" });
  await assert.rejects(within(c.connect(), 5000, "refusal"), (e) => e.code === "unauthorized" && e.status === 401);
  assert.equal(c.state, "closed");
  assert.deepEqual(c.states, ["connecting", "closed"]);
  const k = client({ token: "not-a-key" });
  await assert.rejects(within(k.connect(), 5000, "refusal"), (e) => e.status === 401);
  await new Promise((r) => setTimeout(r, 500));
  assert.deepEqual(k.states, ["connecting", "closed"]);
});

test("in-band authenticate: token kept out of the URL", { skip, timeout: 20_000 }, async () => {
  const c = client({ token: userToken("dave"), auth: "authenticate" });
  await within(c.connect(), 5000, "connect");
  assert.deepEqual(c.principal, { kind: "user", id: "dave" });
  const h = client({ token: AGENT_KEY, auth: "header" });
  await within(h.connect(), 5000, "connect");
  assert.deepEqual(h.principal, { kind: "agent", id: "a1" });
});

test("a refresh with a new token for the same user is accepted", { skip, timeout: 20_000 }, async () => {
  let n = 0;
  // A 3 s token refreshed at half its lifetime.
  const c = client({ getToken: () => jwt({ sub: "erin", exp: nowS() + 3 + n++, projects: ["p1"] }), refreshBeforeMs: 60_000 });
  await within(c.connect(), 5000, "connect");
  await waitFor(() => n >= 2, 5000, "refresh");
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(c.state, "connected");
  assert.deepEqual(c.errors, []);
});

test("node restart: reconnecting → connected, re-subscribed, offline sends flushed in order; then recovery on the new node", { skip, timeout: 60_000 }, async () => {
  const gate = gatedToken(userToken("frank"));
  const c = client({ getToken: gate.getToken });
  const agent = client({ token: AGENT_KEY });
  await within(Promise.all([c.connect(), agent.connect()]), 5000, "connect");
  const got = collector();
  const session = collector();
  const own = [];
  c.on("event", (e) => e.channel === "user:frank" && own.push(e));
  const recovered = [];
  c.on("recovered", (r) => recovered.push(r));
  await within(c.subscribe("project:p1", got.handler).ready, 5000, "subscribe");
  const chan = jwt({ channel: "session:r1", sub: "frank", exp: nowS() + 600 });
  await within(c.subscribe("session:r1", session.handler, { token: () => chan }).ready, 5000, "subscribe session");
  await publishHttp("project:p1", "task.created", { before: "restart" });
  const [before] = await got.next(1);
  const firstConnection = c.connectionId;

  await stopGateway();
  await waitFor(() => c.state === "reconnecting" && agent.state === "reconnecting", 5000, "reconnecting");
  // While down: queued, in order.
  const sends = [];
  const order = [];
  for (let i = 1; i <= 5; i++) sends.push(c.publish("session:r1", "note", { i }).then(() => order.push(i)));
  // More than the server's burst (20): the flush is paced, so none is rate limited.
  for (let i = 1; i <= 40; i++) sends.push(agent.send("task:completed", { i }));
  assert.equal(c.queuedCount, 5);
  assert.equal(agent.queuedCount, 40);
  await new Promise((r) => setTimeout(r, 300)); // a few refused attempts
  await startGateway();
  await waitFor(() => c.state === "connected" && agent.state === "connected", 10_000, "reconnected");
  await within(Promise.all(sends), 15_000, "queued sends acked");
  assert.equal(agent.state, "connected");
  assert.deepEqual(agent.errors, []);
  assert.deepEqual(order, [1, 2, 3, 4, 5]);
  assert.notEqual(c.connectionId, firstConnection);
  const states = c.states.filter((s, i) => s !== c.states[i - 1]);
  assert.deepEqual(states, ["connecting", "connected", "reconnecting", "connected"]);
  // The flushed publishes came back on the re-subscribed session channel, in order.
  await session.next(5);
  assert.deepEqual(session.events.map((e) => e.data.i), [1, 2, 3, 4, 5]);
  // Re-subscribed: new events arrive.
  await publishHttp("project:p1", "task.created", { after: "restart" });
  const evs = await got.next(2);
  assert.deepEqual(evs.map((e) => e.data), [{ before: "restart" }, { after: "restart" }]);
  // The embedded store lived in the old process: the new node's store has another epoch.
  assert.notEqual(evs[1].epoch, before.epoch);
  // So the server answers recovered:false for every channel the client had a position on:
  // both subscribed ones and the own user:frank (its position came from a subscribe
  // answer's `positions`, as no event was seen there). Each reported once.
  await waitFor(() => recovered.length >= 3, 5000, "recovered notices");
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(recovered.map((r) => `${r.channel}:${r.recovered}`).sort(), ["project:p1:false", "session:r1:false", "user:frank:false"]);
  const list = await c.request("channels.list");
  assert.ok(list.channels.includes("project:p1") && list.channels.includes("session:r1"));

  // The answers re-seeded the positions in the new store's epoch: a drop now recovers
  // every channel with history, with what was published meanwhile, once and in order.
  recovered.length = 0;
  gate.hold();
  c.ws.terminate();
  await waitFor(() => c.state === "reconnecting", 5000, "reconnecting");
  await publishHttp("project:p1", "task.created", { away: 1 });
  await publishHttp("session:r1", "note", { i: 6 });
  await publishHttp("user:frank", "notice", { away: 1 });
  await publishHttp("project:p1", "task.created", { away: 2 });
  await publishHttp("session:r1", "note", { i: 7 });
  gate.release();
  await waitFor(() => recovered.length >= 3, 10_000, "recovered notices after the drop");
  assert.deepEqual(recovered.map((r) => `${r.channel}:${r.recovered}`).sort(), ["project:p1:true", "session:r1:true", "user:frank:true"]);
  await got.next(4);
  await session.next(7);
  await waitFor(() => own.length >= 1, 5000, "own channel event");
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(got.events.slice(2).map((e) => e.data), [{ away: 1 }, { away: 2 }]);
  assert.deepEqual(session.events.map((e) => e.data.i), [1, 2, 3, 4, 5, 6, 7]);
  assert.deepEqual(own.map((e) => e.data), [{ away: 1 }]);
});

test("server-side disconnect (4010) stops the client", { skip, timeout: 20_000 }, async () => {
  const c = client({ token: userToken("gina") });
  await within(c.connect(), 5000, "connect");
  const r = await fetch(`http://127.0.0.1:${port}/api/disconnect`, {
    method: "POST",
    headers: { Authorization: `Bearer ${ADMIN}`, "Content-Type": "application/json" },
    body: JSON.stringify({ kind: "user", id: "gina", reason: "kicked" }),
  });
  assert.ok(r.status >= 200 && r.status < 300, `disconnect: ${r.status} ${await r.text()}`);
  await waitFor(() => c.state === "closed", 5000, "closed");
  assert.equal(c.errors.at(-1).closeCode, 4010);
  await new Promise((r2) => setTimeout(r2, 400));
  assert.equal(c.state, "closed");
});

test("history recovery across a reconnect (§9): missed events exactly once, in order, also where none was seen", { skip, timeout: 30_000 }, async () => {
  const gate = gatedToken(userToken("hank", { projects: ["p1", "hq"] }));
  const c = client({ getToken: gate.getToken });
  const seen = collector(); // project:p1: events seen before going away
  // project:hq: subscribed, nothing published before going away (the client did see its
  // own presence.join there, which carries a position: the answer's must not move it).
  const quiet = collector();
  // user:hank: auto-joined, never subscribed by the app, no event at all before going
  // away: only the subscribe answer's `positions` tells the client where to recover from.
  const own = [];
  c.on("event", (e) => e.channel === "user:hank" && own.push(e));
  const recovered = [];
  // Snapshot at the notice: the replay must have arrived before it.
  c.on("recovered", (r) => recovered.push({ ...r, had: { p1: seen.events.length, hq: quiet.events.length, own: own.length } }));
  const subs = [c.subscribe("project:p1", seen.handler), c.subscribe("project:hq", quiet.handler)];
  await within(c.connect(), 5000, "connect");
  // One frame named both channels and the own one; its answer carried their positions.
  await within(Promise.all(subs.map((s) => s.ready)), 5000, "subscribed");
  await publishHttp("project:p1", "n", { i: 1 });
  const [first] = await seen.next(1);
  assert.equal(typeof first.offset, "number");
  assert.equal(typeof first.epoch, "string");
  // An agent whose channel already holds events (the agent test's task) and that sees
  // none: its first task:assigned arrives while it is away.
  const agentGate = gatedToken(AGENT_KEY);
  const agent = client({ getToken: agentGate.getToken });
  const tasks = [];
  agent.on("task:assigned", (data, frame) => tasks.push(frame));
  const agentRecovered = [];
  agent.on("recovered", (r) => agentRecovered.push(r));
  await within(agent.connect(), 5000, "agent connect");
  await agent.request("channels.list"); // answered after the own channel's subscribe
  await new Promise((r) => setTimeout(r, 100)); // nothing else in flight
  assert.equal(own.length, 0);
  assert.equal(quiet.events.length, 0);
  assert.equal(tasks.length, 0);

  // Away: the sockets drop and the clients cannot reconnect until released.
  gate.hold();
  agentGate.hold();
  const firstConnection = c.connectionId;
  c.ws.terminate();
  agent.ws.terminate();
  await waitFor(() => c.state === "reconnecting" && agent.state === "reconnecting", 5000, "reconnecting");
  const task = await publishHttp("agent:a1", "task:assigned", { id: "task_away" });
  agentGate.release();
  await waitFor(() => agentRecovered.length, 10_000, "agent recovered");
  assert.deepEqual(agentRecovered, [{ channel: "agent:a1", recovered: true }]);
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(tasks.map((f) => [f.id, f.data.id]), [[task.id, "task_away"]], "only the task published while away, once");
  const missed = [];
  for (let i = 2; i <= 4; i++) missed.push(await publishHttp("project:p1", "n", { i }));
  await publishHttp("broadcast:agents", "noise", {}); // no history: never recovered
  for (let i = 1; i <= 2; i++) missed.push(await publishHttp("project:hq", "n", { i }));
  for (let i = 1; i <= 3; i++) missed.push(await publishHttp("user:hank", "task:assigned", { i }));
  assert.equal(c.state, "reconnecting", "still away while publishing");
  gate.release();
  await waitFor(() => c.state === "connected", 10_000, "reconnected");
  assert.notEqual(c.connectionId, firstConnection);
  await waitFor(() => recovered.length >= 3, 5000, "recovered notices");
  assert.deepEqual(
    recovered.map((r) => [r.channel, r.recovered]).sort(),
    [["project:hq", true], ["project:p1", true], ["user:hank", true]],
    "every channel with history is recovered (broadcast:agents was never joined)",
  );
  // Replayed before the answer: complete when the notice came.
  for (const r of recovered) assert.deepEqual(r.had, { p1: 4, hq: 2, own: 3 });

  // Live events after the replay, then a pause to catch any duplicate.
  await publishHttp("project:p1", "n", { i: 5 });
  await publishHttp("project:hq", "n", { i: 3 });
  await publishHttp("user:hank", "task:assigned", { i: 4 });
  await seen.next(5);
  await quiet.next(3);
  await waitFor(() => own.length >= 4, 5000, "own channel events");
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(seen.events.map((e) => e.data.i), [1, 2, 3, 4, 5]);
  assert.deepEqual(quiet.events.map((e) => e.data.i), [1, 2, 3]);
  assert.deepEqual(own.map((e) => e.data.i), [1, 2, 3, 4]);
  // The replayed events are the ones published while away (same ids), once each.
  const ids = [...seen.events, ...quiet.events, ...own].map((e) => e.id);
  for (const m of missed) assert.equal(ids.filter((id) => id === m.id).length, 1, `event ${m.id} delivered once`);
  // Offsets strictly grow along each channel (not necessarily by one), one epoch.
  for (const evs of [seen.events, quiet.events, own]) {
    for (let k = 1; k < evs.length; k++) assert.ok(evs[k].offset > evs[k - 1].offset, `offsets grow: ${evs.map((e) => e.offset)}`);
    assert.deepEqual(new Set(evs.map((e) => e.epoch)), new Set([first.epoch]));
  }
  assert.deepEqual(c.errors.filter((e) => e.code !== "disconnected"), []);
});
