// Runs the gateway binary for a test: a free port, a node started with the given
// environment and awaited through /health, stopped with SIGTERM (SIGKILL after a
// deadline); HS256 JWTs minted with node:crypto; bounded waits.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { createServer } from "node:net";

/** A TCP port free on 127.0.0.1 just now. */
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
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A promise with a deadline. */
export function within(p, ms, what) {
  let t;
  return Promise.race([p, new Promise((_, rej) => (t = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms)))]).finally(() =>
    clearTimeout(t),
  );
}

/** An HS256 JWT over `claims`. */
export function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
}

/**
 * Starts `bin serve` on 127.0.0.1:`port` with `env` (on top of the process's own) and
 * waits (bounded) until /health answers. Returns `{proc, logs(), stop()}`.
 */
export async function startGateway(bin, port, env) {
  let logs = "";
  const proc = spawn(bin, ["serve"], {
    env: { ...process.env, GATEWAY_LISTEN: `127.0.0.1:${port}`, RUST_LOG: process.env.RUST_LOG ?? "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  proc.stdout.on("data", (d) => (logs += d));
  proc.stderr.on("data", (d) => (logs += d));
  const exited = new Promise((r) => proc.once("exit", (code, signal) => r({ code, signal })));
  const node = {
    proc,
    logs: () => logs,
    running: () => proc.exitCode === null && proc.signalCode === null,
    async stop() {
      if (!node.running()) return;
      proc.kill("SIGTERM");
      try {
        await within(exited, 10_000, "gateway exit after SIGTERM");
      } catch {
        proc.kill("SIGKILL");
        await within(exited, 5_000, "gateway exit after SIGKILL");
      }
    },
  };
  await waitFor(
    async () => {
      if (!node.running()) throw new Error(`gateway exited early (${proc.exitCode}):\n${logs}`);
      try {
        return (await fetch(`http://127.0.0.1:${port}/health`)).ok;
      } catch {
        return false;
      }
    },
    20_000,
    "/health",
  );
  return node;
}
