// Seed 003 — "Phase 8: Real-time WebSocket Communication" (Botical): the seed's "Example
// Usage" run unchanged (only the address and the token are the test's) against a node
// started with deploy/examples/seed-003.toml, its requests answered by an HTTP backend
// stub standing in for the Botical handlers (`POST /rpc`).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { skip, startGateway, startBackend, jwt, waitFor, BACKEND_TOKEN } from "./helpers.mjs";

let gw;
let backend;

before(async () => {
  if (skip) return;
  backend = await startBackend((call, reply, res) => {
    const { method, params } = call.body;
    switch (method) {
      case "sessions.create":
        return reply(200, { id: "sess_xxx", projectId: params.projectId, title: params.title });
      case "sessions.get":
        return reply(200, { error: { code: "not_found", message: `no session ${params.id}` } });
      case "tools.approve":
        return reply(500, { message: "handler crashed" });
      case "messages.send":
        return; // stalls: never answered
      case "agents.list":
        return res.socket.destroy(); // the backend process dies mid-request
      default:
        return reply(200, { error: { code: "not_found", message: `unknown method ${method}` } });
    }
  });
  gw = await startGateway("seed-003", {
    GATEWAY_BACKEND_HTTP__URL: backend.url,
    GATEWAY_BACKEND_HTTP__TOKEN: BACKEND_TOKEN,
    // A 1 s request timeout instead of 5 s, so the stalled call ends within the test.
    GATEWAY_FABRIC__REQUEST_TIMEOUT_MS: "1000",
  });
});
after(async () => {
  await gw?.stop();
  await backend?.stop();
});

/** Every message a socket receives, parsed. */
function received(ws) {
  const frames = [];
  ws.addEventListener("message", (e) => frames.push(JSON.parse(e.data)));
  return frames;
}

test("example usage: request/response round trip, subscribe, streamed events", { skip }, async () => {
  const xxx = jwt("user-1");
  const host = gw.host;

  // ---- seed 003, "Example Usage"
  // Client connection
  const ws = new WebSocket(`ws://${host}/ws?token=${xxx}`);
  // ----
  const frames = received(ws);
  await new Promise((r) => (ws.onopen = r));

  // ---- seed 003, "Example Usage"
  // Send request
  ws.send(JSON.stringify({
    type: 'request',
    id: 'req_1',
    method: 'sessions.create',
    params: { projectId: 'prj_xxx', title: 'New Chat' }
  }));
  // ----

  // Receive response
  // { type: 'response', id: 'req_1', result: { id: 'sess_xxx', ... } }
  const response = await waitFor(() => frames.find((f) => f.type === "response" && f.id === "req_1"), 5_000, "response");
  assert.deepEqual(response.result, { id: "sess_xxx", projectId: "prj_xxx", title: "New Chat" });
  const call = backend.calls.find((c) => c.body.method === "sessions.create");
  assert.equal(call.path, "/rpc");
  assert.deepEqual(call.body.params, { projectId: "prj_xxx", title: "New Chat" });
  assert.equal(call.headers["authorization"], `Bearer ${BACKEND_TOKEN}`);
  assert.equal(call.headers["gw-principal-kind"], "user");
  assert.equal(call.headers["gw-principal-id"], "user-1");
  assert.equal(call.headers["gw-message-id"], "req_1");
  assert.equal(call.headers["gw-node"], "seed-003-test");
  assert.equal(call.headers["gw-connection"], frames.find((f) => f.type === "connected").connectionId);

  // ---- seed 003, "Example Usage"
  // Subscribe to events
  ws.send(JSON.stringify({
    type: 'subscribe',
    channels: ['session:sess_xxx']
  }));
  // ----
  // Frames are handled in order: the pong says the subscribe is done.
  ws.send(JSON.stringify({ type: "ping" }));
  await waitFor(() => frames.find((f) => f.type === "pong"), 5_000, "pong");
  assert.equal(frames.filter((f) => f.type === "error").length, 0, JSON.stringify(frames));

  // The backend's EventBus bridge publishes the agent's streamed response.
  assert.equal(await gw.publish("session:sess_xxx", "part.created", { partId: "p1", text: "Hel" }), 202);
  assert.equal(await gw.publish("session:sess_xxx", "part.updated", { partId: "p1", text: "Hello" }), 202);

  // Receive streamed events
  // { type: 'event', channel: 'session:sess_xxx', event: 'part.created', data: {...} }
  const events = await waitFor(() => {
    // Presence (`presence.join` of this very connection) is on session channels too.
    const e = frames.filter((f) => f.type === "event" && f.channel === "session:sess_xxx" && !f.event.startsWith("presence."));
    return e.length === 2 && e;
  }, 5_000, "two events");
  assert.deepEqual(events.map((e) => [e.event, e.data.text]), [["part.created", "Hel"], ["part.updated", "Hello"]]);
  ws.close();
});

test("backend failures: its error, non-2xx and a dead backend are unavailable, a stall is timeout", { skip }, async () => {
  const ws = new WebSocket(`ws://${gw.host}/ws?token=${jwt("user-2")}`);
  const frames = received(ws);
  await new Promise((r) => (ws.onopen = r));
  const ask = (id, method, params = {}) => ws.send(JSON.stringify({ type: "request", id, method, params }));
  ask("r1", "sessions.get", { id: "nope" });
  ask("r2", "tools.approve");
  ask("r3", "messages.send", { text: "hi" });
  ask("r4", "agents.list");
  const answer = (id) => waitFor(() => frames.find((f) => f.type === "response" && f.id === id), 5_000, id);
  assert.deepEqual((await answer("r1")).error, { code: "not_found", message: "no session nope" });
  assert.equal((await answer("r2")).error.code, "unavailable");
  assert.equal((await answer("r4")).error.code, "unavailable");
  const started = Date.now();
  assert.equal((await answer("r3")).error.code, "timeout");
  assert.ok(Date.now() - started < 2_000);
  // The connection is unharmed.
  ask("r5", "sessions.create", { projectId: "p", title: "t" });
  assert.equal((await answer("r5")).result.id, "sess_xxx");
  ws.close();
});

test("an invalid or missing token is rejected on connect", { skip }, async () => {
  for (const url of [`ws://${gw.host}/ws?token=xxx`, `ws://${gw.host}/ws`]) {
    const ws = new WebSocket(url);
    const error = await new Promise((r) => (ws.onerror = r));
    assert.match(error.message, /Unexpected server response: 401/, url);
  }
});
