#!/bin/sh
# Provisions a Linux machine as a Fleet Server cluster node from the bundle
# <NodeName>_provision.tar.gz:
#
#   sudo tar -xvf node2_provision.tar.gz
#   cd node2_provision
#   sudo ./provision.sh
#
# The installer stub checks the wired Ethernet link and unseals the node's
# configuration to /etc/fleet-server/config.yaml; then fleet-server goes to
# /usr/local/bin and the systemd unit fleet-server.service is enabled and started.
#
#   --root DIR     install under DIR instead of /
#   --no-systemd   do not touch systemd: start the daemon in the background
#                  (pid file DIR/run/fleet-server.pid, log DIR/var/log/fleet-server.log)
#   --port N       with --no-systemd: listen on port N (several nodes on one machine)
#
# Then it waits (PROVISION_WAIT seconds, default 30) for the daemon's first outcome and prints
# "✅ Joined the cluster as <id>" or "❌ Enrollment refused: <reason>".
# Exit codes: 0 joined; the installer stub's own code when it refuses (10 no Ethernet adapter,
# 11 no active Ethernet, 21 wrong key or tampered, 22 expired, …: see installer-stub/README.md);
# 40 enrollment refused; 41 installed and started, but not joined within the wait (the daemon
# keeps trying: see its log); 1 any other failure; 2 usage.
set -eu
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

ROOT=""
SYSTEMD=1
PORT=""

usage() {
    echo "usage: $0 [--root DIR] [--no-systemd] [--port N]" >&2
    exit 2
}
die() {
    echo "provision.sh: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root)
            [ $# -ge 2 ] || usage
            ROOT="${2%/}"
            shift
            ;;
        --no-systemd) SYSTEMD=0 ;;
        --port)
            [ $# -ge 2 ] || usage
            PORT="$2"
            shift
            ;;
        -h | --help) usage ;;
        *)
            echo "provision.sh: unknown argument: $1" >&2
            usage
            ;;
    esac
    shift
done

HERE=$(cd "$(dirname "$0")" && pwd)
if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root: sudo $0"
fi
if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
fi

for f in fleet-server fleet-installer-stub fleet-config.sealed fleet-server.service uninstall.sh; do
    [ -f "$HERE/$f" ] || die "missing $HERE/$f: extract the whole bundle and run provision.sh from it"
done

# A reinstall replaces a daemon started earlier without systemd.
PIDFILE="$ROOT/run/fleet-server.pid"
if [ -f "$PIDFILE" ]; then
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    case "$pid" in
        '' | *[!0-9]*) ;;
        *)
            if kill -TERM "$pid" 2>/dev/null; then
                i=0
                while kill -0 "$pid" 2>/dev/null && [ $i -lt 30 ]; do
                    sleep 1
                    i=$((i + 1))
                done
            fi
            ;;
    esac
    rm -f "$PIDFILE"
fi

# 1. Ethernet check and configuration (writes nothing when it refuses).
set +e
"$HERE/fleet-installer-stub" --target-root "${ROOT:-/}"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
    echo "provision.sh: installer stub failed (exit $rc): nothing was installed" >&2
    exit "$rc"
fi

# 2. Files.
install -d -m 0755 "$ROOT/usr/local/bin" "$ROOT/usr/local/lib/fleet-server"
install -m 0755 "$HERE/fleet-server" "$ROOT/usr/local/bin/fleet-server"
install -m 0755 "$HERE/uninstall.sh" "$ROOT/usr/local/lib/fleet-server/uninstall.sh"
# The node template: this node builds bundles with its own binaries.
TEMPLATE="$ROOT/usr/local/lib/fleet-server/node-template/linux-x86_64"
install -d -m 0755 "$TEMPLATE"
install -m 0755 "$HERE/fleet-installer-stub" "$TEMPLATE/fleet-installer-stub"
ln -sfn ../../../../bin/fleet-server "$TEMPLATE/fleet-server"
STATE="$ROOT/var/lib/fleet-server"
install -d -m 0700 "$STATE"
# The daemon writes its first outcome here (joined / refused); an old one says nothing new.
OUTCOME="$STATE/first-outcome"
rm -f "$OUTCOME"
CONFIG="$ROOT/etc/fleet-server/config.yaml"
[ -f "$CONFIG" ] || die "the installer stub did not write $CONFIG"

# 3. Service.
if [ "$SYSTEMD" -eq 1 ]; then
    install -d -m 0755 "$ROOT/etc/systemd/system"
    install -m 0644 "$HERE/fleet-server.service" "$ROOT/etc/systemd/system/fleet-server.service"
    if [ -z "$ROOT" ]; then
        systemctl daemon-reload
        systemctl enable fleet-server.service
        systemctl restart fleet-server.service
        echo "✅ fleet-server installed and started (systemctl status fleet-server)"
        STARTED=1
        LOG_HINT="journalctl -u fleet-server"
    else
        systemctl --root="$ROOT" enable fleet-server.service
        echo "✅ fleet-server installed under $ROOT and enabled (starts when that system boots)"
    fi
else
    install -d -m 0755 "$ROOT/run" "$ROOT/var/log"
    "$ROOT/usr/local/bin/fleet-server" serve --config "$CONFIG" --daemonize \
        ${ROOT:+--root "$ROOT"} ${PORT:+--port "$PORT"} --pid-file "$PIDFILE" --log-file "$ROOT/var/log/fleet-server.log"
    echo "✅ fleet-server installed under ${ROOT:-/} and started (pid file $PIDFILE, log $ROOT/var/log/fleet-server.log)"
    STARTED=1
    LOG_HINT="$ROOT/var/log/fleet-server.log"
fi

# 4. The daemon's first outcome (bounded wait).
[ "${STARTED:-0}" -eq 1 ] || exit 0
WAIT=${PROVISION_WAIT:-30}
case "$WAIT" in '' | *[!0-9]*) die "PROVISION_WAIT must be a number of seconds" ;; esac
i=0
while [ ! -s "$OUTCOME" ] && [ "$i" -lt $((WAIT * 10)) ]; do
    # The daemonized process writes its pid file a moment after provision's fork returns:
    # only a pid that was written and is gone means the daemon stopped.
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    if [ "$SYSTEMD" -eq 0 ] && [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
        echo "❌ fleet-server stopped before joining the cluster:" >&2
        tail -n 20 "$ROOT/var/log/fleet-server.log" >&2 2>/dev/null || true
        exit 1
    fi
    sleep 0.1
    i=$((i + 1))
done
outcome=$(cat "$OUTCOME" 2>/dev/null || true)
case "$outcome" in
    "joined "*)
        echo "✅ Joined the cluster as ${outcome#joined }"
        ;;
    "refused "*)
        echo "❌ Enrollment refused: ${outcome#refused }" >&2
        exit 40
        ;;
    *)
        echo "⏳ fleet-server has not joined the cluster within ${WAIT} s; it keeps trying (see $LOG_HINT)" >&2
        exit 41
        ;;
esac
