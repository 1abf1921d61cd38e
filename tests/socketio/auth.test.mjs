// Contract §11, credentials: the CONNECT packet's `auth`, `?token=` / `?apiKey=` in the
// query, an `Authorization` header, and the in-band `authenticate` event for a socket
// that brought none (answered `authenticated` / `authentication_failed`, deadline
// `auth.auth_timeout_ms`). A refused CONNECT is a `connect_error` whose message is the
// code and whose `data` is `{code, message}`.
// One node on real NATS and Redis; WebSocket transport unless a test says otherwise.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as h from "./helpers.mjs";

const skip = h.skipReason();
const AUTH_TIMEOUT_MS = 1500;
const WS = { transports: ["websocket"] };
let node;

before(async () => {
  if (skip) return;
  const fabric = await h.startFabric();
  node = await h.startNode({ fabric, env: { GATEWAY_AUTH__AUTH_TIMEOUT_MS: String(AUTH_TIMEOUT_MS) } });
});
after(h.cleanup);

/** Publishes on `channel` and waits for `s` to receive it (the channel was joined). */
async function reaches(s, channel) {
  const marker = h.uid("m");
  await node.publish(channel, "notice", { marker });
  const data = await s.wait("notice", (d) => d?.marker === marker);
  assert.deepEqual(data, { marker }, "the event's data, as published");
}

/** Asserts a refusal's shape: message = code, data = {code, message}. */
function assertRefusal(err, code) {
  assert.equal(err.message, code, `connect_error message: ${err.message} data: ${JSON.stringify(err.data)}`);
  assert.equal(err.data?.code, code, `connect_error data: ${JSON.stringify(err.data)}`);
  assert.equal(typeof err.data?.message, "string");
  assert.ok(err.data.message.length > 0, "a message for people");
}

test("JWT in the CONNECT auth: /portal connects and receives the user's own channel", { skip }, async () => {
  const s = await h.userSocket(node, "/portal", "auth-u1", WS);
  await reaches(s, "user:auth-u1");
});

test("API key in the CONNECT auth: /portal joins agent:<id>", { skip }, async () => {
  const s = h.sio(node.url, "/portal", { auth: { token: h.AGENT_KEYS["agent-1"] }, ...WS });
  await h.connected(s);
  await reaches(s, "agent:agent-1");
});

test("?token= in the query (JWT), over WebSocket and polling", { skip }, async () => {
  for (const transports of [["websocket"], ["polling"]]) {
    const s = h.sio(node.url, "/portal", { query: { token: h.userToken("auth-u2") }, transports });
    await h.connected(s);
    await reaches(s, "user:auth-u2");
    s.disconnect();
  }
});

test("?apiKey= in the query (agent key), over WebSocket and polling", { skip }, async () => {
  for (const transports of [["websocket"], ["polling"]]) {
    const s = h.sio(node.url, "/portal", { query: { apiKey: h.AGENT_KEYS["agent-2"] }, transports });
    await h.connected(s);
    await reaches(s, "agent:agent-2");
    s.disconnect();
  }
});

test("Authorization: Bearer header (extraHeaders), JWT and API key, over polling and WebSocket", { skip }, async () => {
  for (const transports of [["polling"], ["websocket"]]) {
    const u = h.sio(node.url, "/portal", { extraHeaders: { Authorization: `Bearer ${h.userToken("auth-u3")}` }, transports });
    await h.connected(u);
    await reaches(u, "user:auth-u3");
    const a = h.sio(node.url, "/portal", { extraHeaders: { Authorization: `Bearer ${h.AGENT_KEYS["agent-1"]}` }, transports });
    await h.connected(a);
    await reaches(a, "agent:agent-1");
    u.disconnect();
    a.disconnect();
  }
});

test("bad credentials: connect_error `unauthorized` with data {code, message}", { skip }, async () => {
  const cases = {
    "JWT signed with another secret": { auth: { token: h.userToken("auth-x", { secret: "another-secret-0123456789abcdef" }) } },
    "unknown API key": { auth: { token: "no-such-key-0123" } },
    "?token= garbage": { query: { token: "a.b.c" } },
    "Bearer header with an unknown key": { extraHeaders: { Authorization: "Bearer no-such-key-0123" } },
  };
  for (const [what, opts] of Object.entries(cases)) {
    const s = h.sio(node.url, "/portal", { ...opts, ...WS });
    const err = await h.refused(s);
    assert.equal(s.connected, false, what);
    assertRefusal(err, "unauthorized");
  }
});

test("expired JWT: refused with `unauthorized` or `token_expired`", { skip }, async () => {
  const now = Math.floor(Date.now() / 1000);
  const s = h.sio(node.url, "/portal", { auth: { token: h.jwt({ sub: "auth-old", iat: now - 600, exp: now - 300, projects: ["*"] }) }, ...WS });
  const err = await h.refused(s);
  assert.ok(["unauthorized", "token_expired"].includes(err.data?.code), JSON.stringify(err.data));
  assertRefusal(err, err.data.code);
});

test("no credentials: the namespace connects; `authenticate {token}` → `authenticated {user_id, permissions}`, then the socket works", { skip }, async () => {
  const s = h.sio(node.url, "/portal", WS);
  await h.connected(s);
  s.emit("authenticate", { token: h.userToken("auth-late") });
  const ok = await s.wait("authenticated");
  assert.equal(ok.user_id, "auth-late");
  assert.ok(Array.isArray(ok.permissions), `permissions: ${JSON.stringify(ok.permissions)}`);
  assert.ok(ok.permissions.includes("project:*"), `a token for every project: ${JSON.stringify(ok.permissions)}`);
  assert.ok(!ok.permissions.includes("admin"), JSON.stringify(ok.permissions));
  // Now it is the user's portal: its own channel, and join_project.
  await reaches(s, "user:auth-late");
  const joined = await s.ask("join_project", { project_name: "auth-p1" });
  assert.equal(joined.project_name, "auth-p1", JSON.stringify(joined));
  // Well past the auth deadline: still connected.
  await h.sleep(AUTH_TIMEOUT_MS + 300);
  assert.ok(s.connected, `disconnected: ${s.disconnects}`);
});

test("no credentials: `authenticate` with an API key logs the agent in", { skip }, async () => {
  const s = h.sio(node.url, "/portal", WS);
  await h.connected(s);
  s.emit("authenticate", { token: h.AGENT_KEYS["agent-2"] });
  await s.wait("authenticated");
  await reaches(s, "agent:agent-2");
});

test("no credentials on /project/{name}: the channel is joined after `authenticate`", { skip }, async () => {
  const s = h.sio(node.url, "/project/auth-p2", WS);
  await h.connected(s);
  s.emit("authenticate", { token: h.userToken("auth-u4", { projects: ["auth-p2"] }) });
  await s.wait("authenticated");
  await reaches(s, "project:auth-p2");
});

test("before `authenticate`, other events are refused `unauthorized` and nothing is delivered", { skip }, async () => {
  const s = h.sio(node.url, "/portal", WS);
  await h.connected(s);
  const ack = await s.ask("join_project", { project_name: "auth-p3" });
  assert.equal(ack?.error?.code, "unauthorized", `ack: ${JSON.stringify(ack)}`);
  assert.equal(typeof ack.error.message, "string");
  assert.ok(s.connected, "still connected: it may still authenticate");
});

test("`authenticate` with a bad token → `authentication_failed {message, code}`, then a server-side disconnect", { skip }, async () => {
  const s = h.sio(node.url, "/portal", WS);
  await h.connected(s);
  const gone = h.disconnected(s);
  s.emit("authenticate", { token: h.userToken("auth-bad", { secret: "another-secret-0123456789abcdef" }) });
  const failed = await s.wait("authentication_failed");
  assert.equal(typeof failed.message, "string");
  assert.equal(failed.code, "unauthorized", JSON.stringify(failed));
  assert.equal(await gone, "io server disconnect");
});

test("no `authenticate` within auth.auth_timeout_ms → server-side disconnect", { skip }, async () => {
  const s = h.sio(node.url, "/portal", WS);
  await h.connected(s);
  const t0 = Date.now();
  const reason = await h.disconnected(s, AUTH_TIMEOUT_MS + 5000);
  const took = Date.now() - t0;
  assert.equal(reason, "io server disconnect");
  assert.ok(took >= AUTH_TIMEOUT_MS - 300, `disconnected after ${took} ms, before the ${AUTH_TIMEOUT_MS} ms deadline`);
});

test("a refused namespace leaves the Engine.IO connection usable for the others (one Manager)", { skip }, async () => {
  const m = h.manager(node.url, WS);
  const bad = h.sio(node.url, "/portal", { manager: m, auth: { token: "no-such-key-0123" } });
  assertRefusal(await h.refused(bad), "unauthorized");
  const good = h.sio(node.url, "/monitoring", { manager: m, auth: { token: h.userToken("auth-u5") } });
  await h.connected(good);
  await reaches(good, "broadcast:monitoring");
});
