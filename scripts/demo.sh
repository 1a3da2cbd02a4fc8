#!/usr/bin/env bash
# `make demo`: a two-node cluster on one machine, with no root and no external service.
# A primary on the storage backend (a temporary directory; BACKEND=redis: a private
# redis-server) builds a Linux provision bundle through its HTTP API; the bundle is provisioned
# with `provision.sh --root DIR --no-systemd`; the new node joins; the status shows
# Active Nodes: 2. Ctrl-C or SIGTERM stops everything and removes the temporary directory.
#   BACKEND=storage|redis   PORT=8768 (the node uses PORT+1)   BIN_DIR=target/release
#   DEMO_ONCE=1: stop right after showing the status (for tests).
set -euo pipefail
cd "$(dirname "$0")/.."
BACKEND=${BACKEND:-storage}
PORT=${PORT:-8768}
NODE_PORT=$((PORT + 1))
BIN_DIR=${BIN_DIR:-}

if [ -z "$BIN_DIR" ]; then
  cargo build --release -p fleet-server --bin fleet-server
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile stub \
    --target x86_64-unknown-linux-gnu -p fleet-installer-stub --bin fleet-installer-stub
  SERVER=target/release/fleet-server
  STUB=target/x86_64-unknown-linux-gnu/stub/fleet-installer-stub
else
  SERVER=$BIN_DIR/fleet-server
  STUB=$BIN_DIR/fleet-installer-stub
fi
SERVER=$(cd "$(dirname "$SERVER")" && pwd)/$(basename "$SERVER")

DEMO=$(mktemp -d "${TMPDIR:-/tmp}/fleet-demo.XXXXXX")
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "Stopping the demo…"
  # Every background job of this script, the idle sleeper included (a signal can arrive
  # between its `&` and the `wait`, before its pid is known to the loop).
  for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done
  if [ -f "$DEMO/node2/run/fleet-server.pid" ]; then
    PIDS+=("$(cat "$DEMO/node2/run/fleet-server.pid")")
  fi
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  rm -rf "$DEMO"
  echo "Stopped."
}
trap cleanup EXIT
# A signal ends the script after cleaning up; exit 0, as the user asked for the stop.
trap 'cleanup; exit 0' INT TERM

mkdir -p "$DEMO/template/linux-x86_64" "$DEMO/shared" "$DEMO/primary"
cp "$SERVER" "$STUB" "$DEMO/template/linux-x86_64/"

init_args=(--output "$DEMO/primary/config.yaml" --state-dir "$DEMO/primary/state"
  --host 127.0.0.1 --port "$PORT" --node-name primary --template-dir "$DEMO/template")
if [ "$BACKEND" = redis ]; then
  command -v redis-server >/dev/null || { echo "demo: redis-server not found: run scripts/install-deps.sh" >&2; exit 1; }
  REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DEMO/redis.pw"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --requirepass "$(cat "$DEMO/redis.pw")" --dir "$DEMO" --logfile "$DEMO/redis.log" &
  PIDS+=($!)
  init_args+=(--backend redis --redis-host 127.0.0.1 --redis-port "$REDIS_PORT" --redis-password-file "$DEMO/redis.pw")
elif [ "$BACKEND" = storage ]; then
  init_args+=(--backend storage --storage-path "$DEMO/shared")
else
  echo "demo: BACKEND must be storage or redis" >&2; exit 2
fi

echo "== 1. The primary"
"$SERVER" config init "${init_args[@]}" | tee "$DEMO/primary/credentials.txt"
API_KEY=$(awk '/API key:/ {print $3}' "$DEMO/primary/credentials.txt")
PASSWORD=$(awk '/Dashboard login:/ {print $5}' "$DEMO/primary/credentials.txt")
"$SERVER" serve --config "$DEMO/primary/config.yaml" > "$DEMO/primary.log" 2>&1 &
PIDS+=($!)
for i in $(seq 1 100); do
  curl -fsS --max-time 5 "http://127.0.0.1:$PORT/api/fleet/cluster/health" >/dev/null 2>&1 && break
  [ "$i" = 100 ] && { echo "demo: the primary did not start:"; cat "$DEMO/primary.log"; exit 1; }
  sleep 0.1
done
sed 's/^/   primary | /' "$DEMO/primary.log"

echo
echo "== 2. Build a Linux bundle for node2 through the primary's HTTP API"
curl -fsS --max-time 300 -o "$DEMO/node2_provision.tar.gz" -H "X-API-Key: $API_KEY" -H 'Content-Type: application/json' \
  -d '{"node_name":"node2","format":"bundle","ethernet":"skip","expires":"1d"}' \
  "http://127.0.0.1:$PORT/api/fleet/cluster/packages"
ls -l "$DEMO/node2_provision.tar.gz" | awk '{print "   " $9 " (" $5 " bytes)"}'

echo
echo "== 3. Provision node2 (as on a new machine, into a directory, without systemd)"
(cd "$DEMO" && tar -xzf node2_provision.tar.gz)
"$DEMO/node2_provision/provision.sh" --root "$DEMO/node2" --no-systemd --port "$NODE_PORT" | sed 's/^/   /'

echo
echo "== 4. The cluster"
for i in $(seq 1 100); do
  n=$(curl -fsS --max-time 5 "http://127.0.0.1:$PORT/api/fleet/cluster/status" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("active_nodes",0))' 2>/dev/null || echo 0)
  [ "$n" = 2 ] && break
  [ "$i" = 100 ] && { echo "demo: node2 did not join:"; cat "$DEMO/node2/var/log/fleet-server.log"; exit 1; }
  sleep 0.1
done
sed 's/^/   node2 | /' "$DEMO/node2/var/log/fleet-server.log"
echo
"$SERVER" cluster status --config "$DEMO/primary/config.yaml" | sed 's/^/   /'
echo
"$SERVER" cluster nodes --config "$DEMO/primary/config.yaml" | sed 's/^/   /'
echo
echo "Dashboard: http://127.0.0.1:$PORT/settings  (login: admin / $PASSWORD)"
if [ "${DEMO_ONCE:-0}" = 1 ]; then exit 0; fi
echo "Press Ctrl-C to stop the demo."
# `wait` (not a foreground sleep) lets bash run the TERM trap at once.
# The sleeper holds no output stream, so nothing outlives the script on the caller's pipe.
while :; do
  sleep 3600 </dev/null >/dev/null 2>&1 &
  wait "$!" || true
done
