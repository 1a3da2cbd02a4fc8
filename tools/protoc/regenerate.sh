#!/usr/bin/env bash
# Recompiles tools/protoc/etcd-client.fds from the locked etcd-client crate's .proto files with a
# real protoc (Debian: protobuf-compiler and libprotobuf-dev), exactly as prost-build calls it.
#   tools/protoc/regenerate.sh          rewrite the descriptor set and its sources digest
#   tools/protoc/regenerate.sh --check  fail if the committed files differ (make check-generated)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/../.."
protoc=$(command -v protoc) || { echo "regenerate.sh: a real protoc is needed (apt-get install protobuf-compiler libprotobuf-dev)" >&2; exit 1; }
# The etcd-client crate as Cargo.lock pins it (downloaded by cargo if need be).
dir=$(cargo metadata --format-version 1 --locked 2>/dev/null | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(next(p["manifest_path"] for p in m["packages"] if p["name"] == "etcd-client").rsplit("/", 1)[0])')
# The file list of etcd-client's build.rs, in its order.
mapfile -t protos < <(grep -o '"proto/[^"]*\.proto"' "$dir/build.rs" | tr -d '"')
[ ${#protos[@]} -gt 0 ] || { echo "regenerate.sh: no .proto files found in $dir/build.rs" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
(cd "$dir" && "$protoc" --include_imports --include_source_info -o "$tmp/etcd-client.fds" -I proto "${protos[@]}")
sha256() { if command -v sha256sum >/dev/null; then sha256sum; else shasum -a 256; fi; }
(cd "$dir" && for p in "${protos[@]}"; do printf '%s\n' "$p"; sha256 < "$p"; done) | sha256 | cut -d' ' -f1 > "$tmp/etcd-client.sources.sha256"
if [ "${1:-}" = --check ]; then
  for f in etcd-client.fds etcd-client.sources.sha256; do
    cmp -s "$tmp/$f" "$here/$f" || { echo "check-generated: tools/protoc/$f is not current ($("$protoc" --version), $dir): run tools/protoc/regenerate.sh" >&2; exit 1; }
  done
  echo "check-generated: tools/protoc/etcd-client.fds is current ($("$protoc" --version))"
else
  cp "$tmp/etcd-client.fds" "$tmp/etcd-client.sources.sha256" "$here/"
  echo "regenerate.sh: wrote tools/protoc/etcd-client.fds from $dir"
fi
