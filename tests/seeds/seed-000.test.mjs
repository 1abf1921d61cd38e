// Seed 000 — "Story 10.2: WebSocket Hub" (Mission Control agents): an agent written
// against the hub's message structure (`{type, payload, timestamp, messageId,
// correlationId?}`) and the document's WebSocketClient usage, run against a node started
// with deploy/examples/seed-000.toml; the agent's messages go to an HTTP backend stub
// (`POST /up`), and each is acknowledged only after the backend answered it.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import WebSocket from "ws";
import { skip, startGateway, startBackend, waitFor, sleep, BACKEND_TOKEN } from "./helpers.mjs";

const API_KEY = "tb_abc123_seed000_key";
let gw;
let backend;
/** Answers of `/up` held back by the test, by message id. */
const held = new Map();
/** Message ids whose `/up` the backend answers 500. */
const failing = new Set();

before(async () => {
  if (skip) return;
  backend = await startBackend((call, reply) => {
    const id = call.headers["gw-message-id"];
    if (failing.has(id)) return reply(500, { message: "down" });
    if (held.has(id)) return held.get(id).push(() => reply(204));
    reply(204);
  });
  gw = await startGateway("seed-000", {
    GATEWAY_API_KEYS: `agent_123:${API_KEY}`,
    GATEWAY_BACKEND_HTTP__URL: backend.url,
    GATEWAY_BACKEND_HTTP__TOKEN: BACKEND_TOKEN,
  });
});
after(async () => {
  await gw?.stop();
  await backend?.stop();
});

/**
 * The agent side of `src/api/ws/WebSocketClient.ts` as the story describes it: API key
 * in the `X-API-Key` header, messages `{type, payload, timestamp, messageId,
 * correlationId?}`, `on(type, handler)` for inbound types, a send resolving on the
 * hub's `ack` (rejecting on its `error`).
 */
class WebSocketClient {
  constructor(options) {
    this.options = options;
    this.handlers = new Map();
    this.pending = new Map();
    this.received = [];
  }
  connect() {
    this.ws = new WebSocket(this.options.url, { headers: { "X-API-Key": this.options.apiKey } });
    this.ws.on("message", (data) => {
      const message = JSON.parse(data.toString());
      this.received.push(message);
      if (message.type === "ack" || (message.type === "error" && message.payload.messageId)) {
        const p = this.pending.get(message.payload.messageId);
        this.pending.delete(message.payload.messageId);
        if (message.type === "ack") p?.resolve(message);
        else p?.reject(Object.assign(new Error(message.payload.message), message.payload));
      }
      for (const h of this.handlers.get(message.type) ?? []) h(message.payload, message);
    });
    return new Promise((resolve, reject) => {
      this.ws.once("open", resolve);
      this.ws.once("error", reject);
    });
  }
  on(type, handler) {
    (this.handlers.get(type) ?? this.handlers.set(type, []).get(type)).push(handler);
  }
  send(type, payload, correlationId) {
    const message = { type, payload, timestamp: Date.now(), messageId: randomUUID(), ...(correlationId ? { correlationId } : {}) };
    const acked = new Promise((resolve, reject) => this.pending.set(message.messageId, { resolve, reject }));
    this.ws.send(JSON.stringify(message));
    return Object.assign(acked, { message });
  }
  sendStatusUpdate(payload) {
    return this.send("status:update", payload);
  }
  disconnect() {
    this.ws.close();
  }
}

test("agent: connected, status:update / heartbeat / action:request / task:completed acked after the backend has them, task:assigned arrives", { skip }, async () => {
  const console = { log: (...a) => logged.push(a) };
  const logged = [];

  // ---- seed 000, "WebSocket Client (for Agents)" (the URL is the test node's)
  const client = new WebSocketClient({
      url: `ws://${gw.host}/ws`,
      apiKey: API_KEY,
      reconnect: true,
      reconnectMaxRetries: 10,
      reconnectBaseDelay: 1000,
      reconnectMaxDelay: 30000,
      heartbeatInterval: 30000,
  });

  await client.connect();

  // Listen for messages
  client.on('task:assigned', (task) => {
      console.log('New task:', task);
  });

  // Send status updates
  client.sendStatusUpdate({
      status: 'busy',
      progress: 50,
      currentTask: 'task_123',
  });
  // ----

  await waitFor(() => client.received[0], 5_000, "connected");
  assert.equal(client.received[0].type, "connected");
  assert.deepEqual(Object.keys(client.received[0].payload).sort(), ["agentId", "connectionId"]);
  assert.equal(client.received[0].payload.agentId, "agent_123");
  const first = await waitFor(() => backend.calls.find((c) => c.body.event === "status:update"), 5_000, "status:update at the backend");
  assert.deepEqual(first.body.data, { status: "busy", progress: 50, currentTask: "task_123" });

  // Each outbound type, held at the backend: no ack until the backend answered.
  const outbound = [
    ["status:update", { status: "idle" }],
    ["heartbeat", { uptime: 12, load: 0.5 }],
    ["action:request", { action: "deploy", target: "prod" }, "corr-1"],
    ["task:completed", { taskId: "task_1", result: { ok: true } }, "corr-2"],
  ];
  for (const [type, payload, correlationId] of outbound) {
    const sending = client.send(type, payload, correlationId);
    const { messageId, timestamp } = sending.message;
    held.set(messageId, []);
    let acked = false;
    sending.then(() => (acked = true));
    const call = await waitFor(() => backend.calls.find((c) => c.headers["gw-message-id"] === messageId), 5_000, `${type} at the backend`);
    assert.equal(call.path, "/up");
    assert.deepEqual(call.body, { event: type, data: payload });
    assert.equal(call.headers["gw-principal-kind"], "agent");
    assert.equal(call.headers["gw-principal-id"], "agent_123");
    assert.equal(call.headers["gw-connection"], client.received[0].payload.connectionId);
    assert.equal(call.headers["gw-node"], "seed-000-test");
    assert.equal(call.headers["gw-client-ts"], String(timestamp));
    assert.equal(call.headers["gw-correlation-id"], correlationId);
    assert.equal(call.headers["authorization"], `Bearer ${BACKEND_TOKEN}`);
    await sleep(150);
    assert.equal(acked, false, `${type} acked before the backend answered`);
    await waitFor(() => held.get(messageId).length, 5_000, "held answer");
    held.get(messageId)[0]();
    const ack = await sending;
    assert.deepEqual(ack.payload, { messageId });
  }

  // A backend that fails answers the agent with an error naming the message.
  const sending = client.send("status:update", { status: "error" });
  failing.add(sending.message.messageId);
  held.delete(sending.message.messageId);
  await assert.rejects(sending, (e) => e.code === "unavailable" && e.messageId === sending.message.messageId);

  // hub.assignTask('agent_123', {...}) is a publish on the agent's channel.
  const task = { id: "task_1", description: "Process data batch", priority: "high", requiredTier: 2 };
  assert.equal(await gw.publish("agent:agent_123", "task:assigned", task), 202);
  await waitFor(() => logged.length, 5_000, "task:assigned");
  assert.deepEqual(logged[0], ["New task:", task]);

  // `ping` → `pong {timestamp}`.
  client.ws.send(JSON.stringify({ type: "ping" }));
  const pong = await waitFor(() => client.received.find((m) => m.type === "pong"), 5_000, "pong");
  assert.equal(typeof pong.payload.timestamp, "number");
  client.disconnect();
});

test("agent authentication methods: Authorization Bearer, X-API-Key, ?apiKey=; a wrong key is refused", { skip }, async () => {
  const connect = (url, headers) =>
    new Promise((resolve) => {
      const ws = new WebSocket(url, { headers });
      ws.once("message", (d) => {
        resolve(JSON.parse(d.toString()));
        ws.close();
      });
      ws.once("error", (e) => resolve({ error: e.message }));
    });
  for (const [url, headers] of [
    [`ws://${gw.host}/ws`, { Authorization: `Bearer ${API_KEY}` }],
    [`ws://${gw.host}/ws`, { "X-API-Key": API_KEY }],
    [`ws://${gw.host}/ws?apiKey=${API_KEY}`, {}],
  ]) {
    const hello = await connect(url, headers);
    assert.equal(hello.type, "connected", JSON.stringify(hello));
    assert.equal(hello.payload.agentId, "agent_123");
  }
  const refused = await connect(`ws://${gw.host}/ws`, { "X-API-Key": "tb_wrong_key_000" });
  assert.match(refused.error, /401/);
});
