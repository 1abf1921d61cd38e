// Contract §11, namespaces and the Engine.IO layer: which namespaces exist and who may
// join them (`forbidden`, `bad_request`, `limit_exceeded` refusals), the events each
// namespace receives, the `[socketio]` configuration (TOML and environment: enabled,
// ping interval/timeout in the handshake, max_namespaces), heartbeats, and the
// /health and /metrics counts by transport.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as h from "./helpers.mjs";

const skip = h.skipReason();
const WS = { transports: ["websocket"] };
let fabric;
let node; // defaults
/** Started on first use, so a node that fails to start fails only the tests using it. */
const once = (f) => {
  let p;
  return () => (p ??= f());
};
// [socketio] from a TOML file: short heartbeats, max_namespaces 3.
const tunedNode = once(() =>
  h.startNode({ fabric, toml: "[socketio]\nping_interval_ms = 400\nping_timeout_ms = 600\nupgrade_timeout_ms = 2000\nmax_namespaces = 3\n" }),
);
// socketio.enabled = false, from the environment.
const offNode = once(() => h.startNode({ fabric, env: { GATEWAY_SOCKETIO__ENABLED: "false" } }));

before(async () => {
  if (skip) return;
  fabric = await h.startFabric();
  node = await h.startNode({ fabric });
});
after(h.cleanup);

/** Events other than presence notices. */
const nonPresence = (s) => s.log.map((e) => e.event).filter((e) => !["user_joined", "user_left"].includes(e) && !e.startsWith("presence."));

function assertRefusal(err, code) {
  assert.equal(err.message, code, `connect_error message: ${err.message} data: ${JSON.stringify(err.data)}`);
  assert.equal(err.data?.code, code, `connect_error data: ${JSON.stringify(err.data)}`);
  assert.equal(typeof err.data?.message, "string");
}

test("each namespace receives its channel: /portal user:<id>, /project/{name}, /chat/{name}, /monitoring, /admin", { skip }, async () => {
  const portal = await h.userSocket(node, "/portal", "ns-u1", WS);
  const project = await h.userSocket(node, "/project/ns-p1", "ns-u1", WS);
  const chat = await h.userSocket(node, "/chat/ns-p1", "ns-u1", WS);
  const monitoring = await h.userSocket(node, "/monitoring", "ns-u1", WS);
  const admin = await h.userSocket(node, "/admin", "ns-root", { roles: ["admin"], ...WS });

  await node.publish("user:ns-u1", "notification", { to: "portal" });
  await node.publish("project:ns-p1", "task_update", { task_id: "t1", progress: 50 });
  await node.publish("project:ns-p1", "command_result", { message_id: "m1", success: true });
  await node.publish("broadcast:monitoring", "system_metrics", { cpu_usage: 0.5 });
  await node.publish("broadcast:admin", "config_changed", { config_type: "system" });

  assert.deepEqual(await portal.wait("notification"), { to: "portal" });
  assert.deepEqual(await project.wait("task_update"), { task_id: "t1", progress: 50 });
  assert.deepEqual(await chat.wait("command_result"), { message_id: "m1", success: true });
  assert.deepEqual(await monitoring.wait("system_metrics"), { cpu_usage: 0.5 });
  assert.deepEqual(await admin.wait("config_changed"), { config_type: "system" });
  await h.sleep(200);
  // Nothing crossed over.
  assert.deepEqual(portal.got("task_update"), []);
  assert.deepEqual(monitoring.got("config_changed"), []);
  assert.deepEqual(admin.got("system_metrics"), []);
  assert.deepEqual(await project.wait("command_result"), { message_id: "m1", success: true }, "/project/{name} gets every event of its channel");
  assert.deepEqual(chat.got("task_update"), [], "/chat/{name} gets only chat events");
});

test("/project/{name} gets every event of project:{name}; /chat/{name} only the chat events", { skip }, async () => {
  const project = await h.userSocket(node, "/project/ns-p2", "ns-u2", WS);
  const chat = await h.userSocket(node, "/chat/ns-p2", "ns-u2", WS);
  const chatEvents = ["message_received", "typing_start", "typing_stop", "command_result", "thread_created", "thread_updated"];
  const projectEvents = ["state_change", "task_update", "approval_request", "approval_resolved", "sprint_progress", "backlog_updated", "agent_activity"];
  // Interleaved; each namespace's last event proves the earlier ones were handled.
  for (let i = 0; i < Math.max(chatEvents.length, projectEvents.length); i++) {
    if (projectEvents[i]) await node.publish("project:ns-p2", projectEvents[i], { i });
    if (chatEvents[i]) await node.publish("project:ns-p2", chatEvents[i], { i });
  }
  await node.publish("project:ns-p2", "task_update", { last: true });
  await node.publish("project:ns-p2", "message_received", { last: true });
  await project.wait("task_update", (d) => d.last);
  await chat.wait("message_received", (d) => d.last);
  const all = [];
  for (let i = 0; i < Math.max(chatEvents.length, projectEvents.length); i++) {
    if (projectEvents[i]) all.push(projectEvents[i]);
    if (chatEvents[i]) all.push(chatEvents[i]);
  }
  await project.wait("message_received", (d) => d.last);
  assert.deepEqual(nonPresence(project), [...all, "task_update", "message_received"], "every event of the channel, in order");
  assert.deepEqual(nonPresence(chat), [...chatEvents, "message_received"], "every chat event, in order, and nothing else");
});

test("a project outside the token's `projects` → connect_error `forbidden` (/project and /chat)", { skip }, async () => {
  const ok = h.sio(node.url, "/project/ns-allowed", { auth: { token: h.userToken("ns-u3", { projects: ["ns-allowed"] }) }, ...WS });
  await h.connected(ok);
  for (const nsp of ["/project/ns-other", "/chat/ns-other"]) {
    const s = h.sio(node.url, nsp, { auth: { token: h.userToken("ns-u3", { projects: ["ns-allowed"] }) }, ...WS });
    assertRefusal(await h.refused(s), "forbidden");
  }
  const none = h.sio(node.url, "/project/ns-allowed", { auth: { token: h.userToken("ns-u4", { projects: [] }) }, ...WS });
  assertRefusal(await h.refused(none), "forbidden");
});

test("/admin: role admin only (a user without it and an agent are refused `forbidden`)", { skip }, async () => {
  const user = h.sio(node.url, "/admin", { auth: { token: h.userToken("ns-u5", { roles: ["viewer"] }) }, ...WS });
  assertRefusal(await h.refused(user), "forbidden");
  const agent = h.sio(node.url, "/admin", { auth: { token: h.AGENT_KEYS["agent-1"] }, ...WS });
  assertRefusal(await h.refused(agent), "forbidden");
  const root = h.sio(node.url, "/admin", { auth: { token: h.userToken("ns-root2", { roles: ["admin"], projects: [] }) }, ...WS });
  await h.connected(root);
});

test("an admin may join any project namespace", { skip }, async () => {
  const s = h.sio(node.url, "/project/ns-secret", { auth: { token: h.userToken("ns-root3", { roles: ["admin"], projects: [] }) }, ...WS });
  await h.connected(s);
});

test("unknown namespaces and bad names → connect_error `bad_request`", { skip }, async () => {
  for (const nsp of ["/nope", "/", "/project/", "/chat/", "/project/a.b", "/chat/x/y", "/portal/extra", "/project/" + "x".repeat(129)]) {
    const s = h.sio(node.url, nsp, { auth: { token: h.userToken("ns-u6") }, ...WS });
    const err = await h.refused(s);
    assert.equal(err.data?.code, "bad_request", `${nsp}: ${err.message} ${JSON.stringify(err.data)}`);
    assertRefusal(err, "bad_request");
  }
});

test("max_namespaces per Engine.IO connection (default 8): the 9th → `limit_exceeded`; after a leave one more fits", { skip }, async () => {
  const m = h.manager(node.url, WS);
  const auth = { token: h.userToken("ns-u7") };
  const names = ["/portal", "/monitoring", "/project/m1", "/project/m2", "/project/m3", "/chat/m1", "/chat/m2", "/chat/m3"];
  const socks = [];
  for (const nsp of names) {
    const s = h.sio(node.url, nsp, { manager: m, auth });
    await h.connected(s);
    socks.push(s);
  }
  assert.equal(new Set(socks.map((s) => s.io)).size, 1, "one Engine.IO connection");
  const ninth = h.sio(node.url, "/project/m4", { manager: m, auth });
  assertRefusal(await h.refused(ninth), "limit_exceeded");
  assert.ok(socks.every((s) => s.connected), "the others stay connected");
  socks[7].disconnect();
  await h.sleep(200);
  const again = h.sio(node.url, "/project/m5", { manager: m, auth });
  await h.connected(again);
});

test("[socketio] from TOML: max_namespaces = 3", { skip }, async () => {
  const tuned = await tunedNode();
  const m = h.manager(tuned.url, WS);
  const auth = { token: h.userToken("ns-u8") };
  for (const nsp of ["/portal", "/monitoring", "/project/t1"]) await h.connected(h.sio(tuned.url, nsp, { manager: m, auth }));
  assertRefusal(await h.refused(h.sio(tuned.url, "/project/t2", { manager: m, auth })), "limit_exceeded");
});

test("Engine.IO handshake: v4 open packet with the defaults (25 s / 60 s) and with [socketio] from TOML", { skip }, async () => {
  const d = await h.engineHandshake(node);
  assert.equal(typeof d.sid, "string");
  assert.ok(d.sid.length > 0);
  assert.deepEqual(d.upgrades, ["websocket"]);
  assert.equal(d.pingInterval, 25_000);
  assert.equal(d.pingTimeout, 60_000);
  assert.equal(d.maxPayload, 65536, "maxPayload = limits.max_frame_bytes");
  const t = await h.engineHandshake(await tunedNode());
  assert.equal(t.pingInterval, 400);
  assert.equal(t.pingTimeout, 600);
});

test("heartbeats: an idle client is pinged every ping_interval_ms and stays connected", { skip }, async () => {
  const tuned = await tunedNode();
  for (const transports of [["websocket"], ["polling"]]) {
    const s = await h.userSocket(tuned, "/portal", "ns-u9", { transports });
    let pings = 0;
    s.io.engine.on("ping", () => pings++);
    await h.sleep(2000);
    assert.ok(s.connected, `${transports}: disconnected: ${s.disconnects}`);
    assert.ok(pings >= 3, `${transports}: ${pings} pings in 2 s at a 400 ms interval`);
    s.disconnect();
  }
});

/** Raw Engine.IO long-polling: POST packets to a session, GET its next payload. */
async function rawPost(n, sid, body) {
  const r = await fetch(`${n.http}/socket.io/?EIO=4&transport=polling&sid=${sid}`, { method: "POST", body, headers: { "Content-Type": "text/plain;charset=UTF-8" } });
  const text = await r.text();
  assert.equal(r.status, 200, `POST ${body}: ${r.status} ${text}`);
}
async function rawGet(n, sid) {
  const r = await fetch(`${n.http}/socket.io/?EIO=4&transport=polling&sid=${sid}`);
  return { status: r.status, text: await r.text() };
}

test("a client that stops answering is dropped after ping_interval + ping_timeout (raw polling sessions)", { skip }, async () => {
  const n = await h.startNode({ fabric, env: { GATEWAY_SOCKETIO__PING_INTERVAL_MS: "400", GATEWAY_SOCKETIO__PING_TIMEOUT_MS: "600" } });
  // A session that connected /portal, then went silent (a closed laptop).
  const { sid } = await h.engineHandshake(n);
  await rawPost(n, sid, `40/portal,${JSON.stringify({ token: h.userToken("ns-silent") })}`);
  const open = await rawGet(n, sid);
  assert.match(open.text, /^40\/portal,\{"sid":/, `CONNECT answer: ${open.text}`);
  let now;
  await h.waitFor(async () => (now = await n.health()).socketio?.polling === 1, 3000, () => `the session counted (${JSON.stringify(now?.socketio)})`);
  assert.equal(now.websocket.connections, 1, "its namespace socket is a hub connection");
  // A bare session (handshake only) that went silent too.
  const bare = await h.engineHandshake(n);
  // Neither polls nor pongs: both gone within interval + timeout (1 s) plus slack.
  await h.waitFor(
    async () => {
      now = await n.health();
      return now.socketio?.polling === 0 && now.socketio?.websocket === 0 && now.websocket.connections === 0;
    },
    5000,
    () => `the silent sessions to be dropped (health ${JSON.stringify({ socketio: now?.socketio, websocket: now?.websocket })})`,
  );
  for (const s of [sid, bare.sid]) {
    const r = await rawGet(n, s);
    assert.equal(r.status, 400, `sid ${s} unknown now: ${r.status} ${r.text}`);
  }
  // The silent user left its presence.
  const s = await h.userSocket(n, "/portal", "ns-after-silence", WS);
  assert.ok(s.connected);
});

test("a bare Engine.IO session (handshake, no namespace yet) counts in /health socketio", { skip }, async () => {
  const n = await h.startNode({ fabric });
  await h.engineHandshake(n);
  const c = await h.sioCounts(n);
  assert.deepEqual(c, { websocket: 0, polling: 1 }, "an Engine.IO connection by transport, whether or not it joined a namespace");
});

test("socketio.enabled = false (environment): /socket.io/ is not served, /ws still is", { skip }, async () => {
  const off = await offNode();
  const r = await fetch(`${off.http}/socket.io/?EIO=4&transport=polling`);
  assert.equal(r.status, 404);
  await r.body?.cancel();
  const s = h.sio(off.url, "/portal", { auth: { token: h.userToken("ns-u10") }, transports: ["polling"] });
  await h.refused(s);
  const native = await h.nativeClient(off, h.userToken("ns-u10"));
  native.close();
  const health = await off.health();
  assert.ok(health.socketio === undefined || (health.socketio.websocket === 0 && health.socketio.polling === 0), JSON.stringify(health.socketio));
});

test("/health `socketio` and gateway_socketio_connections count Engine.IO connections by transport", { skip }, async () => {
  // Its own node: nothing else connects there.
  const n = await h.startNode({ fabric });
  assert.deepEqual((await n.health()).socketio, { websocket: 0, polling: 0 });
  const ws1 = await h.userSocket(n, "/portal", "ns-h1", WS);
  const ws2 = await h.userSocket(n, "/portal", "ns-h2", WS);
  const poll = await h.userSocket(n, "/portal", "ns-h3", { transports: ["polling"] });
  // Two namespaces on one Engine.IO connection count once.
  const m = h.manager(n.url, WS);
  await h.connected(h.sio(n.url, "/portal", { manager: m, auth: { token: h.userToken("ns-h4") } }));
  await h.connected(h.sio(n.url, "/monitoring", { manager: m, auth: { token: h.userToken("ns-h4") } }));
  let last;
  await h.waitFor(
    async () => {
      last = (await n.health()).socketio;
      return last?.websocket === 3 && last?.polling === 1;
    },
    5000,
    () => `counts {websocket:3, polling:1}, have ${JSON.stringify(last)}`,
  );
  const metrics = await n.metrics();
  assert.match(metrics, /^gateway_socketio_connections\{transport="websocket"\} 3$/m, metrics.split("\n").filter((l) => l.includes("socketio")).join("\n"));
  assert.match(metrics, /^gateway_socketio_connections\{transport="polling"\} 1$/m);
  for (const s of [ws1, ws2, poll]) s.disconnect();
  m.engine.close();
  await h.waitFor(
    async () => {
      last = (await n.health()).socketio;
      return last?.websocket === 0 && last?.polling === 0;
    },
    5000,
    () => `counts back to 0, have ${JSON.stringify(last)}`,
  );
  const after = await n.metrics();
  assert.match(after, /^gateway_socketio_connections\{transport="websocket"\} 0$/m);
  assert.match(after, /^gateway_socketio_connections\{transport="polling"\} 0$/m);
});

test("the per-user connection limit applies to namespace sockets → `limit_exceeded`", { skip }, async () => {
  const n = await h.startNode({ fabric, env: { GATEWAY_LIMITS__PER_USER: "2" } });
  const first = await h.userSocket(n, "/portal", "ns-lim", WS);
  await h.userSocket(n, "/project/lim1", "ns-lim", WS);
  const third = h.sio(n.url, "/chat/lim1", { auth: { token: h.userToken("ns-lim") }, ...WS });
  assertRefusal(await h.refused(third), "limit_exceeded");
  // Another user is not affected; a freed slot is usable again.
  await h.userSocket(n, "/portal", "ns-lim-other", WS);
  first.disconnect();
  await h.waitFor(async () => {
    const s = h.sio(n.url, "/chat/lim1", { auth: { token: h.userToken("ns-lim") }, ...WS });
    try {
      await h.connected(s, 3000);
      return true;
    } catch {
      s.disconnect();
      return false;
    }
  }, 5000, "a slot after a disconnect");
});

test("a full node (limits.max_connections counts Engine.IO connections) refuses a new one 503 `unavailable`", { skip }, async () => {
  // docs/protocol.md: an Engine.IO connection takes one node slot, whatever number of
  // namespaces it multiplexes.
  const full = await h.startNode({ fabric, env: { GATEWAY_LIMITS__MAX_CONNECTIONS: "2" } });
  const m = h.manager(full.url, WS);
  await h.connected(h.sio(full.url, "/portal", { manager: m, auth: { token: h.userToken("ns-full1") } }));
  await h.userSocket(full, "/portal", "ns-full2", WS);
  // A namespace more on an open connection takes no slot.
  await h.connected(h.sio(full.url, "/monitoring", { manager: m, auth: { token: h.userToken("ns-full1") } }));
  const r = await fetch(`${full.http}/socket.io/?EIO=4&transport=polling`);
  const body = await r.text();
  assert.equal(r.status, 503, body);
  assert.equal(JSON.parse(body).code, "unavailable", body);
  const over = h.sio(full.url, "/portal", { auth: { token: h.userToken("ns-full3") }, ...WS });
  await h.refused(over);
  assert.equal(over.connected, false);
  // A freed slot is usable again.
  m.engine.close();
  await h.waitFor(async () => (await fetch(`${full.http}/socket.io/?EIO=4&transport=polling`)).status === 200, 5000, "a slot after a close");
});

test("upgrade_timeout_ms: a WebSocket probe that never completes the upgrade is closed; the polling session goes on", { skip }, async () => {
  const n = await h.startNode({ fabric, env: { GATEWAY_SOCKETIO__UPGRADE_TIMEOUT_MS: "500", GATEWAY_SOCKETIO__PING_INTERVAL_MS: "300" } });
  const { sid } = await h.engineHandshake(n);
  await rawPost(n, sid, `40/portal,${JSON.stringify({ token: h.userToken("ns-upg") })}`);
  assert.match((await rawGet(n, sid)).text, /^40\/portal,/);
  const { default: WebSocket } = await import("ws");
  const ws = new WebSocket(`ws://127.0.0.1:${n.port}/socket.io/?EIO=4&transport=websocket&sid=${sid}`);
  h.onCleanup(() => ws.terminate());
  const msgs = [];
  ws.on("message", (d) => msgs.push(String(d)));
  ws.on("error", () => {});
  await h.within(new Promise((r, j) => (ws.once("open", r), ws.once("error", j))), 5000, "probe socket open");
  ws.send("2probe");
  await h.waitFor(() => msgs.includes("3probe"), 3000, "3probe");
  // No "5" (upgrade) follows: the server gives up on the probe after upgrade_timeout_ms.
  const t0 = Date.now();
  await h.within(new Promise((r) => ws.once("close", r)), 5000, "the probe socket closed by the server");
  const took = Date.now() - t0;
  assert.ok(took >= 300, `closed ${took} ms after the probe, before the 500 ms upgrade timeout`);
  // The session is still on polling: a poll is answered (a ping within the 300 ms interval).
  const poll = await rawGet(n, sid);
  assert.equal(poll.status, 200, poll.text);
  assert.match(poll.text, /^[26]/, `a ping (or noop) on the polling session: ${poll.text}`);
  await rawPost(n, sid, "3");
  const c = await h.sioCounts(n);
  assert.deepEqual(c, { websocket: 0, polling: 1 });
});

test("binary events are answered validation_error and the socket stays", { skip }, async () => {
  const s = await h.userSocket(node, "/portal", "ns-bin", WS);
  s.emit("status:update", Buffer.from([1, 2, 3]));
  const v = await s.wait("validation_error");
  assert.equal(typeof v.message, "string");
  const ack = await s.ask("status:update", { ok: "text" });
  assert.deepEqual(ack, { ok: true });
  assert.ok(s.connected);
});

test("a polling POST over maxPayload is refused 413", { skip }, async () => {
  const { sid } = await h.engineHandshake(node);
  const r = await fetch(`${node.http}/socket.io/?EIO=4&transport=polling&sid=${sid}`, { method: "POST", body: "4" + "x".repeat(70_000) });
  await r.body?.cancel();
  assert.equal(r.status, 413);
});
