// Contract §11, resource hygiene: 1,000 Socket.IO connect/disconnect cycles against one
// node (bounded concurrency; WebSocket and polling; clean disconnects, transport closes
// without a namespace disconnect, disconnects right after CONNECT and in the middle of a
// join) leave nothing behind: /health connections, channels, subscriptions and tracked
// IPs 0, the socketio counts 0, the metrics gauge 0, and no presence ghost (a newcomer
// to the churned project is its only active user).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as h from "./helpers.mjs";

const skip = h.skipReason();
const CYCLES = 1000;
const CONCURRENCY = 16;
const P = "churn-p1";
let node;

before(async () => {
  if (skip) return;
  const fabric = await h.startFabric();
  node = await h.startNode({ fabric, env: { GATEWAY_LIMITS__PENDING_PER_IP: "256" } });
});
after(h.cleanup);

/** One cycle; the variant is chosen by the index. Resolves when the client side is closed. */
async function cycle(i) {
  const user = `churn-u${i % 40}`;
  const variant = i % 8;
  const transports = variant === 3 || variant === 7 ? ["polling"] : ["websocket"];
  const auth = { token: h.userToken(user) };
  switch (variant) {
    case 0:
    case 3: {
      // /portal, join, leave by disconnecting.
      const s = h.sio(node.url, "/portal", { auth, transports });
      await h.connected(s);
      await s.ask("join_project", { project_name: P });
      s.disconnect();
      return;
    }
    case 1: {
      // /project/{name}: joined at connect.
      const s = h.sio(node.url, `/project/${P}`, { auth, transports });
      await h.connected(s);
      s.disconnect();
      return;
    }
    case 2: {
      // /chat/{name}, a message, then the transport closes without a namespace disconnect.
      const s = h.sio(node.url, `/chat/${P}`, { auth, transports });
      await h.connected(s);
      await s.ask("send_message", { content: `c${i}`, type: "message" });
      s.io.engine.close();
      return;
    }
    case 4: {
      // Disconnect in the middle of a join (the answer may never come).
      const s = h.sio(node.url, "/portal", { auth, transports });
      await h.connected(s);
      s.emit("join_project", { project_name: P });
      s.disconnect();
      return;
    }
    case 5: {
      // Several namespaces on one Engine.IO connection, then the whole connection closes.
      const m = h.manager(node.url, { transports });
      const socks = ["/portal", `/project/${P}`, `/chat/${P}`, "/monitoring"].map((nsp) => h.sio(node.url, nsp, { manager: m, auth }));
      await Promise.all(socks.map((s) => h.connected(s)));
      await socks[0].ask("join_project", { project_name: P });
      m.engine.close();
      return;
    }
    case 6: {
      // Unauthenticated: connects, never authenticates, leaves before the deadline.
      const s = h.sio(node.url, "/portal", { transports });
      await h.connected(s);
      s.disconnect();
      return;
    }
    case 7: {
      // /project/{name} over polling, a clean disconnect.
      const s = h.sio(node.url, `/project/${P}`, { auth, transports });
      await h.connected(s);
      s.disconnect();
      return;
    }
  }
}

test(`${CYCLES} connect/disconnect cycles leave the node's tables empty`, { skip, timeout: 120_000 }, async (t) => {
  const t0 = Date.now();
  const failures = [];
  await h.pool(
    Array.from({ length: CYCLES }, (_, i) => i),
    CONCURRENCY,
    async (i) => {
      try {
        await cycle(i);
      } catch (e) {
        failures.push(`cycle ${i} (variant ${i % 8}): ${e.message}`);
      }
    },
  );
  const took = Date.now() - t0;
  assert.deepEqual(failures.slice(0, 10), [], `${failures.length} cycles failed`);
  let health;
  await h.waitFor(
    async () => {
      health = await node.health();
      const w = health.websocket;
      return (
        w.connections === 0 &&
        w.channels === 0 &&
        w.subscriptions === 0 &&
        w.trackedIps === 0 &&
        health.socketio?.websocket === 0 &&
        health.socketio?.polling === 0
      );
    },
    15_000,
    () => `empty tables, have websocket=${JSON.stringify(health?.websocket)} socketio=${JSON.stringify(health?.socketio)}`,
  );
  assert.equal(health.websocket.connectedUsers, 0);
  assert.equal(health.websocket.connectedAgents, 0);
  const metrics = await node.metrics();
  assert.match(metrics, /^gateway_socketio_connections\{transport="websocket"\} 0$/m);
  assert.match(metrics, /^gateway_socketio_connections\{transport="polling"\} 0$/m);
  // No presence ghost: a newcomer is the project's only active user.
  const s = await h.userSocket(node, "/portal", "churn-newcomer", { transports: ["websocket"] });
  const joined = await s.ask("join_project", { project_name: P });
  assert.equal(joined.active_users, 1, `presence after churn: ${JSON.stringify(joined)}`);
  await h.sleep(500);
  assert.deepEqual(s.got("user_left"), [], "no late user_left from the churn");
  t.diagnostic(`${CYCLES} cycles in ${took} ms at concurrency ${CONCURRENCY}`);
});
