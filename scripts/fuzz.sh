#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder of untrusted input (fuzz/fuzz_targets/*),
# on the stable toolchain: libFuzzer (from the libfuzzer-sys crate) with LLVM's
# SanitizerCoverage passes enabled through -C flags instead of cargo-fuzz's -Z flags.
#
#   scripts/fuzz.sh [SECONDS | --runs N] [TARGET...]
#
# Builds once, then runs each target (all by default) for SECONDS (default 60) or for N
# executions, seeded from fuzz/seeds/<target> (generated from the golden tests) and
# growing fuzz/corpus/<target>. Prints per target: executions, exec/s, coverage,
# crashes; then `fuzz: N passed, M failed`. Exits non-zero on any crash; the crashing
# input is kept under fuzz/artifacts/<target>/ (replay: the target binary with that file).
# FUZZ_TARGET_DIR sets the build directory (default fuzz/target).
set -euo pipefail
cd "$(dirname "$0")/.."

limit=(-max_total_time=60)
what="60 s"
if [ "${1:-}" = "--runs" ]; then
  limit=(-runs="$2")
  what="$2 runs"
  shift 2
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then
  limit=(-max_total_time="$1")
  what="$1 s"
  shift
fi
all=(json msgpack flat channel event_name handshake jwt socketio)
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=("${all[@]}")

# libfuzzer-sys compiles libFuzzer itself: it needs a C++ compiler.
if ! command -v c++ >/dev/null 2>&1 && ! command -v clang++ >/dev/null 2>&1; then
  echo "fuzz: installing a C++ compiler"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq g++ >/dev/null; else
    sudo apt-get update -qq && sudo apt-get install -y -qq g++ >/dev/null
  fi
fi

host="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/fuzz/target}"
# What cargo-fuzz passes, minus the sanitizer (AddressSanitizer needs nightly): edge
# coverage with inline 8-bit counters, the PC table, and comparison tracing. With an
# explicit --target these flags skip build scripts and proc macros.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth"
export CARGO_INCREMENTAL=0
start=$(date +%s)
cargo build --manifest-path fuzz/Cargo.toml --release --locked --target "$host" --bins
echo "fuzz: built in $(($(date +%s) - start)) s; $(du -sh "$CARGO_TARGET_DIR" | cut -f1) in the build directory"

passed=0
failed=0
for t in "${targets[@]}"; do
  bin="$CARGO_TARGET_DIR/$host/release/$t"
  if [ ! -x "$bin" ]; then
    echo "fuzz $t: no such target (have: ${all[*]})"
    failed=$((failed + 1))
    continue
  fi
  corpus="fuzz/corpus/$t"
  artifacts="fuzz/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  log="$artifacts/last-run.log"
  before="$(find "$artifacts" -type f ! -name last-run.log | wc -l)"
  rc=0
  "$bin" "${limit[@]}" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" "$corpus" "fuzz/seeds/$t" >"$log" 2>&1 || rc=$?
  after="$(find "$artifacts" -type f ! -name last-run.log | wc -l)"
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
  cov="$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -1 || true)"
  crashes=$((after - before))
  if [ "$rc" != 0 ] && [ "$crashes" = 0 ]; then crashes=1; fi
  echo "fuzz $t: ${runs:-?} executions in $what, ${rate:-?} exec/s, ${cov:-cov: ?}, $crashes crashes"
  if [ "$crashes" = 0 ]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "----- $t: last lines of $log -----"
    grep -v '^#' "$log" | tail -40
    echo "----- crash inputs in $artifacts/ -----"
    ls -1 "$artifacts" | grep -v last-run.log || true
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" = 0 ]
