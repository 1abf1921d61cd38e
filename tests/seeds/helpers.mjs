// Plumbing of the seed tests: a gateway node started from the real binary (env
// GATEWAY_BIN, default ../../target/debug/gateway) with a seed's example config
// (deploy/examples/seed-00N.toml) — only the address, the secrets and the backend URL
// come from the environment, the way an operator would run it — JWTs minted with
// node:crypto, an HTTP backend stub, and bounded waits. The seeds' client code lives in
// the test files, as their documents write it.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync } from "node:fs";
import { createServer as createHttpServer } from "node:http";
import { createServer } from "node:net";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.GATEWAY_BIN ?? resolve(here, "../../target/debug/gateway");
export const SECRET = "seed-test-secret-0123456789abcdef";
export const ADMIN = "seed-admin-key";
export const BACKEND_TOKEN = "seed-backend-token";
/** Why the tests are skipped, or false. */
export const skip = existsSync(BIN) ? false : `gateway binary not found at ${BIN} (cargo build -p gateway, or set GATEWAY_BIN)`;

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

/** Resolves with `fn()`'s truthy value, polling; rejects after `ms`. */
export async function waitFor(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** An HS256 user JWT, as the seeds' auth services issue them. */
export function jwt(sub, { ttlSecs = 300, projects } = {}) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub, iat: now, exp: now + ttlSecs, ...(projects ? { projects } : {}) };
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${head}.${createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}

/**
 * Starts `gateway serve --config deploy/examples/<seed>.toml` on a free port.
 * `env`: extra GATEWAY_* overrides (API keys, backend URL, shorter timers).
 */
export async function startGateway(seed, env = {}) {
  const port = await freePort();
  const config = resolve(here, `../../deploy/examples/${seed}.toml`);
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("GATEWAY_")));
  const child = spawn(BIN, ["serve", "--config", config], {
    env: {
      ...inherited,
      GATEWAY_LISTEN: `127.0.0.1:${port}`,
      GATEWAY_NODE_ID: `${seed}-test`,
      GATEWAY_JWT_SECRET: SECRET,
      GATEWAY_ADMIN_KEY: ADMIN,
      // Every test client comes from 127.0.0.1: no per-address handshake rate.
      GATEWAY_LIMITS__HANDSHAKES_PER_IP_PER_SEC: "0",
      GATEWAY_DRAIN__DELAY_MS: "0",
      GATEWAY_DRAIN__PERIOD_MS: "200",
      RUST_LOG: process.env.RUST_LOG ?? "warn",
      // The backend stub is on loopback: never through a proxy set in the environment.
      NO_PROXY: `127.0.0.1,localhost${process.env.NO_PROXY ? "," + process.env.NO_PROXY : ""}`,
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let logs = "";
  child.stdout.on("data", (d) => (logs += d));
  child.stderr.on("data", (d) => (logs += d));
  const exited = new Promise((r) => child.once("exit", (code, signal) => r({ code, signal })));
  let gone = false;
  exited.then(() => (gone = true));
  await waitFor(
    async () => {
      if (gone) throw new Error(`gateway exited at start:\n${logs}`);
      try {
        return (await fetch(`http://127.0.0.1:${port}/health`)).ok;
      } catch {
        return false;
      }
    },
    15_000,
    "gateway /health",
  );
  return {
    port,
    host: `127.0.0.1:${port}`,
    logs: () => logs,
    /** `POST /api/publish` as a backend does; resolves with the HTTP status. */
    async publish(channel, event, data) {
      const r = await fetch(`http://127.0.0.1:${port}/api/publish`, {
        method: "POST",
        headers: { Authorization: `Bearer ${ADMIN}`, "Content-Type": "application/json" },
        body: JSON.stringify({ channel, event, data }),
      });
      return r.status;
    },
    async stop() {
      if (!gone) child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(t);
    },
  };
}

/**
 * An HTTP backend stub: records every call `{path, headers, body, at}` and answers with
 * `handler(call, res)` (default: 200 `{}`).
 */
export async function startBackend(handler) {
  const calls = [];
  const sockets = new Set();
  const server = createHttpServer((req, res) => {
    let raw = "";
    req.on("data", (d) => (raw += d));
    req.on("end", () => {
      let body;
      try {
        body = JSON.parse(raw);
      } catch {
        body = raw;
      }
      const call = { path: req.url, method: req.method, headers: req.headers, body, at: Date.now() };
      calls.push(call);
      const reply = (status, json) => {
        if (res.writableEnded || res.destroyed) return;
        res.writeHead(status, { "Content-Type": "application/json" });
        res.end(json === undefined ? "" : JSON.stringify(json));
      };
      if (handler) handler(call, reply, res);
      else reply(200, {});
    });
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
  });
  const port = await new Promise((r) => server.listen(0, "127.0.0.1", () => r(server.address().port)));
  return {
    url: `http://127.0.0.1:${port}`,
    calls,
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

/** Resolves with the first message (parsed) matching `pred` a `ws` socket receives. */
export function nextMessage(ws, pred, ms = 5_000, what = "a message") {
  return new Promise((res, rej) => {
    const t = setTimeout(() => {
      ws.off("message", on);
      rej(new Error(`timed out after ${ms} ms waiting for ${what}`));
    }, ms);
    const on = (data) => {
      const m = JSON.parse(data.toString());
      if (pred(m)) {
        clearTimeout(t);
        ws.off("message", on);
        res(m);
      }
    };
    ws.on("message", on);
  });
}

/** Resolves once a `ws` socket is closed, with the close code. */
export function closed(ws, ms = 5_000) {
  return new Promise((res, rej) => {
    if (ws.readyState === 3) return res(1006);
    const t = setTimeout(() => rej(new Error(`socket not closed within ${ms} ms`)), ms);
    ws.once("close", (code) => {
      clearTimeout(t);
      res(code);
    });
  });
}
