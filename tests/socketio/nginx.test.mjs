// Contract §11 behind the shipped load balancer: deploy/local-cluster.sh (as the Rust
// drain test runs it) starts NATS, Redis, three gateway nodes and nginx with
// deploy/nginx/nginx.conf. Long-polling needs affinity (every request of an Engine.IO
// session must reach the node that holds it): polling-only clients from distinct
// loopback source addresses, spread over the nodes by the balancer, join, receive events
// published on another node, chat, and survive many poll/heartbeat round trips. Then a
// graceful drain: SIGTERM to the busiest node; its Socket.IO clients get an Engine.IO
// close (not a namespace disconnect, which would stop socket.io-client from
// reconnecting), reconnect through nginx to the other nodes and re-join.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as h from "./helpers.mjs";

const skip = h.skipReason(["nginx"]);
let cluster;

before(async () => {
  if (skip) return;
  cluster = await h.startLocalCluster(3, {
    GATEWAY_SOCKETIO__PING_INTERVAL_MS: "400",
    GATEWAY_SOCKETIO__PING_TIMEOUT_MS: "3000",
    GATEWAY_DRAIN__DELAY_MS: "300",
    GATEWAY_DRAIN__PERIOD_MS: "1000",
    GATEWAY_DRAIN__DEADLINE_MS: "6000",
    GATEWAY_PRESENCE__LEASE_MS: "3000",
    GATEWAY_PRESENCE__REFRESH_MS: "500",
  });
});
after(h.cleanup);

/** Engine.IO connections per node (websocket + polling), from each node's /health. */
async function perNode(nodes = cluster.nodes) {
  return Promise.all(
    nodes.map(async (n) => {
      const c = await h.sioCounts(n);
      return (c?.websocket ?? 0) + (c?.polling ?? 0);
    }),
  );
}

/** A distinct loopback source address per client, so `hash $remote_addr` spreads them. */
const addr = (block, i) => `127.0.${block}.${10 + i}`;

test("long-polling behind nginx: affinity keeps each session on its node; join, events, chat and heartbeats across 3 nodes", { skip, timeout: 90_000 }, async () => {
  const N = 18;
  const P = "lb-p1";
  const clients = await h.pool(
    Array.from({ length: N }, (_, i) => i),
    6,
    (i) => h.portalIn({ url: cluster.lbUrl }, `lb-u${i}`, P, { transports: ["polling"], localAddress: addr(2, i) }),
  );
  let counts;
  await h.waitFor(
    async () => (counts = await perNode()).reduce((a, b) => a + b, 0) === N,
    5000,
    () => `${N} Engine.IO connections over the nodes (have ${counts})`,
  );
  assert.ok(counts.filter((c) => c > 0).length >= 2, `the balancer spread the clients: ${counts}`);

  // An event published on node 1 reaches every client, whichever node holds it.
  await cluster.nodes[0].publish(`project:${P}`, "task_update", { n: 1 });
  await h.pool(clients, N, (s) => s.wait("task_update", (d) => d.n === 1));

  // Many poll round trips (heartbeats every 400 ms): nobody drops, nobody errs.
  await h.sleep(2500);
  for (const s of clients) {
    assert.ok(s.connected, `client disconnected: ${s.disconnects}`);
    assert.deepEqual(s.disconnects, []);
    assert.equal(s.io.engine.transport.name, "polling");
  }
  await cluster.nodes[2].publish(`project:${P}`, "task_update", { n: 2 });
  await h.pool(clients, N, (s) => s.wait("task_update", (d) => d.n === 2));

  // Chat among polling clients on different nodes.
  const chat = await h.pool(
    Array.from({ length: 6 }, (_, i) => i),
    6,
    (i) => h.userSocket({ url: cluster.lbUrl }, "/chat/lb-c1", `lb-c${i}`, { transports: ["polling"], localAddress: addr(4, i) }),
  );
  chat[0].emit("send_message", { content: "through nginx", type: "message" });
  await h.pool(chat, 6, (s) => s.wait("message_received", (m) => m.content === "through nginx"));
  chat[3].emit("typing_start", {});
  await h.pool([0, 1, 2, 4, 5], 5, (i) => chat[i].wait("typing_start", (t) => t.user_id === "lb-c3"));

  // Presence through the balancer: a newcomer is announced to everyone once.
  const late = await h.portalIn({ url: cluster.lbUrl }, "lb-late", P, { transports: ["polling"], localAddress: addr(5, 0) });
  await h.pool(clients, N, (s) => s.wait("user_joined", (d) => d.user_id === "lb-late"));
  late.disconnect();
  await h.pool(clients, N, (s) => s.wait("user_left", (d) => d.user_id === "lb-late"));

  for (const s of [...clients, ...chat]) s.disconnect();
  await h.waitFor(async () => (await perNode()).every((c) => c === 0), 5000, "every connection closed");
});

test("graceful drain behind nginx: the drained node's clients reconnect to the others and re-join; the rest are undisturbed", { skip, timeout: 90_000 }, async (t) => {
  const P = "lb-p2";
  const opts = (i, transports) => ({
    auth: { token: h.userToken(`lb-d${i}`) },
    transports,
    localAddress: addr(6, i),
    reconnection: true,
    reconnectionDelay: 200,
    reconnectionDelayMax: 1000,
    randomizationFactor: 0.5,
    reconnectionAttempts: 30,
  });
  const specs = [
    ...Array.from({ length: 14 }, (_, i) => [i, ["websocket"]]),
    ...Array.from({ length: 4 }, (_, i) => [14 + i, ["polling", "websocket"]]),
    ...Array.from({ length: 4 }, (_, i) => [18 + i, ["polling"]]),
  ];
  const clients = specs.map(([i, transports]) => {
    const s = h.sio(cluster.lbUrl, "/portal", opts(i, transports));
    s.transports = transports;
    // As a portal page does: (re-)join on every connect.
    s.on("connect", () => s.emit("join_project", { project_name: P }));
    return s;
  });
  await h.waitFor(() => clients.every((s) => s.got("joined_project").length >= 1), 20_000, () => `every client joined (${clients.filter((s) => s.got("joined_project").length).length}/${clients.length})`);
  let counts;
  await h.waitFor(async () => (counts = await perNode()).reduce((a, b) => a + b, 0) === clients.length, 5000, () => `counts ${counts}`);
  const victim = counts.indexOf(Math.max(...counts));
  const drained = cluster.nodes[victim];
  const survivors = cluster.nodes.filter((_, i) => i !== victim);
  assert.ok(counts[victim] > 0, `${counts}`);
  const onVictim = counts[victim];

  drained.sigterm();
  const t0 = Date.now();
  // The node exits within its drain deadline.
  await h.waitFor(() => !drained.alive(), 12_000, `${drained.id} to exit after SIGTERM`);
  const exitedAfter = Date.now() - t0;

  // Exactly its clients were cut, by the transport (so socket.io-client reconnects).
  await h.waitFor(() => clients.filter((s) => s.disconnects.length > 0).length >= onVictim, 5000, "the drained node's clients to see the close");
  const moved = clients.filter((s) => s.disconnects.length > 0);
  assert.equal(moved.length, onVictim, `clients cut: ${moved.length}, on the drained node: ${onVictim} (counts ${counts})`);
  // Checked at the end, so the reconnect below is exercised whatever the reason was.
  // A polling request cut by the node's exit may end the session as a "transport error";
  // both reasons make socket.io-client reconnect. "io server disconnect" would not, and
  // "parse error" means the client could not read what the server sent.
  const badReasons = moved
    .filter((s) => !(s.disconnects[0] === "transport close" || (s.transports[0] === "polling" && s.disconnects[0] === "transport error")))
    .map((s) => `${s.transports}: ${s.disconnects[0]}`);

  // They reconnect through nginx and re-join.
  await h.waitFor(
    () => moved.every((s) => s.connected && s.got("joined_project").length >= 2),
    20_000,
    () => `moved clients re-joined (${moved.filter((s) => s.got("joined_project").length >= 2).length}/${moved.length}; errors ${moved.flatMap((s) => s.errors.map((e) => e.message)).slice(0, 5)})`,
  );
  let now;
  await h.waitFor(
    async () => (now = await perNode(survivors)).reduce((a, b) => a + b, 0) === clients.length,
    10_000,
    () => `all ${clients.length} on the surviving nodes (have ${now})`,
  );
  // The others were not disturbed.
  for (const s of clients.filter((c) => !moved.includes(c))) {
    assert.deepEqual(s.disconnects, []);
    assert.equal(s.got("joined_project").length, 1);
  }
  // Everyone gets the next event.
  await survivors[0].publish(`project:${P}`, "state_change", { new_state: "AFTER_DRAIN" });
  await h.pool(clients, clients.length, (s) => s.wait("state_change", (d) => d.new_state === "AFTER_DRAIN", 10_000));
  // The re-joined clients see the state in joined_project, from the channel's history.
  const rejoin = await moved[0].ask("join_project", { project_name: P });
  assert.equal(rejoin.current_state, "AFTER_DRAIN", JSON.stringify(rejoin));
  t.diagnostic(`drain: ${onVictim} of ${clients.length} clients on ${drained.id} (counts ${counts}); node exited ${exitedAfter} ms after SIGTERM; now ${now}`);
  assert.deepEqual(badReasons, [], "each drained client sees an Engine.IO close, not a parse error or a namespace disconnect");
});
