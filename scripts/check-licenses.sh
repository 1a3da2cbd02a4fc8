#!/usr/bin/env bash
# Licence check (make check-licenses, run by make ci): fails if a copyleft crate reaches the
# linked (normal) dependency graph of a shipped binary, fleet-server or fleet-installer-stub,
# on any target (`cargo tree --target all -e normal`). Copyleft: GPL, AGPL, LGPL and the other
# reciprocal licences below. MPL-2.0 is allowed: its copyleft is per file (our code links it
# unchanged; the MPL files stay under the MPL), see README "Licences". A dual licence passes
# when one alternative is free of copyleft (`MIT OR LGPL-2.1-or-later`); a crate without an
# SPDX licence fails (it must be looked at). Dev-dependencies (test oracles such as the
# GPL-3.0 stuckliste) and build-dependencies are not linked into the binaries.
#
# Before the real check, a self-test proves the check bites: the rules on fixed lines, and a
# throwaway crate with stuckliste as a normal dependency (offline, from Cargo.lock) must fail.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
SHIPPED=(fleet-server fleet-installer-stub)

# Reads "name version|licence" lines; prints the ones no alternative of which is free of
# copyleft. SPDX: OR between alternatives, AND/WITH within one; old-style "/" means OR.
offenders() {
  awk -F'|' '
    BEGIN { copyleft = "^(A?GPL|LGPL|EUPL|CDDL|EPL|OSL|SSPL|CPAL|RPL|MS-RL|CC-BY-SA|Sleepycat|QPL|CECILL|IPL|CPL|APSL|NPL|ODbL)" }
    NF == 0 || $1 == "" { next }
    {
      lic = $2
      sub(/ \(\*\)$/, "", lic)
      gsub(/[()]/, " ", lic)
      gsub(/\//, " OR ", lic)
      if (lic ~ /^[ \t]*$/) { print $1 " (no SPDX licence)"; next }
      n = split(lic, alts, / OR /)
      ok = 0
      for (i = 1; i <= n; i++) {
        m = split(alts[i], terms, / (AND|WITH) /)
        clean = 1
        for (j = 1; j <= m; j++) {
          t = terms[j]; gsub(/[ \t]/, "", t)
          if (t == "") continue
          if (t ~ /^MPL-2\.0/) continue
          if (t ~ copyleft) clean = 0
        }
        if (clean) { ok = 1; break }
      }
      if (!ok) print $1 " (" $2 ")"
    }'
}

graph() { # cargo tree of the given manifest's packages: "name version|licence", deduplicated
  "$CARGO" tree --target all -e normal --prefix none --format '{p}|{l}' "$@" |
    sed 's/ (\*)$//' | sort -u | sed '/^$/d'
}

self_test() {
  local bad
  bad=$(printf '%s\n' \
    'gpl 1.0.0|GPL-3.0' 'agpl 1.0.0|AGPL-3.0-only' 'both 1.0.0|MIT AND GPL-2.0-or-later' \
    'none 1.0.0|' 'dual 1.0.0|MIT OR LGPL-2.1-or-later' 'mpl 1.0.0|MPL-2.0' \
    'old 1.0.0|MIT/Apache-2.0' 'paren 1.0.0|(MIT OR Apache-2.0) AND Unicode-3.0' \
    'exc 1.0.0|Apache-2.0 WITH LLVM-exception OR MIT' 'lgplonly 1.0.0|LGPL-3.0 (*)' |
    offenders | cut -d' ' -f1 | tr '\n' ' ')
  if [ "$bad" != "gpl agpl both none lgplonly " ]; then
    echo "check-licenses self-test: the rules flagged [$bad], expected [gpl agpl both none lgplonly ]" >&2
    exit 1
  fi
  # A crate that links stuckliste (GPL-3.0) must fail.
  local probe
  probe=$(mktemp -d)
  trap 'rm -rf "$probe"' RETURN
  mkdir -p "$probe/src"
  : >"$probe/src/lib.rs"
  printf '[package]\nname = "license-probe"\nversion = "0.0.0"\nedition = "2021"\nlicense = "MIT"\n\n[dependencies]\nstuckliste = "0.4"\n\n[workspace]\n' >"$probe/Cargo.toml"
  cp Cargo.lock "$probe/Cargo.lock"
  bad=$(graph --offline --manifest-path "$probe/Cargo.toml" | offenders)
  if ! grep -q '^stuckliste ' <<<"$bad"; then
    echo "check-licenses self-test: stuckliste as a normal dependency was not caught (got: $bad)" >&2
    exit 1
  fi
  echo "check-licenses: self-test ok (a GPL normal dependency is caught: ${bad%% (*})"
}

self_test
args=()
for p in "${SHIPPED[@]}"; do args+=(-p "$p"); done
lines=$(graph --locked "${args[@]}")
bad=$(offenders <<<"$lines")
if [ -n "$bad" ]; then
  echo "check-licenses: copyleft licences reach ${SHIPPED[*]}:" >&2
  echo "$bad" >&2
  echo "(move them to [dev-dependencies], replace them, or review and extend the rules in $0)" >&2
  exit 1
fi
mpl=$(grep -c '|MPL-2\.0' <<<"$lines" || true)
echo "check-licenses: ok: $(wc -l <<<"$lines") crates linked into ${SHIPPED[*]} on any target; no copyleft but MPL-2.0 ($mpl crates, file-level)"
