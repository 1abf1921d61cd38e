// Contract §11, what a node sends that socket.io-client must be able to read: on a
// graceful drain (SIGTERM) its clients get an Engine.IO close — socket.io-client's
// "transport close", after which it reconnects on its own — never a packet its parser
// refuses ("parse error") nor a namespace disconnect ("io server disconnect", after which
// it does not reconnect); and events whose names socket.io-client reserves for itself
// (connect, disconnect, disconnecting, …), published by a backend, never reach it.
// Embedded nodes (no NATS/Redis needed), one per drain.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as h from "./helpers.mjs";

const skip = h.skipReason();
const DRAIN = { GATEWAY_DRAIN__DELAY_MS: "100", GATEWAY_DRAIN__PERIOD_MS: "300", GATEWAY_DRAIN__DEADLINE_MS: "3000" };
let node;

before(async () => {
  if (skip) return;
  node = await h.startNode();
});
after(h.cleanup);

test("events named like socket.io-client's reserved events are not delivered, and do not break the client", { skip }, async () => {
  const ws = await h.userSocket(node, "/portal", "lc-u1", { transports: ["websocket"] });
  const poll = await h.userSocket(node, "/portal", "lc-u1", { transports: ["polling"] });
  for (const name of ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"]) {
    const r = await fetch(`${node.http}/api/publish`, {
      method: "POST",
      headers: { Authorization: `Bearer ${h.ADMIN}`, "Content-Type": "application/json" },
      body: JSON.stringify({ channel: "user:lc-u1", event: name, data: { x: 1 } }),
    });
    await r.body?.cancel();
    assert.ok([202, 400, 403].includes(r.status), `${name}: ${r.status}`);
  }
  await node.publish("user:lc-u1", "notification", { after: true });
  for (const s of [ws, poll]) {
    await s.wait("notification");
    assert.ok(s.connected, `disconnected: ${s.disconnects}`);
    assert.deepEqual(s.disconnects, []);
    assert.deepEqual(
      s.log.map((e) => e.event),
      ["notification"],
    );
  }
});

for (const transports of [["websocket"], ["polling"], ["polling", "websocket"]]) {
  test(`SIGTERM: a ${transports.join("+")} client sees an Engine.IO close ("transport close") and starts reconnecting`, { skip }, async () => {
    const n = await h.startNode({ env: DRAIN });
    const s = h.sio(n.url, "/portal", { auth: { token: h.userToken("lc-u2") }, transports, reconnection: true, reconnectionDelay: 200, reconnectionAttempts: 3 });
    await h.connected(s);
    await s.ask("join_project", { project_name: "lc-p1" });
    const attempts = [];
    s.io.on("reconnect_attempt", (k) => attempts.push(k));
    n.sigterm();
    const reason = await h.disconnected(s, 5000);
    await h.waitFor(() => attempts.length >= 1, 3000, "a reconnect attempt");
    s.io.reconnection(false);
    assert.equal(reason, "transport close", `disconnect reason ${reason}; events before it: ${s.log.map((e) => e.event)}`);
    await h.within(n.proc.exited, 5000, "node exit");
  });
}

test("/api/disconnect of a user: the server leaves its namespaces (`io server disconnect`), the client does not reconnect", { skip }, async () => {
  const n = await h.startNode();
  const s = h.sio(n.url, "/portal", { auth: { token: h.userToken("lc-kick") }, transports: ["websocket"], reconnection: true, reconnectionDelay: 100 });
  await h.connected(s);
  const gone = h.disconnected(s);
  const r = await fetch(`${n.http}/api/disconnect`, {
    method: "POST",
    headers: { Authorization: `Bearer ${h.ADMIN}`, "Content-Type": "application/json" },
    body: JSON.stringify({ kind: "user", id: "lc-kick", reason: "kicked" }),
  });
  await r.body?.cancel();
  assert.equal(r.status, 202);
  assert.equal(await gone, "io server disconnect", `events before it: ${s.log.map((e) => e.event)}`);
  await h.sleep(500);
  assert.equal(s.connected, false, "no reconnect after a server-side namespace disconnect");
});

test("an expired token: the server leaves the namespace (`io server disconnect`)", { skip }, async () => {
  const n = await h.startNode();
  const now = Math.floor(Date.now() / 1000);
  const s = h.sio(n.url, "/portal", { auth: { token: h.jwt({ sub: "lc-exp", iat: now, exp: now + 2, projects: ["*"] }) }, transports: ["websocket"] });
  await h.connected(s);
  const reason = await h.disconnected(s, 6000);
  assert.equal(reason, "io server disconnect", `events before it: ${s.log.map((e) => e.event)}`);
});

test("rate.strikes_to_close limited events in a row: the server leaves the namespace (`io server disconnect`)", { skip }, async () => {
  const n = await h.startNode({ env: { GATEWAY_RATE__PER_SECOND: "1", GATEWAY_RATE__BURST: "1", GATEWAY_RATE__STRIKES_TO_CLOSE: "3" } });
  const s = h.sio(n.url, "/portal", { auth: { token: h.userToken("lc-spam") }, transports: ["websocket"] });
  await h.connected(s);
  const gone = h.disconnected(s, 5000);
  for (let i = 0; i < 10; i++) s.emit("status:update", { i });
  const reason = await gone;
  assert.equal(reason, "io server disconnect", `events before it: ${s.log.map((e) => e.event)}`);
  assert.ok(s.got("rate_limited").length >= 1, `events: ${s.log.map((e) => e.event)}`);
});
