# Thin wrappers that mirror CI: `make ci` = deps + fmt-check + lint + test (.ci/run calls it).
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: deps build test lint fmt fmt-check ci run bench clean

## Install what the tests and the demo need (Debian: apt; macOS: prints the brew line).
deps:
	bash scripts/install-deps.sh

build:
	$(CARGO) build --workspace --bins

## The whole test suite: unit tests, backend conformance, black-box daemons, packages, stub.
test: deps build
	$(CARGO) test --workspace --no-fail-fast

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

ci: deps fmt-check lint test

## A single-node server on the embedded storage backend in ./.run (no external service).
run:
	bash scripts/run.sh

## Benchmarks: print figures beside their targets (no assertions).
bench: deps
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench -p fleet-tests --bench cluster

clean:
	$(CARGO) clean
	rm -rf .run
