/**
 * The live log: one row per event (time, channel, event, data), newest first, at most
 * `max` rows (the oldest fall off). Rows are kept in the order of the events' `ts`, so
 * events loaded from history after a reconnect land where they belong; an event id seen
 * before is not shown twice. Notices (connection state, recovery) are rows too.
 */

import type { EventFrame } from "../src/index.js";
import { clockTime, el, preview, setText } from "./dom.js";

export type RowKind = "live" | "history" | "notice";

interface Row {
  ts: number;
  id: string | undefined;
  tr: HTMLTableRowElement;
}

export class EventLog {
  private readonly rows: Row[] = [];
  private readonly ids = new Set<string>();

  constructor(
    private readonly body: HTMLTableSectionElement,
    private readonly counter: HTMLElement,
    readonly max = 500,
  ) {}

  get size(): number {
    return this.rows.length;
  }

  /** Adds an event; false when its id is shown already (or it is older than every row of a full log). */
  event(f: EventFrame, kind: "live" | "history"): boolean {
    if (this.ids.has(f.id)) return false;
    const from = f.from ? `${f.from.kind}:${f.from.id}` : "";
    const data = el("code", { title: preview(f.data, 4000) }, preview(f.data, 400));
    const tag = kind === "history" ? el("span", { class: "tag" }, "history") : null;
    const tr = el(
      "tr",
      { class: `row-${kind}`, "data-kind": kind, "data-channel": f.channel, "data-event": f.event, "data-id": f.id },
      el("td", { class: "time", title: new Date(f.ts).toISOString() }, clockTime(f.ts)),
      el("td", { class: "channel" }, f.channel),
      el("td", { class: "event" }, f.event, tag, from ? el("span", { class: "from" }, "from " + from) : null),
      el("td", { class: "data" }, data),
    );
    return this.insert({ ts: f.ts, id: f.id, tr });
  }

  /** A line from the console itself (state changes, recovery outcomes). */
  notice(what: string, text: string, channel = ""): void {
    const ts = Date.now();
    const tr = el(
      "tr",
      { class: "row-notice", "data-kind": "notice", "data-event": what, "data-channel": channel },
      el("td", { class: "time", title: new Date(ts).toISOString() }, clockTime(ts)),
      el("td", { class: "channel" }, channel),
      el("td", { class: "event" }, what),
      el("td", { class: "data" }, text),
    );
    this.insert({ ts, id: undefined, tr });
  }

  clear(): void {
    for (const r of this.rows) r.tr.remove();
    this.rows.length = 0;
    this.ids.clear();
    this.count();
  }

  private insert(row: Row): boolean {
    // Newest first; an equal ts goes above (it arrived later).
    let i = 0;
    while (i < this.rows.length && (this.rows[i] as Row).ts > row.ts) i++;
    if (i >= this.max) return false;
    const next = this.rows[i];
    this.body.insertBefore(row.tr, next ? next.tr : null);
    this.rows.splice(i, 0, row);
    if (row.id !== undefined) this.ids.add(row.id);
    while (this.rows.length > this.max) {
      const old = this.rows.pop() as Row;
      old.tr.remove();
      if (old.id !== undefined) this.ids.delete(old.id);
    }
    this.count();
    return true;
  }

  private count(): void {
    setText(this.counter, `${this.rows.length} / ${this.max}`);
  }
}
