// Seed 001 — "Mission Control WebSocket API": the browser example and the
// `Authorization` header example, run unchanged (only the address is the test node's,
// and `console` is the page's console, recorded) against a node started with
// deploy/examples/seed-001.toml.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { skip, startGateway, jwt, waitFor, closed } from "./helpers.mjs";

const AGENT_ID = "agent-abc-123";
const AGENT_KEY = "seed001-agent-key";
let gw;

before(async () => {
  if (skip) return;
  // A 1 s heartbeat instead of 30 s, so the `heartbeat` case is seen within the test.
  gw = await startGateway("seed-001", { GATEWAY_API_KEYS: `${AGENT_ID}:${AGENT_KEY}`, GATEWAY_HEARTBEAT__INTERVAL_MS: "1000" });
});
after(async () => {
  await gw?.stop();
});

/** The page's console, recorded (each call's arguments). */
function pageConsole() {
  const calls = [];
  const lines = () => calls.map((a) => a.map((x) => (typeof x === "object" ? x?.message ?? JSON.stringify(x) : String(x))).join(" "));
  return { calls, lines, log: (...a) => calls.push(a), error: (...a) => calls.push(["ERROR", ...a]) };
}

/** Every frame a socket receives, parsed (a listener beside the page's own). */
function tap(ws) {
  const frames = [];
  ws.addEventListener("message", (e) => frames.push(JSON.parse(e.data)));
  return frames;
}

/** The agent's process connecting (its first connection makes it `online`). */
async function agentConnects() {
  const agent = new WebSocket(`ws://${gw.host}/ws`, { headers: { "X-API-Key": AGENT_KEY } });
  await new Promise((res, rej) => {
    agent.once("open", res);
    agent.once("error", rej);
  });
  return agent;
}

test("browser example (?token=): connected, then agent:status online/offline, session:activity and heartbeat", { skip }, async () => {
  const console = pageConsole();
  const token = jwt("user-1");

  // ---- seed 001, "Client Implementation Example / JavaScript/Browser"
  const ws = new WebSocket(`ws://${gw.host}?token=${token}`);

  ws.onopen = () => {
    console.log('Connected to Mission Control');
  };

  ws.onmessage = (event) => {
    const message = JSON.parse(event.data);
    
    switch (message.type) {
      case 'agent:status':
        console.log(`Agent ${message.payload.agentId} is now ${message.payload.status}`);
        // Update UI to reflect new status
        break;
        
      case 'session:activity':
        console.log(`New activity in session ${message.payload.sessionId}`);
        // Show new message in UI
        break;
        
      case 'heartbeat':
        // Connection is healthy
        break;
    }
  };

  ws.onclose = (event) => {
    console.log('Disconnected:', event.code, event.reason);
    // Implement reconnection logic
  };

  ws.onerror = (error) => {
    console.error('WebSocket error:', error);
  };
  // ---- end of the seed's code

  const frames = tap(ws);
  await waitFor(() => console.lines().includes("Connected to Mission Control"), 5_000, "open");
  await waitFor(() => frames.length > 0, 5_000, "first frame");
  assert.equal(frames[0].type, "connected");
  assert.equal(frames[0].payload.userId, "user-1");
  assert.equal(typeof frames[0].payload.connectionId, "string");

  const agent = await agentConnects();
  await waitFor(() => console.lines().includes(`Agent ${AGENT_ID} is now online`), 5_000, "agent online");
  const status = frames.find((f) => f.type === "agent:status");
  assert.deepEqual(Object.keys(status.payload).sort(), ["agentId", "status", "timestamp"]);
  assert.equal(typeof status.payload.timestamp, "number");

  // The backend's broadcastSessionActivity(...) is a publish on broadcast:agents.
  const activity = { agentId: AGENT_ID, sessionId: "session-xyz-789", lastMessage: "Processing user request...", timestamp: Date.now() };
  assert.equal(await gw.publish("broadcast:agents", "session:activity", activity), 202);
  await waitFor(() => console.lines().includes("New activity in session session-xyz-789"), 5_000, "session activity");
  assert.deepEqual(frames.find((f) => f.type === "session:activity").payload, activity);

  await waitFor(() => frames.find((f) => f.type === "heartbeat"), 5_000, "heartbeat");
  assert.equal(typeof frames.find((f) => f.type === "heartbeat").payload.timestamp, "number");

  agent.close();
  await waitFor(() => console.lines().includes(`Agent ${AGENT_ID} is now offline`), 5_000, "agent offline");

  ws.close();
  await waitFor(() => console.lines().some((l) => l.startsWith("Disconnected:")), 5_000, "close");
  assert.ok(!console.lines().some((l) => l.startsWith("ERROR")), console.lines().join("\n"));
});

test("Authorization header example: the same frames without a query token", { skip }, async () => {
  const token = jwt("user-2");

  // ---- seed 001, "Authorization Header (Recommended)"
  const ws = new WebSocket(`ws://${gw.host}`, {
    headers: {
      Authorization: `Bearer ${token}`
    }
  });
  // ----

  const frames = tap(ws);
  await waitFor(() => frames[0], 5_000, "connected");
  assert.equal(frames[0].type, "connected");
  assert.equal(frames[0].payload.userId, "user-2");
  const agent = await agentConnects();
  await waitFor(() => frames.find((f) => f.type === "agent:status" && f.payload.status === "online"), 5_000, "agent:status");
  agent.close();
  ws.close();
  await closed(ws);
});

test("connection rejection: no token, a malformed or an expired one close with 1006 (401 before the upgrade)", { skip }, async () => {
  for (const [what, query] of [
    ["no token", ""],
    ["malformed", "?token=not-a-jwt"],
    ["expired", `?token=${jwt("user-3", { ttlSecs: -60 })}`],
  ]) {
    const console = pageConsole();
    let opened = false;
    const ws = new WebSocket(`ws://${gw.host}${query}`);
    ws.onopen = () => (opened = true);
    ws.onclose = (event) => {
      console.log('Disconnected:', event.code, event.reason);
    };
    ws.onerror = (error) => {
      console.error('WebSocket error:', error);
    };
    await waitFor(() => console.lines().some((l) => l.startsWith("Disconnected:")), 5_000, `close (${what})`);
    assert.equal(opened, false, what);
    assert.ok(console.lines().includes("Disconnected: 1006 "), `${what}: ${console.lines()}`);
    assert.match(console.lines().find((l) => l.startsWith("ERROR")), /Unexpected server response: 401/, what);
  }
});
