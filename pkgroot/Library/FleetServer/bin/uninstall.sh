#!/bin/sh
# Removes a Fleet Server cluster node installed by the macOS package
# (com.fleet.server.cluster) or by the Linux provision bundle.
#
#   sudo /Library/FleetServer/bin/uninstall.sh [--purge]         (macOS)
#   sudo /usr/local/lib/fleet-server/uninstall.sh [--purge]      (Linux)
#
# Without --purge the configuration and the state (the node id) stay, so a
# reinstall of a package keeps the node's identity; --purge removes them and
# the logs too.
# --root DIR removes the files under DIR instead of /, and leaves launchd,
# systemd and the package receipt alone (for tests and directory installs;
# a daemon started from a pid file under DIR is still stopped).
set -eu
PATH=/usr/bin:/bin:/usr/sbin:/sbin
export PATH

LABEL=com.fleet.server.cluster
PURGE=0
ROOT=""

usage() {
    echo "usage: $0 [--purge] [--root DIR]" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --purge) PURGE=1 ;;
        --root)
            [ $# -ge 2 ] || usage
            ROOT="${2%/}"
            shift
            ;;
        -h | --help) usage ;;
        *)
            echo "uninstall.sh: unknown argument: $1" >&2
            usage
            ;;
    esac
    shift
done

if [ -z "$ROOT" ] && [ "$(/usr/bin/id -u)" -ne 0 ]; then
    echo "uninstall.sh: run as root (sudo $0)" >&2
    exit 1
fi

# Stops a daemon started with --daemonize --pid-file (Linux --no-systemd installs).
stop_pidfile_daemon() {
    pidfile="$1"
    [ -f "$pidfile" ] || return 0
    pid=$(/bin/cat "$pidfile" 2>/dev/null || true)
    case "$pid" in '' | *[!0-9]*) /bin/rm -f "$pidfile"; return 0 ;; esac
    if /bin/kill -TERM "$pid" 2>/dev/null; then
        i=0
        while /bin/kill -0 "$pid" 2>/dev/null && [ $i -lt 30 ]; do
            /bin/sleep 1
            i=$((i + 1))
        done
    fi
    /bin/rm -f "$pidfile"
}

uninstall_macos() {
    if [ -z "$ROOT" ]; then
        /bin/launchctl bootout "system/$LABEL" 2>/dev/null || true
    fi
    /bin/rm -f "$ROOT/Library/LaunchDaemons/$LABEL.plist"
    /bin/rm -f "$ROOT/private/etc/newsyslog.d/fleet-server.conf"
    /bin/rm -rf "$ROOT/Library/FleetServer/bin" "$ROOT/Library/FleetServer/node-template"
    if [ "$PURGE" -eq 1 ]; then
        /bin/rm -rf "$ROOT/Library/FleetServer"
        /bin/rm -f "$ROOT"/private/var/log/fleet-server.log*
    fi
    if [ -z "$ROOT" ]; then
        /usr/sbin/pkgutil --forget "$LABEL" >/dev/null 2>&1 || true
    fi
}

uninstall_linux() {
    if [ -z "$ROOT" ] && [ -x /bin/systemctl ] && [ -f /etc/systemd/system/fleet-server.service ]; then
        /bin/systemctl disable --now fleet-server.service || true
    fi
    stop_pidfile_daemon "$ROOT/run/fleet-server.pid"
    if [ -f "$ROOT/etc/systemd/system/fleet-server.service" ]; then
        /bin/rm -f "$ROOT/etc/systemd/system/fleet-server.service"
        if [ -z "$ROOT" ] && [ -x /bin/systemctl ]; then
            /bin/systemctl daemon-reload || true
        fi
    fi
    /bin/rm -f "$ROOT/usr/local/bin/fleet-server"
    /bin/rm -rf "$ROOT/usr/local/lib/fleet-server"
    if [ "$PURGE" -eq 1 ]; then
        /bin/rm -rf "$ROOT/etc/fleet-server" "$ROOT/var/lib/fleet-server"
        /bin/rm -f "$ROOT"/var/log/fleet-server.log*
    fi
}

case "$(/usr/bin/uname -s)" in
    Darwin) uninstall_macos ;;
    Linux) uninstall_linux ;;
    *)
        echo "uninstall.sh: unsupported system $(/usr/bin/uname -s)" >&2
        exit 1
        ;;
esac

if [ "$PURGE" -eq 1 ]; then
    echo "Fleet Server cluster node removed (configuration and state purged)."
else
    echo "Fleet Server cluster node removed (configuration and state kept; --purge removes them)."
fi
