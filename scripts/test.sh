#!/usr/bin/env bash
# The one command that runs every test: installs what is missing (nats-server,
# redis-server, nginx, the Helm checkers), builds once, runs the Rust tests (unit,
# golden, integration against real NATS/Redis processes the harness starts on free
# ports), then the Helm chart checks. Exits non-zero when anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Tests talk only to loopback; never through a proxy set in the environment.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
# One build for everything (the tests start the gateway binary as a child process too).
cargo build --workspace --all-targets --locked

if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

bash scripts/check-helm.sh
