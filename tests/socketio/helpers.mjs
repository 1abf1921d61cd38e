// Plumbing of the Socket.IO contract tests (contract §11): real processes on free
// loopback ports — `nats-server -js`, `redis-server`, gateway nodes started from the
// binary at GATEWAY_BIN (default ../../target/debug/gateway) with a generated
// environment (and TOML file when a test needs one), nginx through
// deploy/local-cluster.sh — and the real `socket.io-client` package as the client.
//
// Each test file is its own process (node --test), so the registries below are per
// file: `cleanup()` (call it from `after`) closes every client, stops every server and
// SIGKILLs every child process the file started, also when a test failed. Every wait is
// bounded.

import { spawn, spawnSync } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { Agent } from "node:http";
import { createServer, connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { io, Manager } from "socket.io-client";
import WebSocket from "ws";

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(here, "../..");
export const BIN = process.env.GATEWAY_BIN ? resolve(process.env.GATEWAY_BIN) : resolve(REPO, "target/debug/gateway");
export const SECRET = "sio-test-secret-0123456789abcdef";
export const ADMIN = "sio-test-admin-key";
/** Static agent keys every node knows (`GATEWAY_API_KEYS`). */
export const AGENT_KEYS = { "agent-1": "sio-agent-key-1", "agent-2": "sio-agent-key-2" };

// Tests talk only to loopback; never through a proxy set in the environment.
process.env.NO_PROXY = `127.0.0.1,localhost${process.env.NO_PROXY ? "," + process.env.NO_PROXY : ""}`;
process.env.no_proxy = process.env.NO_PROXY;

const has = (cmd, args = ["--version"]) => spawnSync(cmd, args, { stdio: "ignore" }).status === 0;
function findNginx() {
  for (const p of ["nginx", "/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"]) if (has(p, ["-v"])) return p;
  return undefined;
}

/** Why the tests of a file are skipped, or false. `needs`: extra tools ("nginx"). */
export function skipReason(needs = []) {
  if (!existsSync(BIN)) return `gateway binary not found at ${BIN} (cargo build -p gateway, or set GATEWAY_BIN)`;
  if (!has("nats-server")) return "nats-server not installed (scripts/install-deps.sh)";
  if (!has("redis-server")) return "redis-server not installed (scripts/install-deps.sh)";
  if (needs.includes("nginx") && !findNginx()) return "nginx not installed (scripts/install-deps.sh)";
  return false;
}

// ------------------------------------------------------------ registries and cleanup

const children = [];
const closers = [];
const sockets = [];
let workdir;

/** A temp dir for this file's servers (removed by `cleanup`). */
export function dir() {
  workdir ??= mkdtempSync(join(tmpdir(), "gw-sio-"));
  return workdir;
}

/** Registers `fn` to run in `cleanup` (bounded). */
export function onCleanup(fn) {
  closers.push(fn);
}

// A test process that ends without `after` (an uncaught error, Ctrl-C, the runner's
// SIGTERM) still takes its servers with it. (SIGKILL cannot be caught; local-cluster.sh
// watches this process for that case.)
process.once("exit", () => {
  for (const proc of children) if (alive(proc)) killTree(proc, "SIGKILL");
});
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.once(sig, () => {
    for (const proc of children) if (alive(proc)) killTree(proc, "SIGKILL");
    process.exit(128 + { SIGINT: 2, SIGTERM: 15, SIGHUP: 1 }[sig]);
  });
}

/** Stops everything this file started. Call from `after`. */
export async function cleanup() {
  for (const s of sockets) {
    try {
      s.io.reconnection(false);
      s.disconnect();
      s.io.engine?.close();
    } catch {
      /* already gone */
    }
  }
  await Promise.allSettled(closers.map((f) => within(Promise.resolve().then(f), 5000, "cleanup step")));
  for (const proc of children) if (alive(proc)) killTree(proc, "SIGKILL");
  await Promise.allSettled(children.map((proc) => within(proc.exited, 5000, `exit of ${proc.spawnfile}`)));
  if (workdir && !process.env.KEEP_SIO_LOGS) rmSync(workdir, { recursive: true, force: true });
  else if (workdir) console.error(`socket.io test logs kept in ${workdir}`);
}

// ------------------------------------------------------------ small utilities

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/** Resolves with `fn()`'s truthy value, polling; rejects after `ms` naming `what`. */
export async function waitFor(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${typeof what === "function" ? what() : what}`);
    await sleep(20);
  }
}

/** A promise with a deadline. */
export function within(p, ms, what) {
  let t;
  return Promise.race([
    p,
    new Promise((_, rej) => (t = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms))),
  ]).finally(() => clearTimeout(t));
}

/** Runs `fn` over `items` with at most `limit` in flight; resolves with the results. */
export async function pool(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

export const uid = (prefix) => `${prefix}-${randomUUID().slice(0, 8)}`;

// ------------------------------------------------------------ tokens

/** An HS256 JWT over `claims`. */
export function jwt(claims, secret = SECRET) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
}

/** A user JWT: `projects` (default every project), `roles` (default none). */
export function userToken(sub, { projects = ["*"], roles = [], ttlSecs = 3600, secret } = {}) {
  const now = Math.floor(Date.now() / 1000);
  return jwt({ sub, iat: now, exp: now + ttlSecs, projects, roles }, secret);
}

// ------------------------------------------------------------ processes

/** Spawns a child process that `cleanup` kills (its own process group); collects output. */
export function child(cmd, args, { env = {}, cwd, group = false } = {}) {
  const proc = spawn(cmd, args, { env, cwd, stdio: ["ignore", "pipe", "pipe"], detached: group });
  proc.logs = "";
  const keep = (d) => {
    proc.logs += d;
    if (proc.logs.length > 2_000_000) proc.logs = proc.logs.slice(-1_000_000);
  };
  proc.stdout.on("data", keep);
  proc.stderr.on("data", keep);
  proc.group = group;
  proc.exited = new Promise((r) => proc.once("exit", (code, signal) => r({ code, signal })));
  proc.once("error", (e) => (proc.logs += `spawn error: ${e.message}\n`));
  children.push(proc);
  return proc;
}

export const alive = (proc) => proc.exitCode === null && proc.signalCode === null;

function killTree(proc, sig) {
  try {
    if (proc.group) process.kill(-proc.pid, sig);
    else proc.kill(sig);
  } catch {
    /* gone */
  }
}

/** The environment of a child: ours without GATEWAY_* variables, plus `extra`. */
function childEnv(extra) {
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("GATEWAY_")));
  return { ...inherited, RUST_LOG: process.env.RUST_LOG ?? "warn", ...extra };
}

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

/** `nats-server -js` on a free port. */
export async function startNats() {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const proc = child("nats-server", ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", join(dir(), `js-${port}`)], { env: childEnv() });
    try {
      await waitFor(
        async () => {
          if (!alive(proc)) throw new Error(`nats-server exited early:\n${proc.logs}`);
          return (await firstBytes(port).catch(() => "")).startsWith("INFO");
        },
        15_000,
        "nats-server",
      );
      return { port, proc, url: `nats://127.0.0.1:${port}` };
    } catch (e) {
      if (attempt >= 3) throw e;
      killTree(proc, "SIGKILL");
    }
  }
}

/** `redis-server` on a free port, no persistence. */
export async function startRedis() {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const proc = child("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir()], {
      env: childEnv(),
    });
    try {
      await waitFor(
        async () => {
          if (!alive(proc)) throw new Error(`redis-server exited early:\n${proc.logs}`);
          return (await firstBytes(port, "PING\r\n").catch(() => "")).startsWith("+PONG");
        },
        15_000,
        "redis-server",
      );
      return { port, proc, url: `redis://127.0.0.1:${port}` };
    } catch (e) {
      if (attempt >= 3) throw e;
      killTree(proc, "SIGKILL");
    }
  }
}

/** NATS and Redis for one file. */
export async function startFabric() {
  const [nats, redis] = await Promise.all([startNats(), startRedis()]);
  return { nats, redis };
}

/**
 * Starts `gateway serve` on a free port. `fabric`: `{nats, redis}` (omitted: the embedded
 * single node); `env`: GATEWAY_* on top of the defaults below; `toml`: the text of a
 * config file passed with --config. Waits (bounded) for /ready. A start that fails
 * because the port was taken meanwhile is retried on another port.
 */
export async function startNode({ id = uid("gw"), fabric, env = {}, toml } = {}) {
  let config;
  if (toml !== undefined) {
    config = join(dir(), `${id}.toml`);
    writeFileSync(config, toml);
  }
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const proc = child(BIN, config ? ["serve", "--config", config] : ["serve"], {
      env: childEnv({
        GATEWAY_LISTEN: `127.0.0.1:${port}`,
        GATEWAY_NODE_ID: id,
        ...(fabric ? { GATEWAY_NATS_URL: fabric.nats.url, GATEWAY_REDIS_URL: fabric.redis.url } : {}),
        GATEWAY_JWT_SECRET: SECRET,
        GATEWAY_ADMIN_KEY: ADMIN,
        GATEWAY_API_KEYS: Object.entries(AGENT_KEYS)
          .map(([a, k]) => `${a}:${k}`)
          .join(","),
        GATEWAY_DRAIN__DELAY_MS: "0",
        GATEWAY_DRAIN__PERIOD_MS: "200",
        GATEWAY_DRAIN__DEADLINE_MS: "3000",
        ...env,
      }),
    });
    try {
      await waitFor(
        async () => {
          if (!alive(proc)) throw new Error(`gateway ${id} exited at start (${proc.exitCode}):\n${proc.logs}`);
          try {
            return (await fetch(`http://127.0.0.1:${port}/ready`)).ok;
          } catch {
            return false;
          }
        },
        30_000,
        `gateway ${id} /ready`,
      );
    } catch (e) {
      const portTaken = /address already in use|Address in use/i.test(proc.logs);
      killTree(proc, "SIGKILL");
      if (!portTaken || attempt >= 3) throw e;
      continue;
    }
    return nodeHandle({ id, port, proc });
  }
}

function nodeHandle({ id, port, proc, host = "127.0.0.1" }) {
  const http = `http://${host}:${port}`;
  return {
    id,
    port,
    proc,
    http,
    /** Base URL for `io()`. */
    url: http,
    logs: () => proc?.logs ?? "",
    async health() {
      const r = await fetch(`${http}/health`);
      return r.json();
    },
    async metrics() {
      return (await fetch(`${http}/metrics`)).text();
    },
    /** `POST /api/publish` with the admin key; resolves with `{status, body}`. */
    async publish(channel, event, data) {
      const r = await fetch(`${http}/api/publish`, {
        method: "POST",
        headers: { Authorization: `Bearer ${ADMIN}`, "Content-Type": "application/json" },
        body: JSON.stringify({ channel, event, data }),
      });
      const text = await r.text();
      if (r.status !== 202) throw new Error(`publish ${event} on ${channel} via ${id}: ${r.status} ${text}`);
      return JSON.parse(text);
    },
    kill9() {
      proc.kill("SIGKILL");
      return within(proc.exited, 5000, `${id} exit after SIGKILL`);
    },
    sigterm() {
      proc.kill("SIGTERM");
    },
  };
}

// ------------------------------------------------------------ deploy/local-cluster.sh

/**
 * `deploy/local-cluster.sh` in its own process group (killed by `cleanup`), as the Rust
 * drain test runs it: NATS, Redis, `nodes` gateway nodes and nginx with the shipped
 * config. `env`: GATEWAY_* every node inherits. Resolves with the parsed env file.
 */
export async function startLocalCluster(nodes, env = {}) {
  let last;
  for (let attempt = 1; attempt <= 3; attempt++) {
    const work = join(dir(), `cluster-${attempt}`);
    const proc = child("bash", [join(REPO, "deploy/local-cluster.sh"), "--workdir", work, "--nodes", String(nodes), "--watch-pid", String(process.pid)], {
      env: childEnv({
        GATEWAY_BIN: BIN,
        GATEWAY_JWT_SECRET: SECRET,
        GATEWAY_ADMIN_KEY: ADMIN,
        GATEWAY_API_KEYS: Object.entries(AGENT_KEYS)
          .map(([a, k]) => `${a}:${k}`)
          .join(","),
        READY_TIMEOUT: "50",
        STOP_TIMEOUT: "3",
        RUST_LOG: process.env.RUST_LOG ?? "info",
        ...env,
      }),
      group: true,
    });
    try {
      const vars = await waitFor(
        () => {
          if (!alive(proc)) throw new Error(`local-cluster.sh exited before READY:\n${proc.logs.slice(-4000)}`);
          try {
            const v = parseEnv(readFileSync(join(work, "env"), "utf8"));
            return v.READY === "1" ? v : false;
          } catch {
            return false;
          }
        },
        60_000,
        "local-cluster.sh READY=1",
      );
      const lb = new URL(vars.LB_URL);
      const cluster = {
        proc,
        vars,
        lbUrl: vars.LB_URL,
        nodes: [],
        nodeLog: (i) => {
          try {
            return readFileSync(vars[`GW${i}_LOG`], "utf8");
          } catch {
            return "";
          }
        },
        nginxLog: () => {
          try {
            return readFileSync(join(work, "logs", "nginx.log"), "utf8");
          } catch {
            return "";
          }
        },
      };
      for (let i = 1; i <= nodes; i++) {
        const u = new URL(vars[`GW${i}_URL`]);
        const h = nodeHandle({ id: vars[`GW${i}_NODE_ID`], port: Number(u.port), proc: undefined });
        h.pid = Number(vars[`GW${i}_PID`]);
        h.alive = () => pidAlive(h.pid);
        h.sigterm = () => process.kill(h.pid, "SIGTERM");
        h.kill9 = () => process.kill(h.pid, "SIGKILL");
        cluster.nodes.push(h);
      }
      cluster.lbPort = Number(lb.port);
      return cluster;
    } catch (e) {
      last = e;
      killTree(proc, "SIGKILL");
      await within(proc.exited, 5000, "local-cluster.sh exit").catch(() => {});
    }
  }
  throw last;
}

function parseEnv(text) {
  const out = {};
  for (const line of text.split("\n")) {
    const m = /^([A-Za-z0-9_]+)=(.*)$/.exec(line);
    if (m) out[m[1]] = m[2];
  }
  return out;
}

/** Whether process `pid` runs (not gone, not a zombie). */
export function pidAlive(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 1).trim()[0];
    return !["Z", "X", "x"].includes(state);
  } catch {
    return false;
  }
}

// ------------------------------------------------------------ NATS (text protocol)

/**
 * A minimal NATS client over `net`: `subscribe(subject)` returns an array that fills with
 * `{subject, headers, data}` (headers parsed into an object); `publish(subject, body,
 * headers?)`; `flush()` waits until the server has processed everything written before.
 */
export async function natsClient(port) {
  const sock = tcpConnect(port, "127.0.0.1");
  const subs = new Map();
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
        const total = Number(args.at(-1));
        const hdr = op === "HMSG" ? Number(args.at(-2)) : 0;
        if (buf.length < eol + 2 + total + 2) return;
        const body = buf.subarray(eol + 2, eol + 2 + total);
        buf = buf.subarray(eol + 2 + total + 2);
        const headers = {};
        for (const l of body.subarray(0, hdr).toString().split("\r\n").slice(1)) {
          const i = l.indexOf(":");
          if (i > 0) headers[l.slice(0, i).trim()] = l.slice(i + 1).trim();
        }
        subs.get(args[1])?.push({ subject: args[0], headers, data: body.subarray(hdr).toString() });
        continue;
      }
      buf = buf.subarray(eol + 2);
      if (op === "PING") sock.write("PONG\r\n");
      else if (op === "PONG") pongs.shift()?.();
    }
  });
  sock.on("error", () => {});
  await within(
    new Promise((res, rej) => {
      sock.once("connect", res);
      sock.once("error", rej);
    }),
    5000,
    "NATS connect",
  );
  sock.write(`CONNECT ${JSON.stringify({ verbose: false, pedantic: false, headers: true, protocol: 1, name: "sio-test" })}\r\n`);
  const c = {
    subscribe(subject) {
      const id = String(++sid);
      const msgs = [];
      subs.set(id, msgs);
      sock.write(`SUB ${subject} ${id}\r\n`);
      return msgs;
    },
    publish(subject, body, headers) {
      const payload = Buffer.from(typeof body === "string" ? body : JSON.stringify(body));
      if (headers) {
        const h = Buffer.from(`NATS/1.0\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("")}\r\n`);
        sock.write(`HPUB ${subject} ${h.length} ${h.length + payload.length}\r\n`);
        sock.write(Buffer.concat([h, payload, Buffer.from("\r\n")]));
      } else {
        sock.write(`PUB ${subject} ${payload.length}\r\n`);
        sock.write(Buffer.concat([payload, Buffer.from("\r\n")]));
      }
    },
    flush() {
      const p = new Promise((r) => pongs.push(r));
      sock.write("PING\r\n");
      return within(p, 5000, "NATS PONG");
    },
    close() {
      sock.destroy();
    },
  };
  closers.push(() => sock.destroy());
  await c.flush();
  return c;
}

// ------------------------------------------------------------ Socket.IO clients

/**
 * A `socket.io-client` socket on `base + nsp`, its own Engine.IO connection unless
 * `opts.manager` is given, reconnection off unless asked. Records every event it
 * receives (`s.log`: `{event, data, at}`), every `connect_error` (`s.errors`) and every
 * disconnect reason (`s.disconnects`). Closed by `cleanup`.
 */
export function sio(base, nsp, opts = {}) {
  const { manager, localAddress, ...rest } = opts;
  const o = { forceNew: true, reconnection: false, timeout: 10_000, ...rest };
  if (localAddress) {
    const agent = new Agent({ localAddress, keepAlive: false });
    o.agent = agent;
    closers.push(() => agent.destroy());
  }
  const s = manager ? manager.socket(nsp, o) : io(base + nsp, o);
  s.log = [];
  s.errors = [];
  s.disconnects = [];
  s.connects = 0;
  s.onAny((event, ...args) => s.log.push({ event, data: args[0], args, at: Date.now() }));
  s.on("connect", () => s.connects++);
  s.on("connect_error", (e) => s.errors.push(e));
  s.on("disconnect", (reason) => s.disconnects.push(reason));
  /** Data of every received `event` (optionally matching `pred`). */
  s.got = (event, pred = () => true) => s.log.filter((e) => e.event === event && pred(e.data)).map((e) => e.data);
  /** Waits for an `event` whose data matches `pred`; resolves with its data. */
  s.wait = (event, pred = () => true, ms = 5000) =>
    waitFor(
      () => s.log.find((e) => e.event === event && pred(e.data))?.data ?? false,
      ms,
      () => `${nsp}: event ${event} (got: ${s.log.map((e) => e.event).join(", ") || "nothing"})`,
    );
  /** Emits with an ack; resolves with the ack's first argument. */
  s.ask = (event, data, ms = 5000) => within(s.timeout(ms + 500).emitWithAck(event, data), ms + 1000, `ack of ${event}`);
  sockets.push(s);
  return s;
}

/** A Manager (one Engine.IO connection for several namespaces); closed by `cleanup`. */
export function manager(base, opts = {}) {
  const m = new Manager(base, { reconnection: false, timeout: 10_000, autoConnect: true, ...opts });
  closers.push(() => m.engine?.close());
  return m;
}

/** Resolves once `s` is connected; rejects with its `connect_error` (err.message = code). */
export function connected(s, ms = 10_000) {
  if (s.connected) return Promise.resolve(s);
  return within(
    new Promise((res, rej) => {
      s.once("connect", () => res(s));
      s.once("connect_error", (e) => rej(e));
    }),
    ms,
    `connect of ${s.nsp}`,
  );
}

/** Resolves with `s`'s next `connect_error` (the test expects a refusal). */
export function refused(s, ms = 10_000) {
  return within(
    new Promise((res, rej) => {
      if (s.errors.length) return res(s.errors[0]);
      s.once("connect", () => rej(new Error(`${s.nsp} connected, a connect_error was expected`)));
      s.once("connect_error", res);
    }),
    ms,
    `connect_error of ${s.nsp}`,
  );
}

/** Resolves with the reason of `s`'s next disconnect. */
export function disconnected(s, ms = 10_000) {
  return within(new Promise((res) => s.once("disconnect", res)), ms, `disconnect of ${s.nsp}`);
}

/** A connected socket of user `sub` on `nsp` (token in the CONNECT auth). */
export async function userSocket(node, nsp, sub, opts = {}) {
  const { projects, roles, ...rest } = opts;
  const s = sio(node.url, nsp, { auth: { token: userToken(sub, { projects, roles }) }, ...rest });
  await connected(s);
  return s;
}

/** `/portal` socket of `sub` that joined `project` (waits for `joined_project`). */
export async function portalIn(node, sub, project, opts = {}) {
  const s = await userSocket(node, "/portal", sub, opts);
  const joined = await s.ask("join_project", { project_name: project });
  if (joined?.error) throw new Error(`join_project ${project} as ${sub}: ${JSON.stringify(joined)}`);
  return s;
}

// ------------------------------------------------------------ native WebSocket clients

/**
 * A native client on `/ws` (JSON frames) with `?token=`; `frames` fills with what it
 * receives; `request(frame)` sends a frame with an id and resolves with its response.
 */
export async function nativeClient(node, token, path = "/ws") {
  const ws = new WebSocket(`ws://127.0.0.1:${node.port}${path}?token=${encodeURIComponent(token)}`);
  const frames = [];
  ws.on("message", (d) => frames.push(JSON.parse(String(d))));
  ws.on("error", () => {});
  closers.push(() => ws.terminate());
  await within(
    new Promise((res, rej) => {
      ws.once("open", res);
      ws.once("error", rej);
      ws.once("unexpected-response", (_req, r) => rej(new Error(`native handshake refused: ${r.statusCode}`)));
    }),
    5000,
    "native handshake",
  );
  await waitFor(() => frames.find((f) => f.type === "connected"), 5000, "native connected frame");
  let n = 0;
  return {
    ws,
    frames,
    events: (event) => frames.filter((f) => f.type === "event" && f.event === event),
    async request(frame) {
      const id = `r${++n}`;
      ws.send(JSON.stringify({ ...frame, id }));
      return waitFor(() => frames.find((f) => (f.type === "response" || f.type === "ack") && f.id === id), 5000, `answer to ${frame.type} ${id}`);
    },
    close: () => ws.close(),
  };
}

// ------------------------------------------------------------ raw Engine.IO

/** The Engine.IO v4 open packet of a fresh polling handshake (`0{...}`), parsed. */
export async function engineHandshake(node, query = "") {
  const r = await fetch(`${node.http}/socket.io/?EIO=4&transport=polling${query}`);
  const text = await r.text();
  if (r.status !== 200 || !text.startsWith("0")) throw new Error(`Engine.IO handshake: ${r.status} ${text.slice(0, 200)}`);
  return JSON.parse(text.slice(1));
}

/** The /health document's `socketio` counts, `{websocket, polling}`. */
export async function sioCounts(node) {
  const h = await node.health();
  return h.socketio;
}
