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
#
# From an upgrade bundle (fleet-server-upgrade-<version>.tar.gz: fleet-upgrade instead of a
# sealed configuration) the same command upgrades the node installed here: the stub checks
# that it is a node (configuration and node id present) whose daemon is older; the running
# daemon is stopped, the binaries are swapped by rename and the daemon is started again;
# configuration, state and node id stay as they are. "✅ Upgraded <id> to <version>", exit 0;
# 50 not a node, 51 not older (nothing changed); 40, 41 as above.
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

# Waits (PROVISION_WAIT seconds, default 30) for the daemon's first outcome and reports it:
# $1 (a printf format for the node id) when it joined; exit 40 when its enrollment was refused,
# 41 when it has not joined in time, 1 when the daemon stopped. $2 names it in messages.
first_outcome() {
    WAIT=${PROVISION_WAIT:-30}
    case "$WAIT" in '' | *[!0-9]*) die "PROVISION_WAIT must be a number of seconds" ;; esac
    i=0
    while [ ! -s "$OUTCOME" ] && [ "$i" -lt $((WAIT * 10)) ]; do
        # The daemonized process writes its pid file a moment after provision's fork returns:
        # only a pid that was written and is gone means the daemon stopped.
        pid=$(cat "$PIDFILE" 2>/dev/null || true)
        if [ "$SYSTEMD" -eq 0 ] && [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            echo "❌ $2 stopped before joining the cluster:" >&2
            tail -n 20 "$ROOT/var/log/fleet-server.log" >&2 2>/dev/null || true
            exit 1
        fi
        sleep 0.1
        i=$((i + 1))
    done
    outcome=$(cat "$OUTCOME" 2>/dev/null || true)
    case "$outcome" in
        "joined "*)
            # shellcheck disable=SC2059 # $1 is the caller's format
            printf "$1\n" "${outcome#joined }"
            ;;
        "refused "*)
            echo "❌ Enrollment refused: ${outcome#refused }" >&2
            exit 40
            ;;
        *)
            echo "⏳ $2 has not joined the cluster within ${WAIT} s; it keeps trying (see $LOG_HINT)" >&2
            exit 41
            ;;
    esac
}

# The pid in pid file $1 when it is a running fleet-server of this root, else nothing: a pid
# file can be stale (the pid reused) or planted, and provision.sh signals no other process.
fleet_server_pid() {
    _pid=$(head -c 32 "$1" 2>/dev/null | tr -d ' \n' || true)
    case "$_pid" in '' | *[!0-9]*) return 0 ;; esac
    _exe=$(readlink "/proc/$_pid/exe" 2>/dev/null || true)
    case "$_exe" in
        */fleet-server | */fleet-server" (deleted)" | */fleet-server.upgrade | */fleet-server.upgrade" (deleted)")
            echo "$_pid"
            ;;
        "") ;;
        *) echo "provision.sh: $1 names process $_pid ($_exe), which is not fleet-server: not signalling it" >&2 ;;
    esac
}

# The upgrade of an installed node (see the top); exits unless it upgraded.
upgrade() {
    for f in fleet-server fleet-installer-stub fleet-server.service uninstall.sh; do
        [ -f "$HERE/$f" ] || die "missing $HERE/$f: extract the whole bundle and run provision.sh from it"
    done
    VERSION=$(sed -n 's/^version \([0-9A-Za-z.+-]*\)$/\1/p' "$HERE/fleet-upgrade")
    [ -n "$VERSION" ] || die "$HERE/fleet-upgrade names no version: extract the whole bundle again"

    # 1. A node is installed here and its daemon is older (the stub reads only).
    set +e
    "$HERE/fleet-installer-stub" --target-root "${ROOT:-/}"
    rc=$?
    set -e
    if [ "$rc" -ne 0 ]; then
        echo "provision.sh: upgrade refused (exit $rc): nothing was changed" >&2
        exit "$rc"
    fi
    BIN="$ROOT/usr/local/bin/fleet-server"
    LIB="$ROOT/usr/local/lib/fleet-server"
    TEMPLATE="$LIB/node-template/linux-x86_64"
    STATE="$ROOT/var/lib/fleet-server"
    CONFIG="$ROOT/etc/fleet-server/config.yaml"
    PIDFILE="$ROOT/run/fleet-server.pid"

    # 2. The new files beside the old ones (same directories: the swap below is a rename).
    install -d -m 0755 "$ROOT/usr/local/bin" "$LIB" "$TEMPLATE"
    trap 'rm -f "$BIN.upgrade" "$TEMPLATE/fleet-installer-stub.upgrade" "$LIB/uninstall.sh.upgrade"' EXIT
    install -m 0755 "$HERE/fleet-server" "$BIN.upgrade"
    install -m 0755 "$HERE/fleet-installer-stub" "$TEMPLATE/fleet-installer-stub.upgrade"
    install -m 0755 "$HERE/uninstall.sh" "$LIB/uninstall.sh.upgrade"

    # 3. Stop the daemon started without systemd (under systemd, `restart` below stops it):
    # only the process its pid file names, and only when that is a fleet-server.
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    case "$pid" in '' | *[!0-9]*) pid="" ;; esac
    if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ]; then
        args=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null || true)
        [ -n "$(fleet_server_pid "$PIDFILE" 2>/dev/null)" ] ||
            die "$PIDFILE names process $pid, which is not fleet-server ($(readlink "/proc/$pid/exe" 2>/dev/null || echo unknown)): not stopping it (a stale pid file? remove it and run provision.sh again); nothing was changed"
        # Started again as it ran: the same port unless --port says otherwise.
        if [ -z "$PORT" ]; then
            PORT=$(printf '%s\n' "$args" | sed -n '/^--port$/{n;p;q}')
        fi
        kill -TERM "$pid" 2>/dev/null || true
        i=0
        while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 300 ]; do
            sleep 0.1
            i=$((i + 1))
        done
        kill -0 "$pid" 2>/dev/null && die "fleet-server (pid $pid) did not stop within 30 s: nothing was changed"
        rm -f "$PIDFILE"
    fi

    # 4. Swap: each rename replaces a file whole; configuration, state and node id are untouched.
    mv -f "$BIN.upgrade" "$BIN"
    mv -f "$TEMPLATE/fleet-installer-stub.upgrade" "$TEMPLATE/fleet-installer-stub"
    mv -f "$LIB/uninstall.sh.upgrade" "$LIB/uninstall.sh"
    trap - EXIT
    ln -sfn ../../../../bin/fleet-server "$TEMPLATE/fleet-server"
    OUTCOME="$STATE/first-outcome"
    rm -f "$OUTCOME"

    # 5. Start it again.
    if [ "$SYSTEMD" -eq 1 ]; then
        install -d -m 0755 "$ROOT/etc/systemd/system"
        install -m 0644 "$HERE/fleet-server.service" "$ROOT/etc/systemd/system/fleet-server.service"
        if [ -n "$ROOT" ]; then
            echo "✅ Upgraded the node under $ROOT to $VERSION (it starts when that system boots)"
            exit 0
        fi
        systemctl daemon-reload
        systemctl restart fleet-server.service
        LOG_HINT="journalctl -u fleet-server"
    else
        install -d -m 0755 "$ROOT/run" "$ROOT/var/log"
        "$BIN" serve --config "$CONFIG" --daemonize \
            ${ROOT:+--root "$ROOT"} ${PORT:+--port "$PORT"} --pid-file "$PIDFILE" --log-file "$ROOT/var/log/fleet-server.log"
        LOG_HINT="$ROOT/var/log/fleet-server.log"
    fi

    # 6. Its first outcome (bounded wait), as after an install.
    first_outcome "✅ Upgraded %s to $VERSION" "fleet-server $VERSION"
}

HERE=$(cd "$(dirname "$0")" && pwd)
if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root: sudo $0"
fi
if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
fi

if [ -f "$HERE/fleet-upgrade" ]; then
    upgrade
    exit 0
fi

for f in fleet-server fleet-installer-stub fleet-config.sealed fleet-server.service uninstall.sh; do
    [ -f "$HERE/$f" ] || die "missing $HERE/$f: extract the whole bundle and run provision.sh from it"
done

# A reinstall replaces a daemon started earlier without systemd.
PIDFILE="$ROOT/run/fleet-server.pid"
if [ -f "$PIDFILE" ]; then
    pid=$(fleet_server_pid "$PIDFILE")
    if [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; then
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 30 ]; do
            sleep 1
            i=$((i + 1))
        done
    fi
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
first_outcome "✅ Joined the cluster as %s" "fleet-server"
