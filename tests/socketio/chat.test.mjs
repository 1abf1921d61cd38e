// Contract §11, `/chat/{name}` and client events: send_message validated as seed 004
// states → message_received to everyone in the chat (sender included); `command` also
// upstream; typing_start/typing_stop to the others; validation_error {message, details};
// rate_limited {message, retry_after} over the per-connection limits; acks; any other
// client event is an upstream send with the gateway's Gw-* headers, acked {ok: true}.
// One node on real NATS and Redis (a raw NATS subscriber plays the backend), plus
// embedded nodes with low rate limits.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as h from "./helpers.mjs";

const skip = h.skipReason();
const WS = { transports: ["websocket"] };
const UUID = "0b7e2f4e-8f1a-4c2b-9d3e-5a6b7c8d9e0f";
let fabric;
let node;
let nats;
let upstream; // every gw.up.> message

before(async () => {
  if (skip) return;
  fabric = await h.startFabric();
  // Generous limits: these tests emit many events per socket.
  node = await h.startNode({ fabric, env: { GATEWAY_RATE__PER_SECOND: "200", GATEWAY_RATE__BURST: "200", GATEWAY_RATE__PER_MINUTE: "2000" } });
  nats = await h.natsClient(fabric.nats.port);
  upstream = nats.subscribe("gw.up.>");
  await nats.flush();
});
after(h.cleanup);

const chat = (sub, project, opts) => h.userSocket(node, `/chat/${project}`, sub, { ...WS, ...opts });

test("send_message → message_received {message_id, project_name, user_id, content, type, timestamp} to everyone in the chat, sender included", { skip }, async () => {
  const a = await chat("ch-a", "ch-p1");
  const b = await chat("ch-b", "ch-p1");
  const other = await chat("ch-c", "ch-other");
  a.emit("send_message", { content: "hello", type: "message" });
  const ma = await a.wait("message_received");
  const mb = await b.wait("message_received");
  assert.deepEqual(ma, mb, "the same message to both");
  assert.equal(typeof ma.message_id, "string");
  assert.ok(ma.message_id.length > 0);
  assert.equal(ma.project_name, "ch-p1");
  assert.equal(ma.user_id, "ch-a");
  assert.equal(ma.content, "hello");
  assert.equal(ma.type, "message");
  assert.ok(ma.timestamp !== undefined && ma.timestamp !== null, JSON.stringify(ma));
  assert.ok(!("thread_id" in ma) || ma.thread_id == null);
  await h.sleep(300);
  assert.equal(a.got("message_received").length, 1, "once");
  assert.equal(b.got("message_received").length, 1, "once");
  assert.deepEqual(other.got("message_received"), [], "not to another project's chat");
});

test("message_received also reaches /project/{name} sockets (§11: every event of a joined channel)", { skip }, async () => {
  const a = await chat("ch-d", "ch-p2");
  const project = await h.userSocket(node, "/project/ch-p2", "ch-f", WS);
  a.emit("send_message", { content: "to the room", type: "message" });
  await a.wait("message_received", (m) => m.content === "to the room");
  await project.wait("message_received", (m) => m.content === "to the room");
});

test("a chat message reaches /portal sockets that joined the project (§11: every event of a joined channel)", { skip }, async () => {
  const a = await chat("ch-d2", "ch-p2b");
  const portal = await h.portalIn(node, "ch-e", "ch-p2b", WS);
  a.emit("send_message", { content: "to the portal", type: "message" });
  await a.wait("message_received", (m) => m.content === "to the portal");
  await portal.wait("message_received", (m) => m.content === "to the portal");
});

test("thread_reply with thread_id and attachments: carried in message_received", { skip }, async () => {
  const a = await chat("ch-g", "ch-p3");
  const attachments = [
    { name: "log.txt", size: 1024, type: "text/plain" },
    { name: "shot.png", size: 10_485_760, type: "image/png" },
  ];
  a.emit("send_message", { content: "see attached", type: "thread_reply", thread_id: UUID, attachments });
  const m = await a.wait("message_received");
  assert.equal(m.type, "thread_reply");
  assert.equal(m.thread_id, UUID);
  assert.deepEqual(m.attachments, attachments);
});

test("boundaries that pass: 2000 characters, 5 attachments of 10 MiB, empty attachments", { skip }, async () => {
  const a = await chat("ch-h", "ch-p4");
  const five = Array.from({ length: 5 }, (_, i) => ({ name: `f${i}`, size: 10_485_760, type: "application/octet-stream" }));
  const cases = [
    { content: "x".repeat(2000), type: "message" },
    { content: "é".repeat(2000), type: "message" }, // characters, not bytes
    { content: "five", type: "message", attachments: five },
    { content: "none", type: "message", attachments: [] },
  ];
  for (const c of cases) {
    const ack = await a.ask("send_message", c);
    assert.ok(!ack?.error, `refused ${JSON.stringify(c).slice(0, 80)}: ${JSON.stringify(ack)}`);
  }
  await h.waitFor(() => a.got("message_received").length === cases.length, 5000, "every message back");
  assert.deepEqual(a.got("validation_error"), []);
});

test("invalid send_message → validation_error {message, details: [{field, message}]}; the socket stays connected", { skip }, async () => {
  const a = await chat("ch-i", "ch-p5");
  const six = Array.from({ length: 6 }, (_, i) => ({ name: `f${i}`, size: 1, type: "text/plain" }));
  const cases = [
    ["content", { type: "message" }],
    ["content", { content: 42, type: "message" }],
    ["content", { content: "x".repeat(2001), type: "message" }],
    ["type", { content: "hi" }],
    ["type", { content: "hi", type: "shout" }],
    ["type", { content: "hi", type: "response" }], // a server-side type, not a client one
    ["thread_id", { content: "hi", type: "thread_reply", thread_id: "not-a-uuid" }],
    ["thread_id", { content: "hi", type: "thread_reply", thread_id: 7 }],
    ["attachments", { content: "hi", type: "message", attachments: six }],
    ["attachments", { content: "hi", type: "message", attachments: "file.txt" }],
    ["attachments", { content: "hi", type: "message", attachments: [{ name: "big", size: 10_485_761, type: "x/y" }] }],
    ["attachments", { content: "hi", type: "message", attachments: [{ size: 1, type: "x/y" }] }],
    ["attachments", { content: "hi", type: "message", attachments: [{ name: "n", size: 1 }] }],
    ["attachments", { content: "hi", type: "message", attachments: [{ name: "n", type: "x/y" }] }],
  ];
  for (const [field, data] of cases) {
    const before = a.got("validation_error").length;
    a.emit("send_message", data);
    await h.waitFor(() => a.got("validation_error").length > before, 5000, `validation_error for ${field}: ${JSON.stringify(data).slice(0, 100)}`);
    const err = a.got("validation_error")[before];
    assert.equal(typeof err.message, "string", JSON.stringify(err));
    assert.ok(Array.isArray(err.details) && err.details.length > 0, `details: ${JSON.stringify(err)}`);
    for (const d of err.details) {
      assert.equal(typeof d.field, "string", JSON.stringify(d));
      assert.equal(typeof d.message, "string", JSON.stringify(d));
    }
    assert.ok(
      err.details.some((d) => d.field === field || d.field.startsWith(`${field}[`) || d.field.startsWith(`${field}.`)),
      `a detail names ${field}: ${JSON.stringify(err.details)} for ${JSON.stringify(data).slice(0, 100)}`,
    );
  }
  // Not an object at all.
  for (const data of ["just text", 12, null]) {
    const before = a.got("validation_error").length;
    a.emit("send_message", data);
    await h.waitFor(() => a.got("validation_error").length > before, 5000, `validation_error for ${JSON.stringify(data)}`);
  }
  assert.ok(a.connected, `disconnected: ${a.disconnects}`);
  assert.deepEqual(a.got("message_received"), [], "nothing invalid was delivered");
  // Every bad field of one message is listed.
  a.emit("send_message", { content: 1, type: "nope", thread_id: "x" });
  const all = await a.wait("validation_error", (e) => e.details?.length >= 3);
  assert.deepEqual(all.details.map((d) => d.field).sort(), ["content", "thread_id", "type"]);
  // Still usable.
  a.emit("send_message", { content: "valid again", type: "message" });
  await a.wait("message_received", (m) => m.content === "valid again");
});

test("empty content is refused as seed 004's Joi.string() refuses it", { skip }, async () => {
  const a = await chat("ch-i2", "ch-p5b");
  a.emit("send_message", { content: "", type: "message" });
  a.emit("send_message", { content: "marker", type: "message" });
  await a.wait("message_received", (m) => m.content === "marker");
  assert.deepEqual(a.got("message_received", (m) => m.content === ""), [], "an empty message was delivered");
  const v = await a.wait("validation_error");
  assert.ok(v.details.some((d) => d.field === "content"), JSON.stringify(v));
});

test("acks: send_message with a callback gets the answer, an invalid one {error: {code, message}}", { skip }, async () => {
  const a = await chat("ch-j", "ch-p6");
  const ok = await a.ask("send_message", { content: "acked", type: "message" });
  assert.equal(typeof ok, "object", JSON.stringify(ok));
  assert.ok(ok && !ok.error, JSON.stringify(ok));
  const m = await a.wait("message_received", (x) => x.content === "acked");
  assert.deepEqual(ok, { message_id: m.message_id }, "the ack names the message delivered");
  const bad = await a.ask("send_message", { content: "x", type: "nope" });
  assert.equal(typeof bad?.error?.code, "string", JSON.stringify(bad));
  assert.equal(typeof bad.error.message, "string", JSON.stringify(bad));
  assert.ok(a.connected);
});

test("type command: delivered as message_received and forwarded upstream (gw.up.send_message, Gw-* headers); plain messages are not", { skip }, async () => {
  const a = await chat("ch-k", "ch-p7");
  const seen = upstream.length;
  a.emit("send_message", { content: "just talk", type: "message" });
  await a.wait("message_received", (m) => m.content === "just talk");
  a.emit("send_message", { content: "/sprint start", type: "command" });
  const m = await a.wait("message_received", (x) => x.content === "/sprint start");
  assert.equal(m.type, "command");
  await nats.flush();
  await h.waitFor(() => upstream.slice(seen).some((u) => u.subject === "gw.up.send_message"), 5000, "the command upstream");
  const sends = upstream.slice(seen).filter((u) => u.subject === "gw.up.send_message");
  assert.equal(sends.length, 1, `only the command goes upstream: ${sends.map((u) => u.data).join(" | ")}`);
  const body = JSON.parse(sends[0].data);
  assert.equal(body.content, "/sprint start", sends[0].data);
  assert.equal(body.type, "command", sends[0].data);
  assert.equal(sends[0].headers["Gw-Principal-Kind"], "user", JSON.stringify(sends[0].headers));
  assert.equal(sends[0].headers["Gw-Principal-Id"], "ch-k");
  assert.equal(sends[0].headers["Gw-Node"], node.id);
  assert.ok(sends[0].headers["Gw-Connection"], JSON.stringify(sends[0].headers));
});

test("typing_start / typing_stop → {user_id, project_name, timestamp} to the others, not to the same user", { skip }, async () => {
  const a1 = await chat("ch-l", "ch-p8");
  const a2 = await chat("ch-l", "ch-p8"); // the same user elsewhere
  const b = await chat("ch-m", "ch-p8");
  a1.emit("typing_start");
  const t = await b.wait("typing_start");
  assert.equal(t.user_id, "ch-l");
  assert.equal(t.project_name, "ch-p8");
  assert.ok(t.timestamp !== undefined && t.timestamp !== null, JSON.stringify(t));
  a1.emit("typing_stop", {});
  const s = await b.wait("typing_stop");
  assert.equal(s.user_id, "ch-l");
  // b types: both of a's sockets see it.
  b.emit("typing_start", {});
  await a1.wait("typing_start", (x) => x.user_id === "ch-m");
  await a2.wait("typing_start", (x) => x.user_id === "ch-m");
  await h.sleep(300);
  assert.deepEqual(a1.got("typing_start", (x) => x.user_id === "ch-l"), [], "not to the typist");
  assert.deepEqual(a2.got("typing_start", (x) => x.user_id === "ch-l"), [], "not to the typist's other socket");
  assert.deepEqual(a2.got("typing_stop", (x) => x.user_id === "ch-l"), []);
  assert.deepEqual(b.got("typing_start", (x) => x.user_id === "ch-m"), []);
  assert.equal(b.got("typing_start").length, 1, "once");
});

test("any other client event is an upstream send (gw.up.<tokens>, Gw-* headers), acked {ok: true}", { skip }, async () => {
  const p = await h.userSocket(node, "/portal", "ch-n", WS);
  const c = await chat("ch-n", "ch-p9");
  const pr = await h.userSocket(node, "/project/ch-p9", "ch-n", WS);
  const agent = h.sio(node.url, "/portal", { auth: { token: h.AGENT_KEYS["agent-1"] }, ...WS });
  await h.connected(agent);
  const seen = upstream.length;
  assert.deepEqual(await p.ask("status:update", { from: "portal" }), { ok: true });
  assert.deepEqual(await c.ask("approval.respond", { from: "chat", approved: true }), { ok: true });
  assert.deepEqual(await pr.ask("task_feedback", { from: "project" }), { ok: true });
  assert.deepEqual(await agent.ask("task:progress", { from: "agent", pct: 40 }), { ok: true });
  p.emit("status:update", { from: "portal-no-ack" }); // without a callback: sent all the same
  await nats.flush();
  await h.waitFor(() => upstream.length - seen >= 5, 5000, () => `5 upstream sends (have ${upstream.slice(seen).map((u) => u.subject)})`);
  const byFrom = (a, b) => (a.data.from < b.data.from ? -1 : 1);
  const got = upstream.slice(seen).map((u) => ({ subject: u.subject, data: JSON.parse(u.data), kind: u.headers["Gw-Principal-Kind"], id: u.headers["Gw-Principal-Id"], node: u.headers["Gw-Node"], conn: !!u.headers["Gw-Connection"] }));
  assert.deepEqual(got.sort(byFrom), [
    { subject: "gw.up.status.update", data: { from: "portal" }, kind: "user", id: "ch-n", node: node.id, conn: true },
    { subject: "gw.up.approval.respond", data: { from: "chat", approved: true }, kind: "user", id: "ch-n", node: node.id, conn: true },
    { subject: "gw.up.task_feedback", data: { from: "project" }, kind: "user", id: "ch-n", node: node.id, conn: true },
    { subject: "gw.up.task.progress", data: { from: "agent", pct: 40 }, kind: "agent", id: "agent-1", node: node.id, conn: true },
    { subject: "gw.up.status.update", data: { from: "portal-no-ack" }, kind: "user", id: "ch-n", node: node.id, conn: true },
  ].sort(byFrom));
});

test("the client cannot set the Gw-* headers: data claiming another principal is only data", { skip }, async () => {
  const p = await h.userSocket(node, "/portal", "ch-o", WS);
  const seen = upstream.length;
  await p.ask("status:update", { "Gw-Principal-Id": "someone-else", principal: { kind: "agent", id: "x" } });
  await nats.flush();
  await h.waitFor(() => upstream.length > seen, 5000, "the send upstream");
  const u = upstream[seen];
  assert.equal(u.headers["Gw-Principal-Id"], "ch-o");
  assert.equal(u.headers["Gw-Principal-Kind"], "user");
});

test("rate limits per connection (per second with burst): rate_limited {message, retry_after}, the socket stays, and recovers", { skip }, async () => {
  const slow = await h.startNode({ env: { GATEWAY_RATE__PER_SECOND: "1", GATEWAY_RATE__BURST: "3", GATEWAY_RATE__PER_MINUTE: "1000" } });
  const a = await h.userSocket(slow, "/chat/ch-r1", "ch-rate", WS);
  const N = 8;
  for (let i = 0; i < N; i++) a.emit("send_message", { content: `m${i}`, type: "message" });
  await h.waitFor(
    () => a.got("message_received").length + a.got("rate_limited").length >= N,
    5000,
    () => `an answer to each of ${N} emits (delivered ${a.got("message_received").length}, limited ${a.got("rate_limited").length})`,
  );
  const delivered = a.got("message_received").length;
  const limited = a.got("rate_limited");
  // Burst 3 (+1 refilled if the emits spread over a second on a loaded machine).
  assert.ok(delivered >= 1 && delivered <= 5, `delivered ${delivered} of ${N} with burst 3`);
  assert.ok(limited.length >= N - 5, `${limited.length} rate_limited`);
  for (const r of limited) {
    assert.equal(typeof r.message, "string", JSON.stringify(r));
    assert.equal(typeof r.retry_after, "number", JSON.stringify(r));
    assert.ok(r.retry_after > 0 && r.retry_after <= 60_000, `retry_after ${r.retry_after} ms`);
  }
  assert.ok(a.connected, `disconnected: ${a.disconnects}`);
  // With a callback, a limited emit is acked with the error.
  const ack = await a.ask("send_message", { content: "acked", type: "message" });
  if (ack?.error) assert.equal(ack.error.code, "rate_limited", JSON.stringify(ack));
  // After retry_after it works again.
  await h.sleep(Math.max(...limited.map((r) => r.retry_after)) + 1100);
  a.emit("send_message", { content: "later", type: "message" });
  await a.wait("message_received", (m) => m.content === "later", 5000);
});

test("rate limits cover every client event: upstream sends over the limit are acked {error: {code: rate_limited}}", { skip }, async () => {
  const slow = await h.startNode({ fabric, env: { GATEWAY_RATE__PER_SECOND: "1", GATEWAY_RATE__BURST: "3", GATEWAY_RATE__PER_MINUTE: "1000" } });
  const a = await h.userSocket(slow, "/portal", "ch-rate4", WS);
  const acks = await Promise.all(Array.from({ length: 8 }, (_, i) => a.ask("status:update", { i })));
  const ok = acks.filter((x) => x?.ok === true).length;
  const limited = acks.filter((x) => x?.error?.code === "rate_limited");
  assert.equal(ok + limited.length, 8, JSON.stringify(acks));
  assert.ok(ok >= 1 && ok <= 5, `${ok} sent with burst 3: ${JSON.stringify(acks)}`);
  assert.ok(a.connected);
});

test("rate limits per connection (per minute): past the minute's budget, rate_limited with retry_after in seconds", { skip }, async () => {
  const slow = await h.startNode({ env: { GATEWAY_RATE__PER_SECOND: "100", GATEWAY_RATE__BURST: "100", GATEWAY_RATE__PER_MINUTE: "4" } });
  const a = await h.userSocket(slow, "/chat/ch-r2", "ch-rate2", WS);
  for (let i = 0; i < 6; i++) a.emit("send_message", { content: `m${i}`, type: "message" });
  await h.waitFor(() => a.got("message_received").length + a.got("rate_limited").length >= 6, 5000, "an answer to each emit");
  assert.ok(a.got("message_received").length <= 4, `delivered ${a.got("message_received").length}, budget 4/min`);
  const limited = a.got("rate_limited");
  assert.ok(limited.length >= 2, `${limited.length} rate_limited`);
  assert.ok(limited.every((r) => r.retry_after >= 1000), `retry_after of a per-minute limit: ${limited.map((r) => r.retry_after)}`);
  // Another connection has its own budget.
  const b = await h.userSocket(slow, "/chat/ch-r2", "ch-rate3", WS);
  const ok = await b.ask("send_message", { content: "fresh", type: "message" });
  assert.ok(!ok?.error, JSON.stringify(ok));
});
