// The console the gateway binary embeds (gateway/assets/console, committed so that
// `cargo build` needs no Node) must be exactly what `npm run build` makes of
// client-ts/console and client-ts/src now (dist/console). Fix a failure with
// `npm run console:assets` and commit the result.

import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { BUILT, COMMITTED, diffTrees, listFiles } from "../console/build.mjs";

test("committed console assets equal a fresh build", () => {
  assert.ok(existsSync(BUILT), `${BUILT} is missing: run npm run build first`);
  assert.ok(listFiles(BUILT).includes("app/main.js") && listFiles(BUILT).includes("index.html"), "the build made the console");
  const { missing, extra, changed } = diffTrees(BUILT, COMMITTED);
  const fix = "run `npm run console:assets` in client-ts and commit gateway/assets/console";
  assert.deepEqual(missing, [], `not committed: ${missing.join(", ")}; ${fix}`);
  assert.deepEqual(extra, [], `committed but no longer built: ${extra.join(", ")}; ${fix}`);
  assert.deepEqual(changed, [], `differ from a fresh build: ${changed.join(", ")}; ${fix}`);
});
