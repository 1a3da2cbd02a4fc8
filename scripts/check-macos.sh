#!/usr/bin/env bash
# Type-checks our `cfg(target_os = "macos")` code on Linux, where no darwin std exists.
#
# How: the locked crates are vendored from the local registry (`cargo vendor --offline`), the
# few Apple-only libc items they use are patched out of that copy, and a copy of the workspace
# whose macOS-only dependency tables (`[target.'cfg(target_os = "macos")'.dependencies]`)
# apply to every target is checked with `cargo rustc --profile check`, passing
# `--cfg target_os="macos"` to OUR crates only. The dependencies are compiled as they are for
# Linux: Apple's bindings are plain `extern "C"` declarations that type-check anywhere, and
# nothing is linked. So a type error, a wrong method or a missing import in a macOS path fails
# here; what only the real frameworks can show (behaviour, linking) is left to
# .github/workflows/macos.yml.
#
# rustc adds to, never replaces, the built-in cfgs: our crates see target_os "linux" and
# "macos" at once, so `cfg(target_os = "macos")` items are compiled and `cfg(not(target_os =
# "macos"))` ones are not, which is what this check is for.
#
#   scripts/check-macos.sh     (offline once the locked crates are fetched; it fetches them if not)
# The copy, the vendored crates and the check results live in target/check-macos.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
CARGO=${CARGO:-cargo}

# Crates with macOS code paths (lib and bins), checked with the macOS cfg.
CRATES=(fleet-installer-stub fleet-server)

start=$(date +%s)
# Kept between runs (stable paths keep the dependencies' check results valid).
base="$repo/target/check-macos"
work="$base/workspace"
vendor="$base/vendor"
mkdir -p "$base"

# The locked crates, from the local registry; on a machine that has not fetched the
# macOS-only ones yet, `cargo fetch` (crates.io) first.
rm -rf "$vendor"
if ! "$CARGO" vendor --locked --offline --quiet "$vendor" >/dev/null 2>&1; then
    echo "check-macos: fetching the locked crates for every target (cargo fetch --locked)"
    "$CARGO" fetch --locked
    rm -rf "$vendor"
    "$CARGO" vendor --locked --offline --quiet "$vendor" >/dev/null
fi

# patch CRATE FILE SED-EXPR PATTERN: edits one vendored file, failing when PATTERN is not
# there (a new crate version needs a new look). The crate's file checksums are dropped so
# that cargo accepts the edit; the package checksum (what Cargo.lock pins) is kept.
patch() {
    local crate="$1" file="$vendor/$1/$2" expr="$3" pattern="$4"
    grep -q -- "$pattern" "$file" || {
        echo "check-macos: '$pattern' not found in $file: update the patch" >&2
        exit 1
    }
    sed -i -e "$expr" "$file"
    sed -i -e 's/"files":{[^}]*}/"files":{}/' "$vendor/$crate/.cargo-checksum.json"
}
# Apple's sockaddr structs start with a length byte that Linux's libc lacks: the only
# Apple-only libc items the locked crates use (found by running this check).
patch system-configuration src/network_reachability.rs '/^ *sin6\?_len: /d' 'sin_len: '

# The workspace as it is on disk (committed or not), without build output or git data.
rm -rf "$work"
mkdir -p "$work/.cargo"
tar -C "$repo" --exclude=./target --exclude=./.git --exclude=./fuzz/target -cf - . |
    tar -C "$work" -xf -
cat >"$work/.cargo/config.toml" <<EOC
[source.crates-io]
replace-with = "vendored"
[source.vendored]
directory = "$vendor"
EOC

# The macOS dependency tables apply everywhere in the copy.
macos_table="^\[target\.'cfg(target_os = \"macos\")'\.dependencies\]"
changed=0
while IFS= read -r m; do
    if grep -q "$macos_table" "$m"; then
        sed -i "s/$macos_table/[target.'cfg(all())'.dependencies]/" "$m"
        changed=$((changed + 1))
    fi
done < <(cd "$work" && find . -name Cargo.toml -not -path './target/*' -not -path './fuzz/target/*' | sed "s|^\.|$work|")
if [ "$changed" -eq 0 ]; then
    echo "check-macos: no manifest has a macOS dependency table: nothing would be checked" >&2
    exit 1
fi

export CARGO_TARGET_DIR="$base/target"
cd "$work"
for c in "${CRATES[@]}"; do
    for kind in --lib --bins; do
        echo "check-macos: $c $kind"
        # --locked: the versions are Cargo.lock's; the copy changes none.
        "$CARGO" rustc --locked --offline --quiet --profile check -p "$c" "$kind" -- \
            --cfg 'target_os="macos"' -A explicit_builtin_cfgs_in_flags -D warnings
    done
done
echo "check-macos: the macOS paths type-check"

# Self-test: the same check must fail on a deliberately broken macOS line (a method that
# does not exist, in the gatherer), or it proves nothing.
target_file=installer-stub/src/mac_ethernet.rs
good='SCDynamicStoreBuilder::new("fleet-installer-stub")'
grep -qF "$good" "$target_file" || {
    echo "check-macos: self-test line not found in $target_file: update the self-test" >&2
    exit 1
}
sed -i 's/SCDynamicStoreBuilder::new("fleet-installer-stub")/SCDynamicStoreBuilder::no_such_method("fleet-installer-stub")/' "$target_file"
if "$CARGO" rustc --locked --offline --quiet --profile check -p fleet-installer-stub --lib -- \
    --cfg 'target_os="macos"' -A explicit_builtin_cfgs_in_flags -D warnings \
    >"$base/self-test.log" 2>&1; then
    echo "check-macos: self-test FAILED: a broken macOS line type-checked" >&2
    exit 1
fi
if ! grep -q "no_such_method" "$base/self-test.log"; then
    echo "check-macos: self-test FAILED: the broken line was not what failed:" >&2
    cat "$base/self-test.log" >&2
    exit 1
fi
echo "check-macos: self-test: a broken macOS line fails the check, as it must"
echo "check-macos: ok ($(($(date +%s) - start)) s)"
