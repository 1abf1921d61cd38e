// Unit tests of requests, acked sends/publishes and the offline queue, against the fake
// socket: id matching, timeouts, `disconnected` on a drop, bounded queue and its
// policies, in-order flush after the re-subscribe.

import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeWebSocket, connected, makeClient, flush, settled } from "../helpers.mjs";

test("request resolves with the response's result; errors reject with the server's code", async () => {
  const { client } = await connected();
  const ws = FakeWebSocket.last;
  const p = client.request("channels.list");
  const [f] = ws.frames("request");
  assert.deepEqual(f, { type: "request", id: f.id, method: "channels.list", params: {} });
  ws.receive({ type: "response", id: f.id, result: { channels: ["user:u1"] } });
  assert.deepEqual(await p, { channels: ["user:u1"] });

  const q = client.request("tasks.get", { id: 7 });
  const g = ws.frames("request")[1];
  assert.notEqual(g.id, f.id);
  ws.receive({ type: "response", id: g.id, error: { code: "unavailable", message: "no backend" } });
  await assert.rejects(q, (e) => e.name === "GatewayError" && e.code === "unavailable" && e.message === "no backend");
  await client.close();
});

test("request times out with code timeout", async () => {
  const { client, clock } = await connected({ requestTimeoutMs: 10_000 });
  const p = client.request("slow.method", {}, { timeoutMs: 2000 });
  p.catch(() => {});
  await clock.advance(1999);
  assert.equal(await settled(p), false);
  await clock.advance(1);
  await assert.rejects(p, { code: "timeout" });
  // A late response is ignored.
  FakeWebSocket.last.receive({ type: "response", id: FakeWebSocket.last.frames("request")[0].id, result: 1 });
  await client.close();
});

test("a pending request rejects with disconnected when the connection drops", async () => {
  const { client } = await connected();
  const p = client.request("tasks.get");
  FakeWebSocket.last.serverClose(1006);
  await assert.rejects(p, (e) => e.code === "disconnected" && e.closeCode === 1006);
  await client.close();
});

test("a request made while reconnecting waits for the connection (within its timeout)", async () => {
  const { client, clock } = await connected();
  FakeWebSocket.last.serverClose(1006);
  const p = client.request("channels.list");
  await clock.advance(1000);
  const ws = FakeWebSocket.last;
  ws.accept();
  await flush();
  const [f] = ws.frames("request");
  ws.receive({ type: "response", id: f.id, result: { channels: [] } });
  assert.deepEqual(await p, { channels: [] });
  await assert.rejects(makeClient().client.request("x"), { code: "not_connected" });
  await client.close();
});

test("send and publish resolve on ack and reject on an error response", async () => {
  const { client } = await connected();
  const ws = FakeWebSocket.last;
  const s = client.send("status:update", { status: "busy" });
  const p = client.publish("session:abc", "typing", { on: true });
  const [sf] = ws.frames("send");
  const [pf] = ws.frames("publish");
  assert.deepEqual(sf, { type: "send", id: sf.id, event: "status:update", data: { status: "busy" } });
  assert.deepEqual(pf, { type: "publish", id: pf.id, channel: "session:abc", event: "typing", data: { on: true } });
  ws.receive({ type: "ack", id: sf.id });
  ws.receive({ type: "response", id: pf.id, error: { code: "forbidden", message: "not a member" } });
  await s;
  await assert.rejects(p, { code: "forbidden" });
  const r = client.publish("session:abc", "typing", {});
  ws.receive({ type: "response", id: ws.frames("publish")[1].id, error: { code: "rate_limited", message: "too many frames", retryAfterMs: 250 } });
  await assert.rejects(r, (e) => e.code === "rate_limited" && e.retryAfterMs === 250);
  await client.close();
});

test("send without an ack in time rejects with timeout; unacked sends reject disconnected on a drop", async () => {
  const { client, clock } = await connected({ ackTimeoutMs: 3000 });
  const a = client.send("x:y", 1);
  a.catch(() => {});
  await clock.advance(3000);
  await assert.rejects(a, { code: "timeout" });
  const b = client.send("x:y", 2);
  FakeWebSocket.last.serverClose(1001);
  await assert.rejects(b, { code: "disconnected" });
  await client.close();
});

test("offline sends/publishes are queued and flushed in order after reconnect, after the re-subscribe", async () => {
  const { client, clock } = await connected();
  client.subscribe("project:p1", () => {});
  await flush();
  FakeWebSocket.last.serverClose(1006);
  const done = [];
  const calls = [
    client.send("task:completed", { n: 1 }),
    client.publish("session:s1", "typing", { n: 2 }),
    client.send("task:completed", { n: 3 }),
  ].map((p, i) => p.then(() => done.push(i)));
  assert.equal(client.queuedCount, 3);
  await clock.advance(1000);
  const ws = FakeWebSocket.last;
  ws.accept();
  await flush();
  assert.deepEqual(ws.sent.map((f) => f.type), ["subscribe", "send", "publish", "send"]);
  assert.deepEqual(ws.sent.slice(1).map((f) => f.data.n), [1, 2, 3]);
  for (const f of ws.sent.slice(1)) ws.receive({ type: "ack", id: f.id });
  await Promise.all(calls);
  assert.deepEqual(done, [0, 1, 2]);
  assert.equal(client.queuedCount, 0);
  await client.close();
});

test("offline queue bound with dropOldest: the oldest are rejected, the newest flushed", async () => {
  const { client, clock } = await connected({ offlineQueue: { maxSize: 2, policy: "dropOldest" } });
  FakeWebSocket.last.serverClose(1006);
  const p = [1, 2, 3, 4].map((n) => client.send("e:v", { n }));
  p.forEach((x) => x.catch(() => {}));
  assert.equal(client.queuedCount, 2);
  await assert.rejects(p[0], { code: "queue_overflow" });
  await assert.rejects(p[1], { code: "queue_overflow" });
  await clock.advance(1000);
  FakeWebSocket.last.accept();
  await flush();
  assert.deepEqual(FakeWebSocket.last.frames("send").map((f) => f.data.n), [3, 4]);
  await client.close();
});

test("offline queue policy error rejects the call that does not fit", async () => {
  const { client } = await connected({ offlineQueue: { maxSize: 2, policy: "error" } });
  FakeWebSocket.last.serverClose(1006);
  const p = [1, 2, 3].map((n) => client.send("e:v", { n }));
  p.forEach((x) => x.catch(() => {}));
  await assert.rejects(p[2], { code: "queue_full" });
  assert.equal(client.queuedCount, 2);
  await client.close();
  await assert.rejects(p[0], { code: "closed" });
  await assert.rejects(p[1], { code: "closed" });
});

test("offlineQueue: false rejects sends while disconnected", async () => {
  const { client } = await connected({ offlineQueue: false });
  FakeWebSocket.last.serverClose(1006);
  await assert.rejects(client.send("e:v", 1), { code: "not_connected" });
  await client.close();
});

test("messages sent before connect() completes are queued for the first connection", async () => {
  const { client } = makeClient();
  const s = client.send("status:update", { status: "starting" });
  const p = client.connect();
  await flush();
  FakeWebSocket.last.accept();
  await p;
  const [f] = FakeWebSocket.last.frames("send");
  FakeWebSocket.last.receive({ type: "ack", id: f.id });
  await s;
  await client.close();
});

test("close() rejects pending requests and queued messages with closed", async () => {
  const { client } = await connected();
  const r = client.request("tasks.get");
  const s = client.send("a:b", 1);
  await client.close();
  await assert.rejects(r, { code: "closed" });
  await assert.rejects(s, { code: "closed" });
  await assert.rejects(client.send("a:b", 2), { code: "closed" });
});

test("sendStatusUpdate sends status:update (seed 000)", async () => {
  const { client, clock } = await connected();
  client.sendStatusUpdate("busy", { progress: 50, currentTask: "task_123" }).catch(() => {});
  client.sendStatusUpdate({ status: "idle" }).catch(() => {});
  const [a, b] = FakeWebSocket.last.frames("send");
  assert.equal(a.event, "status:update");
  assert.deepEqual(a.data, { timestamp: clock.now(), status: "busy", progress: 50, currentTask: "task_123" });
  assert.deepEqual(b.data, { timestamp: clock.now(), status: "idle" });
  await client.close();
});

test("error frames without an id are emitted on error", async () => {
  const { client, errors } = await connected();
  FakeWebSocket.last.receive({ type: "error", error: { code: "bad_request", message: "unknown frame" } });
  FakeWebSocket.last.receive("not json");
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "bad_request");
  await client.close();
});

test("the flush is paced under the server's rate limit; later sends queue behind it, requests do not", async () => {
  // Burst 6: the re-subscribe frame (the own channel, user:u1) takes one token, 5 are left.
  const { client, clock } = await connected({ rateLimit: { perSecond: 10, burst: 6, perMinute: 1000 }, offlineQueue: { maxSize: 100 } });
  FakeWebSocket.last.serverClose(1006);
  const calls = [];
  for (let n = 1; n <= 12; n++) calls.push(client.send("e:v", { n }));
  calls.forEach((p) => p.catch(() => {}));
  await clock.advance(1000);
  const ws = FakeWebSocket.last;
  ws.accept();
  await flush();
  assert.deepEqual(ws.frames("send").map((f) => f.data.n), [1, 2, 3, 4, 5], "the burst");
  client.send("e:v", { n: 13 }).catch(() => {});
  client.request("channels.list").catch(() => {});
  assert.equal(ws.frames("request").length, 1, "a live request is not held behind the flush");
  await clock.advance(100);
  assert.equal(ws.frames("send").length, 5, "the request used the token");
  await clock.advance(100);
  assert.deepEqual(ws.frames("send").map((f) => f.data.n), [1, 2, 3, 4, 5, 6]);
  await clock.advance(1000);
  assert.deepEqual(ws.frames("send").map((f) => f.data.n), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
  assert.equal(client.queuedCount, 0);
  // Once the queue is empty, sends go straight out.
  client.send("e:v", { n: 14 }).catch(() => {});
  assert.equal(ws.frames("send").at(-1).data.n, 14);
  await client.close();
});

test("a drop during a paced flush keeps the rest queued for the next connection", async () => {
  // Burst 3: each connection's subscribe frame (the own channel) takes one token.
  const { client, clock } = await connected({ rateLimit: { perSecond: 1, burst: 3, perMinute: 1000 } });
  FakeWebSocket.last.serverClose(1006);
  for (let n = 1; n <= 5; n++) client.send("e:v", { n }).catch(() => {});
  await clock.advance(1000);
  FakeWebSocket.last.accept();
  await flush();
  assert.deepEqual(FakeWebSocket.last.frames("send").map((f) => f.data.n), [1, 2]);
  FakeWebSocket.last.serverClose(1006);
  assert.equal(client.queuedCount, 3);
  await clock.advance(2000);
  FakeWebSocket.last.accept();
  await flush();
  assert.deepEqual(FakeWebSocket.last.frames("send").map((f) => f.data.n), [3, 4]);
  await client.close();
});

test("a live burst of sends over the rate limit is paced through the queue, in order", async () => {
  // Burst 4: the first connection's subscribe frame (the own channel) took one token.
  const { client, clock } = await connected({ rateLimit: { perSecond: 10, burst: 4, perMinute: 1000 } });
  const ws = FakeWebSocket.last;
  const calls = [1, 2, 3, 4, 5, 6].map((n) => client.send("e:v", { n }));
  calls.forEach((p) => p.catch(() => {}));
  assert.deepEqual(ws.frames("send").map((f) => f.data.n), [1, 2, 3]);
  assert.equal(client.queuedCount, 3);
  await clock.advance(100);
  assert.deepEqual(ws.frames("send").map((f) => f.data.n), [1, 2, 3, 4]);
  await clock.advance(200);
  assert.deepEqual(ws.frames("send").map((f) => f.data.n), [1, 2, 3, 4, 5, 6]);
  for (const f of ws.frames("send")) ws.receive({ type: "ack", id: f.id });
  await Promise.all(calls);
  await client.close();
});
