// Unit tests of subscriptions against the fake socket: batching, handles, unsubscribe,
// re-subscribe with `recover` positions after a reconnect, `recovered` reporting,
// start positions from subscribe answers (`positions`, also for the own channel),
// de-duplication by (channel, offset), channel tokens, event-name handlers, and the
// JWT refresh before `exp`.

import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeWebSocket, FakeClock, connected, makeClient, flush, fakeJwt } from "../helpers.mjs";

const ev = (channel, event, data, extra = {}) => ({ type: "event", channel, event, data, id: `m-${Math.random()}`, ts: 1, ...extra });

/** Answers the socket's last subscribe frame: everything subscribed, optional recovered and positions maps. */
function ackSubscribe(ws, recovered, positions) {
  const f = ws.frames("subscribe").at(-1);
  ws.receive({
    type: "response",
    id: f.id,
    result: { subscribed: f.channels, rejected: [], ...(recovered ? { recovered } : {}), ...(positions ? { positions } : {}) },
  });
  return f;
}

/** The fake server's default principal's own channel (helpers.mjs: user u1). */
const OWN = "user:u1";

/** Subscribe frames other than the one naming only the own channel (sent after `connected`). */
const appSubs = (ws) => ws.frames("subscribe").filter((f) => !(f.channels.length === 1 && f.channels[0] === OWN));

test("channels subscribed before connect go out in one frame after connected; ready resolves", async () => {
  const { client } = makeClient();
  const a = client.subscribe("broadcast:agents", () => {});
  const b = client.subscribe("project:p1", () => {});
  const p = client.connect();
  await flush();
  const ws = FakeWebSocket.last;
  ws.accept();
  await p;
  const subs = ws.frames("subscribe");
  assert.equal(subs.length, 1);
  // The own channel rides along, so the answer tells where it stood (no extra frame).
  assert.deepEqual(subs[0].channels, ["broadcast:agents", "project:p1", OWN]);
  assert.equal(subs[0].recover, undefined);
  ackSubscribe(ws);
  await a.ready;
  await b.ready;
  await client.close();
});

test("subscribe while connected: one frame per tick; events reach the handler; unsubscribe stops them", async () => {
  const { client } = await connected();
  const ws = FakeWebSocket.last;
  const got = [];
  const s1 = client.subscribe("project:p1", (e) => got.push(["h1", e.data]));
  const s2 = client.subscribe("project:p1", (e) => got.push(["h2", e.data]));
  client.subscribe("project:p2", () => {});
  await flush();
  assert.deepEqual(ws.frames("subscribe").map((f) => f.channels), [[OWN], ["project:p1", "project:p2"]]);
  ackSubscribe(ws);
  await s1.ready;
  ws.receive(ev("project:p1", "task.created", 1));
  s1.unsubscribe();
  assert.equal(ws.frames("unsubscribe").length, 0, "another handler still listens");
  ws.receive(ev("project:p1", "task.created", 2));
  s2.unsubscribe();
  s2.unsubscribe(); // idempotent
  assert.deepEqual(ws.frames("unsubscribe").map((f) => f.channels), [["project:p1"]]);
  ws.receive(ev("project:p1", "task.created", 3));
  assert.deepEqual(got, [["h1", 1], ["h2", 1], ["h2", 2]]);
  await client.close();
});

test("a rejected subscription rejects ready, is reported and dropped", async () => {
  const { client, clock, errors } = await connected();
  const ws = FakeWebSocket.last;
  const s = client.subscribe("project:p9", () => {});
  await flush();
  const [f] = appSubs(ws);
  ws.receive({ type: "response", id: f.id, result: { subscribed: [], rejected: [{ channel: "project:p9", code: "forbidden", message: "not your project" }] } });
  await assert.rejects(s.ready, (e) => e.code === "forbidden" && e.channel === "project:p9");
  assert.equal(errors[0].code, "forbidden");
  ws.serverClose(1006);
  await clock.advance(1000);
  FakeWebSocket.last.accept();
  await flush();
  assert.deepEqual(FakeWebSocket.last.frames("subscribe").map((f) => f.channels), [[OWN]], "a refused channel is not retried");
  await client.close();
});

test("after a reconnect every channel is re-subscribed in one frame with recover positions", async () => {
  const agent = { principal: { kind: "agent", id: "a1" } };
  const { client, clock, recovered } = await connected({ accept: agent });
  let ws = FakeWebSocket.last;
  client.subscribe("session:abc", () => {});
  client.subscribe("project:p1", () => {});
  client.subscribe("broadcast:agents", () => {});
  await flush();
  ackSubscribe(ws);
  ws.receive(ev("session:abc", "message.created", 1, { offset: 41, epoch: "E1" }));
  ws.receive(ev("session:abc", "message.created", 2, { offset: 42, epoch: "E1" }));
  ws.receive(ev("project:p1", "task.created", 3, { offset: 7, epoch: "E2" }));
  ws.receive(ev("broadcast:agents", "agent:status", 4)); // no history
  ws.receive(ev("agent:a1", "task:assigned", 5, { offset: 3, epoch: "E3" })); // auto-joined
  ws.serverClose(1001);
  await clock.advance(1000);
  ws = FakeWebSocket.last;
  ws.accept(agent);
  await flush();
  const subs = ws.frames("subscribe");
  assert.equal(subs.length, 1);
  assert.deepEqual(new Set(subs[0].channels), new Set(["session:abc", "project:p1", "broadcast:agents", "agent:a1"]));
  assert.deepEqual(subs[0].recover, {
    "session:abc": { offset: 42, epoch: "E1" },
    "project:p1": { offset: 7, epoch: "E2" },
    "agent:a1": { offset: 3, epoch: "E3" },
  });
  ackSubscribe(ws, { "session:abc": true, "project:p1": false, "agent:a1": true });
  await flush();
  const byChannel = Object.fromEntries(recovered.map((r) => [r.channel, r.recovered]));
  assert.deepEqual(byChannel, { "session:abc": true, "project:p1": false, "broadcast:agents": false, "agent:a1": true });
  await client.close();
});

test("a server without history (no recovered map) reports recovered:false for every channel", async () => {
  const { client, clock, recovered } = await connected();
  client.subscribe("project:p1", () => {});
  await flush();
  ackSubscribe(FakeWebSocket.last);
  FakeWebSocket.last.serverClose(1006);
  await clock.advance(1000);
  FakeWebSocket.last.accept();
  await flush();
  ackSubscribe(FakeWebSocket.last);
  await flush();
  // The own channel is re-subscribed too (to learn its position): also reported.
  assert.deepEqual(recovered, [{ channel: "project:p1", recovered: false }, { channel: OWN, recovered: false }]);
  await client.close();
});

test("duplicate and out-of-order offsets are dropped within an epoch; a new epoch starts over", async () => {
  const { client } = await connected();
  const ws = FakeWebSocket.last;
  const got = [];
  client.subscribe("session:abc", (e) => got.push(`${e.epoch}/${e.offset}`));
  await flush();
  ackSubscribe(ws);
  for (const [o, e] of [[1, "A"], [2, "A"], [2, "A"], [1, "A"], [3, "A"], [3, "A"], [1, "B"], [2, "B"], [2, "B"]]) {
    ws.receive(ev("session:abc", "m", null, { offset: o, epoch: e }));
  }
  ws.receive(ev("session:abc", "m", null)); // no offset: delivered
  assert.deepEqual(got, ["A/1", "A/2", "A/3", "B/1", "B/2", "undefined/undefined"]);
  await client.close();
});

test("replayed events after recovery are not delivered twice", async () => {
  const { client, clock } = await connected();
  const got = [];
  client.subscribe("session:abc", (e) => got.push(e.offset));
  await flush();
  ackSubscribe(FakeWebSocket.last);
  for (const o of [1, 2, 3]) FakeWebSocket.last.receive(ev("session:abc", "m", null, { offset: o, epoch: "E" }));
  FakeWebSocket.last.serverClose(1006);
  await clock.advance(1000);
  const ws = FakeWebSocket.last;
  ws.accept();
  await flush();
  assert.deepEqual(ws.frames("subscribe")[0].recover, { "session:abc": { offset: 3, epoch: "E" } });
  ackSubscribe(ws, { "session:abc": true });
  // A (buggy or racing) replay overlapping what was seen, then live events.
  for (const o of [2, 3, 4, 5, 4, 6]) ws.receive(ev("session:abc", "m", null, { offset: o, epoch: "E" }));
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6]);
  await client.close();
});

test("unsubscribing forgets the channel's position; it is not recovered later", async () => {
  const { client, clock } = await connected();
  const s = client.subscribe("session:abc", () => {});
  client.subscribe("project:p1", () => {});
  await flush();
  ackSubscribe(FakeWebSocket.last);
  FakeWebSocket.last.receive(ev("session:abc", "m", null, { offset: 5, epoch: "E" }));
  s.unsubscribe();
  FakeWebSocket.last.serverClose(1006);
  await clock.advance(1000);
  FakeWebSocket.last.accept();
  await flush();
  const [f] = FakeWebSocket.last.frames("subscribe");
  assert.deepEqual(f.channels, ["project:p1", OWN]);
  assert.equal(f.recover, undefined);
  await client.close();
});

test("session channels with a channel token subscribe in their own frame, with the token", async () => {
  const { client, clock } = await connected();
  let calls = 0;
  client.subscribe("session:abc", () => {}, { token: () => `chan-tok-${++calls}` });
  client.subscribe("project:p1", () => {});
  await flush();
  await flush();
  const subs = appSubs(FakeWebSocket.last);
  assert.deepEqual(subs.map((f) => [f.channels, f.token]), [[["project:p1"], undefined], [["session:abc"], "chan-tok-1"]]);
  FakeWebSocket.last.serverClose(1006);
  await clock.advance(1000);
  FakeWebSocket.last.accept();
  await flush();
  assert.equal(FakeWebSocket.last.frames("subscribe").find((f) => f.token).token, "chan-tok-2");
  await client.close();
});

test("on(eventName) receives events by name on any channel; handler errors go to error", async () => {
  const { client, errors } = await connected({ accept: { principal: { kind: "agent", id: "a1" } } });
  const tasks = [];
  client.on("task:assigned", (data, frame) => tasks.push([data.id, frame.channel]));
  client.onEvent("error", () => {
    throw new Error("boom");
  });
  FakeWebSocket.last.receive(ev("agent:a1", "task:assigned", { id: "t1" }));
  FakeWebSocket.last.receive(ev("agent:a1", "config:updated", {}));
  FakeWebSocket.last.receive(ev("agent:a1", "error", {}));
  assert.deepEqual(tasks, [["t1", "agent:a1"]]);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "handler_error");
  await client.close();
});

test("a JWT is refreshed with getToken shortly before exp, and again after", async () => {
  const clock = new FakeClock();
  const nowS = Math.floor(clock.now() / 1000);
  let n = 0;
  const tokens = [fakeJwt({ sub: "alice", exp: nowS + 600 }), fakeJwt({ sub: "alice", exp: nowS + 1200 }), fakeJwt({ sub: "alice", exp: nowS + 1800 })];
  const { client } = await connected({ clock, token: undefined, getToken: () => tokens[n++], refreshBeforeMs: 60_000 });
  const ws = FakeWebSocket.last;
  assert.equal(n, 1);
  await clock.advance(539_000);
  assert.equal(ws.frames("refresh").length, 0);
  await clock.advance(1000); // exp - 60 s
  const [f] = ws.frames("refresh");
  assert.deepEqual(f, { type: "refresh", id: f.id, token: tokens[1] });
  ws.receive({ type: "response", id: f.id, result: { expiresAt: (nowS + 1200) * 1000, left: [] } });
  await flush();
  await clock.advance(600_000); // the new exp - 60 s
  assert.equal(ws.frames("refresh").length, 2);
  assert.equal(ws.frames("refresh")[1].token, tokens[2]);
  await client.close();
});

test("a refresh refused by the server is reported on error", async () => {
  const clock = new FakeClock();
  const nowS = Math.floor(clock.now() / 1000);
  let n = 0;
  const { client, errors } = await connected({ clock, token: undefined, getToken: () => fakeJwt({ sub: "alice", exp: nowS + 100 * ++n }) });
  await clock.advance(50_000); // short lifetime: refreshed at half
  const [f] = FakeWebSocket.last.frames("refresh");
  FakeWebSocket.last.receive({ type: "response", id: f.id, error: { code: "forbidden", message: "token is for another principal" } });
  await flush();
  assert.equal(errors.at(-1).code, "forbidden");
  await client.close();
});

test("API keys and static tokens are never refreshed", async () => {
  const { client, clock } = await connected({ token: undefined, getToken: () => "key-agent-1" });
  await clock.advance(24 * 3600_000);
  assert.equal(FakeWebSocket.last.frames("refresh").length, 0);
  await client.close();
});

test("queued messages wait for a channel token function: re-subscribe frames first, then the flush", async () => {
  const { client, clock } = await connected();
  client.subscribe("session:abc", () => {}, { token: async () => { await new Promise((r) => setTimeout(r, 5)); return "chan-tok"; } });
  await new Promise((r) => setTimeout(r, 20));
  FakeWebSocket.last.serverClose(1006);
  const p = client.publish("session:abc", "typing", { n: 1 });
  p.catch(() => {});
  await clock.advance(1000);
  const ws = FakeWebSocket.last;
  ws.accept();
  const late = client.publish("session:abc", "typing", { n: 2 }); // while the token is being fetched
  late.catch(() => {});
  await new Promise((r) => setTimeout(r, 20));
  // The own channel's plain frame goes at once; the token frame, then the queued publishes.
  assert.deepEqual(ws.sent.map((f) => f.type), ["subscribe", "subscribe", "publish", "publish"]);
  assert.deepEqual(ws.sent[0].channels, [OWN]);
  assert.equal(ws.sent[1].token, "chan-tok");
  assert.deepEqual(ws.sent.slice(2).map((f) => f.data.n), [1, 2]);
  await client.close();
});
