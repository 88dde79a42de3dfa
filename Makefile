# rkube's commands. `make dev` runs rkube; `make test` runs the tests; `make verify` is the gate
# run before every commit (format, lints, tests). Each target installs the system packages it
# needs first (scripts/deps.sh, with apt-get).

CARGO ?= cargo
# Release builds everywhere: RocksDB is compiled once, and tests exercise the binaries users run.
PROFILE := --release

.PHONY: deps test-deps dev build test verify fmt clippy bench-kv bench-api bench-scheduler bench-pods clean

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

# The object API (bench/README.md): 10 000 pods on a 3-member cluster; needs nothing but the build.
bench-api: deps
	bench/api/run.sh

# The scheduler (bench/README.md): 1,000 hollow nodes, 10 000 pods, a 3,000-replica Deployment.
bench-scheduler: deps
	bench/scheduler/run.sh

# Pod start-up (bench/README.md): 100 pods on one real node (runc, root), Docker as the anchor;
# needs the test packages (runc, busybox-static, docker-registry, skopeo).
bench-pods: deps test-deps
	bench/pods/run.sh

clean:
	$(CARGO) clean

# The docker-compose cluster (docker/, docker-compose.yml; see README). `make images` builds the
# release binaries in the shared cargo cache (where RocksDB is already compiled) and the local
# image rkube:dev FROM scratch; `make cluster` starts three masters and two workers and waits for
# a leader and Ready workers; `make cluster-test` runs a Deployment on the workers and deletes
# it, then restarts the masters one at a time under writes, checks nothing was lost, and that
# the workers are still Ready.
RKUBE_TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),$(HOME)/.cache/rkube-target)

# Which cargo command makes the binaries the image is built from: `build` (default: `cargo build
# --release --bins`) or `test` (`cargo test --release --all-targets --no-run`, the build `make
# test` does, so right after it nothing is compiled when both use the same CARGO_TARGET_DIR, as
# .ci/run sets it; CI uses it). The two differ in the features
# of dev-dependencies (tokio's test-util), so each compiles rkube once on its own; cargo decides
# in both cases whether the binaries are up to date.
IMAGE_BINS ?= build
ifeq ($(IMAGE_BINS),build)
IMAGE_CARGO := $(CARGO) build $(PROFILE) --bins
else ifeq ($(IMAGE_BINS),test)
IMAGE_CARGO := $(CARGO) test $(PROFILE) --all-targets --no-run
else
$(error IMAGE_BINS must be build or test, not "$(IMAGE_BINS)")
endif

.PHONY: images cluster cluster-down cluster-test

images: deps
	@docker/deps.sh
	CARGO_TARGET_DIR=$(RKUBE_TARGET_DIR) $(IMAGE_CARGO)
	CARGO_TARGET_DIR=$(RKUBE_TARGET_DIR) docker/build-image.sh

cluster: images
	docker/cluster.sh up

cluster-down:
	docker/cluster.sh down

# The cluster is removed afterwards whether the check passed or not.
cluster-test: images
	docker/cluster.sh up && docker/pods-test.sh && docker/rolling-restart.sh && docker/cluster.sh wait; \
	  status=$$?; docker/cluster.sh down; exit $$status

# tests/jepsen (see tests/jepsen/README.md): workloads against a fresh three-member compose
# cluster per scenario while a nemesis kills, pauses, partitions and replaces members; the
# histories are checked (linearizability, lost writes, watch guarantees, recovery). One line per
# scenario; non-zero exit on any anomaly. The harness starts and removes its clusters itself,
# also on failure or interrupt. JEPSEN_ARGS adds flags (e.g. --only register --time-scale 0.5).
JEPSEN := $(RKUBE_TARGET_DIR)/release/jepsen
JEPSEN_ARGS ?=

.PHONY: jepsen jepsen-smoke jepsen-etcd jepsen-broken

jepsen: images
	@tests/jepsen/deps.sh
	$(JEPSEN) run full $(JEPSEN_ARGS)

jepsen-smoke: images
	@tests/jepsen/deps.sh
	$(JEPSEN) run smoke $(JEPSEN_ARGS)

# The same suite against etcd 3.4 (Debian's etcd-server, FROM scratch image): the checkers'
# fairness check.
jepsen-etcd: deps
	@tests/jepsen/deps.sh etcd
	CARGO_TARGET_DIR=$(RKUBE_TARGET_DIR) $(CARGO) build $(PROFILE) --bin jepsen
	docker/build-etcd-image.sh
	$(JEPSEN) run full --system etcd $(JEPSEN_ARGS)

# rkube with the test-only RKUBE_TEST_UNSAFE_STALE_READS switch under partitions: passes only
# if the register checker finds the stale reads.
jepsen-broken: images
	@tests/jepsen/deps.sh
	$(JEPSEN) run broken $(JEPSEN_ARGS)
