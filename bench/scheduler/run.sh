#!/usr/bin/env bash
# Benchmarks the scheduler: a 3-member rkube cluster on loopback, its control plane as
# `rkube controller-manager` and `rkube scheduler` processes (leader-elected, as `rkube server
# --control-plane` runs them, but startable on their own), BENCH_NODES hollow nodes in one
# `rkube hollow-nodes` process, then
#   0. (BENCH_BACKLOG=1) BENCH_PODS pending pods created before the scheduler starts, then the
#      scheduler started: how fast it works through a backlog; then they are deleted;
#   1. BENCH_PODS pending pods created at once while the scheduler runs: pods bound per second
#      (first to last bind, and over 1-second windows), create->bound latency, all Running;
#      then they are deleted;
#   2. `rkctl run web --replicas=BENCH_REPLICAS`: time until that many pods are Running.
# Everything is observed through a pod watch by bench-scheduler; it prints the figures beside
# kube-scheduler's and Nomad's and the issue's target (bench-scheduler report).
#
# Usage: bench/scheduler/run.sh
# Knobs (environment):
#   BENCH_NODES          hollow nodes                          default 1000
#   BENCH_PODS           pods of phase 1                       default 10000
#   BENCH_REPLICAS       replicas of phase 2                   default 3000
#   BENCH_CONCURRENCY    creates (and deletes) in flight       default 64
#   BENCH_BACKLOG        1: run phase 0 too                    default 1
#   BENCH_MEMBERS        masters: 3, or 1                      default 3
#   BENCH_PORT_BASE      loopback ports base+1..3 (API), base+11..13 (Raft)   default 31300
#   BENCH_RESULTS        results.jsonl, report.md and logs     default bench/results/scheduler
#   BENCH_NO_BUILD=1     use the binaries already built
#   BENCH_KEEP=1         keep the members' data directories
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"

nodes=${BENCH_NODES:-1000}
pods=${BENCH_PODS:-10000}
replicas=${BENCH_REPLICAS:-3000}
concurrency=${BENCH_CONCURRENCY:-64}
members=${BENCH_MEMBERS:-3}
backlog=${BENCH_BACKLOG:-1}
port_base=${BENCH_PORT_BASE:-31300}
results=${BENCH_RESULTS:-$repo/bench/results/scheduler}
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir=$repo/$target_dir ;; esac
bin=$target_dir/release

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

case $members in 1 | 3) ;; *) die "BENCH_MEMBERS must be 1 or 3" ;; esac

rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain -- src proto build.rs Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  rev="$rev with uncommitted changes in src/"
fi
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  log "building rkube, rkctl and bench-scheduler (release)"
  cargo build --release --bin rkube --bin rkctl --bin bench-scheduler
else
  rev="$rev (tree; binaries not rebuilt, from $(date -u -r "$bin/rkube" '+%H:%M UTC' 2>/dev/null || echo '?'))"
fi
for b in rkube rkctl bench-scheduler; do [ -x "$bin/$b" ] || die "$bin/$b missing"; done

work=$(mktemp -d "${TMPDIR:-/tmp}/rkube-bench-sched.XXXXXX")
# Private copies: a build running meanwhile must not swap the binaries under the benchmark.
cp "$bin/rkube" "$bin/rkctl" "$bin/bench-scheduler" "$work/"
bin=$work
mkdir -p "$results"
out=$results/results.jsonl
: >"$out"
pids=()

cleanup() {
  local pid deadline
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  deadline=$((SECONDS + 10))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "data kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { echo $((port_base + $1)); }
for i in $(seq 1 "$members"); do
  for p in "$(port "$i")" "$(port $((10 + i)))"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p is in use (set BENCH_PORT_BASE)"; fi
  done
done

cluster="" endpoints=""
for i in $(seq 1 "$members"); do
  cluster+="${cluster:+,}$i=127.0.0.1:$(port $((10 + i)))"
  endpoints+="${endpoints:+,}127.0.0.1:$(port "$i")"
done
log "starting $members rkube member(s) at $endpoints"
for i in $(seq 1 "$members"); do
  "$bin/rkube" server --id "$i" --data-dir "$work/m$i" \
    --listen-api "127.0.0.1:$(port "$i")" --listen-peer "127.0.0.1:$(port $((10 + i)))" \
    --initial-cluster "$cluster" --control-plane false >"$results/rkube$i.log" 2>&1 &
  pids+=("$!")
done

# Waits (at most 60 s) until the API answers.
deadline=$((SECONDS + 60))
until "$bin/rkctl" --server "$endpoints" get nodes >/dev/null 2>&1; do
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || die "a member exited; see $results/rkube*.log"; done
  [ $SECONDS -lt $deadline ] || die "the API at $endpoints did not answer within 60 s"
  sleep 0.5
done
# 1,000 nodes need 1,000 pod subnets: a /24 each from a /14 (the default /16 has 256).
"$bin/rkube" controller-manager --server "$endpoints" --cluster-cidr 10.64.0.0/14 \
  >"$results/controller-manager.log" 2>&1 &
pids+=("$!")
start_scheduler() {
  "$bin/rkube" scheduler --server "$endpoints" >"$results/scheduler.log" 2>&1 &
  pids+=("$!")
}
log "API up; controller manager started; starting $nodes hollow nodes"
"$bin/rkube" hollow-nodes --server "$endpoints" --count "$nodes" --prefix hollow >"$results/hollow.log" 2>&1 &
pids+=("$!")

bench() {
  local line
  line=$("$bin/bench-scheduler" "$@" --endpoints "$endpoints" --json </dev/null)
  echo "$line" >>"$out"
  log "$line"
}

started=$SECONDS
bench nodes --count "$nodes" --timeout-secs 300
if [ "$backlog" = 1 ]; then
  log "phase 0: $pods pending pods, then the scheduler (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  "$bin/bench-scheduler" pods --count "$pods" --concurrency "$concurrency" --nodes "$nodes" \
    --created-file "$work/created" --endpoints "$endpoints" --json </dev/null >"$work/backlog.json" &
  bench_pid=$!
  pids+=("$bench_pid")
  while [ ! -e "$work/created" ]; do
    kill -0 "$bench_pid" 2>/dev/null || die "bench-scheduler exited before creating its pods"
    sleep 0.2
  done
  log "all pods created; starting the scheduler"
  start_scheduler
  wait "$bench_pid" || die "bench-scheduler failed in phase 0"
  cat "$work/backlog.json" >>"$out"
  log "$(cat "$work/backlog.json")"
else
  start_scheduler
fi
log "phase 1: $pods pending pods (load average $(cut -d' ' -f1-3 /proc/loadavg))"
bench pods --count "$pods" --concurrency "$concurrency" --nodes "$nodes"
log "phase 2: rkctl run --replicas=$replicas (load average $(cut -d' ' -f1-3 /proc/loadavg))"
bench deployment --replicas "$replicas" --rkctl "$bin/rkctl" --nodes "$nodes"
log "runs done (load average $(cut -d' ' -f1-3 /proc/loadavg))"

{
  echo "rkube $rev; $members member(s), $nodes hollow nodes, all on one machine; $(nproc) CPUs; $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  "$bin/bench-scheduler" report "$out"
} | tee "$results/report.md"
log "done in $((SECONDS - started)) s; results in $out, report in $results/report.md"
