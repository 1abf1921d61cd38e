/**
 * Wire types of the gateway's canonical JSON encoding (`gateway.v1.json`, contract §2
 * and §9): every client and server frame as a discriminated union on `type`, error and
 * close codes, and the shapes of the built-in methods' results. Types only, plus a few
 * constants; no I/O.
 */

/** The subprotocol this client speaks. */
export const SUBPROTOCOL = "gateway.v1.json";

/** Error codes the server uses in `error` frames and `response.error` (contract §2). */
export type ServerErrorCode =
  | "bad_request"
  | "unauthorized"
  | "token_expired"
  | "forbidden"
  | "bad_channel"
  | "not_found"
  | "rate_limited"
  | "too_large"
  | "limit_exceeded"
  | "timeout"
  | "unavailable"
  | "internal";

/** The error body of `error` frames, failed responses and refused handshakes. */
export interface ErrorBody {
  code: ServerErrorCode | (string & {});
  message: string;
  /** With `rate_limited`: when to try again. */
  retryAfterMs?: number;
}

/** Who a connection (or a published event) acts as. */
export interface Principal {
  kind: "user" | "agent";
  id: string;
}

/** A stream position on a channel with history (contract §9). */
export interface StreamPosition {
  offset: number;
  epoch: string;
}

// ---------------------------------------------------------------- client → server

export interface AuthenticateFrame {
  type: "authenticate";
  token: string;
}

export interface SubscribeFrame {
  type: "subscribe";
  id?: string;
  channels: string[];
  /** A channel JWT for `session:` channels under the `token` policy. */
  token?: string;
  /** Resume these channels after the given positions (contract §9). */
  recover?: Record<string, StreamPosition>;
}

export interface UnsubscribeFrame {
  type: "unsubscribe";
  id?: string;
  channels: string[];
}

export interface RequestFrame {
  type: "request";
  id: string;
  method: string;
  params?: unknown;
}

export interface PublishFrame {
  type: "publish";
  id?: string;
  channel: string;
  event: string;
  data?: unknown;
}

export interface SendFrame {
  type: "send";
  id?: string;
  event: string;
  data?: unknown;
}

export interface RefreshFrame {
  type: "refresh";
  id?: string;
  token: string;
}

export interface PingFrame {
  type: "ping";
}

/** Every frame a client may send. */
export type ClientFrame =
  | AuthenticateFrame
  | SubscribeFrame
  | UnsubscribeFrame
  | RequestFrame
  | PublishFrame
  | SendFrame
  | RefreshFrame
  | PingFrame;

// ---------------------------------------------------------------- server → client

export interface ConnectedFrame {
  type: "connected";
  connectionId: string;
  principal: Principal;
  node: string;
  heartbeatMs: number;
}

export interface ResponseOk<R = unknown> {
  type: "response";
  id: string;
  result: R;
  error?: undefined;
}

export interface ResponseErr {
  type: "response";
  id: string;
  result?: undefined;
  error: ErrorBody;
}

export type ResponseFrame<R = unknown> = ResponseOk<R> | ResponseErr;

/** A channel event as delivered to subscribers. */
export interface EventFrame<D = unknown> {
  type: "event";
  channel: string;
  event: string;
  data: D;
  /** Unique message id. */
  id: string;
  /** When the gateway accepted it, ms since epoch. */
  ts: number;
  /** Set by the gateway on events a client published. */
  from?: Principal;
  /** Position in the channel's history, on channels with history (§9). */
  offset?: number;
  /** The history store that issued `offset` (§9). */
  epoch?: string;
}

export interface AckFrame {
  type: "ack";
  id: string;
}

export interface PongFrame {
  type: "pong";
  ts: number;
}

export interface ErrorFrame {
  type: "error";
  error: ErrorBody;
}

export type DisconnectReason =
  | "shutdown"
  | "token_expired"
  | "kicked"
  | "revoked"
  | "rate_limited"
  | "protocol_errors"
  | (string & {});

export interface DisconnectingFrame {
  type: "disconnecting";
  reason: DisconnectReason;
  reconnect: boolean;
}

/** Sent only in the flat shape; listed so a decoder never meets an unknown type. */
export interface HeartbeatFrame {
  type: "heartbeat";
  ts: number;
}

/** Every frame the server may send. */
export type ServerFrame =
  | ConnectedFrame
  | ResponseFrame
  | EventFrame
  | AckFrame
  | PongFrame
  | ErrorFrame
  | DisconnectingFrame
  | HeartbeatFrame;

// ---------------------------------------------------------------- results

/** `result` of a `subscribe` response. */
export interface SubscribeResult {
  subscribed: string[];
  rejected: Array<{ channel: string; code: string; message: string }>;
  /** Per channel named in `recover`: whether every missed event will be replayed (§9). */
  recovered?: Record<string, boolean>;
  /**
   * Per joined channel with history (also one joined before, such as the auto-joined
   * `user:<sub>`/`agent:<id>`): where the channel stood when this connection joined it.
   * A client that has seen no event on the channel recovers from there after a
   * reconnect, so an event published while it was away is not lost.
   */
  positions?: Record<string, StreamPosition>;
}

/** `result` of an `unsubscribe` response. */
export interface UnsubscribeResult {
  unsubscribed: string[];
  rejected: Array<{ channel: string; code: string; message: string }>;
}

/** `result` of a `refresh` response. */
export interface RefreshResult {
  expiresAt: number | null;
  /** Channels the new claims no longer allow (left by the server). */
  left?: string[];
}

/** Results of the built-in methods, by method name. */
export interface BuiltinResults {
  "channels.list": { channels: string[] };
  "presence.get": { channel: string; members: Principal[] };
  "presence.stats": { channel: string; stats: { connections: number; users: number; agents: number } };
  "history.get": {
    channel: string;
    events: EventFrame[];
    offset: number;
    epoch: string;
    complete: boolean;
  };
}

// ---------------------------------------------------------------- close codes

/** WebSocket close codes the gateway uses (contract §6). */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  Abnormal: 1006,
  Policy: 1008,
  TooBig: 1009,
  Internal: 1011,
  ProtocolErrors: 4000,
  Unauthorized: 4001,
  TokenExpired: 4002,
  Forbidden: 4003,
  ConnectionLimit: 4004,
  RateLimited: 4008,
  SlowConsumer: 4009,
  Disconnected: 4010,
} as const;

/** Close codes after which reconnecting cannot help: the client stops. */
export const TERMINAL_CLOSE_CODES: ReadonlySet<number> = new Set([
  CloseCode.Unauthorized,
  CloseCode.Forbidden,
  CloseCode.Disconnected,
]);

/** Parses one text message into a server frame; `undefined` when it is not one. */
export function decodeServerFrame(text: string): ServerFrame | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (v === null || typeof v !== "object" || typeof (v as { type?: unknown }).type !== "string") {
    return undefined;
  }
  return v as ServerFrame;
}
