/**
 * The gateway console, served at `/console` by every node. `?token=…&channels=a,b`
 * connects with the TypeScript client and subscribes at once (a form asks for the URL,
 * token and channels when there is no token). It shows the connection state and the
 * node holding the connection, a live log of events, presence of a selected channel, a
 * publish form and the serving node's `/health`. After a reconnect each channel reports
 * whether the server replayed what was missed; where it could not (`recovered:false`,
 * e.g. a restarted single node with a new history epoch), the console reloads the
 * channel's history so the events the new store holds still show.
 */
import { GatewayClient, GatewayError } from "../src/index.js";
import { byId, el, setText } from "./dom.js";
import { EventLog } from "./log.js";
import { HealthPanel, PresencePanel, errorText, wirePublish } from "./panels.js";
/** Where this tab keeps the token after it is taken out of the address bar. */
const TOKEN_KEY = "gateway-console-token";
/** Events loaded from history on subscribe and after a failed recovery. */
const HISTORY_LIMIT = 100;
function defaultWsUrl() {
    const path = document.querySelector('meta[name="gateway-ws-path"]')?.content || "/ws";
    return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
}
function channelList(s) {
    const out = [];
    for (const c of (s ?? "").split(",").map((x) => x.trim()))
        if (c && !out.includes(c))
            out.push(c);
    return out;
}
function main() {
    new HealthPanel().start();
    const params = new URLSearchParams(location.search);
    const fromUrl = params.get("token");
    if (fromUrl !== null) {
        // Out of the address bar, the history and screenshots; a reload finds it in this tab.
        if (fromUrl)
            sessionStorage.setItem(TOKEN_KEY, fromUrl);
        params.delete("token");
        const rest = params.toString();
        history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
    }
    const token = fromUrl || sessionStorage.getItem(TOKEN_KEY) || "";
    const url = params.get("url") || defaultWsUrl();
    const channels = channelList(params.get("channels"));
    byId("f-url").value = url;
    byId("f-channels").value = channels.join(",");
    byId("sign-out").addEventListener("click", () => {
        sessionStorage.removeItem(TOKEN_KEY);
        const keep = new URLSearchParams();
        if (params.get("url"))
            keep.set("url", url);
        if (channels.length)
            keep.set("channels", channels.join(","));
        location.assign(location.pathname + (keep.size ? "?" + keep.toString() : ""));
    });
    if (!token) {
        document.body.dataset["view"] = "form";
        byId("f-token").focus();
        return;
    }
    document.body.dataset["view"] = "console";
    start(url, token, channels);
}
function start(url, token, initial) {
    const log = new EventLog(byId("log-body"), byId("log-count"));
    byId("log-clear").addEventListener("click", () => log.clear());
    const client = new GatewayClient({ url, token, reconnect: { baseMs: 500, maxMs: 5000 } });
    const presence = new PresencePanel(client);
    wirePublish(client);
    // ---- channels and their status
    const status = new Map();
    const channelsEl = byId("channels");
    const datalist = byId("channel-list");
    let offered = "";
    const renderChannels = () => {
        channelsEl.replaceChildren(...[...status].map(([ch, s]) => el("li", { "data-channel": ch, "data-status": s.state }, el("span", { class: "name" }, ch), el("span", { class: "status" }, s.text))));
        const joined = [...status].filter(([, s]) => s.state !== "rejected").map(([ch]) => ch);
        if (joined.join(",") === offered)
            return;
        offered = joined.join(",");
        datalist.replaceChildren(...joined.map((c) => el("option", { value: c })));
        presence.setChannels(joined);
    };
    const setStatus = (ch, state, text) => {
        if (!status.has(ch) && state !== "joining")
            return;
        status.set(ch, { state, text });
        renderChannels();
    };
    const loadHistory = async (channel, why) => {
        try {
            const page = await client.request("history.get", { channel, limit: HISTORY_LIMIT });
            let added = 0;
            for (const f of page.events)
                if (log.event(f, "history"))
                    added++;
            if (why === "recovery") {
                log.notice("recovery", `not recovered: events may have been missed; ${added} event(s) reloaded from history (epoch ${page.epoch})`, channel);
                setStatus(channel, "subscribed", `history reloaded (${added})`);
            }
        }
        catch (e) {
            if (why === "recovery")
                log.notice("recovery", `not recovered, and no history to reload: ${errorText(e)}`, channel);
            if (status.get(channel)?.state === "subscribed" && e instanceof GatewayError && e.code === "not_found")
                setStatus(channel, "subscribed", "subscribed (no history)");
        }
    };
    const subscribe = (ch) => {
        if (status.has(ch))
            return;
        setStatus(ch, "joining", "joining…");
        const sub = client.subscribe(ch, () => { });
        sub.ready.then(() => {
            setStatus(ch, "subscribed", "subscribed");
            void loadHistory(ch, "subscribe");
        }, (e) => {
            setStatus(ch, "rejected", errorText(e));
            log.notice("rejected", errorText(e), ch);
        });
    };
    // ---- connection state
    const stateEl = byId("state");
    const detail = byId("state-detail");
    const renderState = (s, info) => {
        stateEl.dataset["state"] = s;
        setText(stateEl, s);
        const why = info.error ? errorText(info.error) : "";
        if (s === "reconnecting") {
            const wait = ((info.delayMs ?? 0) / 1000).toFixed(1);
            setText(detail, `attempt ${info.attempt ?? "?"}, next try in ${wait} s${why ? " · " + why : ""}`);
            if (info.previous !== "reconnecting")
                log.notice("reconnecting", why || "connection lost");
        }
        else if (s === "closed") {
            setText(detail, why || "closed");
            log.notice("closed", why || "closed");
        }
        else {
            setText(detail, "");
        }
        byId("reconnect").hidden = s !== "closed";
    };
    client.on("state", renderState);
    byId("reconnect").addEventListener("click", () => void client.connect().catch(() => { }));
    client.on("connected", (f) => {
        setText(byId("node"), f.node);
        setText(byId("principal"), `${f.principal.kind}:${f.principal.id}`);
        setText(byId("connection"), f.connectionId);
        log.notice("connected", `node ${f.node}, connection ${f.connectionId}`);
        presence.refresh();
    });
    client.on("event", (f) => {
        log.event(f, "live");
        if ((f.event === "presence.join" || f.event === "presence.leave") && f.channel === presence.channel)
            presence.refreshSoon();
    });
    client.on("recovered", ({ channel, recovered }) => {
        if (recovered) {
            log.notice("recovery", "recovered: every missed event was replayed", channel);
            setStatus(channel, "subscribed", "recovered");
        }
        else {
            setStatus(channel, "subscribed", "not recovered");
            void loadHistory(channel, "recovery");
        }
    });
    client.on("error", (e) => setText(byId("last-error"), `${new Date().toLocaleTimeString()} ${errorText(e)}`));
    byId("add-channel").addEventListener("submit", (ev) => {
        ev.preventDefault();
        const input = byId("add-channel-name");
        for (const ch of channelList(input.value))
            subscribe(ch);
        input.value = "";
    });
    for (const ch of initial)
        subscribe(ch);
    client.connect().catch(() => { }); // the state listener shows why
}
main();
