#!/usr/bin/env bash
# `make node-template`: fills the node template directory with this host's binaries, for the
# package builder (package.template_dir). On a Mac: universal (arm64 + x86_64) binaries made
# with lipo, in macos/. On Linux: linux-x86_64/; with FOREIGN=1 also copies them into macos/
# for development pkgs (built with --allow-foreign-binaries, installable only by the emulated
# Installer in the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/node-template}
mkdir -p "$OUT"
case "$(uname -s)" in
  Darwin)
    for t in aarch64-apple-darwin x86_64-apple-darwin; do
      rustup target add "$t" >/dev/null
      cargo build --release --target "$t" -p fleet-server --bin fleet-server
      cargo build --profile stub --target "$t" -p fleet-installer-stub --bin fleet-installer-stub
    done
    mkdir -p "$OUT/macos"
    lipo -create -output "$OUT/macos/fleet-server" \
      target/aarch64-apple-darwin/release/fleet-server target/x86_64-apple-darwin/release/fleet-server
    lipo -create -output "$OUT/macos/fleet-installer-stub" \
      target/aarch64-apple-darwin/stub/fleet-installer-stub target/x86_64-apple-darwin/stub/fleet-installer-stub
    # Apple silicon refuses unsigned code: an ad-hoc signature is enough for a preinstall.
    codesign --force --sign - "$OUT/macos/fleet-server" "$OUT/macos/fleet-installer-stub"
    ;;
  Linux)
    cargo build --release -p fleet-server --bin fleet-server
    # The stub runs on machines we know nothing about: linked statically (glibc's static
    # libraries; no NSS lookups in the stub), built for size.
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile stub \
      --target x86_64-unknown-linux-gnu -p fleet-installer-stub --bin fleet-installer-stub
    mkdir -p "$OUT/linux-x86_64"
    install -m 0755 target/release/fleet-server "$OUT/linux-x86_64/fleet-server"
    install -m 0755 target/x86_64-unknown-linux-gnu/stub/fleet-installer-stub \
      "$OUT/linux-x86_64/fleet-installer-stub"
    if [ "${FOREIGN:-0}" = 1 ]; then
      mkdir -p "$OUT/macos"
      install -m 0755 "$OUT/linux-x86_64/fleet-server" "$OUT/linux-x86_64/fleet-installer-stub" "$OUT/macos/"
      echo "node-template: macos/ holds Linux binaries (development pkgs only)"
    fi
    ;;
esac
echo "node-template: $OUT"
ls -l "$OUT"/*
