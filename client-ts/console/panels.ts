/**
 * The console's side panels: `/health` of the node serving the page (polled), presence
 * of the selected channel (`presence.get`, refreshed on `presence.join`/`leave`), and
 * the publish form (the server's answer shown as it is, error code included).
 */

import { GatewayError, type GatewayClient } from "../src/index.js";
import { byId, clockTime, el, setText } from "./dom.js";

/** Polls `/health` every `everyMs` and renders the answer. */
export class HealthPanel {
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly everyMs = 5000) {}

  start(): void {
    void this.poll();
  }

  private async poll(): Promise<void> {
    const status = byId("health-status");
    const details = byId("health-details");
    const abort = new AbortController();
    const deadline = setTimeout(() => abort.abort(), 3000);
    try {
      const r = await fetch("/health", { cache: "no-store", signal: abort.signal });
      const h = (await r.json()) as Health;
      status.dataset["status"] = String(h.status);
      setText(status, String(h.status));
      const ws = h.websocket ?? {};
      const cluster = h.cluster ?? {};
      details.replaceChildren(
        row("node", h.node),
        row("websocket", `${ws.status ?? "?"}, ${ws.connections ?? "?"} connections (${ws.connectedUsers ?? "?"} users, ${ws.connectedAgents ?? "?"} agents), ${ws.channels ?? "?"} channels`),
        row("nats", component(h.nats)),
        row("redis", component(h.redis)),
        row("cluster", cluster.nodes !== undefined ? `${cluster.nodes} node(s), ${cluster.connections ?? "?"} connections` : String(cluster.status ?? "?")),
        row("checked", clockTime(Date.now())),
      );
    } catch (e) {
      status.dataset["status"] = "unreachable";
      setText(status, "unreachable");
      details.replaceChildren(row("error", e instanceof Error ? e.message : String(e)), row("checked", clockTime(Date.now())));
    } finally {
      clearTimeout(deadline);
      this.timer = setTimeout(() => void this.poll(), this.everyMs);
    }
  }

  stop(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
  }
}

interface Health {
  status?: unknown;
  node?: unknown;
  websocket?: { status?: unknown; connections?: unknown; connectedUsers?: unknown; connectedAgents?: unknown; channels?: unknown };
  nats?: unknown;
  redis?: unknown;
  cluster?: { nodes?: unknown; connections?: unknown; status?: unknown };
}

function component(c: unknown): string {
  if (c && typeof c === "object") {
    const { status, detail } = c as { status?: unknown; detail?: unknown };
    return detail ? `${String(status)} (${String(detail)})` : String(status);
  }
  return String(c);
}

function row(name: string, value: unknown): HTMLElement {
  return el("div", { class: "kv" }, el("span", { class: "k" }, name), el("span", { class: "v" }, String(value ?? "?")));
}

/** Presence of one selected channel. */
export class PresencePanel {
  private readonly select = byId<HTMLSelectElement>("presence-channel");
  private readonly list = byId("presence-members");
  private readonly note = byId("presence-note");
  private pending: ReturnType<typeof setTimeout> | undefined;
  private seq = 0;

  constructor(private readonly client: GatewayClient) {
    this.select.addEventListener("change", () => this.refresh());
  }

  get channel(): string {
    return this.select.value;
  }

  /** The channels one may pick; the first of a presence namespace is selected. */
  setChannels(channels: string[]): void {
    const current = this.select.value;
    this.select.replaceChildren(...channels.map((c) => el("option", { value: c }, c)));
    const pick = channels.includes(current) ? current : (channels.find((c) => /^(session|project):/.test(c)) ?? channels[0] ?? "");
    this.select.value = pick;
    this.refresh();
  }

  /** Asks again shortly (join/leave events come in bursts). */
  refreshSoon(): void {
    if (this.pending !== undefined) clearTimeout(this.pending);
    this.pending = setTimeout(() => this.refresh(), 100);
  }

  refresh(): void {
    this.pending = undefined;
    const channel = this.select.value;
    const seq = ++this.seq;
    if (!channel) {
      this.list.replaceChildren();
      setText(this.note, "no channel");
      return;
    }
    if (this.client.state !== "connected") {
      setText(this.note, "not connected");
      return;
    }
    this.client.request("presence.get", { channel }).then(
      (r) => {
        if (seq !== this.seq) return;
        this.list.replaceChildren(
          ...r.members.map((m) => el("li", { "data-kind": m.kind, "data-id": m.id }, el("span", { class: "tag" }, m.kind), m.id)),
        );
        setText(this.note, `${r.members.length} member(s) · ${clockTime(Date.now())}`);
      },
      (e: unknown) => {
        if (seq !== this.seq) return;
        this.list.replaceChildren();
        setText(this.note, errorText(e));
      },
    );
  }
}

/** The publish form: channel, event, JSON data; shows the ack or the server's error. */
export function wirePublish(client: GatewayClient): void {
  const form = byId<HTMLFormElement>("publish-form");
  const result = byId("publish-result");
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const fields = new FormData(form);
    const channel = String(fields.get("channel") ?? "").trim();
    const event = String(fields.get("event") ?? "").trim();
    const text = String(fields.get("data") ?? "").trim();
    let data: unknown = null;
    try {
      if (text !== "") data = JSON.parse(text);
    } catch (e) {
      return show(result, "error", `data is not JSON: ${e instanceof Error ? e.message : String(e)}`);
    }
    show(result, "pending", `publishing ${event} on ${channel}…`);
    client.publish(channel, event, data).then(
      () => show(result, "ok", `acked: ${event} on ${channel}`),
      (e: unknown) => show(result, "error", errorText(e)),
    );
  });
}

function show(e: HTMLElement, outcome: string, text: string): void {
  e.dataset["outcome"] = outcome;
  setText(e, text);
}

/** `code: message` of a gateway error (the server's own words), else the message. */
export function errorText(e: unknown): string {
  if (e instanceof GatewayError) return `${e.code}: ${e.message}`;
  return e instanceof Error ? e.message : String(e);
}
