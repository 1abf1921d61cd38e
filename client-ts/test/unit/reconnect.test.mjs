// Unit tests of the connection lifecycle against the fake socket: states, backoff with
// injected random, retry limit, close-code awareness, refused handshakes, credentials.

import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeWebSocket, FakeClock, connected, makeClient, flush, fakeJwt } from "../helpers.mjs";

test("states idle → connecting → connected → reconnecting → connected; node and connectionId exposed", async () => {
  const { client, clock, states } = makeClient();
  assert.equal(client.state, "idle");
  const p = client.connect();
  await flush();
  assert.equal(client.state, "connecting");
  const ws = FakeWebSocket.last;
  assert.equal(ws.protocols, "gateway.v1.json");
  assert.equal(ws.url.searchParams.get("token"), "key-agent-1");
  ws.accept({ node: "node-a", connectionId: "abc" });
  await p;
  assert.equal(client.state, "connected");
  assert.equal(client.node, "node-a");
  assert.equal(client.connectionId, "abc");
  assert.deepEqual(client.principal, { kind: "user", id: "u1" });
  ws.serverClose(1006);
  assert.equal(client.state, "reconnecting");
  await clock.advance(1000);
  FakeWebSocket.last.accept({ node: "node-b" });
  await flush();
  assert.equal(client.node, "node-b");
  assert.deepEqual(states, ["connecting", "connected", "reconnecting", "connected"]);
  await client.close();
  assert.equal(client.state, "closed");
});

test("reconnect delays follow full jitter with the injected random, doubling to the 30 s cap", async () => {
  const { client, clock } = await connected({ random: () => 0.5 });
  const delays = [];
  client.on("state", (s, info) => s === "reconnecting" && delays.push(info.delayMs));
  FakeWebSocket.last.serverClose(1006);
  for (let i = 0; i < 7; i++) {
    const before = FakeWebSocket.instances.length;
    const d = delays[delays.length - 1];
    await clock.advance(d - 1);
    assert.equal(FakeWebSocket.instances.length, before, "no attempt before the delay");
    await clock.advance(1);
    assert.equal(FakeWebSocket.instances.length, before + 1, "attempt after the delay");
    FakeWebSocket.last.fail();
    await flush();
  }
  assert.deepEqual(delays.slice(0, 8), [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]);
  await client.close();
});

test("the backoff resets once a connection stayed up (stableMs), not after a flap", async () => {
  const { client, clock } = await connected({ random: () => 1, reconnect: { stableMs: 5000 } });
  const delays = [];
  client.on("state", (s, info) => s === "reconnecting" && delays.push(info.delayMs));
  FakeWebSocket.last.serverClose(1006);
  await clock.advance(1000);
  FakeWebSocket.last.accept(); // up, but drops after 1 s: no reset
  await clock.advance(1000);
  FakeWebSocket.last.serverClose(1006);
  await clock.advance(2000);
  FakeWebSocket.last.accept(); // stays up 6 s: reset
  await clock.advance(6000);
  FakeWebSocket.last.serverClose(1001);
  assert.deepEqual(delays, [1000, 2000, 1000]);
  await client.close();
});

test("maxRetries: gives up after that many failed attempts with retries_exhausted", async () => {
  const { client, clock, errors } = makeClient({ reconnect: { maxRetries: 3 } });
  const p = client.connect();
  p.catch(() => {});
  for (let i = 0; i < 4; i++) {
    await flush();
    FakeWebSocket.last.fail();
    await clock.advance(60_000);
  }
  await assert.rejects(p, { code: "retries_exhausted" });
  assert.equal(FakeWebSocket.instances.length, 4, "first attempt + 3 retries");
  assert.equal(client.state, "closed");
  assert.equal(errors.at(-1).code, "retries_exhausted");
  await clock.advance(600_000);
  assert.equal(FakeWebSocket.instances.length, 4);
});

for (const [code, name] of [[4001, "unauthorized"], [4003, "forbidden"], [4010, "kicked"]]) {
  test(`no reconnect after close ${code}`, async () => {
    const { client, clock, errors, states } = await connected();
    FakeWebSocket.last.serverClose(code, "bye");
    assert.equal(client.state, "closed");
    assert.equal(errors.length, 1);
    assert.equal(errors[0].code, name);
    assert.equal(errors[0].closeCode, code);
    await clock.advance(120_000);
    assert.equal(FakeWebSocket.instances.length, 1);
    assert.deepEqual(states, ["connecting", "connected", "closed"]);
  });
}

for (const code of [1006, 1001, 4009, 1011, 4002, 1000, 4004]) {
  test(`reconnects after close ${code}`, async () => {
    const { client, clock } = await connected();
    FakeWebSocket.last.serverClose(code);
    assert.equal(client.state, "reconnecting");
    await clock.advance(1000);
    assert.equal(FakeWebSocket.instances.length, 2);
    FakeWebSocket.last.accept();
    await flush();
    assert.equal(client.state, "connected");
    await client.close();
  });
}

test("disconnecting{reconnect:false} stops; disconnecting{reconnect:true} reconnects", async () => {
  {
    const { client, clock, errors } = await connected();
    FakeWebSocket.last.receive({ type: "disconnecting", reason: "rate_limited", reconnect: false });
    FakeWebSocket.last.serverClose(4008);
    assert.equal(client.state, "closed");
    assert.equal(errors[0].code, "rate_limited");
    await clock.advance(60_000);
    assert.equal(FakeWebSocket.instances.length, 1);
  }
  {
    const { client, clock } = await connected();
    FakeWebSocket.last.receive({ type: "disconnecting", reason: "shutdown", reconnect: true });
    FakeWebSocket.last.serverClose(1001);
    assert.equal(client.state, "reconnecting");
    await clock.advance(1000);
    assert.equal(FakeWebSocket.instances.length, 2);
    await client.close();
  }
});

test("reconnect: false closes on the first drop", async () => {
  const { client, errors } = await connected({ reconnect: false });
  FakeWebSocket.last.serverClose(1006);
  assert.equal(client.state, "closed");
  assert.equal(errors[0].closeCode, 1006);
});

test("a handshake refused with 401 (status visible, as with ws) stops without a loop", async () => {
  const { client, clock, errors } = makeClient();
  const p = client.connect();
  p.catch(() => {});
  await flush();
  FakeWebSocket.last.refuse(401, { code: "unauthorized", message: "invalid credentials: unknown key" });
  await flush();
  await assert.rejects(p, (e) => e.code === "unauthorized" && e.status === 401 && /unknown key/.test(e.message));
  assert.equal(client.state, "closed");
  assert.equal(errors.length, 1);
  await clock.advance(120_000);
  assert.equal(FakeWebSocket.instances.length, 1);
});

test("a handshake refused with 503 or 429 is retried with backoff", async () => {
  const { client, clock, states } = makeClient();
  const p = client.connect();
  await flush();
  FakeWebSocket.last.refuse(503, { code: "unavailable", message: "node is draining; reconnect" });
  await flush();
  assert.equal(client.state, "reconnecting");
  await clock.advance(1000);
  FakeWebSocket.last.refuse(429, { code: "limit_exceeded", message: "too many" });
  await flush();
  await clock.advance(2000);
  FakeWebSocket.last.accept();
  await p;
  assert.deepEqual(states, ["connecting", "reconnecting", "reconnecting", "connected"]);
  await client.close();
});

test("getToken is called before every (re)connect and its token used", async () => {
  let n = 0;
  const { client, clock } = makeClient({ token: undefined, getToken: async () => `key-${++n}` });
  const p = client.connect();
  await flush();
  assert.equal(FakeWebSocket.last.url.searchParams.get("token"), "key-1");
  FakeWebSocket.last.accept();
  await p;
  FakeWebSocket.last.serverClose(1006);
  await clock.advance(1000);
  assert.equal(FakeWebSocket.last.url.searchParams.get("token"), "key-2");
  FakeWebSocket.last.fail();
  await clock.advance(2000);
  assert.equal(FakeWebSocket.last.url.searchParams.get("token"), "key-3");
  assert.equal(n, 3);
  await client.close();
});

test("a getToken that throws is reported and retried", async () => {
  let n = 0;
  const { client, clock, errors } = makeClient({
    token: undefined,
    getToken: () => {
      if (++n === 1) throw new Error("auth server down");
      return "k";
    },
  });
  const p = client.connect();
  await flush();
  assert.equal(errors[0].code, "token_error");
  assert.equal(client.state, "reconnecting");
  await clock.advance(1000);
  FakeWebSocket.last.accept();
  await p;
  await client.close();
});

test("an expired static JWT is not even tried", async () => {
  const clock = new FakeClock();
  const token = fakeJwt({ sub: "alice", exp: Math.floor(clock.now() / 1000) - 10 });
  const { client } = makeClient({ clock, token });
  await assert.rejects(client.connect(), { code: "token_expired" });
  assert.equal(FakeWebSocket.instances.length, 0);
});

test("auth: 'authenticate' keeps the token out of the URL and sends it in band", async () => {
  const { client } = makeClient({ auth: "authenticate" });
  const p = client.connect();
  await flush();
  const ws = FakeWebSocket.last;
  assert.equal(ws.url.searchParams.get("token"), null);
  ws.open();
  assert.deepEqual(ws.sent, [{ type: "authenticate", token: "key-agent-1" }]);
  ws.receive({ type: "connected", connectionId: "c", principal: { kind: "agent", id: "a1" }, node: "n", heartbeatMs: 30000 });
  await p;
  await client.close();
});

test("auth: 'header' passes Authorization to the ws constructor", async () => {
  const { client } = makeClient({ auth: "header" });
  client.connect().catch(() => {});
  await flush();
  assert.deepEqual(FakeWebSocket.last.options, { headers: { Authorization: "Bearer key-agent-1" } });
  assert.equal(FakeWebSocket.last.url.search, "");
  await client.close();
});

test("close() during a backoff wait stops for good", async () => {
  const { client, clock } = await connected();
  FakeWebSocket.last.serverClose(1006);
  await client.close();
  await clock.advance(60_000);
  assert.equal(FakeWebSocket.instances.length, 1);
  assert.equal(client.state, "closed");
});

test("connect() again after a terminal close starts over", async () => {
  const { client } = await connected();
  FakeWebSocket.last.serverClose(4001);
  assert.equal(client.state, "closed");
  const p = client.connect();
  await flush();
  FakeWebSocket.last.accept();
  await p;
  assert.equal(client.state, "connected");
  await client.close();
});

test("a quiet connection is pinged and dropped (then reconnected) when nothing answers", async () => {
  const { client, clock } = await connected({ heartbeat: { intervalMs: 1000, timeoutMs: 500 } });
  const ws = FakeWebSocket.last;
  await clock.advance(1000);
  assert.deepEqual(ws.frames("ping"), [{ type: "ping" }]);
  ws.receive({ type: "pong", ts: 1 });
  await clock.advance(600);
  assert.equal(client.state, "connected");
  await clock.advance(1000);
  assert.equal(ws.frames("ping").length, 2);
  await clock.advance(500); // no pong
  assert.equal(client.state, "reconnecting");
  await clock.advance(1000);
  assert.equal(FakeWebSocket.instances.length, 2);
  await client.close();
});
