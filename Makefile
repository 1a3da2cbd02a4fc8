# Thin wrappers that mirror CI: `make ci` = deps + fmt-check + lint + check-licenses + test
# (.ci/run calls it).
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: deps build test lint fmt fmt-check ci fuzz run demo bench clean node-template pkg check-generated check-macos check-workflows check-licenses

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

## The installer stub's unsealer under cargo-fuzz for a bounded time (FUZZ_SECONDS, default 30).
fuzz:
	bash scripts/fuzz.sh

## Type-check every cfg(target_os = "macos") path on Linux against the locked crates, and
## show that a broken macOS line fails it (scripts/check-macos.sh; offline after cargo fetch).
check-macos:
	bash scripts/check-macos.sh

## Validate .github/workflows/*.yml with actionlint (installed by scripts/install-deps.sh).
check-workflows:
	bash scripts/check-workflows.sh

ci: deps fmt-check lint check-licenses check-generated check-macos check-workflows test fuzz

## The descriptor set that stands in for protoc (tools/protoc/) is what a real protoc makes.
check-generated:
	bash tools/protoc/regenerate.sh --check

## No copyleft crate (GPL, AGPL, LGPL, …; MPL-2.0 allowed) linked into fleet-server or the stub.
check-licenses:
	bash scripts/check-licenses.sh

## A single-node server on the embedded storage backend in ./.run (no external service).
run:
	bash scripts/run.sh

## Fill target/node-template with this host's binaries (universal on a Mac; Linux ones here).
node-template:
	bash scripts/node-template.sh target/node-template

## A node package built from config_cluster_example.yaml, into target/ (its shared directory
## is moved to target/pkg-share, so the build can record the enrollment without a real share).
## On Linux the macOS slot holds Linux binaries, so the pkg is a development build.
pkg:
	FOREIGN=$$( [ "$$(uname -s)" = Darwin ] && echo 0 || echo 1 ) bash scripts/node-template.sh target/node-template
	mkdir -p target/pkg-share
	sed "s|storage_path: /Volumes/fleet-share|storage_path: $(CURDIR)/target/pkg-share|" \
	  config_cluster_example.yaml > target/pkg-example.yaml
	target/release/fleet-server package build --config target/pkg-example.yaml \
	  --template-dir target/node-template --node-name server-03 \
	  --output target/FleetServerClusterNode.pkg --force \
	  $$( [ "$$(uname -s)" = Darwin ] || echo --allow-foreign-binaries )
	target/release/fleet-server package inspect target/FleetServerClusterNode.pkg

## Two nodes on one machine: a primary builds a bundle over HTTP, the bundle joins. No root,
## no external service (BACKEND=redis uses a private redis-server). Ctrl-C or SIGTERM stops it.
## Installs only what it needs (curl, python3; redis-server for BACKEND=redis), not the test deps.
demo:
	bash scripts/install-deps.sh --demo
	bash scripts/demo.sh

## Benchmarks: print figures beside their targets (no assertions).
bench: deps
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench -p fleet-tests --bench cluster
	$(CARGO) bench -p fleet-package --bench build

clean:
	$(CARGO) clean
	rm -rf .run
