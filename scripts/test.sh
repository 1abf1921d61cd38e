#!/usr/bin/env bash
# The one command that runs every test: installs what is missing (nats-server,
# redis-server, nginx, Node packages, the Helm checkers), builds once, then runs the
# suites side by side: the Rust tests (unit, golden, integration against real NATS/Redis
# processes the harness starts on free ports), the TypeScript client's tests (unit,
# integration against the gateway binary just built, and the console: its committed
# assets against a fresh build, and the page in headless Chromium against the binary),
# the seed clients (the seed documents' JavaScript run unchanged against the binary with
# deploy/examples/seed-*.toml), the Socket.IO contract (the real socket.io-client against
# nodes, NATS, Redis and nginx), the AsyncAPI description (docs/asyncapi.yaml through the
# official parser, every example against its schema), the Helm chart checks, and a short
# run of every fuzz target (scripts/fuzz.sh).
# Exits non-zero when anything fails; each suite's output is kept whole, not interleaved.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Tests talk only to loopback; never through a proxy set in the environment.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"

# A CI build is built once from scratch: incremental state would only fill the disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
df -h . | tail -1 | awk '{print "disk before build: " $4 " free of " $2}'

# One build for everything (the tests start the gateway binary as a child process too),
# and the Node packages (the TypeScript client's, the seed clients') meanwhile.
(cd client-ts && npm ci --no-audit --no-fund --loglevel=error) &
npm_pid=$!
(cd tests/seeds && npm ci --no-audit --no-fund --loglevel=error) &
seeds_npm_pid=$!
(cd tests/socketio && npm ci --no-audit --no-fund --loglevel=error) &
socketio_npm_pid=$!
(cd docs/asyncapi && npm ci --no-audit --no-fund --loglevel=error) &
asyncapi_npm_pid=$!
cargo build --workspace --all-targets --locked
wait "$npm_pid"
wait "$seeds_npm_pid"
wait "$socketio_npm_pid"
wait "$asyncapi_npm_pid"
du -sh target 2>/dev/null | awk '{print "target after build: " $1}'
df -h . | tail -1 | awk '{print "disk after build: " $4 " free of " $2}'

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

run() { # name, command...: runs a suite in the background, output to its log
  local name="$1"
  shift
  ("$@" >"$logs/$name.log" 2>&1; echo $? >"$logs/$name.rc") &
}

run rust bash -c 'if command -v cargo-nextest >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
  else
    cargo test --workspace --locked --no-fail-fast
  fi'
run client-ts bash -c 'cd client-ts && npm run build && GATEWAY_BIN="$PWD/../target/debug/gateway" npm test'
run seeds bash -c 'cd tests/seeds && GATEWAY_BIN="$PWD/../../target/debug/gateway" npm test'
run socketio bash -c 'cd tests/socketio && GATEWAY_BIN="$PWD/../../target/debug/gateway" npm test'
run helm bash scripts/check-helm.sh
run asyncapi bash -c 'cd docs/asyncapi && npm test --silent'
# A short coverage-guided run of every fuzz target (its own instrumented build), at low
# priority so the timing-sensitive suites keep the CPU they need.
run fuzz nice -n 19 bash scripts/fuzz.sh 15
wait

failed=0
for name in rust client-ts seeds socketio helm asyncapi fuzz; do
  rc="$(cat "$logs/$name.rc" 2>/dev/null || echo 1)"
  echo "===== $name (exit $rc) ====="
  cat "$logs/$name.log"
  [ "$rc" = 0 ] || failed=1
done

# One closing line over every suite: nextest's summary, node's `# pass`/`# fail`, helm's
# and asyncapi's `N passed, M failed`.
count() { # log, pattern: the last number matching the pattern (0 when none)
  local n
  n="$(grep -oE "$2" "$1" 2>/dev/null | grep -oE '[0-9]+' | tail -1 || true)"
  echo "${n:-0}"
}
rp="$(count "$logs/rust.log" '[0-9]+ passed')"
rf="$(count "$logs/rust.log" '[0-9]+ failed')"
tp="$(count "$logs/client-ts.log" '# pass [0-9]+')"
tf="$(count "$logs/client-ts.log" '# fail [0-9]+')"
sp="$(count "$logs/seeds.log" '# pass [0-9]+')"
sf="$(count "$logs/seeds.log" '# fail [0-9]+')"
op="$(count "$logs/socketio.log" '# pass [0-9]+')"
of="$(count "$logs/socketio.log" '# fail [0-9]+')"
hp="$(count "$logs/helm.log" '[0-9]+ passed')"
hf="$(count "$logs/helm.log" '[0-9]+ failed')"
ap="$(count "$logs/asyncapi.log" 'asyncapi: [0-9]+ passed')"
af="$(count "$logs/asyncapi.log" 'asyncapi: [0-9]+ passed, [0-9]+ failed')"
# fuzz.sh closes on `fuzz: N passed, M failed`, one per target.
fp="$(count "$logs/fuzz.log" 'fuzz: [0-9]+ passed')"
ff="$(count "$logs/fuzz.log" 'fuzz: [0-9]+ passed, [0-9]+ failed')"
echo "rust: $rp passed, $rf failed; client-ts: $tp passed, $tf failed; seeds: $sp passed, $sf failed; socketio: $op passed, $of failed; helm: $hp passed, $hf failed; asyncapi: $ap passed, $af failed; fuzz: $fp passed, $ff failed"
[ "$failed" = 0 ] || echo "test.sh: some suites failed" >&2
echo "total: $((rp + tp + sp + op + hp + ap + fp)) passed, $((rf + tf + sf + of + hf + af + ff + failed)) failed"
exit "$failed"
