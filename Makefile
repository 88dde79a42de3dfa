# rkube's commands. `make dev` runs rkube; `make test` runs the tests; `make verify` is the gate
# run before every commit (format, lints, tests). Each target installs the system packages it
# needs first (scripts/deps.sh, with apt-get).

CARGO ?= cargo
# Release builds everywhere: RocksDB is compiled once, and tests exercise the binaries users run.
PROFILE := --release

.PHONY: deps test-deps dev build test verify fmt clippy bench-kv clean

deps:
	@scripts/deps.sh build

test-deps:
	@scripts/deps.sh test

build: deps
	$(CARGO) build $(PROFILE) --bins

dev: deps
	$(CARGO) run $(PROFILE) --bin rkube -- dev

test: test-deps
	$(CARGO) test $(PROFILE) --all-targets

fmt:
	$(CARGO) fmt --all -- --check

clippy: deps
	$(CARGO) clippy $(PROFILE) --all-targets -- -D warnings

verify: fmt clippy test

bench-kv:
	@scripts/deps.sh bench
	bench/kv/run.sh

clean:
	$(CARGO) clean

# The docker-compose cluster (docker/, docker-compose.yml; see README). `make images` builds the
# release binaries in the shared cargo cache (where RocksDB is already compiled) and the local
# image rkube:dev FROM scratch; `make cluster` starts three masters and waits for a leader;
# `make cluster-test` restarts them one at a time under writes and checks nothing was lost.
RKUBE_TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),$(HOME)/.cache/rkube-target)

.PHONY: images cluster cluster-down cluster-test

images: deps
	@docker/deps.sh
	CARGO_TARGET_DIR=$(RKUBE_TARGET_DIR) $(CARGO) build $(PROFILE) --bins
	CARGO_TARGET_DIR=$(RKUBE_TARGET_DIR) docker/build-image.sh

cluster: images
	docker/cluster.sh up

cluster-down:
	docker/cluster.sh down

# The cluster is removed afterwards whether the check passed or not.
cluster-test: images
	docker/cluster.sh up && docker/rolling-restart.sh; status=$$?; docker/cluster.sh down; exit $$status
