// Unit tests of start positions (the `positions` of subscribe answers) against the fake
// socket: the client learns where each joined channel stood, its own auto-joined channel
// included (one frame after `connected`, never awaited by connect()), and recovers from
// there after a reconnect; a start position is taken only where the client has none, is
// never moved by a later answer, and never drops a live event.

import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeWebSocket, connected, flush, settled } from "../helpers.mjs";

const AGENT = { principal: { kind: "agent", id: "a1" } };
const ev = (channel, event, data, extra = {}) => ({ type: "event", channel, event, data, id: `m-${Math.random()}`, ts: 1, ...extra });

/** Answers subscribe frame `f`: everything subscribed, with optional recovered and positions maps. */
function answer(ws, f, { recovered, positions } = {}) {
  ws.receive({
    type: "response",
    id: f.id,
    result: { subscribed: f.channels, rejected: [], ...(recovered ? { recovered } : {}), ...(positions ? { positions } : {}) },
  });
}

/** Drops the socket and accepts the next one with the same principal. */
async function reconnect(clock, accept = AGENT) {
  FakeWebSocket.last.serverClose(1006);
  await clock.advance(1000);
  FakeWebSocket.last.accept(accept);
  await flush();
  return FakeWebSocket.last;
}

test("the own channel: one subscribe frame after connected, its position recovers an event missed while away", async () => {
  const { client, clock, recovered } = await connected({ accept: AGENT });
  let ws = FakeWebSocket.last;
  // connect() resolved with the frame written and its answer still outstanding.
  assert.deepEqual(ws.sent.map((f) => [f.type, f.channels]), [["subscribe", ["agent:a1"]]]);
  assert.equal(ws.sent[0].recover, undefined);
  answer(ws, ws.sent[0], { positions: { "agent:a1": { offset: 5, epoch: "E" } } });
  await flush();
  const tasks = [];
  client.on("task:assigned", (data, frame) => tasks.push([data.id, frame.offset]));

  ws = await reconnect(clock);
  const subs = ws.frames("subscribe");
  assert.equal(subs.length, 1);
  assert.deepEqual(subs[0].channels, ["agent:a1"]);
  assert.deepEqual(subs[0].recover, { "agent:a1": { offset: 5, epoch: "E" } }, "recovers from where the channel stood at the join");
  // The replay (offsets grow but skip: they are not contiguous) comes before the answer.
  ws.receive(ev("agent:a1", "task:assigned", { id: "t1" }, { offset: 9, epoch: "E" }));
  answer(ws, subs[0], { recovered: { "agent:a1": true }, positions: { "agent:a1": { offset: 5, epoch: "E" } } });
  await flush();
  assert.deepEqual(tasks, [["t1", 9]]);
  assert.deepEqual(recovered, [{ channel: "agent:a1", recovered: true }]);

  // The event moved the position; the answer's (older) start position did not move it back.
  ws = await reconnect(clock);
  assert.deepEqual(ws.frames("subscribe")[0].recover, { "agent:a1": { offset: 9, epoch: "E" } });
  await client.close();
});

test("the own channel rides in the frame of the other channels: no extra frame", async () => {
  const { client } = await connected({ accept: AGENT });
  const ws = FakeWebSocket.last;
  client.subscribe("project:p1", () => {});
  await flush();
  // Subscribed while connected: its own frame (the own channel's went after connected).
  assert.deepEqual(ws.frames("subscribe").map((f) => f.channels), [["agent:a1"], ["project:p1"]]);
  await client.close();
});

test("a start position is taken only where the client has none and never moves one", async () => {
  const { client, clock } = await connected({ accept: AGENT });
  let ws = FakeWebSocket.last;
  const own = ws.frames("subscribe")[0];
  const got = [];
  client.subscribe("project:p1", (e) => got.push(e.offset));
  client.subscribe("project:p2", () => {});
  await flush();
  const f = ws.frames("subscribe")[1];
  // A live event on p1 overtakes the answer: the answer's position must not move it.
  ws.receive(ev("project:p1", "n", null, { offset: 12, epoch: "E" }));
  answer(ws, f, { positions: { "project:p1": { offset: 11, epoch: "E" }, "project:p2": { offset: 20, epoch: "E" } } });
  answer(ws, own, { positions: { "agent:a1": { offset: 3, epoch: "E" } } });
  await flush();
  ws = await reconnect(clock);
  const [re] = ws.frames("subscribe");
  assert.deepEqual(re.recover, {
    "project:p1": { offset: 12, epoch: "E" },
    "project:p2": { offset: 20, epoch: "E" },
    "agent:a1": { offset: 3, epoch: "E" },
  });
  answer(ws, re, {
    recovered: { "project:p1": true, "project:p2": true, "agent:a1": true },
    positions: { "project:p1": { offset: 30, epoch: "E" }, "project:p2": { offset: 30, epoch: "E" }, "agent:a1": { offset: 30, epoch: "E" } },
  });
  await flush();
  // The reconnect's answer reports newer start positions: they do not move the existing ones.
  ws = await reconnect(clock);
  assert.deepEqual(ws.frames("subscribe")[0].recover, re.recover, "existing positions are never moved by positions");
  assert.deepEqual(got, [12]);
  await client.close();
});

test("a start position never drops a live event; the first delivered event replaces it", async () => {
  const { client, clock } = await connected({ accept: AGENT });
  let ws = FakeWebSocket.last;
  const got = [];
  client.subscribe("session:abc", (e) => got.push(e.offset));
  await flush();
  answer(ws, ws.frames("subscribe").at(-1), { positions: { "session:abc": { offset: 10, epoch: "E" } } });
  await flush();
  // Live events at or below the start position (a store read racing the join) are delivered.
  ws.receive(ev("session:abc", "m", null, { offset: 10, epoch: "E" }));
  ws.receive(ev("session:abc", "m", null, { offset: 10, epoch: "E" })); // now a duplicate of a delivered one
  ws.receive(ev("session:abc", "m", null, { offset: 14, epoch: "E" }));
  assert.deepEqual(got, [10, 14]);
  ws = await reconnect(clock);
  assert.deepEqual(ws.frames("subscribe")[0].recover["session:abc"], { offset: 14, epoch: "E" });
  await client.close();
});

test("an unrecoverable position (recovered:false) gives way to the answer's start position", async () => {
  const { client, clock, recovered } = await connected({ accept: AGENT });
  let ws = FakeWebSocket.last;
  client.subscribe("project:p1", () => {});
  await flush();
  answer(ws, ws.frames("subscribe").at(-1));
  ws.receive(ev("project:p1", "n", null, { offset: 7, epoch: "OLD" }));
  // The node restarted: a new store, a new epoch.
  ws = await reconnect(clock);
  const [re] = ws.frames("subscribe");
  assert.deepEqual(re.recover, { "project:p1": { offset: 7, epoch: "OLD" } });
  answer(ws, re, {
    recovered: { "project:p1": false, "agent:a1": false },
    positions: { "project:p1": { offset: 0, epoch: "NEW" }, "agent:a1": { offset: 0, epoch: "NEW" } },
  });
  await flush();
  assert.deepEqual(recovered, [
    { channel: "project:p1", recovered: false },
    { channel: "agent:a1", recovered: false },
  ]);
  // A second drop before any event: recovered from the new store's start, not the lost one.
  ws = await reconnect(clock);
  assert.deepEqual(ws.frames("subscribe")[0].recover, { "project:p1": { offset: 0, epoch: "NEW" }, "agent:a1": { offset: 0, epoch: "NEW" } });
  await client.close();
});

test("recovered:false keeps a position an event set meanwhile", async () => {
  const { client, clock } = await connected({ accept: AGENT });
  let ws = FakeWebSocket.last;
  client.subscribe("project:p1", () => {});
  await flush();
  answer(ws, ws.frames("subscribe").at(-1));
  ws.receive(ev("project:p1", "n", null, { offset: 7, epoch: "OLD" }));
  ws = await reconnect(clock);
  const [re] = ws.frames("subscribe");
  ws.receive(ev("project:p1", "n", null, { offset: 3, epoch: "NEW" })); // live, before the answer
  answer(ws, re, { recovered: { "project:p1": false }, positions: { "project:p1": { offset: 2, epoch: "NEW" } } });
  await flush();
  ws = await reconnect(clock);
  assert.deepEqual(ws.frames("subscribe")[0].recover["project:p1"], { offset: 3, epoch: "NEW" });
  await client.close();
});

test("a channel left before its answer arrived is not brought back by its position", async () => {
  const { client, clock } = await connected({ accept: AGENT });
  let ws = FakeWebSocket.last;
  const s = client.subscribe("project:p1", () => {});
  await flush();
  const f = ws.frames("subscribe").at(-1);
  s.unsubscribe();
  answer(ws, f, { positions: { "project:p1": { offset: 4, epoch: "E" } } });
  await flush();
  ws = await reconnect(clock);
  assert.deepEqual(ws.frames("subscribe").map((x) => x.channels), [["agent:a1"]]);
  await client.close();
});

test("connect() does not wait for the own channel's answer", async () => {
  const { client } = await connected({ accept: AGENT });
  // `connected` resolved connect() although the subscribe frame is unanswered.
  assert.equal(client.state, "connected");
  assert.equal(await settled(client.connect()), true);
  await client.close();
});

test("another principal's positions are not used: the own channel changes with it", async () => {
  const { client, clock } = await connected({ accept: AGENT });
  let ws = FakeWebSocket.last;
  answer(ws, ws.frames("subscribe")[0], { positions: { "agent:a1": { offset: 5, epoch: "E" } } });
  await flush();
  ws = await reconnect(clock, { principal: { kind: "agent", id: "a2" } });
  const [f] = ws.frames("subscribe");
  assert.deepEqual(f.channels, ["agent:a2"]);
  assert.equal(f.recover, undefined);
  await client.close();
});
