// Cluster test against real processes: `nats-server -js` and `redis-server` on free
// ports, two gateway nodes (A and B, the binary at GATEWAY_BIN, default
// ../target/debug/gateway) on the same NATS and Redis, and a TCP relay in front of A that
// the clients connect through. A steady feed is published over B's HTTP API; the relay
// is switched to B and A is killed with SIGKILL mid-feed. The same behaviours as the
// Rust SDK's `kill9_behind_a_relay_moves_to_another_node_and_fails_the_pending_request`
// and `nothing_is_lost_across_kill9_with_recover` (tests/tests/sdk.rs). Every wait is
// bounded; every child process is killed and every server closed in `after`, also when
// a test fails.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { createServer, connect as tcpConnect } from "node:net";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { GatewayClient, GatewayError } from "../dist/index.js";

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.GATEWAY_BIN ?? resolve(here, "../../target/debug/gateway");
const SECRET = "ts-cluster-secret-0123456789abcdef";
const ADMIN = "ts-cluster-admin-key";
const AGENT_KEY = "key-agent-1";

const has = (cmd) => spawnSync(cmd, ["--version"], { stdio: "ignore" }).status === 0;
const skip = !existsSync(BIN)
  ? `gateway binary not found at ${BIN} (set GATEWAY_BIN)`
  : !has("nats-server")
    ? "nats-server not installed"
    : !has("redis-server")
      ? "redis-server not installed"
      : false;

/** Everything `after` must stop: child processes, servers, sockets, clients. */
const children = [];
const closers = [];
const clients = [];
let dir;
let nats; // { port }
let redis; // { port }
let nodeA;
let nodeB;

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

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolves with `fn()`'s truthy value, polling; rejects after `ms`. */
async function waitFor(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** A promise with a deadline. */
function within(p, ms, what) {
  let t;
  return Promise.race([p, new Promise((_, rej) => (t = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms)))]).finally(() =>
    clearTimeout(t),
  );
}

/** Spawns a child process that `after` kills; collects its output. */
function child(cmd, args, env = {}) {
  const proc = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  proc.logs = "";
  proc.stdout.on("data", (d) => (proc.logs += d));
  proc.stderr.on("data", (d) => (proc.logs += d));
  proc.exited = new Promise((r) => proc.once("exit", (code, signal) => r({ code, signal })));
  proc.once("error", (e) => (proc.logs += `spawn error: ${e.message}\n`));
  children.push(proc);
  return proc;
}

const alive = (proc) => proc.exitCode === null && proc.signalCode === null;

/** Opens a TCP connection and resolves with the first chunk it receives (bounded). */
function firstBytes(port, send) {
  return new Promise((res, rej) => {
    const s = tcpConnect(port, "127.0.0.1");
    const t = setTimeout(() => (s.destroy(), rej(new Error("no answer"))), 1000);
    s.once("connect", () => send && s.write(send));
    s.once("data", (d) => (clearTimeout(t), s.destroy(), res(String(d))));
    s.once("error", (e) => (clearTimeout(t), s.destroy(), rej(e)));
  });
}

async function startNats() {
  const port = await freePort();
  const proc = child("nats-server", ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", join(dir, "js")]);
  await waitFor(
    async () => {
      if (!alive(proc)) throw new Error(`nats-server exited early:\n${proc.logs}`);
      return (await firstBytes(port).catch(() => "")).startsWith("INFO");
    },
    15_000,
    "nats-server",
  );
  return { port, proc, url: `nats://127.0.0.1:${port}` };
}

async function startRedis() {
  const port = await freePort();
  const proc = child("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir]);
  await waitFor(
    async () => {
      if (!alive(proc)) throw new Error(`redis-server exited early:\n${proc.logs}`);
      return (await firstBytes(port, "PING\r\n").catch(() => "")).startsWith("+PONG");
    },
    15_000,
    "redis-server",
  );
  return { port, proc, url: `redis://127.0.0.1:${port}` };
}

async function startNode(id) {
  const port = await freePort();
  const proc = child(BIN, ["serve"], {
    GATEWAY_LISTEN: `127.0.0.1:${port}`,
    GATEWAY_NODE_ID: id,
    GATEWAY_NATS_URL: nats.url,
    GATEWAY_REDIS_URL: redis.url,
    GATEWAY_JWT_SECRET: SECRET,
    GATEWAY_ADMIN_KEY: ADMIN,
    // Every test client comes from 127.0.0.1: no per-address handshake rate.
    GATEWAY_LIMITS__HANDSHAKES_PER_IP_PER_SEC: "0",
    GATEWAY_API_KEYS: `a1:${AGENT_KEY}`,
    RUST_LOG: process.env.RUST_LOG ?? "warn",
  });
  // Ready, not only healthy: its NATS and Redis links are up.
  await waitFor(
    async () => {
      if (!alive(proc)) throw new Error(`gateway ${id} exited early (${proc.exitCode}):\n${proc.logs}`);
      try {
        return (await fetch(`http://127.0.0.1:${port}/ready`)).ok;
      } catch {
        return false;
      }
    },
    20_000,
    `gateway ${id} /ready`,
  );
  return { id, port, proc, http: `http://127.0.0.1:${port}` };
}

/**
 * A TCP relay: accepts on a free port and pipes each connection to the current target.
 * `switch(port)` sends new connections there and destroys the open ones.
 */
async function startRelay(targetPort) {
  let target = targetPort;
  const links = new Set();
  const server = createServer((down) => {
    const up = tcpConnect(target, "127.0.0.1");
    const link = { down, up };
    links.add(link);
    const end = () => {
      links.delete(link);
      down.destroy();
      up.destroy();
    };
    for (const s of [down, up]) {
      s.on("error", end);
      s.on("close", end);
    }
    down.pipe(up);
    up.pipe(down);
  });
  await new Promise((res, rej) => {
    server.once("error", rej);
    server.listen(0, "127.0.0.1", res);
  });
  const relay = {
    port: server.address().port,
    get links() {
      return links.size;
    },
    switch(port) {
      target = port;
      for (const { down, up } of [...links]) {
        down.destroy();
        up.destroy();
      }
      links.clear();
    },
    close() {
      relay.switch(target);
      return new Promise((r) => server.close(() => r()));
    },
  };
  closers.push(() => relay.close());
  return relay;
}

/**
 * A minimal NATS backend (the text protocol over `net`): subscribes to subjects and
 * records what arrives, never answering; used to hold a request in flight and to see
 * the upstream sends in the order the gateway published them.
 */
async function natsBackend(port) {
  const sock = tcpConnect(port, "127.0.0.1");
  const subs = new Map(); // sid → messages
  const pongs = [];
  let buf = Buffer.alloc(0);
  let sid = 0;
  sock.on("data", (d) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      const eol = buf.indexOf("\r\n");
      if (eol < 0) return;
      const line = buf.subarray(0, eol).toString();
      const [op, ...args] = line.split(" ");
      if (op === "MSG" || op === "HMSG") {
        // MSG <subject> <sid> [reply] <bytes> | HMSG <subject> <sid> [reply] <hdr bytes> <total bytes>
        const total = Number(args.at(-1));
        const hdr = op === "HMSG" ? Number(args.at(-2)) : 0;
        const fixed = op === "HMSG" ? 4 : 3;
        if (buf.length < eol + 2 + total + 2) return; // wait for the payload
        const body = buf.subarray(eol + 2, eol + 2 + total);
        buf = buf.subarray(eol + 2 + total + 2);
        subs.get(args[1])?.push({
          subject: args[0],
          reply: args.length > fixed ? args[2] : undefined,
          headers: body.subarray(0, hdr).toString(),
          data: body.subarray(hdr).toString(),
        });
        continue;
      }
      buf = buf.subarray(eol + 2);
      if (op === "PING") sock.write("PONG\r\n");
      else if (op === "PONG") pongs.shift()?.();
      else if (op === "-ERR") sock.emit("error", new Error(`nats: ${line}`));
    }
  });
  sock.on("error", () => {});
  await new Promise((res, rej) => {
    sock.once("connect", res);
    sock.once("error", rej);
  });
  sock.write(`CONNECT ${JSON.stringify({ verbose: false, pedantic: false, headers: true, no_responders: true, protocol: 1, name: "ts-backend" })}\r\n`);
  const backend = {
    subscribe(subject) {
      const id = String(++sid);
      const msgs = [];
      subs.set(id, msgs);
      sock.write(`SUB ${subject} ${id}\r\n`);
      return msgs;
    },
    /** Resolves once the server has processed everything written before. */
    flush() {
      const p = new Promise((r) => pongs.push(r));
      sock.write("PING\r\n");
      return within(p, 5000, "NATS PONG");
    },
  };
  closers.push(() => sock.destroy());
  await backend.flush();
  return backend;
}

function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${head}.${createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}

const nowS = () => Math.floor(Date.now() / 1000);
const userToken = (sub) => jwt({ sub, exp: nowS() + 3600, projects: ["p1"], roles: [] });

async function publishHttp(node, channel, event, data) {
  const r = await fetch(`${node.http}/api/publish`, {
    method: "POST",
    headers: { Authorization: `Bearer ${ADMIN}`, "Content-Type": "application/json" },
    body: JSON.stringify({ channel, event, data }),
  });
  const text = await r.text();
  assert.equal(r.status, 202, `publish on ${node.id}: ${r.status} ${text}`);
  return JSON.parse(text);
}

/**
 * Publishes `n` events numbered 0..n-1 on `channel` through `node`, one every `everyMs`;
 * `published` counts the accepted ones, `done` resolves with n.
 */
function feed(node, channel, n, everyMs) {
  const f = { published: 0 };
  f.done = (async () => {
    for (let seq = 0; seq < n; seq++) {
      await publishHttp(node, channel, "tick", { seq });
      f.published++;
      await sleep(everyMs);
    }
    return n;
  })();
  f.done.catch(() => {}); // awaited by the test; no unhandled rejection meanwhile
  return f;
}

/** A token source that can hold the client back before its next (re)connect. */
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

function client(url, opts) {
  const c = new GatewayClient({
    url,
    WebSocket,
    reconnect: { baseMs: 50, maxMs: 400 },
    requestTimeoutMs: 10_000,
    ...opts,
  });
  c.states = [];
  c.nodes = [];
  c.errors = [];
  c.recoveredNotices = [];
  c.on("state", (s) => c.states.push(s));
  c.on("connected", (f) => c.nodes.push(f.node));
  c.on("error", (e) => c.errors.push(e));
  c.on("recovered", (r) => c.recoveredNotices.push(r));
  clients.push(c);
  return c;
}

/** Consecutive duplicates removed (`reconnecting` is emitted once per attempt). */
const squash = (states) => states.filter((s, i) => s !== states[i - 1]);

// ------------------------------------------------------------ lifecycle

before(async () => {
  if (skip) return;
  dir = mkdtempSync(join(tmpdir(), "gw-ts-cluster-"));
  [nats, redis] = await Promise.all([startNats(), startRedis()]);
  const tag = `${process.pid}`;
  [nodeA, nodeB] = await Promise.all([startNode(`ts-a-${tag}`), startNode(`ts-b-${tag}`)]);
});

after(async () => {
  await Promise.allSettled(clients.map((c) => within(c.close(), 3000, "client close")));
  await Promise.allSettled(closers.map((f) => within(Promise.resolve(f()), 3000, "close")));
  for (const proc of children) if (alive(proc)) proc.kill("SIGKILL");
  await Promise.allSettled(children.map((proc) => within(proc.exited, 5000, "child exit")));
  if (dir) rmSync(dir, { recursive: true, force: true });
});

// ------------------------------------------------------------ tests

test(
  "kill -9 behind a relay: reconnects on node B, recovers the feed exactly once in order, fails the pending request, flushes offline sends",
  { skip, timeout: 60_000 },
  async (t) => {
    const relay = await startRelay(nodeA.port);
    const url = `ws://127.0.0.1:${relay.port}/ws`;
    const backend = await natsBackend(nats.port);
    const rpc = backend.subscribe("gw.rpc.slow"); // takes requests, never answers
    const upstream = backend.subscribe("gw.up.task.progress");
    await backend.flush();

    // A user on project:p1 and an agent, both on node A through the relay.
    // Both can be held away for a while after the kill (their token source waits).
    const userGate = gatedToken(userToken("u1"));
    const user = client(url, { getToken: userGate.getToken });
    const gate = gatedToken(AGENT_KEY);
    const agent = client(url, { getToken: gate.getToken });
    const got = [];
    user.subscribe("project:p1", (e) => e.event.startsWith("presence.") || got.push(e));
    const tasks = [];
    agent.on("task:assigned", (data, frame) => tasks.push(frame));
    await within(Promise.all([user.connect(), agent.connect()]), 10_000, "connect");
    assert.equal(user.node, nodeA.id);
    assert.equal(agent.node, nodeA.id);
    await within(user.request("channels.list"), 5000, "user subscribed"); // answered after the subscribe
    await within(agent.request("channels.list"), 5000, "agent's own channel position"); // ditto

    // A request in flight on A: the backend took it and never answers. The node's NATS
    // link may still be settling, so retry until the backend sees one.
    let pending;
    await waitFor(
      async () => {
        if (!pending) {
          const entry = { p: user.request("slow", { n: 1 }, { timeoutMs: 30_000 }), settled: false, seen: rpc.length };
          entry.p.then(
            () => (entry.settled = true),
            () => (entry.settled = true),
          );
          pending = entry;
        }
        if (rpc.length > pending.seen) return true;
        if (pending.settled) pending = undefined; // refused (no responder yet): again
        return false;
      },
      10_000,
      "the request to reach the backend",
    );
    const outcome = pending.p.then(
      (v) => ({ ok: v }),
      (e) => ({ err: e }),
    );

    // The feed over node B: 60 events, one every 50 ms.
    const ticks = feed(nodeB, "project:p1", 60, 50);
    await waitFor(() => got.length >= 8, 10_000, "the feed to reach the client on A");

    // Mid-feed: new connections go to B, the open ones are cut, A dies without cleaning up.
    gate.hold(); // the agent stays away until its sends were made offline
    userGate.hold(); // the user stays away while the feed goes on: those events must be recovered
    relay.switch(nodeB.port);
    nodeA.proc.kill("SIGKILL");
    const task = await publishHttp(nodeB, "agent:a1", "task:assigned", { id: "task_kill9" });
    const atKill = got.length;

    // The pending request fails cleanly, and is not resent.
    const r = await within(outcome, 10_000, "the pending request to settle");
    assert.ok(r.err instanceof GatewayError, `the pending request resolved: ${JSON.stringify(r.ok)} / ${r.err}`);
    assert.equal(r.err.code, "disconnected", `pending request: ${r.err.code} ${r.err.message}`);
    assert.equal(r.err.closeCode, 1006, "an abnormal close: no close frame from a killed node");

    // Away long enough for the feed to move on without the user.
    await waitFor(() => user.state === "reconnecting", 5000, "user reconnecting");
    await waitFor(() => ticks.published >= atKill + 5, 5000, "the feed to move on");
    const missed = ticks.published - got.length;
    assert.ok(missed > 0, "events were published while the user was away");
    userGate.release();

    // Sends made while the agent is disconnected wait in the offline queue.
    await waitFor(() => agent.state === "reconnecting", 5000, "agent reconnecting");
    const order = [];
    const sends = [];
    for (let i = 1; i <= 10; i++) sends.push(agent.send("task:progress", { i }).then(() => order.push(i)));
    assert.equal(agent.queuedCount, 10);
    gate.release();

    // Both move to B.
    await waitFor(() => user.state === "connected" && user.node === nodeB.id, 10_000, "user connected on B");
    await waitFor(() => agent.state === "connected" && agent.node === nodeB.id, 10_000, "agent connected on B");
    assert.deepEqual(squash(user.states), ["connecting", "connected", "reconnecting", "connected"]);
    assert.deepEqual(squash(agent.states), ["connecting", "connected", "reconnecting", "connected"]);
    assert.deepEqual(user.nodes, [nodeA.id, nodeB.id]);
    assert.deepEqual(agent.nodes, [nodeA.id, nodeB.id]);

    // Recovered on B from the positions the client had on A.
    await waitFor(() => user.recoveredNotices.length >= 2, 10_000, "user's recovered notices");
    await waitFor(() => agent.recoveredNotices.length >= 1, 10_000, "agent's recovered notice");
    assert.deepEqual(
      user.recoveredNotices.map((n) => `${n.channel}:${n.recovered}`).sort(),
      ["project:p1:true", "user:u1:true"],
    );
    assert.deepEqual(agent.recoveredNotices, [{ channel: "agent:a1", recovered: true }]);

    // The offline sends are flushed after the reconnect, in order, and acked; the
    // gateway published them upstream in that order.
    await within(Promise.all(sends), 15_000, "offline sends acked");
    assert.deepEqual(order, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    await waitFor(() => upstream.length >= 10, 5000, "upstream sends at the backend");
    assert.deepEqual(
      upstream.map((m) => JSON.parse(m.data).i),
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    );
    assert.ok(upstream.every((m) => m.headers.includes(`Gw-Node: ${nodeB.id}`)), "flushed through B");

    // Every feed event exactly once, in order (then a pause to catch any duplicate).
    assert.equal(await within(ticks.done, 15_000, "the feed"), 60);
    await waitFor(() => got.length >= 60, 10_000, `60 feed events (have ${got.length})`);
    await sleep(500);
    assert.deepEqual(
      got.map((e) => e.data.seq),
      Array.from({ length: 60 }, (_, i) => i),
      `events lost or repeated (${atKill} had arrived at the kill)`,
    );
    assert.ok(atKill < 60, "the kill happened mid-feed");
    for (let k = 1; k < got.length; k++) assert.ok(got[k].offset > got[k - 1].offset, "offsets grow");
    assert.equal(new Set(got.map((e) => e.epoch)).size, 1, "one epoch: the JetStream store outlived node A");

    // The agent's task:assigned, published right after the kill, arrives once.
    await waitFor(() => tasks.length >= 1, 5000, "task:assigned");
    await sleep(300);
    assert.deepEqual(
      tasks.map((f) => [f.id, f.data.id]),
      [[task.id, "task_kill9"]],
    );

    // Requests work again on B; the subscription lives there.
    const list = await within(user.request("channels.list"), 5000, "channels.list on B");
    assert.ok(list.channels.includes("project:p1"), JSON.stringify(list));
    // Nothing but the drop itself was reported as an error.
    assert.deepEqual(
      user.errors.filter((e) => e.code !== "disconnected").map((e) => `${e.code}: ${e.message}`),
      [],
    );
    assert.deepEqual(
      agent.errors.filter((e) => e.code !== "disconnected").map((e) => `${e.code}: ${e.message}`),
      [],
    );
    assert.equal(rpc.length, pending.seen + 1, "the failed request was not resent");
    const attempts = (c) => c.states.filter((s) => s === "reconnecting").length;
    t.diagnostic(
      `feed events at the kill: ${atKill}/60, published while the user was away: ${missed}; reconnect attempts: user ${attempts(user)}, agent ${attempts(agent)}`,
    );
  },
);
