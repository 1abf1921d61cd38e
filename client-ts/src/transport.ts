/**
 * The WebSocket seam: the minimal socket surface the client uses (what browsers' and the
 * `ws` package's WebSocket both provide), an injectable clock, and the `ws`-only hook
 * that reads the HTTP status of a refused handshake. Browsers never reveal that status:
 * a refused handshake there is an `error` then a close with 1006, exactly like a network
 * failure.
 */

import { SUBPROTOCOL } from "./frames.js";

/** What the client needs of a WebSocket instance. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  /** `ws` only: drop the connection without a closing handshake. */
  terminate?: () => void;
  /** `ws` only (EventEmitter): used for `unexpected-response`. */
  on?: (event: string, fn: (...args: any[]) => void) => unknown;
}

/**
 * A WebSocket class: the browser's global, or `WebSocket` from the `ws` package (whose
 * third argument carries headers). Typed loosely so both fit without casts.
 */
export type WebSocketConstructor = new (url: string, protocols?: string | string[], options?: any) => object;

/**
 * Opens a socket speaking `gateway.v1.json`, with the credential in `?token=` (works for
 * JWTs and API keys, and in browsers), in an `Authorization` header (`ws` only), or not
 * at all (`authenticate`: sent in band once open).
 */
export function createSocket(WS: WebSocketConstructor, base: string, token: string, auth: "query" | "header" | "authenticate"): WebSocketLike {
  const url = new URL(base);
  if (auth === "query") url.searchParams.set("token", token);
  if (auth === "header") return new WS(url.toString(), SUBPROTOCOL, { headers: { Authorization: `Bearer ${token}` } }) as WebSocketLike;
  return new WS(url.toString(), SUBPROTOCOL) as WebSocketLike;
}

/** Timers and time, injectable for tests. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (h) => globalThis.clearTimeout(h as ReturnType<typeof globalThis.setTimeout>),
};

/** A handshake refused before the upgrade, as far as the socket implementation tells. */
export interface Refusal {
  status: number;
  /** The gateway's `{"code","message"}` body, when it could be read. */
  body?: { code?: string; message?: string };
}

/** Shape of Node's IncomingMessage as far as we read it (no Node types in the library). */
interface ResponseLike {
  statusCode?: number;
  on(event: "data", fn: (chunk: unknown) => void): unknown;
  on(event: "end" | "error", fn: () => void): unknown;
}

/**
 * With `ws`: records the status and body of a refused handshake, then aborts the socket
 * (which then reports `error` and a 1006 close as usual). No effect in browsers.
 */
export function watchRefusal(sock: WebSocketLike, clock: Clock, onRefusal: (r: Refusal) => void): void {
  if (typeof sock.on !== "function") return;
  sock.on("unexpected-response", (_req: unknown, res: ResponseLike) => {
    const refusal: Refusal = { status: res.statusCode ?? 0 };
    onRefusal(refusal);
    let text = "";
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clock.clearTimeout(timer);
      try {
        const body: unknown = JSON.parse(text);
        if (body && typeof body === "object") refusal.body = body as { code?: string; message?: string };
      } catch {
        // not JSON: keep the status alone
      }
      // A listener for `unexpected-response` makes `ws` wait for us to abort.
      if (sock.terminate) sock.terminate();
      else sock.close();
    };
    const timer = clock.setTimeout(finish, 1000);
    res.on("data", (chunk: unknown) => {
      if (text.length < 4096) text += String(chunk);
    });
    res.on("end", finish);
    res.on("error", finish);
  });
}

/** Text of a message event's data (string for text frames; bytes decoded as UTF-8). */
export function messageText(data: unknown): string | undefined {
  if (typeof data === "string") return data;
  if (data instanceof ArrayBuffer) return new TextDecoder().decode(data);
  if (ArrayBuffer.isView(data)) return new TextDecoder().decode(data);
  return undefined;
}
