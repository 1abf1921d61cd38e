// Unit tests of the pure parts: backoff caps and full jitter, the bounded offline queue,
// JWT expiry decoding.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Backoff, backoffCap, backoffDelay, OfflineQueue, jwtExpiryMs, looksLikeJwt } from "../../dist/index.js";
import { fakeJwt } from "../helpers.mjs";

test("backoff caps double from 1 s and stop at 30 s", () => {
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 10, 100, 5000].map((a) => backoffCap(a)),
    [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000, 30000],
  );
  assert.equal(backoffCap(3, 100, 500), 500);
});

test("full jitter: delay = random * cap, always within [0, cap]", () => {
  for (let attempt = 0; attempt < 12; attempt++) {
    const cap = backoffCap(attempt);
    assert.equal(backoffDelay(attempt, { random: () => 0 }), 0);
    assert.equal(backoffDelay(attempt, { random: () => 0.5 }), Math.floor(cap / 2));
    const hi = backoffDelay(attempt, { random: () => 0.999999 });
    assert.ok(hi <= cap && hi >= cap - 1, `attempt ${attempt}: ${hi} vs cap ${cap}`);
    for (let i = 0; i < 50; i++) {
      const d = backoffDelay(attempt);
      assert.ok(d >= 0 && d <= cap);
    }
  }
  // A broken random source is clamped, never a negative or oversized delay.
  assert.equal(backoffDelay(2, { random: () => -3 }), 0);
  assert.equal(backoffDelay(2, { random: () => 7 }), 4000);
  assert.equal(backoffDelay(2, { random: () => NaN }), 0);
});

test("Backoff counts attempts, grows, and resets", () => {
  const b = new Backoff({ random: () => 1, baseMs: 1000, maxMs: 30000 });
  assert.deepEqual([b.next(), b.next(), b.next(), b.next(), b.next(), b.next(), b.next()], [1000, 2000, 4000, 8000, 16000, 30000, 30000]);
  assert.equal(b.attempts, 7);
  b.reset();
  assert.equal(b.attempts, 0);
  assert.equal(b.next(), 1000);
});

function entry(item, log) {
  return { item, resolve: () => log.push(["ok", item]), reject: (e) => log.push([e.code, item]) };
}

test("offline queue dropOldest keeps the newest maxSize and rejects the dropped", () => {
  const log = [];
  const q = new OfflineQueue({ maxSize: 3 });
  assert.equal(q.policy, "dropOldest");
  for (let i = 1; i <= 5; i++) assert.equal(q.push(entry(i, log)), true);
  assert.equal(q.size, 3);
  assert.deepEqual(log, [["queue_overflow", 1], ["queue_overflow", 2]]);
  assert.deepEqual(q.drain().map((e) => e.item), [3, 4, 5]);
  assert.equal(q.size, 0);
});

test("offline queue policy error refuses the new message", () => {
  const log = [];
  const q = new OfflineQueue({ maxSize: 2, policy: "error" });
  q.push(entry("a", log));
  q.push(entry("b", log));
  assert.equal(q.push(entry("c", log)), false);
  assert.deepEqual(log, [["queue_full", "c"]]);
  assert.deepEqual(q.drain().map((e) => e.item), ["a", "b"]);
});

test("offline queue default bound is 1000 and never unbounded", () => {
  assert.equal(new OfflineQueue().maxSize, 1000);
  assert.throws(() => new OfflineQueue({ maxSize: 0 }), RangeError);
  assert.throws(() => new OfflineQueue({ maxSize: Infinity }), RangeError);
});

test("jwtExpiryMs reads exp without verifying; API keys have none", () => {
  const jwt = fakeJwt({ sub: "alice", exp: 1_900_000_000 });
  assert.ok(looksLikeJwt(jwt));
  assert.equal(jwtExpiryMs(jwt), 1_900_000_000_000);
  assert.equal(jwtExpiryMs("key-agent-1"), undefined);
  assert.equal(looksLikeJwt("tb_abc123"), false);
  assert.equal(jwtExpiryMs(fakeJwt({ sub: "x" })), undefined);
  assert.equal(jwtExpiryMs("a.b.c"), undefined);
});
