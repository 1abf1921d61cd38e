// Contract §11 over HTTP long-polling: `transports: ["polling"]` clients join, receive
// events (many at once, in order, batched into polls) and chat across heartbeats; the
// default transports (polling, then the upgrade to WebSocket) lose nothing while the
// upgrade happens; [socketio] from the environment shows in the handshake.
// One node on real NATS and Redis, short heartbeats from GATEWAY_SOCKETIO__*.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as h from "./helpers.mjs";

const skip = h.skipReason();
const POLL = { transports: ["polling"] };
let node;

before(async () => {
  if (skip) return;
  const fabric = await h.startFabric();
  node = await h.startNode({
    fabric,
    env: { GATEWAY_SOCKETIO__PING_INTERVAL_MS: "300", GATEWAY_SOCKETIO__PING_TIMEOUT_MS: "2000", GATEWAY_SOCKETIO__UPGRADE_TIMEOUT_MS: "3000" },
  });
});
after(h.cleanup);

test("[socketio] from the environment: the handshake announces ping_interval_ms and ping_timeout_ms", { skip }, async () => {
  const d = await h.engineHandshake(node);
  assert.equal(d.pingInterval, 300);
  assert.equal(d.pingTimeout, 2000);
  assert.deepEqual(d.upgrades, ["websocket"]);
});

test("polling only: /portal join_project, events arrive, heartbeats keep it alive, it stays on polling", { skip }, async () => {
  const s = await h.portalIn(node, "po-u1", "po-p1", POLL);
  assert.equal(s.io.engine.transport.name, "polling");
  await node.publish("project:po-p1", "task_update", { n: 1 });
  assert.deepEqual(await s.wait("task_update"), { n: 1 });
  let pings = 0;
  s.io.engine.on("ping", () => pings++);
  await h.sleep(1500); // five heartbeats
  assert.ok(s.connected, `disconnected: ${s.disconnects}`);
  assert.ok(pings >= 3, `${pings} pings`);
  await node.publish("project:po-p1", "task_update", { n: 2 });
  assert.deepEqual(await s.wait("task_update", (d) => d.n === 2), { n: 2 });
  assert.equal(s.io.engine.transport.name, "polling");
  const counts = await h.sioCounts(node);
  assert.ok(counts.polling >= 1, JSON.stringify(counts));
});

test("polling only: 200 events published at once arrive complete and in order", { skip }, async () => {
  const s = await h.portalIn(node, "po-u2", "po-p2", POLL);
  for (let i = 0; i < 200; i++) await node.publish("project:po-p2", "tick", { i });
  await h.waitFor(() => s.got("tick").length >= 200, 15_000, () => `200 ticks (have ${s.got("tick").length})`);
  await h.sleep(300);
  assert.deepEqual(
    s.got("tick").map((d) => d.i),
    Array.from({ length: 200 }, (_, i) => i),
  );
});

test("polling only: chat between two polling clients (message_received to both, typing to the other, validation_error)", { skip }, async () => {
  const a = await h.userSocket(node, "/chat/po-p3", "po-a", POLL);
  const b = await h.userSocket(node, "/chat/po-p3", "po-b", POLL);
  a.emit("send_message", { content: "over polling", type: "message" });
  const ma = await a.wait("message_received");
  const mb = await b.wait("message_received");
  assert.equal(ma.content, "over polling");
  assert.deepEqual(ma, mb);
  b.emit("typing_start", {});
  assert.equal((await a.wait("typing_start")).user_id, "po-b");
  const ack = await a.ask("send_message", { content: "acked over polling", type: "message" });
  assert.ok(!ack?.error, JSON.stringify(ack));
  a.emit("send_message", { content: "x", type: "bogus" });
  const v = await a.wait("validation_error");
  assert.ok(Array.isArray(v.details));
  assert.ok(a.connected && b.connected);
});

test("polling only: a large message (60 KB of content in an event) arrives whole", { skip }, async () => {
  const s = await h.portalIn(node, "po-u3", "po-p4", POLL);
  const blob = "y".repeat(60_000);
  await node.publish("project:po-p4", "big", { blob });
  const d = await s.wait("big");
  assert.equal(d.blob.length, 60_000);
});

test("default transports: polling, then the upgrade to WebSocket; joins, events and chat around the upgrade lose nothing", { skip }, async () => {
  const s = h.sio(node.url, "/portal", { auth: { token: h.userToken("po-u4") } });
  const upgraded = new Promise((r) => s.io.on("open", () => s.io.engine.once("upgrade", (t) => r(t.name))));
  await h.connected(s);
  // Join at once, while the upgrade is probably still in flight, and keep a feed going.
  const joined = s.ask("join_project", { project_name: "po-p5" });
  assert.equal((await joined).project_name, "po-p5");
  const feed = (async () => {
    for (let i = 0; i < 40; i++) {
      await node.publish("project:po-p5", "tick", { i });
      await h.sleep(10);
    }
  })();
  assert.equal(await h.within(upgraded, 10_000, "the upgrade"), "websocket");
  await feed;
  await h.waitFor(() => s.got("tick").length >= 40, 10_000, () => `40 ticks (have ${s.got("tick").length})`);
  await h.sleep(300);
  assert.deepEqual(
    s.got("tick").map((d) => d.i),
    Array.from({ length: 40 }, (_, i) => i),
    "every event exactly once, in order, across the upgrade",
  );
  assert.equal(s.io.engine.transport.name, "websocket");
  // After the upgrade the counts say websocket.
  const c = h.sio(node.url, "/chat/po-p5", { auth: { token: h.userToken("po-u5") } });
  await h.connected(c);
  await h.within(new Promise((r) => (c.io.engine.transport.name === "websocket" ? r() : c.io.engine.once("upgrade", r))), 10_000, "chat upgrade");
  c.emit("send_message", { content: "after upgrade", type: "message" });
  assert.equal((await c.wait("message_received")).content, "after upgrade");
  // /health: each of these is counted under websocket now.
  const counts = await h.sioCounts(node);
  assert.ok(counts.websocket >= 2, JSON.stringify(counts));
});

test("the transport counts follow a connection: polling, then websocket after the upgrade, then 0", { skip }, async () => {
  const n = await h.startNode({ env: { GATEWAY_SOCKETIO__PING_INTERVAL_MS: "300" } });
  const s = h.sio(n.url, "/portal", { auth: { token: h.userToken("po-u6") }, upgrade: false });
  await h.connected(s);
  assert.deepEqual(await h.sioCounts(n), { websocket: 0, polling: 1 });
  s.disconnect();
  await h.waitFor(async () => (await h.sioCounts(n)).polling === 0, 5000, "polling count back to 0");
  const u = h.sio(n.url, "/portal", { auth: { token: h.userToken("po-u6") } });
  await h.connected(u);
  await h.within(new Promise((r) => (u.io.engine.transport.name === "websocket" ? r() : u.io.engine.once("upgrade", r))), 10_000, "upgrade");
  let last;
  await h.waitFor(
    async () => {
      last = await h.sioCounts(n);
      return last.websocket === 1 && last.polling === 0;
    },
    5000,
    () => `{websocket:1, polling:0} after the upgrade (have ${JSON.stringify(last)})`,
  );
  u.disconnect();
  await h.waitFor(
    async () => {
      last = await h.sioCounts(n);
      return last.websocket === 0 && last.polling === 0;
    },
    5000,
    () => `counts back to 0 (have ${JSON.stringify(last)})`,
  );
});
