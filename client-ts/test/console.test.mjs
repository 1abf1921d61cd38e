// The console (GET /console) in headless Chromium (Debian's /usr/bin/chromium, env
// CHROMIUM to override) driven by playwright-core, against the gateway binary (env
// GATEWAY_BIN, default ../target/debug/gateway): the form, connecting and subscribing,
// the live log (escaped), presence, publishing (acked and refused), /health, and a node
// restart with events published while the page is away. Every wait is bounded; the
// browser and the nodes are stopped in `after`. CONSOLE_SCREENSHOT=<file> keeps the
// screenshot taken after the reconnect (otherwise it goes to a temp file, removed).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { GatewayClient } from "../dist/index.js";
import { freePort, jwt, startGateway, waitFor, within } from "./gateway-process.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.GATEWAY_BIN ?? resolve(here, "../../target/debug/gateway");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SECRET = "console-test-secret-0123456789abcdef";
const ADMIN = "console-admin-key";
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"];
const SHOT = process.env.CONSOLE_SCREENSHOT ?? join(tmpdir(), `gateway-console-${process.pid}.png`);
const missing = [!existsSync(BIN) && `gateway binary not found at ${BIN} (set GATEWAY_BIN)`, !existsSync(CHROMIUM) && `no Chromium at ${CHROMIUM} (scripts/install-deps.sh installs it)`].filter(Boolean);
// Under CI a missing browser or binary is a failure, not a skip.
const skip = missing.length && !process.env.CI ? missing.join("; ") : false;

let port;
let node;
let browser;
let context;
let page;
const pageErrors = [];
const consoleErrors = [];
const others = [];
const requests = [];

const nowS = () => Math.floor(Date.now() / 1000);
const token = (sub) => jwt(SECRET, { sub, exp: nowS() + 3600, projects: ["p1"], roles: [] });
const base = () => `http://127.0.0.1:${port}`;

function start(nodeId) {
  return startGateway(BIN, port, {
    GATEWAY_NODE_ID: nodeId,
    GATEWAY_JWT_SECRET: SECRET,
    GATEWAY_ADMIN_KEY: ADMIN,
    // Every test client comes from 127.0.0.1: no per-address handshake rate.
    GATEWAY_LIMITS__HANDSHAKES_PER_IP_PER_SEC: "0",
    // Session channels without channel tokens, so the page can publish on one.
    GATEWAY_CHANNELS__SESSION_POLICY: "authenticated",
    GATEWAY_DRAIN__DELAY_MS: "0",
    GATEWAY_DRAIN__PERIOD_MS: "200",
  });
}

async function publishHttp(channel, event, data) {
  const r = await fetch(`${base()}/api/publish`, {
    method: "POST",
    headers: { Authorization: `Bearer ${ADMIN}`, "Content-Type": "application/json" },
    body: JSON.stringify({ channel, event, data }),
  });
  const text = await r.text();
  assert.equal(r.status, 202, `publish: ${r.status} ${text}`);
  return JSON.parse(text);
}

/** The log as the page shows it, newest first. */
function rows() {
  return page.$$eval("#log-body tr", (trs) =>
    trs.map((tr) => ({ kind: tr.dataset.kind, channel: tr.dataset.channel, event: tr.dataset.event, id: tr.dataset.id, text: tr.textContent })),
  );
}

const text = (sel) => page.locator(sel).textContent({ timeout: 5000 });
const waitSel = (sel, ms = 15_000) => page.waitForSelector(sel, { timeout: ms, state: "attached" });

before(async () => {
  if (skip) return;
  assert.deepEqual(missing, [], missing.join("; "));
  port = await freePort();
  node = await start("console-1");
  const { chromium } = await import("playwright-core");
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS, timeout: 30_000 });
  context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(15_000);
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
  page.on("request", (r) => requests.push(r.url()));
  page.on("websocket", (ws) => requests.push(ws.url()));
});

after(async () => {
  await Promise.allSettled(others.map((c) => within(c.close(), 3000, "client close")));
  if (browser) await within(browser.close(), 10_000, "browser close").catch(() => {});
  if (node) await node.stop().catch(() => node.proc.kill("SIGKILL"));
  if (!process.env.CONSOLE_SCREENSHOT) rmSync(SHOT, { force: true });
});

test("served from the binary with a strict Content-Security-Policy", { skip, timeout: 20_000 }, async () => {
  const r = await fetch(`${base()}/console`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type"), /^text\/html/);
  const csp = r.headers.get("content-security-policy");
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self';/);
  assert.match(csp, /style-src 'self';/);
  assert.match(csp, new RegExp(`connect-src 'self' ws://127\\.0\\.0\\.1:${port} wss://127\\.0\\.0\\.1:${port};`));
  assert.doesNotMatch(csp, /unsafe|\*/);
  assert.equal(r.headers.get("x-content-type-options"), "nosniff");
  assert.equal(r.headers.get("referrer-policy"), "no-referrer");
  const html = await r.text();
  assert.match(html, /<meta name="gateway-ws-path" content="\/ws">/);
  const js = await fetch(`${base()}/console/app/main.js`);
  assert.equal(js.status, 200);
  assert.match(js.headers.get("content-type"), /^text\/javascript/);
  assert.equal((await fetch(`${base()}/console/src/client.js`)).status, 200);
  assert.equal((await fetch(`${base()}/console/nope.js`)).status, 404);
});

test("without a token: the form; submitting it connects and subscribes", { skip, timeout: 30_000 }, async () => {
  await page.goto(`${base()}/console`, { timeout: 10_000 });
  await page.waitForSelector("#connect-form", { state: "visible" });
  assert.equal(await page.locator("#state").isVisible(), false);
  assert.equal(await page.inputValue("#f-url"), `ws://127.0.0.1:${port}/ws`);
  await page.fill("#f-token", token("console-user"));
  await page.fill("#f-channels", "project:p1, session:s1");
  await Promise.all([page.waitForURL(/\/console\?/, { timeout: 10_000 }), page.click("#connect-form button[type=submit]")]);
  await waitSel('#state[data-state="connected"]');
  assert.equal(await text("#node"), "console-1");
  assert.equal(await text("#principal"), "user:console-user");
  assert.doesNotMatch(page.url(), /token=/, "the token is taken out of the address bar");
  await waitSel('#channels li[data-channel="project:p1"][data-status="subscribed"]');
  await waitSel('#channels li[data-channel="session:s1"][data-status="subscribed"]');
  // /health of the serving node, polled.
  await waitSel('#health-status[data-status="ok"]');
  assert.match(await text("#health-details"), /console-1/);
});

test("live log: an HTTP-published event appears at the top, its data escaped", { skip, timeout: 20_000 }, async () => {
  const evil = "<img src=x id=injected onerror=\"document.title='pwned'\"><b>bold</b>";
  const { id } = await publishHttp("project:p1", "task.created", { title: evil, n: 1 });
  await waitSel(`#log-body tr[data-id="${id}"]`);
  const [top] = (await rows()).filter((r) => r.kind !== "notice");
  assert.equal(top.id, id);
  assert.equal(top.channel, "project:p1");
  assert.equal(top.event, "task.created");
  assert.ok(top.text.includes(evil.replaceAll('"', '\\"')), `shown as text: ${top.text}`);
  assert.equal(await page.locator("#log-body img, #injected").count(), 0, "no markup from event data");
  assert.notEqual(await page.title(), "pwned");
});

test("presence of the selected channel follows joins and leaves", { skip, timeout: 20_000 }, async () => {
  assert.equal(await page.inputValue("#presence-channel"), "project:p1");
  await waitSel('#presence-members li[data-id="console-user"]');
  const bob = new GatewayClient({ url: `ws://127.0.0.1:${port}/ws`, token: token("bob"), WebSocket, reconnect: false });
  others.push(bob);
  await within(bob.connect(), 5000, "bob connects");
  await within(bob.subscribe("project:p1", () => {}).ready, 5000, "bob subscribes");
  await waitSel('#presence-members li[data-id="bob"]');
  await within(bob.close(), 3000, "bob closes");
  await page.waitForSelector('#presence-members li[data-id="bob"]', { state: "detached", timeout: 10_000 });
  assert.equal(await page.locator('#presence-members li[data-id="console-user"]').count(), 1);
});

test("publish form: acked where allowed, the server's error where not", { skip, timeout: 20_000 }, async () => {
  const publish = async (channel, event, data) => {
    await page.fill("#publish-form [name=channel]", channel);
    await page.fill("#publish-form [name=event]", event);
    await page.fill("#publish-form [name=data]", data);
    await page.click("#publish-form button[type=submit]");
  };
  await publish("session:s1", "note", '{"text":"from the console"}');
  await waitSel('#publish-result[data-outcome="ok"]');
  await waitSel('#log-body tr[data-channel="session:s1"][data-event="note"]');
  assert.match(await text('#log-body tr[data-event="note"]'), /from user:console-user/);
  // Clients may publish only in `channels.publish` namespaces (session by default).
  await publish("project:p1", "note", "{}");
  await waitSel('#publish-result[data-outcome="error"]');
  assert.match(await text("#publish-result"), /^forbidden: /);
  await publish("session:s1", "note", "{not json");
  await waitSel('#publish-result[data-outcome="error"]');
  assert.match(await text("#publish-result"), /data is not JSON/);
});

test("node restart: the page reconnects to the new node and shows what it missed", { skip, timeout: 90_000 }, async (t) => {
  const before = await publishHttp("project:p1", "task.created", { phase: "before" });
  await waitSel(`#log-body tr[data-id="${before.id}"]`);

  await node.stop(); // SIGTERM: drain, `disconnecting{reconnect:true}`, close 1001
  await waitSel('#state[data-state="reconnecting"]');
  // While no node runs nothing is accepted, so there is nothing to recover.
  await assert.rejects(fetch(`${base()}/api/publish`, { method: "POST" }));
  // Keep the page away while the new node starts and takes the "missed" events.
  await context.setOffline(true);
  node = await start("console-2");
  const missed = [];
  for (let i = 1; i <= 3; i++) missed.push(await publishHttp("project:p1", "task.created", { phase: "missed", i }));
  await waitSel('#health-status[data-status="unreachable"]', 8000); // polled; offline here
  // The page keeps trying (the attempt count grows) and keeps failing while offline.
  const attempt = async () => Number(/attempt (\d+)/.exec(await text("#state-detail"))?.[1] ?? 0);
  const tried = await attempt();
  await waitFor(async () => (await attempt()) > tried, 10_000, "another reconnect attempt while offline");
  assert.equal(await page.getAttribute("#state", "data-state"), "reconnecting", "still away while publishing");
  await context.setOffline(false);

  await waitSel('#state[data-state="connected"]', 20_000);
  assert.equal(await text("#node"), "console-2");
  // The embedded history restarted with the node (new epoch): the server cannot replay
  // from the old position and says so (recovered:false); the page then reloads the
  // channel's history from the new store, which holds every event published since.
  await waitSel('#log-body tr[data-kind="notice"][data-channel="project:p1"][data-event="recovery"]');
  assert.match(await text('#log-body tr[data-kind="notice"][data-event="recovery"][data-channel="project:p1"]'), /not recovered/);
  for (const m of missed) await waitSel(`#log-body tr[data-id="${m.id}"][data-kind="history"]`);
  const after = await publishHttp("project:p1", "task.created", { phase: "after" });
  await waitSel(`#log-body tr[data-id="${after.id}"][data-kind="live"]`);
  await waitSel('#health-status[data-status="ok"]', 8000);
  assert.match(await text("#health-details"), /console-2/);

  const log = await rows();
  const events = log.filter((r) => r.kind !== "notice" && r.channel === "project:p1" && r.event === "task.created");
  for (const e of [before, ...missed, after]) assert.equal(events.filter((r) => r.id === e.id).length, 1, `event ${e.id} shown once`);
  // Newest first: the event after the reconnect on top, the missed ones in order below it.
  const order = events.map((r) => r.id);
  const at = (e) => order.indexOf(e.id);
  assert.ok(at(after) < at(missed[2]) && at(missed[2]) < at(missed[1]) && at(missed[1]) < at(missed[0]) && at(missed[0]) < at(before), order.join(" "));
  assert.ok(log.some((r) => r.kind === "notice" && r.event === "reconnecting"));
  await page.screenshot({ path: SHOT, fullPage: true });
  t.diagnostic(`screenshot: ${SHOT}`);

  assert.deepEqual(pageErrors, []);
  // Everything the page loaded or opened came from the node itself.
  const foreign = requests.filter((u) => !u.startsWith(`${base()}/`) && !u.startsWith(`ws://127.0.0.1:${port}/`));
  assert.deepEqual(foreign, [], "no fetches elsewhere");
  assert.ok(requests.some((u) => u.startsWith(`ws://127.0.0.1:${port}/ws?`)), "the page's own WebSocket");
  assert.deepEqual(consoleErrors.filter((m) => /Content.Security.Policy|Refused to/i.test(m)), [], "no CSP violations");
});
