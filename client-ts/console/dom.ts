/**
 * DOM helpers for the console. Every piece of text reaches the page through text nodes
 * (`append(string)`, `textContent`), never through `innerHTML`, so event data cannot
 * inject markup; attributes are set only with `setAttribute` on harmless names.
 */

export type Child = Node | string | number | null | undefined | false;

/** Creates `<tag attrs…>children…</tag>`; strings become text nodes. */
export function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) e.append(typeof c === "number" ? String(c) : c);
  return e;
}

/** The element with this id (the page's markup is fixed, so a missing one is a bug). */
export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (!e) throw new Error(`console: #${id} is missing from the page`);
  return e as T;
}

/** Replaces an element's content with plain text. */
export function setText(e: HTMLElement, text: string): void {
  e.textContent = text;
}

/** `HH:MM:SS.mmm` in local time. */
export function clockTime(ms: number): string {
  const d = new Date(ms);
  const p = (n: number, w = 2) => String(n).padStart(w, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

/** JSON text of a value, cut to `max` characters (an ellipsis marks the cut). */
export function preview(value: unknown, max: number): string {
  let s: string;
  try {
    s = value === undefined ? "" : JSON.stringify(value) ?? String(value);
  } catch {
    s = String(value);
  }
  return s.length > max ? s.slice(0, max) + "…" : s;
}
