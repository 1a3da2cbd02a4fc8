#!/usr/bin/env bash
# `make run`: a single-node Fleet server on the embedded `storage` backend, in ./.run.
# The first run writes .run/config.yaml with a fresh admin password and API key, printed once.
# HOST and PORT override the listener (default 127.0.0.1:8768, so a trial is not exposed).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-.run}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8768}
# The node template the Settings page builds packages from. On Linux the macOS slot holds Linux
# binaries, so the pkgs it builds are development builds (said on the page).
if [ "$(uname -s)" = Darwin ]; then
  bash scripts/node-template.sh target/node-template
  FOREIGN_ARG=()
else
  FOREIGN=1 bash scripts/node-template.sh target/node-template >/dev/null
  FOREIGN_ARG=(--allow-foreign-binaries)
fi
BIN=target/release/fleet-server
mkdir -p "$RUN_DIR"
if [ ! -f "$RUN_DIR/config.yaml" ]; then
  "$BIN" config init --output "$RUN_DIR/config.yaml" \
    --state-dir "$PWD/$RUN_DIR/state" --storage-path "$PWD/$RUN_DIR/storage" \
    --host "$HOST" --port "$PORT" --node-name primary \
    --template-dir "$PWD/target/node-template" ${FOREIGN_ARG[@]+"${FOREIGN_ARG[@]}"}
else
  echo "Using $RUN_DIR/config.yaml (its admin password was shown when it was made; delete $RUN_DIR for a new one)"
fi
echo
echo "Dashboard: http://$HOST:$PORT/settings  (Settings → Cluster Node Installer builds node packages)"
echo "Status:  curl http://$HOST:$PORT/api/fleet/cluster/status"
echo "Health:  curl http://$HOST:$PORT/api/fleet/cluster/health"
echo "Stop with Ctrl-C."
echo
mkdir -p "$RUN_DIR/storage"
exec "$BIN" serve --config "$RUN_DIR/config.yaml"
