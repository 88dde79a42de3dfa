#!/usr/bin/env bash
# Benchmarks rkube's object API (rkube.v1.Pods) against the targets of issue 3, a tenth of the
# Kubernetes API SLO: a 3-member rkube cluster on loopback, BENCH_PODS pods stored, then
# Create / Get / Update / Delete on an open loop at every rate of BENCH_RATES, lists of every
# pod, and watch delivery latency on the leader and a follower (bench-api). Prints the report:
# every step, then each target with whether it is met.
#
# The members run with --control-plane false, so that no scheduler or controller acts on the
# benchmark's pods.
#
# Usage: bench/api/run.sh
# Knobs (environment):
#   BENCH_PODS                pods stored before the measurements           default 10000
#   BENCH_RATES               request rates of the single-object steps      default "20 200"
#   BENCH_DURATION_SECS       length of each single-object step             default 15
#   BENCH_LIST_RUNS           lists of each kind                            default 5
#   BENCH_PAGE_SIZE           page size of the paged list                   default 500
#   BENCH_WATCH_RATE          writes per second during the watch step       default 100
#   BENCH_WATCH_SECS          length of the watch step                      default 15
#   BENCH_FILL_CONCURRENCY    creates in flight while filling               default 64
#   BENCH_PORT_BASE           loopback ports used: base+1..3 (API), +11..13 (peers)
#                                                                           default 31200
#   BENCH_RESULTS             directory for api-results.jsonl, api-report.md and the members'
#                             logs                                          default bench/results
#   BENCH_NO_BUILD=1          use the binaries already built
#   BENCH_KEEP=1              keep the members' data directories
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"

pods=${BENCH_PODS:-10000}
rates=${BENCH_RATES:-"20 200"}
duration=${BENCH_DURATION_SECS:-15}
list_runs=${BENCH_LIST_RUNS:-5}
page_size=${BENCH_PAGE_SIZE:-500}
watch_rate=${BENCH_WATCH_RATE:-100}
watch_secs=${BENCH_WATCH_SECS:-15}
fill_concurrency=${BENCH_FILL_CONCURRENCY:-64}
port_base=${BENCH_PORT_BASE:-31200}
results=${BENCH_RESULTS:-$repo/bench/results}
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir=$repo/$target_dir ;; esac
bin=$target_dir/release

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Which rkube is measured: the commit, and whether the sources differ from it.
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain -- src proto build.rs Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  rev="$rev with uncommitted changes in src/"
fi
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  log "building rkube and bench-api (release)"
  cargo build --release --bin rkube --bin bench-api
else
  rev="$rev (tree; binary not rebuilt, from $(date -u -r "$bin/rkube" '+%H:%M UTC' 2>/dev/null || echo '?'))"
fi
[ -x "$bin/rkube" ] && [ -x "$bin/bench-api" ] || die "binaries missing under $bin"

work=$(mktemp -d "${TMPDIR:-/tmp}/rkube-bench-api.XXXXXX")
# Private copies: a build running meanwhile must not swap the binaries under the benchmark.
cp "$bin/rkube" "$bin/bench-api" "$work/"
bin=$work
mkdir -p "$results"
out=$results/api-results.jsonl
: >"$out"
pids=()

# Stops the members: TERM, up to 10 s to exit, then KILL.
cleanup() {
  local pid deadline=$((SECONDS + 10))
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  pids=()
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "data kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { echo $((port_base + $1)); }
endpoints="127.0.0.1:$(port 1),127.0.0.1:$(port 2),127.0.0.1:$(port 3)"

for p in "$(port 1)" "$(port 2)" "$(port 3)" "$(port 11)" "$(port 12)" "$(port 13)"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p is in use (set BENCH_PORT_BASE)"; fi
done

started=$SECONDS
log "starting a 3-member rkube cluster at $endpoints"
cluster="1=127.0.0.1:$(port 11),2=127.0.0.1:$(port 12),3=127.0.0.1:$(port 13)"
for i in 1 2 3; do
  "$bin/rkube" server --id "$i" --data-dir "$work/rkube$i" \
    --listen-api "127.0.0.1:$(port "$i")" --listen-peer "127.0.0.1:$(port $((10 + i)))" \
    --initial-cluster "$cluster" --control-plane false >"$results/api-rkube$i.log" 2>&1 &
  pids+=("$!")
done

# bench-api waits (up to 60 s) until every member answers and one of them leads.
for pid in "${pids[@]}"; do
  kill -0 "$pid" 2>/dev/null || die "a member exited during start-up; see $results/api-rkube*.log"
done
log "cluster started (load average $(cut -d' ' -f1-3 /proc/loadavg))"

report=$results/api-report.md
{
  echo "rkube $rev; bench-api, $pods pods; $(nproc) CPUs; $(date -u '+%Y-%m-%d %H:%M UTC');" \
    "load average at the start $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  "$bin/bench-api" --endpoints "$endpoints" --pods "$pods" --rates "${rates// /,}" \
    --duration-secs "$duration" --list-runs "$list_runs" --page-size "$page_size" \
    --watch-rate "$watch_rate" --watch-secs "$watch_secs" --fill-concurrency "$fill_concurrency" \
    --json "$out" </dev/null
  echo
  # Replication calls that overran their deadline (openraft's heartbeat-long timeout for
  # AppendEntries) are retried: under CPU contention they show up as write latency spikes.
  for i in 1 2 3; do
    echo "- member $i: $(grep -c 'error replication to target=.*timed out' "$results/api-rkube$i.log" || true)" \
      "replication calls timed out, $(grep -c 'built snapshot' "$results/api-rkube$i.log" || true) snapshots built"
  done
  echo
  echo "Load average at the end $(cut -d' ' -f1-3 /proc/loadavg); $((SECONDS - started)) s from the start of the cluster."
} >"$report.tmp"
mv "$report.tmp" "$report"
cat "$report"
log "done in $((SECONDS - started)) s; results in $out, table in $report"
