#!/usr/bin/env bash
# wait-until.sh TRIES WHAT COMMAND...: runs COMMAND once a second until it succeeds; after
# TRIES failures says what it waited for and fails (a wait loop that runs out must fail the
# job, not fall through).
set -uo pipefail
tries=$1
what=$2
shift 2
for ((i = 1; i <= tries; i++)); do
    if "$@"; then
        echo "ok after $i tries: $what"
        exit 0
    fi
    sleep 1
done
echo "::error::gave up after $tries tries waiting for: $what" >&2
exit 1
