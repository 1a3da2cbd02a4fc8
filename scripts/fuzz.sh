#!/usr/bin/env bash
# `make fuzz`: runs the cargo-fuzz target for the installer stub's unsealer for a bounded time
# (FUZZ_SECONDS, default 30). Only one Rust toolchain (stable) exists here: RUSTC_BOOTSTRAP=1
# lets cargo-fuzz use the nightly-only sanitizer flags it needs. Installs cargo-fuzz if missing.
set -euo pipefail
cd "$(dirname "$0")/../installer-stub"
SECONDS_LIMIT=${FUZZ_SECONDS:-30}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (once)"
  cargo install --locked cargo-fuzz
fi
mkdir -p fuzz/corpus/open_sealed
RUSTC_BOOTSTRAP=1 cargo fuzz run open_sealed fuzz/corpus/open_sealed -- \
  -max_total_time="$SECONDS_LIMIT" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -25
