#!/usr/bin/env bash
# Load-balanced local cluster without containers: nats-server (JetStream),
# redis-server, N gateway nodes (default 3) and nginx in front of them, using the
# same deploy/nginx/nginx.conf as docker compose. Everything runs as the current
# user on 127.0.0.1 with free ports, all state in one temp dir.
#
# Usage: deploy/local-cluster.sh [--foreground] [--workdir DIR] [--nodes N] [--watch-pid PID]
#
#   default       start, wait until every node and the LB answer /ready, print
#                 KEY=value lines to stdout, write them to $WORKDIR/env (atomically:
#                 the file appears only when the cluster is ready), then stay running
#                 until killed. Killing this script (or its process group) stops
#                 everything and removes the temp dir.
#   --foreground  the same, then follow the logs on the terminal until Ctrl-C.
#   --workdir DIR use DIR instead of a fresh `mktemp -d`, so a harness knows where
#                 $WORKDIR/env will appear before starting (removed on exit if this
#                 script created it; otherwise only the files it made there are).
#   --nodes N     number of gateway nodes (default 3).
#   --watch-pid PID  stop everything once process PID is gone (a test harness passes
#                 its own pid, so a harness killed before its cleanup leaves nothing
#                 running; checked every second once ready).
#
# Environment:
#   GATEWAY_BIN         gateway binary (default: target/release/gateway in the repo;
#                       not passed on to the nodes, nor is GATEWAY_CONFIG)
#   GATEWAY_JWT_SECRET  HS256 secret (default: random; printed as JWT_SECRET=)
#   GATEWAY_ADMIN_KEY   admin key for /api/* (default: random; printed as ADMIN_KEY=)
#   Any other GATEWAY_* variable (e.g. GATEWAY_DRAIN__PERIOD_MS=2000) is inherited
#   by every node.
#   READY_TIMEOUT       seconds to wait for readiness (default 60)
#   STOP_TIMEOUT        seconds to let processes exit on SIGTERM before SIGKILL (default 10)
#   KEEP_WORKDIR=1      keep the temp dir (logs) after exit
#
# Output keys: WORKDIR, LB_URL, LB_WS_URL, LB_PID, NGINX_PID, NATS_URL, NATS_PID,
#   NATS_MONITOR_URL, REDIS_URL, REDIS_PID, NODES, GW<i>_URL, GW<i>_WS_URL, GW<i>_PID,
#   GW<i>_NODE_ID, GW<i>_LOG, JWT_SECRET, ADMIN_KEY, SCRIPT_PID, READY=1 (last line).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

FOREGROUND=0
WORKDIR_ARG=""
NODES=3
WATCH_PID=""
while [ $# -gt 0 ]; do
  case "$1" in
    --foreground) FOREGROUND=1 ;;
    --workdir) WORKDIR_ARG="${2:?--workdir needs a directory}"; shift ;;
    --workdir=*) WORKDIR_ARG="${1#*=}" ;;
    --nodes) NODES="${2:?--nodes needs a number}"; shift ;;
    --nodes=*) NODES="${1#*=}" ;;
    --watch-pid) WATCH_PID="${2:?--watch-pid needs a process id}"; shift ;;
    --watch-pid=*) WATCH_PID="${1#*=}" ;;
    -h|--help) usage; exit 0 ;;
    *) echo "local-cluster: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$NODES" in ''|*[!0-9]*|0) echo "local-cluster: --nodes must be a positive integer" >&2; exit 2 ;; esac
case "$WATCH_PID" in *[!0-9]*) echo "local-cluster: --watch-pid must be a process id" >&2; exit 2 ;; esac

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
NGINX_CONF_SRC="$SCRIPT_DIR/nginx/nginx.conf"
READY_TIMEOUT="${READY_TIMEOUT:-60}"
STOP_TIMEOUT="${STOP_TIMEOUT:-10}"

die() { echo "local-cluster: $*" >&2; exit 1; }

# find_tool NAME: PATH first, then the sbin dirs Debian uses (not on a user's PATH).
find_tool() {
  local name="$1" dir
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  for dir in /usr/sbin /usr/local/sbin /sbin /usr/local/bin /usr/local/nginx/sbin; do
    if [ -x "$dir/$name" ]; then echo "$dir/$name"; return 0; fi
  done
  return 1
}

# --- preflight: fail clearly before starting anything -------------------------
GATEWAY_BIN="${GATEWAY_BIN:-target/release/gateway}"
case "$GATEWAY_BIN" in /*) ;; *) [ -e "$GATEWAY_BIN" ] || GATEWAY_BIN="$REPO_ROOT/$GATEWAY_BIN" ;; esac
[ -x "$GATEWAY_BIN" ] || die "gateway binary not found or not executable: $GATEWAY_BIN
  build it with: cargo build --release -p gateway --bin gateway   (or set GATEWAY_BIN)"
GATEWAY_BIN="$(cd "$(dirname "$GATEWAY_BIN")" && pwd)/$(basename "$GATEWAY_BIN")"

NATS_SERVER="$(find_tool nats-server)" || die "nats-server not found (apt-get install nats-server; see scripts/install-deps.sh)"
REDIS_SERVER="$(find_tool redis-server)" || die "redis-server not found (apt-get install redis-server)"
NGINX="$(find_tool nginx)" || die "nginx not found (apt-get install nginx)"
command -v curl >/dev/null 2>&1 || die "curl not found"
command -v python3 >/dev/null 2>&1 || die "python3 not found (used to pick free ports)"
[ -f "$NGINX_CONF_SRC" ] || die "missing $NGINX_CONF_SRC"

# --- work dir and cleanup ----------------------------------------------------
OWN_WORKDIR=1   # remove the whole dir on exit (else only what this script made in it)
if [ -n "$WORKDIR_ARG" ]; then
  [ -e "$WORKDIR_ARG" ] && OWN_WORKDIR=0
  mkdir -p "$WORKDIR_ARG"
  WORKDIR="$(cd "$WORKDIR_ARG" && pwd)"
else
  WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/gateway-cluster.XXXXXX")"
fi
mkdir -p "$WORKDIR/logs" "$WORKDIR/nats" "$WORKDIR/redis" "$WORKDIR/nginx"
rm -f "$WORKDIR/env"

PIDS=()          # every child we started, in start order
FABRIC_PIDS=()   # nats-server and redis-server: stopped last
CLEANED=0
# stop_pids PID...: SIGTERM twice (a gateway drains on the first and exits at once on
# the second: teardown does not wait for drains), wait up to STOP_TIMEOUT seconds,
# then SIGKILL.
stop_pids() {
  local pid alive waited=0
  [ $# -gt 0 ] || return 0
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.2
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  while :; do
    alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && return 0
    if [ "$waited" -ge $(( STOP_TIMEOUT * 10 )) ]; then
      for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
      return 0
    fi
    sleep 0.1; waited=$(( waited + 1 ))
  done
}
cleanup() {
  [ "$CLEANED" -eq 1 ] && return 0
  CLEANED=1
  trap - INT TERM HUP
  local pid others=()
  # nginx and the gateways first (the gateways drain while NATS/Redis are still up;
  # a node that takes longer than STOP_TIMEOUT is killed), then the fabric.
  for pid in "${PIDS[@]}"; do
    case " ${FABRIC_PIDS[*]} " in *" $pid "*) ;; *) others+=("$pid") ;; esac
  done
  stop_pids "${others[@]}"
  stop_pids "${FABRIC_PIDS[@]}"
  wait 2>/dev/null || true
  if [ "${KEEP_WORKDIR:-0}" = "1" ]; then
    echo "local-cluster: stopped; logs kept in $WORKDIR" >&2
  elif [ "$OWN_WORKDIR" -eq 1 ]; then
    rm -rf "$WORKDIR"
  else
    rm -rf "$WORKDIR/logs" "$WORKDIR/nats" "$WORKDIR/redis" "$WORKDIR/nginx" \
      "$WORKDIR/env" "$WORKDIR/env.tmp"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# --- ports -------------------------------------------------------------------
# Bind all sockets at once so the ports are distinct, then release them.
NPORTS=$(( NODES + 4 ))
read -r -a PORTS <<<"$(python3 -c 'import socket,sys
ss=[socket.socket() for _ in range(int(sys.argv[1]))]
[s.bind(("127.0.0.1",0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))' "$NPORTS")"
[ "${#PORTS[@]}" -eq "$NPORTS" ] || die "could not pick free ports"
NATS_PORT="${PORTS[0]}"; NATS_MON_PORT="${PORTS[1]}"; REDIS_PORT="${PORTS[2]}"; LB_PORT="${PORTS[3]}"

rand_hex() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }
JWT_SECRET="${GATEWAY_JWT_SECRET:-$(rand_hex)}"
ADMIN_KEY="${GATEWAY_ADMIN_KEY:-$(rand_hex)}"

NATS_URL="nats://127.0.0.1:$NATS_PORT"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

# tail_log FILE: the last lines of a log, for error messages.
tail_log() { echo "--- last lines of $1:" >&2; tail -n 30 "$1" >&2 2>/dev/null || true; }

# wait_until NAME PID LOG CMD...: retry CMD every 0.2 s until it succeeds, the
# process dies, or READY_TIMEOUT passes.
wait_until() {
  local name="$1" pid="$2" log="$3"; shift 3
  local tries=$(( READY_TIMEOUT * 5 )) i
  for (( i=0; i<tries; i++ )); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      tail_log "$log"; die "$name exited during startup"
    fi
    sleep 0.2
  done
  tail_log "$log"; die "$name not ready after ${READY_TIMEOUT}s"
}

# --- NATS --------------------------------------------------------------------
"$NATS_SERVER" -js -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON_PORT" \
  -sd "$WORKDIR/nats" -n "local-cluster-nats" >"$WORKDIR/logs/nats.log" 2>&1 </dev/null &
NATS_PID=$!; PIDS+=("$NATS_PID"); FABRIC_PIDS+=("$NATS_PID")

# --- Redis -------------------------------------------------------------------
"$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
  --dir "$WORKDIR/redis" --daemonize no >"$WORKDIR/logs/redis.log" 2>&1 </dev/null &
REDIS_PID=$!; PIDS+=("$REDIS_PID"); FABRIC_PIDS+=("$REDIS_PID")

redis_ping() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
  else
    python3 -c 'import socket,sys
s=socket.create_connection(("127.0.0.1",int(sys.argv[1])),1); s.sendall(b"PING\r\n")
sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)' "$REDIS_PORT"
  fi
}
# Every probe targets 127.0.0.1: --noproxy keeps an http_proxy in the environment out.
wait_until nats-server "$NATS_PID" "$WORKDIR/logs/nats.log" \
  curl -fsS --noproxy '*' --max-time 2 "http://127.0.0.1:$NATS_MON_PORT/healthz"
wait_until redis-server "$REDIS_PID" "$WORKDIR/logs/redis.log" redis_ping

# --- gateway nodes -----------------------------------------------------------
GW_PORTS=(); GW_PIDS=()
for (( i=1; i<=NODES; i++ )); do
  port="${PORTS[$(( i + 3 ))]}"
  GW_PORTS+=("$port")
  GATEWAY_LISTEN="127.0.0.1:$port" \
  GATEWAY_NODE_ID="gw$i" \
  GATEWAY_NATS_URL="$NATS_URL" \
  GATEWAY_REDIS_URL="$REDIS_URL" \
  GATEWAY_JWT_SECRET="$JWT_SECRET" \
  GATEWAY_ADMIN_KEY="$ADMIN_KEY" \
    env -u GATEWAY_BIN -u GATEWAY_CONFIG \
    "$GATEWAY_BIN" serve >"$WORKDIR/logs/gw$i.log" 2>&1 </dev/null &
  GW_PIDS+=("$!"); PIDS+=("$!")
done
for (( i=1; i<=NODES; i++ )); do
  wait_until "gateway gw$i" "${GW_PIDS[$(( i - 1 ))]}" "$WORKDIR/logs/gw$i.log" \
    curl -fsS --noproxy '*' --max-time 2 "http://127.0.0.1:${GW_PORTS[$(( i - 1 ))]}/ready"
done

# --- nginx (the shared conf, with generated includes beside it) ---------------
cp "$NGINX_CONF_SRC" "$WORKDIR/nginx/nginx.conf"
{
  echo "# generated by local-cluster.sh"
  echo "upstream gateway {"
  echo "    least_conn;"
  for port in "${GW_PORTS[@]}"; do
    echo "    server 127.0.0.1:$port max_fails=3 fail_timeout=10s;"
  done
  echo "    keepalive 32;"
  echo "}"
  echo "upstream gateway_sticky {"
  echo "    hash \$remote_addr consistent;"
  for port in "${GW_PORTS[@]}"; do
    echo "    server 127.0.0.1:$port max_fails=3 fail_timeout=10s;"
  done
  echo "    keepalive 32;"
  echo "}"
} >"$WORKDIR/nginx/upstream.conf"
echo "listen 127.0.0.1:$LB_PORT;" >"$WORKDIR/nginx/listen.conf"
NGINX_ARGS=(-p "$WORKDIR/nginx/" -c "$WORKDIR/nginx/nginx.conf" -e stderr)
if ! "$NGINX" "${NGINX_ARGS[@]}" -t >"$WORKDIR/logs/nginx-test.log" 2>&1 </dev/null; then
  tail_log "$WORKDIR/logs/nginx-test.log"; die "nginx rejected the configuration"
fi
"$NGINX" "${NGINX_ARGS[@]}" -g 'daemon off;' >"$WORKDIR/logs/nginx.log" 2>&1 </dev/null &
NGINX_PID=$!; PIDS+=("$NGINX_PID")
wait_until nginx "$NGINX_PID" "$WORKDIR/logs/nginx.log" \
  curl -fsS --noproxy '*' --max-time 2 "http://127.0.0.1:$LB_PORT/ready"

# --- report ------------------------------------------------------------------
{
  echo "WORKDIR=$WORKDIR"
  echo "SCRIPT_PID=$$"
  echo "LB_URL=http://127.0.0.1:$LB_PORT"
  echo "LB_WS_URL=ws://127.0.0.1:$LB_PORT/ws"
  echo "LB_PID=$NGINX_PID"
  echo "NGINX_PID=$NGINX_PID"
  echo "NATS_URL=$NATS_URL"
  echo "NATS_MONITOR_URL=http://127.0.0.1:$NATS_MON_PORT"
  echo "NATS_PID=$NATS_PID"
  echo "REDIS_URL=$REDIS_URL"
  echo "REDIS_PID=$REDIS_PID"
  echo "NODES=$NODES"
  for (( i=1; i<=NODES; i++ )); do
    echo "GW${i}_NODE_ID=gw$i"
    echo "GW${i}_URL=http://127.0.0.1:${GW_PORTS[$(( i - 1 ))]}"
    echo "GW${i}_WS_URL=ws://127.0.0.1:${GW_PORTS[$(( i - 1 ))]}/ws"
    echo "GW${i}_PID=${GW_PIDS[$(( i - 1 ))]}"
    echo "GW${i}_LOG=$WORKDIR/logs/gw$i.log"
  done
  echo "JWT_SECRET=$JWT_SECRET"
  echo "ADMIN_KEY=$ADMIN_KEY"
  echo "READY=1"
} >"$WORKDIR/env.tmp"
mv "$WORKDIR/env.tmp" "$WORKDIR/env"
cat "$WORKDIR/env"

# --- stay up -----------------------------------------------------------------
if [ "$FOREGROUND" -eq 1 ]; then
  echo "local-cluster: running; logs in $WORKDIR/logs; Ctrl-C to stop" >&2
  tail -n 0 -F "$WORKDIR"/logs/gw*.log "$WORKDIR/logs/nginx.log" >&2 &
  PIDS+=("$!")
fi
# Exit when NATS, Redis or nginx dies, or the --watch-pid process. Gateway nodes are
# not watched: a test may stop one on purpose (kill -TERM "$GW2_PID" to watch a drain)
# and go on. `sleep & wait` keeps the traps responsive to signals.
while :; do
  if [ -n "$WATCH_PID" ] && ! kill -0 "$WATCH_PID" 2>/dev/null; then
    echo "local-cluster: watched process $WATCH_PID is gone; stopping" >&2; exit 0
  fi
  for pid in "$NATS_PID" "$REDIS_PID" "$NGINX_PID"; do
    kill -0 "$pid" 2>/dev/null || { echo "local-cluster: process $pid exited; stopping" >&2; exit 1; }
  done
  sleep 1 &
  wait $! || true
done
