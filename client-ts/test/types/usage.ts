// Compile-only check that the public types fit real callers: `ws`'s WebSocket in Node,
// the DOM's in browsers, typed built-in results, typed handlers. Not run.

import WebSocket from "ws";
import { GatewayClient, GatewayError, type EventFrame, type ServerFrame } from "../../dist/index.js";

const agent = new GatewayClient({ url: "ws://localhost:8080/ws", token: "key", WebSocket, reconnect: { maxRetries: 10 } });
const browser = new GatewayClient({ url: "wss://gw/ws", getToken: async () => "jwt", WebSocket: globalThis.WebSocket });

agent.on<{ id: string }>("task:assigned", (task, frame) => {
  const id: string = task.id;
  const ch: string = frame.channel;
  void id, ch;
});
agent.on("state", (s, info) => {
  const st: "idle" | "connecting" | "connected" | "reconnecting" | "closed" = s;
  void st, info.previous;
});
agent.on("error", (e: GatewayError) => void e.code);
agent.on("recovered", ({ channel, recovered }) => void [channel, recovered]);

async function main(): Promise<void> {
  await browser.connect();
  const list = await browser.request("channels.list");
  const names: string[] = list.channels;
  const custom = await browser.request<{ ok: boolean }>("tasks.get", { id: 1 }, { timeoutMs: 2000 });
  const ok: boolean = custom.ok;
  const sub = browser.subscribe<{ agentId: string; status: string }>("broadcast:agents", (e: EventFrame<{ agentId: string; status: string }>) => {
    const s: string = e.data.status;
    const off: number | undefined = e.offset;
    void s, off;
  });
  await sub.ready;
  sub.unsubscribe();
  await agent.sendStatusUpdate("busy", { progress: 50 });
  await agent.publish("session:abc", "typing", { on: true });
  void names, ok;
}

function narrow(f: ServerFrame): string {
  switch (f.type) {
    case "event":
      return f.channel + (f.epoch ?? "");
    case "response":
      return f.error ? f.error.code : JSON.stringify(f.result);
    case "disconnecting":
      return f.reason + String(f.reconnect);
    default:
      return f.type;
  }
}
void main, narrow;
