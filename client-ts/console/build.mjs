// Assembles the console the gateway binary embeds, after `tsc -p console/tsconfig.json`
// compiled the console and the client (without maps or declarations) to
// dist/.console-tsc/{console,src}/*.js:
//
//   dist/console/index.html, console.css   (copied from console/)
//   dist/console/app/*.js                   (the console's modules; they import ../src/index.js)
//   dist/console/src/*.js                   (the client's modules)
//
// served by every node at /console and /console/<path>. `node console/build.mjs --sync`
// then copies dist/console to gateway/assets/console (where `cargo build` finds it
// without Node); test/console-assets.test.mjs checks that the two never drift.

import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const BUILT = resolve(here, "../dist/console");
export const COMMITTED = resolve(here, "../../gateway/assets/console");
const TSC_OUT = resolve(here, "../dist/.console-tsc");

/** Relative paths of the files under `dir`, sorted ("/" separated). */
export function listFiles(dir) {
  const out = [];
  const walk = (d) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out.push(relative(dir, p).split("\\").join("/"));
    }
  };
  if (existsSync(dir)) walk(dir);
  return out.sort();
}

/** What differs between two asset trees: missing, extra and changed files. */
export function diffTrees(expected, actual) {
  const want = listFiles(expected);
  const have = listFiles(actual);
  const missing = want.filter((f) => !have.includes(f));
  const extra = have.filter((f) => !want.includes(f));
  const changed = want.filter((f) => have.includes(f) && !readFileSync(join(expected, f)).equals(readFileSync(join(actual, f))));
  return { missing, extra, changed };
}

function assemble() {
  if (!existsSync(join(TSC_OUT, "console/main.js"))) throw new Error(`${TSC_OUT} is missing: run tsc -p console/tsconfig.json first`);
  rmSync(BUILT, { recursive: true, force: true });
  const put = (from, to) => {
    mkdirSync(dirname(join(BUILT, to)), { recursive: true });
    copyFileSync(from, join(BUILT, to));
  };
  put(join(here, "index.html"), "index.html");
  put(join(here, "console.css"), "console.css");
  for (const f of listFiles(join(TSC_OUT, "console"))) if (f.endsWith(".js")) put(join(TSC_OUT, "console", f), "app/" + f);
  for (const f of listFiles(join(TSC_OUT, "src"))) if (f.endsWith(".js")) put(join(TSC_OUT, "src", f), "src/" + f);
}

function sync() {
  rmSync(COMMITTED, { recursive: true, force: true });
  for (const f of listFiles(BUILT)) {
    mkdirSync(dirname(join(COMMITTED, f)), { recursive: true });
    copyFileSync(join(BUILT, f), join(COMMITTED, f));
  }
  console.log(`console: ${listFiles(COMMITTED).length} files copied to ${relative(process.cwd(), COMMITTED)}`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  if (process.argv.includes("--sync")) sync();
  else assemble();
}
