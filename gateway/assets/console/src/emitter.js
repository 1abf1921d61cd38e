/**
 * A tiny listener registry (browsers and Node alike, no EventEmitter). A listener that
 * throws never breaks delivery: its error goes to the `error` listeners as
 * `handler_error`, and an `error` listener's own failure is dropped.
 */
import { GatewayError } from "./errors.js";
export class Emitter {
    listeners = new Map();
    on(key, fn) {
        let set = this.listeners.get(key);
        if (!set)
            this.listeners.set(key, (set = new Set()));
        set.add(fn);
        return () => {
            set.delete(fn);
        };
    }
    emit(key, ...args) {
        const set = this.listeners.get(key);
        if (!set)
            return;
        for (const fn of [...set]) {
            if (key === "error") {
                try {
                    fn(...args);
                }
                catch {
                    // an error listener's own failure has nowhere to go
                }
            }
            else {
                this.safely(() => fn(...args));
            }
        }
    }
    /** Runs an application callback, reporting what it throws on `error`. */
    safely(fn) {
        try {
            fn();
        }
        catch (e) {
            this.emit("error", new GatewayError("handler_error", `a handler threw: ${String(e)}`, { cause: e }));
        }
    }
}
