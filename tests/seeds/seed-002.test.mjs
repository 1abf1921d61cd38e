// Seed 002 — "Phase 2.2: WebSocket Real-Time Communication" (Mission Control): its
// acceptance criteria and manual QA ("open dashboard in two browsers, trigger agent
// status change, verify both browsers update simultaneously"), with dashboards written
// like seed 001's, against a node started with deploy/examples/seed-002.toml.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { request } from "node:http";
import WebSocket from "ws";
import { skip, startGateway, jwt, waitFor, closed, sleep } from "./helpers.mjs";

const AGENT_KEY = "seed002-agent-key";
let gw;

before(async () => {
  if (skip) return;
  gw = await startGateway("seed-002", { GATEWAY_API_KEYS: `agent-1:${AGENT_KEY}` });
});
after(async () => {
  await gw?.stop();
});

/** A dashboard tab: the `useWebSocket` state of seed 001, kept in plain objects. */
function dashboard(ws) {
  const state = { isConnected: false, agentStatuses: new Map(), activity: [], frames: [] };
  ws.onopen = () => {
    state.isConnected = true;
  };
  ws.onmessage = (event) => {
    const message = JSON.parse(event.data);
    state.frames.push(message);
    if (message.type === 'agent:status') {
      state.agentStatuses.set(message.payload.agentId, message.payload);
    }
    if (message.type === 'session:activity') {
      state.activity.push(message.payload);
    }
  };
  ws.onclose = () => {
    state.isConnected = false;
  };
  return state;
}

async function agentConnects() {
  const agent = new WebSocket(`ws://${gw.host}/ws`, { headers: { Authorization: `Bearer ${AGENT_KEY}` } });
  await new Promise((res, rej) => {
    agent.once("open", res);
    agent.once("error", rej);
  });
  return agent;
}

test("two tabs of one user (header and query token) update together; closing one leaves the other", { skip }, async () => {
  const token = jwt("alice");
  const tab1 = dashboard(new WebSocket(`ws://${gw.host}`, { headers: { Authorization: `Bearer ${token}` } }));
  const ws2 = new WebSocket(`ws://${gw.host}?token=${token}`);
  const tab2 = dashboard(ws2);
  const other = dashboard(new WebSocket(`ws://${gw.host}?token=${jwt("bob")}`));
  await waitFor(() => [tab1, tab2, other].every((t) => t.frames[0]?.type === "connected"), 5_000, "three dashboards");

  const agent = await agentConnects();
  for (const t of [tab1, tab2, other]) {
    await waitFor(() => t.agentStatuses.get("agent-1")?.status === "online", 5_000, "online everywhere");
  }
  const [a, b] = [tab1, tab2].map((t) => t.frames.find((f) => f.type === "agent:status"));
  assert.equal(a.messageId, b.messageId, "the same event in both tabs");

  ws2.close();
  await closed(ws2);
  assert.equal(tab2.isConnected, false);
  agent.close();
  await waitFor(() => tab1.agentStatuses.get("agent-1")?.status === "offline", 5_000, "offline in the open tab");
  await waitFor(() => other.agentStatuses.get("agent-1")?.status === "offline", 5_000, "offline for bob");
  assert.equal(tab2.agentStatuses.get("agent-1").status, "online", "a closed tab hears nothing more");

  // The backend's broadcastSessionActivity reaches every authenticated dashboard.
  assert.equal(await gw.publish("broadcast:agents", "session:activity", { agentId: "agent-1", sessionId: "s-1", lastMessage: "hi", timestamp: 1 }), 202);
  await waitFor(() => tab1.activity.length === 1 && other.activity.length === 1, 5_000, "session:activity");
});

/** The raw handshake answer: status and body of an upgrade request. */
function handshake(path, headers = {}) {
  return new Promise((res, rej) => {
    const req = request({
      host: "127.0.0.1",
      port: gw.port,
      path,
      headers: { Connection: "Upgrade", Upgrade: "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", ...headers },
    });
    req.on("upgrade", (r, socket) => {
      socket.destroy();
      res({ status: r.statusCode, body: null });
    });
    req.on("response", (r) => {
      let body = "";
      r.on("data", (d) => (body += d));
      r.on("end", () => res({ status: r.statusCode, body: JSON.parse(body) }));
    });
    req.on("error", rej);
    req.end();
  });
}

test("rejecting unauthenticated connections: refused with 401 before the upgrade, never opened", { skip }, async () => {
  for (const [path, headers] of [
    ["/", {}],
    ["/?token=bad", {}],
    ["/", { Authorization: "Bearer bad" }],
    ["/?token=" + jwt("alice", { ttlSecs: -10 }), {}],
  ]) {
    const r = await handshake(path, headers);
    assert.equal(r.status, 401, `${path} ${JSON.stringify(headers)}`);
    assert.ok(["unauthorized", "token_expired"].includes(r.body.code), JSON.stringify(r.body));
  }
  assert.equal((await handshake("/?token=" + jwt("alice"))).status, 101);
  // What a browser sees: an error, then close code 1006.
  const ws = new WebSocket(`ws://${gw.host}`);
  const state = dashboard(ws);
  ws.onerror = () => {};
  assert.equal(await closed(ws), 1006);
  assert.equal(state.frames.length, 0);
});

test("message format validation: a malformed message gets an error and the connection stays", { skip }, async () => {
  const ws = new WebSocket(`ws://${gw.host}?token=${jwt("carol")}`);
  const state = dashboard(ws);
  await waitFor(() => state.isConnected && state.frames.length > 0, 5_000, "connected");
  ws.send("{not json");
  await waitFor(() => state.frames.find((f) => f.type === "error"), 5_000, "error");
  assert.equal(state.frames.find((f) => f.type === "error").payload.code, "bad_request");
  ws.send(JSON.stringify({ type: "ping" }));
  await waitFor(() => state.frames.find((f) => f.type === "pong"), 5_000, "pong");
  await sleep(50);
  assert.equal(state.isConnected, true);
  ws.close();
  await closed(ws);
});
