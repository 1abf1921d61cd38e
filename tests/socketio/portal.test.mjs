// Contract §11, `/portal`: join_project → joined_project (event and ack) with
// current_state from the channel's history, user_joined / user_left to the others in the
// project (portal sockets that joined it and /project/{name} sockets), exactly once per
// user, leave_project, subscribe_to_events filters, and delivery of every event of a
// joined channel (HTTP publish, a backend on NATS, a native client) with the event's data.
// One node on real NATS (JetStream history) and Redis; WebSocket transport.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as h from "./helpers.mjs";

const skip = h.skipReason();
const WS = { transports: ["websocket"] };
let node;
let nats;

before(async () => {
  if (skip) return;
  const fabric = await h.startFabric();
  node = await h.startNode({
    fabric,
    env: {
      GATEWAY_CHANNELS__PUBLISH: '["session","project"]',
      GATEWAY_HISTORY__PROJECT__SIZE: "50",
      GATEWAY_HISTORY__PROJECT__TTL_MS: "600000",
    },
  });
  nats = await h.natsClient(fabric.nats.port);
});
after(h.cleanup);

const portal = (sub, opts) => h.userSocket(node, "/portal", sub, { ...WS, ...opts });
const joinedBy = (user) => (d) => d?.user_id === user;

test("join_project → joined_project {project_name, active_users, last_activity} to the joiner, as event and as ack", { skip }, async () => {
  const s = await portal("pt-u1");
  // Without a callback: the event.
  s.emit("join_project", { project_name: "pt-p1" });
  const ev = await s.wait("joined_project");
  assert.equal(ev.project_name, "pt-p1");
  assert.equal(ev.active_users, 1, `active_users: ${JSON.stringify(ev)}`);
  assert.ok("last_activity" in ev, `last_activity missing: ${JSON.stringify(ev)}`);
  assert.ok(ev.current_state === undefined || ev.current_state === null, `no state_change yet: ${JSON.stringify(ev)}`);
  // With a callback: the ack carries the same answer.
  const s2 = await portal("pt-u2");
  const ack = await s2.ask("join_project", { project_name: "pt-p1" });
  assert.equal(ack.project_name, "pt-p1", JSON.stringify(ack));
  assert.equal(ack.active_users, 2, `two users now: ${JSON.stringify(ack)}`);
  assert.ok("last_activity" in ack);
});

test("current_state = data.new_state of the latest state_change in the channel's history", { skip }, async () => {
  await node.publish("project:pt-p2", "state_change", { project_name: "pt-p2", old_state: "IDLE", new_state: "SPRINT_PLANNED" });
  await node.publish("project:pt-p2", "task_update", { task_id: "t1" });
  await node.publish("project:pt-p2", "state_change", { project_name: "pt-p2", old_state: "SPRINT_PLANNED", new_state: "SPRINT_ACTIVE" });
  await node.publish("project:pt-p2", "task_update", { task_id: "t2" });
  // A backend's state_change over NATS is in the history too (JetStream stores gw.ev.project.>).
  nats.publish("gw.ev.project.pt-p3", { event: "state_change", data: { new_state: { phase: "REVIEW", step: 2 } } });
  await nats.flush();
  const s = await portal("pt-u3");
  const a = await s.ask("join_project", { project_name: "pt-p2" });
  assert.equal(a.current_state, "SPRINT_ACTIVE", JSON.stringify(a));
  let b;
  await h.waitFor(
    async () => {
      b = await s.ask("join_project", { project_name: "pt-p3" });
      return b.current_state !== undefined && b.current_state !== null;
    },
    5000,
    () => `current_state of pt-p3 (${JSON.stringify(b)})`,
  );
  assert.deepEqual(b.current_state, { phase: "REVIEW", step: 2 });
});

test("events of a joined project reach the socket with their data: HTTP publish, a backend on NATS, a native client", { skip }, async () => {
  const s = await portal("pt-u4");
  await s.ask("join_project", { project_name: "pt-p4" });
  await node.publish("project:pt-p4", "task_update", { task_id: "http", progress: 10 });
  nats.publish("gw.ev.project.pt-p4", { event: "task_update", data: { task_id: "nats", progress: 20 } });
  const native = await h.nativeClient(node, h.userToken("pt-native"));
  const sub = await native.request({ type: "subscribe", channels: ["project:pt-p4"] });
  assert.deepEqual(sub.result?.subscribed, ["project:pt-p4"], JSON.stringify(sub));
  const ack = await native.request({ type: "publish", channel: "project:pt-p4", event: "task_update", data: { task_id: "native", progress: 30 } });
  assert.equal(ack.type, "ack", JSON.stringify(ack));
  await h.waitFor(() => s.got("task_update").length >= 3, 5000, () => `3 task_update (have ${JSON.stringify(s.got("task_update"))})`);
  assert.deepEqual(
    s.got("task_update").sort((a, b) => a.progress - b.progress),
    [
      { task_id: "http", progress: 10 },
      { task_id: "nats", progress: 20 },
      { task_id: "native", progress: 30 },
    ],
  );
  // The user's own channel reaches /portal as well.
  await node.publish("user:pt-u4", "notification", { n: 1 });
  assert.deepEqual(await s.wait("notification"), { n: 1 });
});

test("a project not joined (or left) delivers nothing; leave_project stops delivery", { skip }, async () => {
  const s = await portal("pt-u5");
  await s.ask("join_project", { project_name: "pt-p5" });
  await node.publish("project:pt-p6", "task_update", { from: "p6" });
  await node.publish("project:pt-p5", "task_update", { from: "p5" });
  await s.wait("task_update", (d) => d.from === "p5");
  assert.deepEqual(await s.ask("leave_project", { project_name: "pt-p5" }), { ok: true });
  await node.publish("project:pt-p5", "task_update", { from: "p5-after-leave" });
  await node.publish("user:pt-u5", "notification", { marker: 1 }); // ordering marker on another channel
  await s.wait("notification");
  await h.sleep(300);
  assert.deepEqual(s.got("task_update"), [{ from: "p5" }]);
});

test("join_project for a project outside the token's `projects` → ack {error: {code: forbidden}}", { skip }, async () => {
  const s = await portal("pt-u6", { projects: ["pt-mine"] });
  const ok = await s.ask("join_project", { project_name: "pt-mine" });
  assert.equal(ok.project_name, "pt-mine", JSON.stringify(ok));
  const no = await s.ask("join_project", { project_name: "pt-theirs" });
  assert.equal(no?.error?.code, "forbidden", JSON.stringify(no));
  assert.equal(typeof no.error.message, "string");
  // Without a callback the refusal is an `error {code, message}` event.
  s.emit("join_project", { project_name: "pt-theirs" });
  const ev = await s.wait("error");
  assert.equal(ev.code, "forbidden", JSON.stringify(ev));
  assert.equal(typeof ev.message, "string");
  const bad = await s.ask("join_project", {});
  assert.equal(typeof bad?.error?.code, "string", `no project_name: ${JSON.stringify(bad)}`);
  assert.ok(s.connected);
});

test("user_joined {user_id, project_name, timestamp} goes to the others (portal and /project sockets), once per user, never to the joiner", { skip }, async () => {
  const p = "pt-p7";
  const observerProject = await h.userSocket(node, `/project/${p}`, "pt-obs", WS);
  const a = await h.portalIn(node, "pt-a", p, WS);
  const b1 = await h.portalIn(node, "pt-b", p, WS);
  const ja = await a.wait("user_joined", joinedBy("pt-b"));
  assert.equal(ja.project_name, p);
  assert.ok(ja.timestamp !== undefined && ja.timestamp !== null, JSON.stringify(ja));
  await observerProject.wait("user_joined", joinedBy("pt-b"));
  // A second connection of the same user: nobody hears about it again.
  const b2 = await h.portalIn(node, "pt-b", p, WS);
  await node.publish(`project:${p}`, "task_update", { marker: 1 });
  await a.wait("task_update");
  await observerProject.wait("task_update");
  await h.sleep(300);
  assert.equal(a.got("user_joined", joinedBy("pt-b")).length, 1, "exactly once");
  assert.equal(observerProject.got("user_joined", joinedBy("pt-b")).length, 1, "exactly once");
  assert.deepEqual(b1.got("user_joined", joinedBy("pt-b")), [], "not to the joiner");
  assert.deepEqual(b2.got("user_joined", joinedBy("pt-b")), [], "not to the joiner");
  // b1 sees a's arrival? a joined before b: no user_joined for a reaches b (it was there already).
  assert.deepEqual(b1.got("user_joined", joinedBy("pt-a")), []);
});

test("user_left once, when the user's last connection leaves (leave_project, then disconnect)", { skip }, async () => {
  const p = "pt-p8";
  const a = await h.portalIn(node, "pt-c", p, WS);
  const observerProject = await h.userSocket(node, `/project/${p}`, "pt-obs2", WS);
  const d1 = await h.portalIn(node, "pt-d", p, WS);
  const d2 = await h.portalIn(node, "pt-d", p, WS);
  await a.wait("user_joined", joinedBy("pt-d"));
  // One of two connections leaves: still there.
  d1.emit("leave_project", { project_name: p });
  await h.sleep(500);
  assert.deepEqual(a.got("user_left", joinedBy("pt-d")), [], "d is still in the project through d2");
  // The last one disconnects: user_left, once, to the others.
  d2.disconnect();
  const left = await a.wait("user_left", joinedBy("pt-d"));
  assert.equal(left.project_name, p);
  assert.ok(left.timestamp !== undefined && left.timestamp !== null, JSON.stringify(left));
  await observerProject.wait("user_left", joinedBy("pt-d"));
  await h.sleep(500);
  assert.equal(a.got("user_left", joinedBy("pt-d")).length, 1);
  assert.equal(observerProject.got("user_left", joinedBy("pt-d")).length, 1);
  // leave_project of the only connection: user_left too.
  const e = await h.portalIn(node, "pt-e", p, WS);
  await a.wait("user_joined", joinedBy("pt-e"));
  e.emit("leave_project", { project_name: p });
  await a.wait("user_left", joinedBy("pt-e"));
  assert.ok(e.connected, "leave_project leaves the project, not the namespace");
  // ... and joining again is a new arrival.
  await e.ask("join_project", { project_name: p });
  await h.waitFor(() => a.got("user_joined", joinedBy("pt-e")).length === 2, 5000, "second user_joined of pt-e");
});

test("subscribe_to_events {events} limits the event names that reach the socket", { skip }, async () => {
  const s = await h.portalIn(node, "pt-f", "pt-p9", WS);
  s.emit("subscribe_to_events", { events: ["state_change", "agent_activity"] });
  await h.sleep(300);
  for (const ev of ["task_update", "state_change", "sprint_progress", "agent_activity"]) await node.publish("project:pt-p9", ev, { ev });
  await s.wait("agent_activity");
  await h.sleep(300);
  assert.deepEqual(
    s.log.map((e) => e.event).filter((e) => !["user_joined", "user_left", "joined_project"].includes(e)),
    ["state_change", "agent_activity"],
  );
});

test("subscribe_to_events {events, project_name} filters that project only", { skip }, async () => {
  const s = await h.portalIn(node, "pt-g", "pt-p10", WS);
  await s.ask("join_project", { project_name: "pt-p11" });
  s.emit("subscribe_to_events", { events: ["state_change"], project_name: "pt-p10" });
  await h.sleep(300);
  await node.publish("project:pt-p10", "task_update", { p: 10 });
  await node.publish("project:pt-p11", "task_update", { p: 11 });
  await node.publish("project:pt-p10", "state_change", { p: 10, new_state: "X" });
  await node.publish("project:pt-p11", "state_change", { p: 11, new_state: "Y" });
  await s.wait("state_change", (d) => d.p === 10);
  await s.wait("state_change", (d) => d.p === 11);
  await h.sleep(300);
  assert.deepEqual(s.got("task_update"), [{ p: 11 }], "pt-p10's task_update filtered out, pt-p11's untouched");
});

test("a /project/{name} socket is a presence of its user in the project: user_joined and user_left to portal sockets", { skip }, async () => {
  const p = "pt-p12";
  const a = await h.portalIn(node, "pt-h", p, WS);
  const x = await h.userSocket(node, `/project/${p}`, "pt-x", WS);
  const j = await a.wait("user_joined", joinedBy("pt-x"));
  assert.equal(j.project_name, p);
  assert.deepEqual(x.got("user_joined", joinedBy("pt-x")), [], "not to itself");
  x.disconnect();
  const l = await a.wait("user_left", joinedBy("pt-x"));
  assert.equal(l.project_name, p);
});

test("event names and data pass through unchanged: names with ':' and '.', data of every JSON type", { skip }, async () => {
  const s = await h.portalIn(node, "pt-i", "pt-p13", WS);
  const cases = [
    ["task:assigned", { id: "t1", nested: { deep: [1, { x: null }] } }],
    ["message.created", "just a string"],
    ["counter", 42],
    ["list", [1, "two", { three: 3 }]],
    ["flag", true],
    ["nothing", null],
    ["unicode", { text: "héllo \u2603 \ud83d\ude80" }],
  ];
  for (const [event, data] of cases) await node.publish("project:pt-p13", event, data);
  await s.wait("unicode");
  for (const [event, data] of cases) assert.deepEqual(s.got(event), [data], event);
});

test("one presence with native clients: a native subscriber is a user_joined to portal sockets, a portal join is a presence.join and a member to natives", { skip }, async () => {
  const p = "pt-p14";
  const portalA = await h.portalIn(node, "pt-j", p, WS);
  // A native client subscribes: the portal hears user_joined.
  const native = await h.nativeClient(node, h.userToken("pt-native2"));
  await native.request({ type: "subscribe", channels: [`project:${p}`] });
  await portalA.wait("user_joined", joinedBy("pt-native2"));
  // A portal user joins: the native client sees presence.join and presence.get lists it.
  await h.portalIn(node, "pt-k", p, WS);
  await h.waitFor(() => native.events("presence.join").some((e) => e.data?.id === "pt-k"), 5000, "presence.join of pt-k at the native client");
  const members = await native.request({ type: "request", method: "presence.get", params: { channel: `project:${p}` } });
  const ids = (members.result?.members ?? []).map((m) => `${m.kind}:${m.id}`).sort();
  assert.deepEqual(ids, ["user:pt-j", "user:pt-k", "user:pt-native2"], JSON.stringify(members));
  // The native client leaves: user_left at the portal.
  native.close();
  await portalA.wait("user_left", joinedBy("pt-native2"));
});

test("one history with native clients: chat messages and portal-visible events are in the channel's history.get", { skip }, async () => {
  const p = "pt-p15";
  const c = await h.userSocket(node, `/chat/${p}`, "pt-l", WS);
  const ack = await c.ask("send_message", { content: "kept", type: "message" });
  assert.ok(!ack?.error, JSON.stringify(ack));
  await node.publish(`project:${p}`, "task_update", { kept: true });
  const native = await h.nativeClient(node, h.userToken("pt-historian"));
  let page;
  await h.waitFor(
    async () => {
      page = await native.request({ type: "request", method: "history.get", params: { channel: `project:${p}` } });
      return (page.result?.events ?? []).length >= 2;
    },
    5000,
    () => `two events in history (${JSON.stringify(page)})`,
  );
  const evs = page.result.events.map((e) => [e.event, e.data?.content ?? e.data?.kept]);
  assert.deepEqual(evs.filter(([e]) => e !== "presence.join" && e !== "presence.leave"), [
    ["message_received", "kept"],
    ["task_update", true],
  ]);
});
