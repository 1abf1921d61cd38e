// Contract §11 across nodes: two gateway nodes (A, B) on one NATS and one Redis.
// Presence (user_joined / user_left exactly once cluster-wide, also after kill -9 of a
// node once its presence lease expired), chat across nodes, and a native WebSocket
// client beside Socket.IO clients on the same channel receiving a backend's NATS event.
// The kill -9 test runs last (node B is gone after it).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as h from "./helpers.mjs";

const skip = h.skipReason();
const WS = { transports: ["websocket"] };
const LEASE_MS = 2000;
const REFRESH_MS = 300;
let A;
let B;
let nats;

before(async () => {
  if (skip) return;
  const fabric = await h.startFabric();
  const env = {
    GATEWAY_PRESENCE__LEASE_MS: String(LEASE_MS),
    GATEWAY_PRESENCE__REFRESH_MS: String(REFRESH_MS),
    GATEWAY_CHANNELS__PUBLISH: '["session","project"]',
  };
  [A, B] = await Promise.all([h.startNode({ id: h.uid("gw-a"), fabric, env }), h.startNode({ id: h.uid("gw-b"), fabric, env })]);
  nats = await h.natsClient(fabric.nats.port);
});
after(h.cleanup);

const by = (user) => (d) => d?.user_id === user;

test("user_joined / user_left across nodes, exactly once per user cluster-wide", { skip }, async () => {
  const p = "cl-p1";
  const a = await h.portalIn(A, "cl-a", p, WS); // on A
  const obs = await h.userSocket(B, `/project/${p}`, "cl-obs", WS); // on B
  await h.sleep(300);
  // b joins on B: a (on A) and the observer (on B) hear it once.
  const b1 = await h.portalIn(B, "cl-b", p, WS);
  const j = await a.wait("user_joined", by("cl-b"));
  assert.equal(j.project_name, p);
  await obs.wait("user_joined", by("cl-b"));
  // b's second connection, on A: no second user_joined anywhere.
  const b2 = await h.portalIn(A, "cl-b", p, WS);
  // Ordering marker through both nodes.
  await A.publish(`project:${p}`, "task_update", { marker: 1 });
  await a.wait("task_update");
  await obs.wait("task_update");
  await h.sleep(500);
  assert.equal(a.got("user_joined", by("cl-b")).length, 1);
  assert.equal(obs.got("user_joined", by("cl-b")).length, 1);
  assert.deepEqual(b1.got("user_joined", by("cl-b")), []);
  assert.deepEqual(b2.got("user_joined", by("cl-b")), []);
  // b leaves on B: still present through A.
  b1.disconnect();
  await h.sleep(800);
  assert.deepEqual(a.got("user_left", by("cl-b")), [], "b is still in the project through its connection on A");
  // b's last connection leaves: user_left once, on both nodes.
  b2.emit("leave_project", { project_name: p });
  const l = await a.wait("user_left", by("cl-b"));
  assert.equal(l.project_name, p);
  await obs.wait("user_left", by("cl-b"));
  await h.sleep(500);
  assert.equal(a.got("user_left", by("cl-b")).length, 1);
  assert.equal(obs.got("user_left", by("cl-b")).length, 1);
});

test("joined_project.active_users counts users cluster-wide", { skip }, async () => {
  const p = "cl-p2";
  await h.portalIn(A, "cl-c", p, WS);
  await h.portalIn(A, "cl-c", p, WS); // same user twice: one user
  const s = await h.userSocket(B, "/portal", "cl-d", WS);
  const j = await s.ask("join_project", { project_name: p });
  assert.equal(j.active_users, 2, JSON.stringify(j));
});

test("chat across nodes: message_received once to everyone (sender included), typing to the others", { skip }, async () => {
  const p = "cl-p3";
  const a = await h.userSocket(A, `/chat/${p}`, "cl-e", WS);
  const b = await h.userSocket(B, `/chat/${p}`, "cl-f", WS);
  await h.sleep(300);
  a.emit("send_message", { content: "across", type: "message" });
  const ma = await a.wait("message_received");
  const mb = await b.wait("message_received");
  assert.deepEqual(ma, mb);
  assert.equal(ma.user_id, "cl-e");
  b.emit("typing_start", {});
  assert.equal((await a.wait("typing_start")).user_id, "cl-f");
  await h.sleep(400);
  assert.equal(a.got("message_received").length, 1);
  assert.equal(b.got("message_received").length, 1);
  assert.deepEqual(b.got("typing_start"), []);
});

test("a native WebSocket client and Socket.IO clients on one channel all receive a backend's NATS event", { skip }, async () => {
  const p = "cl-p4";
  const native = await h.nativeClient(A, h.userToken("cl-native"));
  const sub = await native.request({ type: "subscribe", channels: [`project:${p}`] });
  assert.deepEqual(sub.result?.subscribed, [`project:${p}`], JSON.stringify(sub));
  const proj = await h.userSocket(B, `/project/${p}`, "cl-h", WS); // other node
  const portal = await h.portalIn(A, "cl-i", p, { transports: ["polling"] }); // same node, polling
  await h.sleep(300);
  const data = { project_name: p, task_id: "t-42", status: "running", progress: 0.5, nested: { a: [1, 2, { b: null }] } };
  nats.publish(`gw.ev.project.${p}`, { event: "task_update", data });
  await nats.flush();
  const ev = await h.waitFor(() => native.events("task_update")[0], 5000, "the native client's event");
  assert.deepEqual(ev.data, data);
  assert.equal(ev.channel, `project:${p}`);
  assert.deepEqual(await proj.wait("task_update"), data);
  assert.deepEqual(await portal.wait("task_update"), data);
  // And the other way round: a native client's publish reaches the Socket.IO clients.
  const ack = await native.request({ type: "publish", channel: `project:${p}`, event: "approval_request", data: { request_id: "r1" } });
  assert.equal(ack.type, "ack", JSON.stringify(ack));
  assert.deepEqual(await proj.wait("approval_request"), { request_id: "r1" });
  assert.deepEqual(await portal.wait("approval_request"), { request_id: "r1" });
  // A Socket.IO chat message reaches the native client as an event of the channel.
  const c = await h.userSocket(B, `/chat/${p}`, "cl-j", WS);
  c.emit("send_message", { content: "to native", type: "message" });
  const m = await h.waitFor(() => native.events("message_received")[0], 5000, "message_received at the native client");
  assert.equal(m.data.content, "to native");
  assert.equal(m.data.user_id, "cl-j");
});

test("kill -9 of a node: user_left once for its users after the presence lease, none for users still present elsewhere", { skip, timeout: 60_000 }, async () => {
  const p = "cl-p5";
  const a = await h.portalIn(A, "cl-k", p, WS);
  const obs = await h.userSocket(A, `/project/${p}`, "cl-obs2", WS);
  const victim = await h.portalIn(B, "cl-victim", p, WS); // only on B
  const both1 = await h.portalIn(B, "cl-both", p, WS); // on B ...
  const both2 = await h.portalIn(A, "cl-both", p, WS); // ... and on A
  await a.wait("user_joined", by("cl-victim"));
  await a.wait("user_joined", by("cl-both"));
  await h.sleep(REFRESH_MS * 2); // leases written
  const t0 = Date.now();
  await B.kill9();
  const left = await a.wait("user_left", by("cl-victim"), LEASE_MS + 4 * REFRESH_MS + 5000);
  const took = Date.now() - t0;
  assert.equal(left.project_name, p);
  await obs.wait("user_left", by("cl-victim"), 3000);
  // Give any duplicate (a second reaper) time to show.
  await h.sleep(2 * REFRESH_MS + 1000);
  assert.equal(a.got("user_left", by("cl-victim")).length, 1, "exactly once");
  assert.equal(obs.got("user_left", by("cl-victim")).length, 1, "exactly once");
  assert.deepEqual(a.got("user_left", by("cl-both")), [], "cl-both is still present through A");
  assert.ok(both2.connected);
  void victim;
  void both1;
  assert.ok(took >= LEASE_MS - 500, `user_left ${took} ms after the kill, before the ${LEASE_MS} ms lease could expire`);
});
