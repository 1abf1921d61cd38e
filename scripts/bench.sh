#!/usr/bin/env bash
# Runs the load scenarios of issue 4 (and issue 8's resume) at their sizes against freshly started
# release nodes (and NATS + Redis where needed), printing each table and its
# `BENCH_JSON {…}` line:
#   idle     15,000 authenticated, subscribed connections on one node   (RSS/conn <= 8 KiB)
#   fanout   10,000 subscribers x 20 events/s on one node, then --find-max
#   fanout-socketio  the same, native then Socket.IO subscribers (same node and rate)
#            (>= 99% delivered, p99 <= 50 ms)
#   cluster  3 nodes x 3,000 subscribers, 20,000 deliveries/s           (p50 <= 1 ms, p99 <= 5 ms)
#   churn    100,000 connect/subscribe/disconnect cycles               (RSS within 5%, tables empty)
#   resume   3 nodes, 6,000 subscribers on 60 history channels, 500 events/s; node 0
#            kill -9'd, its clients resume elsewhere with recover      (nothing lost or twice,
#            catch-up time, history's CPU per delivery vs broadcast)
#   resume-2000  the same at issue 8's 2,000 events/s (saturates a 2-core machine; not
#            in the default list)
#   soak     60 s (SOAK_SECS) of churn 20/s + 1,000 subscribers x 10 events/s + 40
#            requests/s at once on one node; RSS, fds, queued bytes and tasks before,
#            during and after (RSS within 10% after warm-up; the rest back to idle)
#   soak-20m the same for 20 minutes (not in the default list)
#
# Needs nats-server and redis-server on PATH (scripts/install-deps.sh).
# Usage: scripts/bench.sh [scenario ...]     (default: all of them)
# Env:   BENCH_ARGS   extra arguments for every run (e.g. "--duration 5")
#        SOAK_SECS    length of `soak` in seconds (default 60)
#        BENCH_OUT    file to append all output to (default: none)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p gateway -p gateway-bench
BENCH="${CARGO_TARGET_DIR:-target}/release/gateway-bench"

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(idle fanout fanout-max fanout-socketio cluster churn resume soak)

run() {
  echo
  echo "### gateway-bench $*"
  # shellcheck disable=SC2086
  if [ -n "${BENCH_OUT:-}" ]; then
    "$BENCH" "$@" ${BENCH_ARGS:-} 2>&1 | tee -a "$BENCH_OUT"
  else
    "$BENCH" "$@" ${BENCH_ARGS:-}
  fi
}

status=0
for s in "${scenarios[@]}"; do
  case "$s" in
    idle)       run idle --n 15000 || status=1 ;;
    fanout)     run fanout --n 10000 --rate 20 --duration 10 || status=1 ;;
    fanout-max) run fanout --n 10000 --rate 20 --duration 10 --find-max || status=1 ;;
    fanout-socketio) run fanout --socketio --n 10000 --rate 20 --duration 10 || status=1 ;;
    # One channel (every event to all 9,000) and 300 channels (30 subscribers each).
    cluster)    run cluster --nodes 3 --n 9000 --deliveries 20000 --duration 10 || status=1
                run cluster --nodes 3 --n 9000 --deliveries 20000 --duration 10 --channels 300 || status=1 ;;
    churn)      run churn --cycles 100000 || status=1 ;;
    resume)     run resume --subscribers 6000 --channels 60 --rate 500 --duration 30 --kill-after 15 || status=1 ;;
    resume-2000) run resume --subscribers 6000 --channels 60 --rate 2000 --duration 30 --kill-after 15 || status=1 ;;
    soak)       run soak --duration "${SOAK_SECS:-60}" || status=1 ;;
    soak-20m)   run soak --duration 1200 || status=1 ;;
    *) echo "unknown scenario: $s (idle|fanout|fanout-max|fanout-socketio|cluster|churn|resume|resume-2000|soak|soak-20m)" >&2; status=2 ;;
  esac
done
exit $status
